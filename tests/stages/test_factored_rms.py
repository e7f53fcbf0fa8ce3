"""scale_by_factored_rms: Adafactor's factored RMS against a NumPy float64 reference and
optax.scale_by_factored_rms (bit for bit), its state (the factored format's record), its
schedule and its argument checks. The whole alias is tests/aliases/test_adafactor.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import reference

import adamx
from adamx.stages.factored_rms import decay_rate_pow


def numpy_factored_rms(grads, eps=1e-30, c=0.8):
    """The paper's algorithm in float64 for one matrix (axis 1 the larger): (updates, r, c)."""
    n, m = grads[0].shape
    r, col = np.zeros(n), np.zeros(m)
    updates = []
    for t, g in enumerate(grads):
        beta = 1.0 - (t + 1.0) ** -c
        y = g.astype(np.float64) ** 2 + eps
        r = beta * r + (1 - beta) * y.mean(axis=1)
        col = beta * col + (1 - beta) * y.mean(axis=0)
        v_hat = np.outer(r, col) / r.mean()
        updates.append(g / np.sqrt(v_hat))
    return updates, r, col


def test_factored_step_is_the_papers_algorithm():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(6, 9)).astype(np.float32) * s for s in (1.0, 0.1, 3.0, 1e-2)]
    tx = adamx.scale_by_factored_rms(min_dim_size_to_factor=4)
    state = tx.init(jnp.zeros((6, 9)))
    for g in grads:
        update, state = tx.update(jnp.asarray(g), state)
    updates, r, col = numpy_factored_rms(grads)
    np.testing.assert_allclose(update, updates[-1], rtol=2e-6)
    np.testing.assert_allclose(state.nu.row, r, rtol=2e-6)
    np.testing.assert_allclose(state.nu.col, col, rtol=2e-6)
    assert int(state.count) == len(grads)


def test_first_step_divides_by_the_rms():
    """β̂_0 = 0: v is the first |g|² + ε, so an unfactored update is g/|g|."""
    tx = adamx.scale_by_factored_rms()
    g = jnp.array([3.0, -0.5, 2e-3])
    update, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(update, jnp.sign(g), rtol=1e-6)
    np.testing.assert_array_equal(state.nu.row, g * g + 1e-30)  # a 1-D leaf: its full v


def test_decay_schedule():
    steps = np.arange(4)
    expected = 1.0 - (steps + 1.0) ** -0.8
    np.testing.assert_allclose(decay_rate_pow(jnp.asarray(steps)), expected, rtol=1e-6)
    assert float(decay_rate_pow(0)) == 0.0


def capped(step, decay_rate):
    """A schedule capped below 1 (Zhai et al. 2021), given to both libraries."""
    del decay_rate
    return jnp.minimum(0.999, 1.0 - 1.0 / (step.astype(jnp.float32) + 1.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_dim_size_to_factor=3, epsilon=1e-12, decay_rate=0.5, step_offset=-3),
        dict(min_dim_size_to_factor=3, decay_rate_fn=capped),
        dict(factored=False),
    ],
)
def test_bit_identical_to_optax(kwargs):
    """float32 and bfloat16 leaves side by side (the stage works leaf by leaf); the default
    options on large matrices: tests/aliases/test_adafactor.py."""
    rng = np.random.default_rng(1)
    shapes = {"w": (4, 6), "cube": (2, 3, 5), "b": (6,), "s": ()}
    params = {
        f"{name}_{jnp.dtype(dtype).name}": jnp.asarray(rng.normal(size=shape), dtype)
        for name, shape in shapes.items()
        for dtype in (jnp.float32, jnp.bfloat16)
    }
    ours = adamx.scale_by_factored_rms(**kwargs)
    theirs = reference(optax.scale_by_factored_rms(**kwargs))
    s1, s2 = ours.init(params), theirs.init(params)
    step1, step2 = jax.jit(ours.update), jax.jit(theirs.update)
    for t in range(20):
        scale = (t % 7 - 3) * 10.0 ** (t % 5 - 2)
        g = jax.tree.map(lambda p, scale=scale: (p * scale).astype(p.dtype), params)
        (u1, s1), (u2, s2) = step1(g, s1, params), step2(g, s2, params)
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, strict=True), u1, u2)
    factored = kwargs.get("factored", True)
    rows = s1.nu.row if factored else s1.nu
    for name, p in params.items():
        if factored and p.ndim >= 2:
            np.testing.assert_array_equal(rows[name], s2.v_row[name], strict=True)
            np.testing.assert_array_equal(s1.nu.col[name], s2.v_col[name], strict=True)
        else:
            np.testing.assert_array_equal(rows[name], s2.v[name], strict=True)


