"""Numerics of the state formats: roles, rounding keys, non-finite v, steady state, dtypes.

References: optax.adam (float32), a float64 NumPy Adam, closed-form rounding
probabilities of bfloat16 neighbours, the flax-free plain loop.
"""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import reference

import adamx

# ---------------------------------------------------------------------------
# The format follows the moment it stores (signed m, unsigned v).


def test_blockwise_8bit_is_bound_to_the_moment_it_stores():
    fmt = adamx.blockwise_8bit()
    assert fmt.signed is None and fmt.stochastic is None
    state = adamx.amsgrad(1e-3, mu_dtype=fmt, nu_dtype=fmt).init({"w": jnp.zeros((64, 64))})
    mu, nu, nu_max = state[0].mu, state[0].nu, optax.tree.get(state, "nu_max")
    assert "signed=True, qmap='e4m3'" in next(iter(mu.config))
    assert "signed=False, qmap='e4m4'" in next(iter(nu.config))
    assert "signed=False, qmap='e4m4'" in next(iter(nu_max.config))
    for record in (mu, nu, nu_max):
        assert "stochastic=True" in next(iter(record.config))
    # Explicit signedness keeps working where it matches the moment ...
    adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(True), nu_dtype=adamx.blockwise_8bit(False))
    # ... and is refused where it does not.
    with pytest.raises(ValueError, match=r"nu_dtype=blockwise_8bit\(signed=True\) would store"):
        adamx.adam(1e-3, nu_dtype=adamx.blockwise_8bit(signed=True))
    with pytest.raises(ValueError, match=r"nu_dtype=blockwise_8bit\(signed=True\)"):
        adamx.running_max_nu(adamx.blockwise_8bit(signed=True))
    with pytest.raises(ValueError, match=r"mu_dtype=blockwise_8bit\(signed=False\) would clip"):
        adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(signed=False))
    with pytest.raises(ValueError, match=r"sqrt=True\) stores the root .* for nu_dtype"):
        adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(sqrt=True))
    with pytest.raises(ValueError, match=r"not bound to a moment yet.*bind\('mu'\)"):
        adamx.blockwise_8bit().init(jnp.zeros(8))


def test_second_moment_follows_its_role_not_the_argument_name():
    # The same unbound format object, given to nu_dtype, decays v (stochastic rounding);
    # nearest rounding would hold v_1 = 2^-10 for ever (see test_low_memory).
    t, grads = 400, jnp.zeros((400, 8192)).at[0].set(1.0)
    tx = adamx.scale_by_moments(b2=0.999, nu_dtype=adamx.blockwise_8bit())
    state = jax.lax.fori_loop(0, t, lambda i, s: tx.update(grads[i], s)[1], tx.init(grads[0]))
    v = adamx.blockwise_8bit(signed=False).decode((state.nu.codes, state.nu.scales), grads[0])
    assert float(jnp.mean(v)) == pytest.approx(0.001 * 0.999 ** (t - 1), rel=0.01)


# ---------------------------------------------------------------------------
# Rounding keys: distinct per leaf and per moment, deterministic given the seed.


