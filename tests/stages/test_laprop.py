"""``scale_by_laprop``: its first steps in closed form, where ε goes, every moment format, the
packed path, argument errors, no retrace, strict promotion (parity with pytorch_optimizer and
the authors' code: tests/aliases/test_parity_laprop.py)."""

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
    """t=1: v = (1-β2) g², x = g / (sqrt(v / (1-β2)) + ε) = sign(g), u = m / (1-β1) = x.
    t=2: v̂ = (β2 g1² + (1-β2) g2²) / (1-β2²), m̂ = (β1 x1 + (1-β1) x2) / (1-β1²)."""
    b1, b2 = 0.5, 0.75
    tx = adamx.scale_by_laprop(b1=b1, b2=b2, eps=0.0)
    g1 = {"w": jnp.array([2.0, -4.0, 1e-4])}
    g2 = {"w": jnp.array([1.0, 8.0, -3.0])}
    u1, state = tx.update(g1, tx.init(g1))
    np.testing.assert_allclose(u1["w"], np.sign(g1["w"]), rtol=1e-6)
    u2, state = tx.update(g2, state)
    g1w, g2w = (np.asarray(g["w"], np.float64) for g in (g1, g2))
    v = b2 * (1 - b2) * g1w**2 + (1 - b2) * g2w**2
    x2 = g2w / np.sqrt(v / (1 - b2**2))
    m = b1 * (1 - b1) * np.sign(g1w) + (1 - b1) * x2
    np.testing.assert_allclose(u2["w"], m / (1 - b1**2), rtol=1e-6)
    np.testing.assert_allclose(state.nu["w"], v, rtol=1e-6)
    assert int(state.count) == 2


def test_epsilon_hat_puts_eps_on_the_uncorrected_root():
    """First step, g = 1: x = 1 / (sqrt(v̂) + ε) by default, sqrt(1-β2) / (sqrt(v) + ε) with
    epsilon_hat (v = (1-β2) g², v̂ = g²)."""
    g = {"w": jnp.ones(1)}
    plain, hat = adamx.scale_by_laprop(eps=0.5), adamx.scale_by_laprop(eps=0.5, epsilon_hat=True)
    np.testing.assert_allclose(plain.update(g, plain.init(g))[0]["w"], [1 / 1.5], rtol=1e-4)
    root = np.sqrt(1e-3)
    want = root / (root + 0.5)
    np.testing.assert_allclose(hat.update(g, hat.init(g))[0]["w"], [want], rtol=1e-4)


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
# differs by design.
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

    (ours, state), (exact, _) = run(adamx.laprop(1e-2, **FORMATS[name])), run(adamx.laprop(1e-2))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((ours, state)))
    leaves = (jax.tree.leaves(t) for t in (ours, exact, params))
    for a, b, p in zip(*leaves, strict=True):
        moved = float(jnp.linalg.norm(b - p))
        assert float(jnp.linalg.norm(a - b)) < NEAR.get(name, 0.2) * moved, name


def test_formats_reach_the_state():
    state = adamx.scale_by_laprop(mu_dtype=jnp.bfloat16, nu_dtype=adamx.blockwise_8bit()).init(
        tree()
    )
    assert state.mu["w"].dtype == jnp.bfloat16
    assert isinstance(state.nu, adamx.QuantizedMoment)


@pytest.mark.slow
def test_multi_tensor_matches_per_leaf():
    params = {"w": tree()["w"][:4, :8], "b": tree()["b"][:3], "s": jnp.float32(0.3)}
    tx = adamx.laprop(1e-2, eps_root=1e-12, epsilon_hat=True, weight_decay=0.1)
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
        (dict(eps_root=-1.0), "eps_root"),
        (dict(epsilon_hat=1), "epsilon_hat"),
        (dict(mu_dtype=jnp.int8), "mu_dtype"),
        (dict(nu_dtype=jnp.int32), "nu_dtype"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        adamx.scale_by_laprop(**kwargs)
    with pytest.raises((TypeError, ValueError), match=name):
        adamx.laprop(1e-3, **kwargs)


def test_bad_learning_rate_and_lr_weighted_are_named():
    with pytest.raises(ValueError, match="learning_rate"):
        adamx.scale_by_laprop(learning_rate=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        adamx.laprop(-1.0, lr_weighted=True)
    with pytest.raises(TypeError, match="lr_weighted"):
        adamx.laprop(1e-3, lr_weighted="yes")


def test_lr_weighted_state_under_jit_and_a_schedule():
    """c_t = β1 c + (1-β1) α_t in the state; α_0 = 0 (warmup) gives c = 0 and no step."""
    chex.clear_trace_counter()
    schedule = optax.linear_schedule(0.0, 1e-2, 10)
    tx = adamx.laprop(schedule, lr_weighted=True, mu_dtype=adamx.blockwise_8bit())
    params = tree()
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        updates, state = tx.update(params, state, params)
        return optax.apply_updates(params, updates), updates, state

    _, updates, state = step(params, state)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert float(state[0].lr_ema) == 0.0
    _, updates, state = step(params, state)
    np.testing.assert_allclose(float(state[0].lr_ema), 0.1 * 1e-3, rtol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_refuses_a_moment_tree():
    moments = adamx.scale_by_moments().update(
        {"w": jnp.ones(2)}, adamx.scale_by_moments().init({"w": jnp.ones(2)})
    )[0]
    tx = adamx.scale_by_laprop()
    with pytest.raises(TypeError, match="scale_by_laprop takes gradients"):
        tx.update(moments, tx.init({"w": jnp.ones(2)}))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jit_does_not_retrace_and_keeps_dtypes(dtype):
    chex.clear_trace_counter()
    tx = adamx.laprop(1e-3, nu_dtype=adamx.blockwise_8bit(), weight_decay=0.1)
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
    tx = optax.inject_hyperparams(adamx.laprop)(
        learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-6, eps_root=1e-12
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
    tx = adamx.sparse_rows(adamx.laprop(1e-2))
    state = tx.init(table)
    for _ in range(2):
        updates, state = tx.update(grads, state, table)
    assert bool(jnp.all(jnp.isfinite(updates["emb"].values)))
    with pytest.raises(ValueError, match="catch_up"):
        adamx.sparse_rows(adamx.laprop(1e-2), semantics="catch_up").init(table)