def test_state_is_the_formats_record():
    params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros(128)}
    state = adamx.scale_by_factored_rms().init(params)
    assert isinstance(state.nu, adamx.FactoredMoment)
    assert state.nu.row["w"].shape == (128,) and state.nu.col["w"].shape == (256,)
    assert state.nu.row["b"].shape == (128,) and state.nu.col["b"] is None
    assert state.nu.description.startswith("factored(min_dim_size_to_factor=128, dtype=None")
    plain = adamx.scale_by_factored_rms(factored=False).init(params)
    assert jax.tree.map(jnp.shape, plain.nu) == jax.tree.map(jnp.shape, params)


def test_state_layout_of_every_kind_of_leaf():
    shapes = {"wide": (128, 144), "tall": (160, 128), "cube": (2, 130, 128), "small": (5, 7)}
    params = {k: jnp.zeros(s, jnp.bfloat16) for k, s in shapes.items()}
    nu = adamx.scale_by_factored_rms().init(params).nu
    # row: the mean over the largest axis d0; col: over the second largest d1.
    assert nu.row["wide"].shape == (128,) and nu.col["wide"].shape == (144,)
    assert nu.row["tall"].shape == (128,) and nu.col["tall"].shape == (160,)
    assert nu.row["cube"].shape == (2, 128) and nu.col["cube"].shape == (2, 130)
    assert nu.row["small"].shape == (5, 7) and nu.col["small"] is None
    assert nu.row["tall"].dtype == jnp.bfloat16  # the params' dtype, as optax


def test_a_state_of_another_configuration_is_refused():
    params = {"w": jnp.zeros((8, 8))}
    state = adamx.scale_by_factored_rms(min_dim_size_to_factor=4).init(params)
    other = adamx.scale_by_factored_rms(min_dim_size_to_factor=2)
    with pytest.raises(ValueError, match="min_dim_size_to_factor=4"):
        other.update(params, state)


def test_complex_parameters_need_factored_false():
    p = jax.lax.complex(jnp.ones((3, 4)), jnp.ones((3, 4)))
    with pytest.raises(TypeError, match=r"\['w'\] is complex64.*factored=False"):
        adamx.scale_by_factored_rms().init({"w": p})
    tx = adamx.scale_by_factored_rms(factored=False)
    update, _ = tx.update({"w": p}, tx.init({"w": p}))
    assert update["w"].dtype == jnp.complex64


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(factored=1), TypeError, "factored must be True or False"),
        (dict(decay_rate=-1.0), ValueError, "decay_rate must be a finite number >= 0"),
        (dict(step_offset=0.5), TypeError, "step_offset must be an int"),
        (dict(min_dim_size_to_factor=-1), ValueError, "min_dim_size_to_factor must be an int"),
        (dict(epsilon=-1e-30), ValueError, "epsilon must be a finite number >= 0"),
        (dict(decay_rate_fn=0.8), TypeError, "decay_rate_fn must be a callable"),
    ],
)
def test_arguments_are_checked_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        adamx.scale_by_factored_rms(**kwargs)
