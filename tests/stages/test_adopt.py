"""``scale_by_adopt``: its first steps in closed form, every moment format, the packed path,
argument errors, no retrace, strict promotion (parity with optax: tests/aliases)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx


def tree(dtype=jnp.float32, seed=0):
    """A matrix large enough to be quantized (8192 elements) and factored, and a bias."""
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(64, 128)), dtype),
        "b": jnp.asarray(rng.normal(size=(128,)), dtype),
    }


def test_first_steps_closed_form():
    """t=0: v = g², u = 0. t=1: x = clip(g1/max(|g0|, ε), ±1), m = (1-β1)x,
    v = β2 g0² + (1-β2) g1²."""
    tx = adamx.scale_by_adopt(b1=0.5, b2=0.75, eps=1e-3)
    g0 = {"w": jnp.array([2.0, -4.0, 0.0, 1e-4])}
    g1 = {"w": jnp.array([1.0, 8.0, 3.0, -1.0])}
    u0, state = tx.update(g0, tx.init(g0))
    np.testing.assert_array_equal(u0["w"], jnp.zeros(4))
    np.testing.assert_array_equal(state.nu["w"], g0["w"] ** 2)
    u1, state = tx.update(g1, state)
    x = np.clip(np.array([0.5, 2.0, 3000.0, -1e3]), -1.0, 1.0)
    np.testing.assert_allclose(u1["w"], 0.5 * x, rtol=1e-6)
    np.testing.assert_allclose(state.nu["w"], 0.75 * g0["w"] ** 2 + 0.25 * g1["w"] ** 2)
    assert int(state.count) == 2


FORMATS = {
    "mu_bf16": dict(mu_dtype=jnp.bfloat16),
    "nu_8bit": dict(nu_dtype=adamx.blockwise_8bit()),
    "mu_8bit_nu_4bit": dict(mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_4bit()),
    "stochastic_bf16": dict(
        mu_dtype=adamx.stochastic_float(jnp.bfloat16),
        nu_dtype=adamx.stochastic_float(jnp.bfloat16, seed=1),
    ),
    "factored_nu": dict(nu_dtype=adamx.factored(32)),
}


# A factored v is a rank-one estimate of v (row and column means): the normalised gradient
# differs by design, and ADOPT's first step normalises by one gradient's factors.
NEAR = {"factored_nu": 0.6}


DEFAULT_RUN = ("mu_bf16", "nu_8bit")  # the rest: -m slow
FORMAT_CASES = [n if n in DEFAULT_RUN else pytest.param(n, marks=pytest.mark.slow) for n in FORMATS]


@pytest.mark.parametrize("name", FORMAT_CASES)
def test_every_format_runs_finite_and_near_float32(name):
    """50 steps of a quadratic: finite, and the parameters near the float32 run's."""
    params = tree()

    def run(tx):
        def body(carry, _):
            p, s = carry
            g = jax.tree.map(lambda x: x - 0.5, p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, 50)[0])(params)

    (ours, state), (exact, _) = run(adamx.adopt(1e-2, **FORMATS[name])), run(adamx.adopt(1e-2))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((ours, state)))
    leaves = (jax.tree.leaves(t) for t in (ours, exact, params))
    for a, b, p in zip(*leaves, strict=True):
        moved = float(jnp.linalg.norm(b - p))
        assert float(jnp.linalg.norm(a - b)) < NEAR.get(name, 0.2) * moved, name


def test_formats_reach_the_state():
    state = adamx.scale_by_adopt(mu_dtype=jnp.bfloat16, nu_dtype=adamx.blockwise_8bit()).init(
        tree()
    )
    assert state.mu["w"].dtype == jnp.bfloat16
    assert isinstance(state.nu, adamx.QuantizedMoment)


@pytest.mark.slow
def test_multi_tensor_matches_per_leaf():
    params = {"w": tree()["w"][:4, :8], "b": tree()["b"][:3], "s": jnp.float32(0.3)}
    tx = adamx.adopt(1e-2, nesterov=True, weight_decay=0.1)
    packed = adamx.multi_tensor(tx, min_size=16)
    update, packed_update = jax.jit(tx.update), jax.jit(packed.update)
    state, packed_state, p, q = tx.init(params), packed.init(params), params, params
    for i in range(5):
        g = jax.tree.map(lambda x: jnp.sin(x * (i + 1.0)), p)
        u, state = update(g, state, p)
        v, packed_state = packed_update(g, packed_state, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    chex.assert_trees_all_close(p, q, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(b1=1.0), "b1"),
        (dict(b2=-0.1), "b2"),
        (dict(eps=-1e-6), "eps"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(use_clipping=None), "use_clipping"),
        (dict(clip_value_fn=1.0), "clip_value_fn"),
        (dict(mu_dtype=jnp.int8), "mu_dtype"),
        (dict(nu_dtype=jnp.int32), "nu_dtype"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        adamx.scale_by_adopt(**kwargs)
    with pytest.raises((TypeError, ValueError), match=name):
        adamx.adopt(1e-3, **kwargs)


def test_inject_hyperparams_without_static_clip_value_fn_is_explained():
    with pytest.raises(TypeError, match=r"static_args=\('clip_value_fn',\)"):
        optax.inject_hyperparams(adamx.adopt)(learning_rate=1e-3).init(tree())


def test_refuses_a_moment_tree():
    moments = adamx.scale_by_moments().update(
        {"w": jnp.ones(2)}, adamx.scale_by_moments().init({"w": jnp.ones(2)})
    )[0]
    tx = adamx.scale_by_adopt()
    with pytest.raises(TypeError, match="scale_by_adopt takes gradients"):
        tx.update(moments, tx.init({"w": jnp.ones(2)}))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jit_does_not_retrace_and_keeps_dtypes(dtype):
    chex.clear_trace_counter()
    tx = adamx.adopt(1e-3, nu_dtype=adamx.blockwise_8bit(), weight_decay=0.1)
    params = tree(dtype)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        updates, state = tx.update(params, state, params)
        return optax.apply_updates(params, updates), updates, state

    for _ in range(3):
        new_params, updates, new_state = step(params, state)
        chex.assert_trees_all_equal_dtypes(updates, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
        params, state = new_params, new_state


def test_injected_hyperparameters_with_bfloat16_params_are_strict_clean():
    """float32 β, ε and α arrays against bfloat16 leaves: explicit casts only (strict run)."""
    tx = optax.inject_hyperparams(adamx.adopt, static_args=("clip_value_fn",))(
        learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-6
    )
    params = tree(jnp.bfloat16)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(params, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)


def test_sparse_rows_runs_lazy_and_refuses_catch_up():
    """Elementwise: a table's touched rows step alone (lazy). catch_up decays
    scale_by_moments' moments, which this chain has not: refused at init."""
    table = {"emb": jnp.ones((10, 4))}
    grads = {"emb": adamx.row_sparse(jnp.array([1, 3]), jnp.ones((2, 4)), 10)}
    tx = adamx.sparse_rows(adamx.adopt(1e-2))
    state = tx.init(table)
    for _ in range(2):
        updates, state = tx.update(grads, state, table)
    assert bool(jnp.all(jnp.isfinite(updates["emb"].values)))
    with pytest.raises(ValueError, match="catch_up"):
        adamx.sparse_rows(adamx.adopt(1e-2), semantics="catch_up").init(table)