def _bf16_neighbours(x: np.ndarray):
    """(down, up, p_up) of positive float32 x between its two bfloat16 neighbours."""
    bits = x.view(np.uint32)
    down = (bits & np.uint32(0xFFFF0000)).view(np.float32)
    up = ((bits & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view(np.float32)
    return down, up, (x.astype(np.float64) - down) / (up.astype(np.float64) - down)


def _agreement(x, a, b):
    """Fraction of elements rounded the same way in a and b, and its value for independent
    draws, E[p² + (1-p)²] (1.0 if the draws were shared)."""
    down, up, p = _bf16_neighbours(np.asarray(x, np.float32))
    a_up = np.asarray(a, np.float32) == up
    b_up = np.asarray(b, np.float32) == up
    inexact = (p > 0) & (p < 1)
    assert np.all((np.asarray(a, np.float32) == down) | a_up)  # a neighbour, always
    return (a_up == b_up)[inexact].mean(), (p**2 + (1 - p) ** 2)[inexact].mean()


def _positive(shape, key=0):
    return jnp.exp(jax.random.normal(jax.random.key(key), shape))


def test_leaves_of_one_shape_get_independent_rounding_noise():
    g = _positive((64, 1024))
    sf = adamx.stochastic_float(seed=0)
    tx = adamx.scale_by_moments(b1=0.0, mu_dtype=sf)  # m_1 = g: stored = SR(g)
    _, state = tx.update({"a": g, "b": g}, tx.init({"a": g, "b": g}))
    agree, independent = _agreement(g, state.mu.value["a"], state.mu.value["b"])
    assert abs(agree - independent) < 0.01, (agree, independent)
    # Deterministic given the seed.
    _, again = tx.update({"a": g, "b": g}, tx.init({"a": g, "b": g}))
    chex.assert_trees_all_equal(again, state)


def test_moments_get_independent_rounding_noise():
    g = _positive((64, 1024), key=1)
    sf = adamx.stochastic_float(seed=0)  # the same seed for both moments
    # AdaMax with b1 = 0: m_1 = g and u_1 = |g| = g, the same values, rounded with m's and
    # u's noise.
    tx = adamx.scale_by_moments(b1=0.0, mu_dtype=sf, nu_dtype=sf, infinity_norm=True)
    _, state = tx.update(g, tx.init(g))
    agree, independent = _agreement(g, state.mu.value, state.nu.value)
    assert abs(agree - independent) < 0.01, (agree, independent)
    # v and AMSGrad's running maximum of it (the same value on step 1).
    chain = optax.chain(adamx.scale_by_moments(b2=0.0, nu_dtype=sf), adamx.running_max_nu(sf))
    _, (moments, maxima) = chain.update(g, chain.init(g))
    v = np.asarray(g, np.float64) ** 2
    agree, independent = _agreement(v.astype(np.float32), moments.nu.value, maxima.nu_max.value)
    assert abs(agree - independent) < 0.01, (agree, independent)


def test_8bit_leaves_of_one_shape_round_differently():
    g = {"a": _positive((64, 1024), 2), "b": _positive((64, 1024), 2)}
    tx = adamx.scale_by_moments(b1=0.0, mu_dtype=adamx.blockwise_8bit())
    _, state = tx.update(g, tx.init(g))
    same = np.mean(np.asarray(state.mu.codes["a"]) == np.asarray(state.mu.codes["b"]))
    assert 0.3 < same < 0.9  # shared noise would give 1.0


# ---------------------------------------------------------------------------
# Non-finite second moments.


def test_overflowed_second_moment_gives_a_zero_step_as_in_float32():
    params = {"w": jnp.zeros((16, 512))}
    g = jax.random.normal(jax.random.key(3), (16, 512))
    huge = g.at[2, 5].set(1e20)  # g² = 1e40 overflows float32 to +inf: v = inf, step 0
    v8 = adamx.blockwise_8bit()
    tx8 = adamx.adam(1e-3, nu_dtype=v8)
    ref = reference(optax.adam(1e-3))
    s8, s32, clean = tx8.init(params), ref.init(params), tx8.init(params)
    for _ in range(3):  # v stays +inf in the state
        u8, s8 = tx8.update({"w": huge}, s8, params)
        u32, s32 = ref.update({"w": huge}, s32, params)
        u_clean, clean = tx8.update({"w": g}, clean, params)
        assert float(u32["w"][2, 5]) == 0.0 and float(u8["w"][2, 5]) == 0.0
        assert np.isfinite(np.asarray(u8["w"])).all()
        # Other blocks (rows: one 512-block each) are untouched by the outlier.
        np.testing.assert_array_equal(np.delete(u8["w"], 2, 0), np.delete(u_clean["w"], 2, 0))
    v = v8.bind("nu").decode((s8[0].nu.codes["w"], s8[0].nu.scales["w"]), g)
    assert float(v[2, 5]) == np.inf


def test_nan_in_the_second_moment_stays_nan():
    params = {"w": jnp.zeros((16, 512))}
    g = jax.random.normal(jax.random.key(4), (16, 512)).at[1, 7].set(jnp.nan)
    v8 = adamx.blockwise_8bit(signed=False)
    tx, ref = adamx.adam(1e-3, nu_dtype=v8, b1=0.0), reference(optax.adam(1e-3, b1=0.0))
    u8, s8 = tx.update({"w": g}, tx.init(params), params)
    u32, _ = ref.update({"w": g}, ref.init(params), params)
    assert np.isnan(u8["w"][1, 7]) and np.isnan(u32["w"][1, 7])
    v = v8.decode((s8[0].nu.codes["w"], s8[0].nu.scales["w"]), g)
    assert np.isnan(v[1, 7]) and np.isfinite(np.delete(np.asarray(v).ravel(), 1 * 512 + 7)).all()
    # With b1 = 0 the next finite gradient moves m again, but v keeps the NaN (as float32).
    clean = jnp.nan_to_num(g)
    u8, _ = tx.update({"w": clean}, s8, params)
    assert np.isnan(u8["w"][1, 7]) and np.isnan(u8["w"]).sum() == 1


# ---------------------------------------------------------------------------
# Steady state of the 8-bit first moment.


def _steady_steps(mu_dtype, nu_dtype, steps=300):
    """Mean step over the last 100 of ``steps`` constant gradients, then after |g| / 10."""
    g0 = jnp.asarray(np.random.default_rng(0).lognormal(0, 1, (8, 1024)).astype(np.float32))

    def run(tx):
        def body(state, g):
            u, state = tx.update(g, state)
            return state, u

        state, u1 = jax.lax.scan(body, tx.init(g0), jnp.broadcast_to(g0, (steps, *g0.shape)))
        _, u2 = jax.lax.scan(body, state, jnp.broadcast_to(g0 / 10, (steps, *g0.shape)))
        return jnp.mean(u1[-100:]), jnp.mean(u2[-100:])

    tx = adamx.adam(1e-3, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    got, ref = jax.jit(lambda: run(tx))(), jax.jit(lambda: run(reference(optax.adam(1e-3))))()
    return float(got[0] / ref[0]), float(got[1] / ref[1])


def test_8bit_first_moment_reaches_the_steady_step():
    # The default m (E4M3, stochastically rounded) and v: within 2% of float32 Adam's mean
    # step under a constant gradient and after a 10x drop in |g|.
    steady, dropped = _steady_steps(adamx.blockwise_8bit(), adamx.blockwise_8bit())
    assert steady == pytest.approx(1.0, abs=0.02) and dropped == pytest.approx(1.0, abs=0.02)
    # Rounded to nearest, m stalls wherever 0.1·|g - m| is below half a code step (2^-5 |m|):
    # it stops at ~0.75 of its target, and after the drop stays ~1.75x too large.
    steady, dropped = _steady_steps(adamx.blockwise_8bit(stochastic=False), None)
    assert steady < 0.8 and dropped > 1.6


# ---------------------------------------------------------------------------
# Narrow float second moments.


def test_narrow_float_second_moment_warns_with_the_fix():
    for dtype, extra in ((jnp.bfloat16, ""), (jnp.float16, r".*2\.4e-4 < \|g\| < 256")):
        with pytest.warns(UserWarning, match=rf"never decay{extra}.*stochastic_float"):
            adamx.adam(1e-3, nu_dtype=dtype)
        with pytest.warns(UserWarning, match=r"never decay"):
            adamx.amsgrad(1e-3, nu_dtype=dtype)
    with pytest.warns(UserWarning, match=r"stochastic_float\(jnp.float16\) as nu_dtype: float16"):
        adamx.adam(1e-3, nu_dtype=adamx.stochastic_float(jnp.float16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adamx.adam(1e-3, mu_dtype=jnp.bfloat16)  # m: optax's own mu_dtype, no warning
        adamx.adam(1e-3, nu_dtype=adamx.stochastic_float(jnp.bfloat16))
        adamx.adam(1e-3, mu_dtype=adamx.stochastic_float(jnp.float16))


def test_bf16_params_with_default_storage_stay_bit_identical_to_optax():
    # m and v as optax forms them (g² in bfloat16 for a bfloat16 v, (1-b1)·g in bfloat16
    # for a float32 m); optax's update is float32 there, adamx's has the gradient's dtype.
    params = {"w": jax.random.normal(jax.random.key(0), (32, 16)).astype(jnp.bfloat16)}
    for kwargs in ({}, {"mu_dtype": jnp.float32}):
        tx, ref = adamx.adam(1e-3, **kwargs), reference(optax.adam(1e-3, **kwargs))
        s, r = tx.init(params), ref.init(params)
        for i in range(4):
            g = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
            u, s = tx.update(g, s, params)
            v, r = ref.update(g, r, params)
            if not kwargs:  # (with a float32 m optax's update is float32, adamx's bfloat16)
                chex.assert_trees_all_equal(u, v)
        chex.assert_trees_all_equal(s[0].mu, r[0].mu)
        chex.assert_trees_all_equal(s[0].nu, r[0].nu)


# ---------------------------------------------------------------------------
# Gradients narrower than the state.


def _adam64(g, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = v = np.zeros_like(g, np.float64)
    out = []
    for t in range(1, steps + 1):
        m = (1 - b1) * g + b1 * m
        v = (1 - b2) * g * g + b2 * v
        out.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return out


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("g", [1e-4, 1e-6, 3e-3])
def test_narrow_gradients_meet_a_float32_state_in_float32(dtype, g):
    # Squared in float16, g = 1e-4 would give v = 1e-8 -> 0 and a step of m/eps = -10.
    params = {"w": jnp.zeros((64,), dtype)}
    grads = {"w": jnp.full((64,), g, dtype)}
    tx = adamx.adam(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    state = tx.init(params)
    g_exact = np.float64(np.asarray(grads["w"][0], np.float32))  # g as the dtype holds it
    want = _adam64(np.full(64, g_exact), 3)
    for t in range(3):
        u, state = tx.update(grads, state, params)
        assert u["w"].dtype == dtype
        np.testing.assert_allclose(np.asarray(u["w"], np.float64), want[t], rtol=2**-7)
    assert state[0].nu["w"].dtype == jnp.float32


# ---------------------------------------------------------------------------
# Python-number and complex leaves.


@pytest.mark.parametrize("alias", ["adam", "adamw"])
def test_python_float_leaves_work_as_in_optax(alias):
    params = {"a": 1.0, "b": jnp.linspace(-1.0, 1.0, 5)}
    grads = {"a": 0.5, "b": jnp.linspace(0.3, -0.2, 5)}
    tx, ref = getattr(adamx, alias)(1e-2), reference(getattr(optax, alias)(1e-2))
    s, r = tx.init(params), ref.init(params)
    for _ in range(3):
        u, s = tx.update(grads, s, params)
        v, r = ref.update(grads, r, params)
        chex.assert_trees_all_close(u, v, rtol=0, atol=0)
    for fmt in (adamx.blockwise_8bit(), adamx.stochastic_float()):
        tx = adamx.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt)
        u, _ = tx.update(grads, tx.init(params), params)
        assert np.isfinite(float(u["a"]))


def test_complex_params_refuse_a_real_mu_dtype():
    params = {"z": jnp.ones(3, jnp.complex64), "x": jnp.ones(3)}
    with pytest.raises(TypeError, match=r"mu_dtype at the parameter at \['z'\].*complex64.*None"):
        adamx.adam(1e-3, mu_dtype=jnp.float32).init(params)
    adamx.adam(1e-3, mu_dtype=jnp.complex64).init(params)  # a complex dtype is fine
