"""bfloat16/float16 parameters without a float32 master copy: stochastic rounding and Kahan.

References: the neighbouring low-precision numbers from NumPy (ml_dtypes) and
float64 sums; plain round-to-nearest (``optax.apply_updates`` alone) as the baseline.
"""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from _promotion import reference, reference_schedule, standard, strict

import adamx

LOW = [(jnp.bfloat16, ml_dtypes.bfloat16), (jnp.float16, np.float16)]


def _ulp_above(x: float, np_dtype) -> float:
    """The gap between x (a number of np_dtype) and the next one up, from NumPy."""
    one = np.array(x, np_dtype)
    return float(np.nextafter(one, np.array(np.inf, np_dtype)).astype(np.float64) - float(one))


@pytest.mark.parametrize(("dtype", "np_dtype"), LOW)
def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour(dtype, np_dtype):
    n = 100_000
    ulp = _ulp_above(1.0, np_dtype)
    u = 0.3 * ulp  # less than half an ulp: round-to-nearest would drop it
    params = {"w": jnp.ones(n, dtype)}
    updates = {"w": jnp.full(n, u, jnp.float32)}
    tx = adamx.stochastic_rounding(seed=0)
    out, _ = tx.update(updates, tx.init(params), params)
    with standard():  # optax.apply_updates adds float32 updates to the low-precision params
        new = np.asarray(optax.apply_updates(params, out)["w"]).astype(np.float64)
    assert set(np.unique(new)) == {1.0, 1.0 + ulp}
    frac_up = np.mean(new == 1.0 + ulp)
    assert abs(frac_up - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)  # 4 sigma
    np.testing.assert_allclose(new.mean(), 1.0 + u, atol=4 * ulp * np.sqrt(0.21 / n))
    # Round to nearest loses the update entirely.
    assert np.all(
        np.asarray(optax.apply_updates(params, {"w": updates["w"].astype(dtype)})["w"]) == 1
    )


@pytest.mark.parametrize(("dtype", "np_dtype"), LOW)
def test_stochastic_rounding_mean_over_steps_matches_the_exact_update(dtype, np_dtype):
    # One parameter, many steps with independent keys: E[θ_t] = θ_0 + t u.
    steps, u = 200, 0.01  # θ crosses several binades of spacing (0.0078 for bf16 near 1)
    params = {"w": jnp.ones(4096, dtype)}
    tx = adamx.stochastic_rounding(seed=7)

    def body(_, carry):
        p, s = carry
        out, s = tx.update({"w": jnp.full(4096, u, dtype)}, s, p)
        return optax.apply_updates(p, out), s

    final = jax.jit(lambda: jax.lax.fori_loop(0, steps, body, (params, tx.init(params))))()[0]
    exact = 1.0 + steps * float(np.array(u, np_dtype))
    # Each step adds variance <= ulp²/4 (ulp <= 2^-6 below 4), so 4 sigma of the mean is:
    four_sigma = 4 * 2.0**-6 * np.sqrt(steps / 4 / 4096)
    np.testing.assert_allclose(np.mean(np.asarray(final["w"], np.float64)), exact, atol=four_sigma)
    # Round to nearest is biased here: for bf16 above 2 it rounds every 0.01 up to 2^-6.
    if dtype == jnp.bfloat16:
        p = jnp.ones((), dtype)
        for _ in range(steps):
            p = optax.apply_updates(p, jnp.asarray(u, dtype))
        assert float(p) - exact > 10 * four_sigma


def test_stochastic_rounding_is_deterministic_given_the_seed():
    params = {"w": jnp.ones(1000, jnp.bfloat16)}
    updates = {"w": jnp.full(1000, 1e-3, jnp.bfloat16)}

    def run(seed, steps=2):
        tx = adamx.stochastic_rounding(seed)
        state = tx.init(params)
        outs = []
        for _ in range(steps):
            out, state = tx.update(updates, state, params)
            outs.append(np.asarray(out["w"], np.float32))
        return outs

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1])  # the key advances every step
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(("dtype", "np_dtype"), LOW)
def test_kahan_recovers_updates_below_half_an_ulp(dtype, np_dtype):
    steps = 64
    ulp = _ulp_above(1.0, np_dtype)
    u = float(np.array(0.25 * ulp, np_dtype))  # a quarter ulp: lost by round-to-nearest
    params = {"w": jnp.ones(8, dtype)}
    updates = {"w": jnp.full(8, u, dtype)}
    tx = adamx.kahan_summation()
    p, state, plain = params, tx.init(params), params
    for _ in range(steps):
        out, state = tx.update(updates, state, p)
        p = optax.apply_updates(p, out)
        plain = optax.apply_updates(plain, updates)
    exact = 1.0 + steps * u  # 1 + 16 ulp, in float64
    assert np.all(np.asarray(plain["w"]) == 1.0)
    got = np.asarray(p["w"], np.float64)
    np.testing.assert_allclose(got, exact, atol=ulp)
    comp = np.asarray(state.compensation["w"], np.float64)
    np.testing.assert_allclose(got + comp, exact, atol=ulp / 64)  # θ + c carries the exact sum
    assert state.compensation["w"].dtype == dtype


def test_wide_leaves_pass_through_and_state_holds_no_copy_of_them():
    params = {"f32": jnp.ones(5), "bf16": jnp.ones(5, jnp.bfloat16)}
    updates = {"f32": jnp.full(5, 1e-9), "bf16": jnp.full(5, 1e-3, jnp.bfloat16)}
    for tx in (adamx.stochastic_rounding(), adamx.kahan_summation()):
        out, state = tx.update(updates, tx.init(params), params)
        assert out["f32"] is updates["f32"]
        assert out["bf16"].dtype == jnp.bfloat16
    assert isinstance(state.compensation["f32"], optax.MaskedNode)
    assert adamx.state_nbytes(state) == 5 * 2  # only the bf16 leaf's compensation


def _bf16_regression(tx_tail, steps=1500):
    """Fit y = X w* with bf16 weights and a decaying learning rate; final fp32 loss."""
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (256, 64))
    w_star = 1.0 + jax.random.uniform(kw, (64,))  # O(1) weights: bf16 ulp ~ 0.008
    y = x @ w_star
    schedule = reference_schedule(optax.cosine_decay_schedule(3e-3, steps))  # see _promotion
    tx = optax.chain(adamx.adam(schedule, mu_dtype=jnp.float32, nu_dtype=jnp.float32), *tx_tail)
    params = {"w": jnp.zeros(64, jnp.bfloat16)}

    def loss(p):
        return jnp.mean((x @ p["w"].astype(jnp.float32) - y) ** 2)

    def body(_, carry):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, _ = jax.jit(lambda: jax.lax.fori_loop(0, steps, body, (params, tx.init(params))))()
    assert p["w"].dtype == jnp.bfloat16
    return float(loss(p))


def test_training_bf16_params_beats_round_to_nearest():
    nearest = _bf16_regression(())
    stochastic = _bf16_regression((adamx.stochastic_rounding(seed=0),))
    kahan = _bf16_regression((adamx.kahan_summation(),))
    assert stochastic < nearest / 2 and kahan < nearest / 2, (nearest, stochastic, kahan)


def test_no_retrace_and_state_stable_under_cond_and_multisteps():
    chex.clear_trace_counter()
    params = {"w": jnp.ones((4, 4), jnp.bfloat16), "f": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    for tail in (adamx.stochastic_rounding(1), adamx.kahan_summation()):
        # optax.adamw and MultiSteps's own code under the standard promotion rules (_promotion).
        inner = optax.chain(reference(optax.adamw(1e-3)), strict(tail))
        tx = reference(optax.MultiSteps(inner, every_k_schedule=2))
        state0 = tx.init(params)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(state, pred, tx=tx):
            new = tx.update(grads, state, params)[1]
            return jax.lax.cond(pred, lambda: new, lambda: state)

        state = state0
        for pred in (True, True, False, True):
            state = step(state, pred)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
        chex.clear_trace_counter()


def test_errors_name_the_problem():
    tx = adamx.stochastic_rounding()
    with pytest.raises(
        TypeError, match=r"stochastic_rounding: the parameter at \['n'\] has dtype int32"
    ):
        tx.init({"n": jnp.zeros(3, jnp.int32)})
    with pytest.raises(
        TypeError, match=r"kahan_summation: the parameter at \['n'\] has dtype int8"
    ):
        adamx.kahan_summation().init({"n": jnp.zeros(3, jnp.int8)})
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"stochastic_rounding needs the current parameters"):
        tx.update(params, tx.init(params))
    moments = adamx.scale_by_moments().update(params, adamx.scale_by_moments().init(params))[0]
    with pytest.raises(TypeError, match=r"kahan_summation takes gradients/updates"):
        adamx.kahan_summation().update(moments, adamx.kahan_summation().init(params), params)
    with pytest.raises(TypeError, match=r"seed must be a Python int \(the PRNG seed\), got 0.5"):
        adamx.stochastic_rounding(seed=0.5)
