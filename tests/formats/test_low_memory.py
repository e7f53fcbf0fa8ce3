"""Low-memory moment formats inside Adam: accuracy, stability, composition, memory.

References: optax.adam (fp32), a NumPy Adam that rounds its moments to bfloat16
after each step (ml_dtypes), hand-counted bytes.
"""

import warnings

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from _promotion import reference, strict

import adamx

M8 = adamx.blockwise_8bit(signed=True)
V8 = adamx.blockwise_8bit(signed=False)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w": jax.random.normal(k1, (32, 256)) * 0.1,  # 8192 elements: quantized
        "b": jax.random.normal(k2, (256,)) * 0.1,  # small: float32
    }


def _loss(params, x):
    return jnp.mean((jnp.tanh(x @ params["w"].T + params["b"][None, :32]) - 0.5) ** 2) + 1e-3 * (
        jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2)
    )


def _train(tx, params, steps=60):
    xs = jax.random.normal(jax.random.key(1), (steps, 16, 256))

    def step(carry, x):
        params, state = carry
        loss, grads = jax.value_and_grad(_loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.jit(lambda c: jax.lax.scan(step, c, xs))(
        (params, tx.init(params))
    )
    return params, state, losses


@pytest.mark.parametrize(
    ("stochastic_m", "max_off", "loss_rtol"),
    [
        # Nearest: E4M3 stores m within half a step, 2^-4 of |m| (v: E4M4, stochastically
        # rounded): after 60 steps no parameter is off by more than 8% of the distance it moved.
        (False, 0.08, 0.01),
        # The default, stochastic: within one step, 2^-3 of |m|, but unbiased (see
        # test_formats_numerics for the steady state, where nearest rounding stalls): 15%.
        (None, 0.15, 0.02),
    ],
)
def test_8bit_adam_follows_fp32_adam(stochastic_m, max_off, loss_rtol):
    p0 = _params()
    ref, _, ref_loss = _train(reference(optax.adam(1e-2)), p0)
    m8 = adamx.blockwise_8bit(signed=True, stochastic=stochastic_m)
    got, state, loss = _train(adamx.adam(1e-2, mu_dtype=m8, nu_dtype=V8), p0)
    for name in p0:
        moved = float(jnp.max(jnp.abs(ref[name] - p0[name])))
        diff = float(jnp.max(jnp.abs(got[name] - ref[name])))
        assert moved > 0.1 and diff < max_off * moved, (name, moved, diff)
    np.testing.assert_allclose(loss, ref_loss, rtol=loss_rtol)
    mu, nu = state[0].mu, state[0].nu
    assert isinstance(mu, adamx.QuantizedMoment) and isinstance(nu, adamx.QuantizedMoment)
    assert mu.codes["w"].dtype == jnp.uint8 and nu.codes["w"].dtype == jnp.uint8
    assert mu.scales["w"].shape == nu.scales["w"].shape == (32, 1)  # one 256-block per row
    assert mu.codes["b"].dtype == jnp.float32 and nu.codes["b"].dtype == jnp.float32
    assert mu.scales["b"] is None and nu.scales["b"] is None


def _numpy_adam_bf16_moments(params, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam in float32 NumPy, storing m and v rounded to bfloat16 after each step."""
    bf16 = ml_dtypes.bfloat16
    p = np.asarray(params, np.float32)
    m = np.zeros_like(p).astype(bf16)
    v = np.zeros_like(p).astype(bf16)
    for t, g in enumerate(grads_seq, start=1):
        m32 = np.float32(1 - b1) * g + np.float32(b1) * m.astype(np.float32)
        v32 = np.float32(1 - b2) * g * g + np.float32(b2) * v.astype(np.float32)
        m_hat = m32 / np.float32(1 - b1**t)
        v_hat = v32 / np.float32(1 - b2**t)
        p = p - np.float32(lr) * m_hat / (np.sqrt(v_hat) + np.float32(eps))
        m, v = m32.astype(bf16), v32.astype(bf16)
    return p, m, v


def test_bf16_moments_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(512).astype(np.float32)
    grads = [rng.standard_normal(512).astype(np.float32) * 10.0**k for k in (0, -1, -2, 0, 1)]
    mu_bf16 = adamx.FloatFormat(jnp.bfloat16, upcast=True)  # nu_dtype=bf16 upcasts by default
    with pytest.warns(UserWarning, match=r"nu_dtype=bfloat16: .* never decay"):
        tx = adamx.adam(1e-2, mu_dtype=mu_bf16, nu_dtype=jnp.bfloat16)
    p, state = jnp.asarray(p0), tx.init(jnp.asarray(p0))
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
    ref_p, ref_m, ref_v = _numpy_adam_bf16_moments(p0, grads, 1e-2)
    assert state[0].mu.dtype == jnp.bfloat16 and state[0].nu.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(state[0].mu), ref_m)
    np.testing.assert_array_equal(np.asarray(state[0].nu), ref_v)
    np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)  # bias correction's op order
    assert adamx.state_nbytes(state) == 512 * 2 * 2 + 4  # bf16 m, v and the int32 count


def test_bf16_second_moment_decays_only_with_stochastic_rounding():
    # v_1 = (1 - b2) g², then g = 0: v_t = (1 - b2) b2^(t-1) g². Each step's decay,
    # 0.001 v, is below half a bfloat16 ulp (2^-9 v): rounded to nearest, v is stuck;
    # stochastically rounded, it decays in expectation.
    t = 400
    grads = jnp.zeros((t, 4096)).at[0].set(1.0)

    def final_nu(nu_dtype):
        with warnings.catch_warnings():  # nu_dtype=jnp.bfloat16 warns that v cannot decay
            warnings.simplefilter("ignore")
            tx = adamx.scale_by_moments(b2=0.999, nu_dtype=nu_dtype)
        state = jax.lax.fori_loop(0, t, lambda i, s: tx.update(grads[i], s)[1], tx.init(grads[0]))
        nu = state.nu.value if isinstance(state.nu, adamx.StochasticFloatMoment) else state.nu
        assert nu.dtype == jnp.bfloat16
        return float(jnp.mean(nu.astype(jnp.float32)))

    expected = 0.001 * 0.999 ** (t - 1)
    assert final_nu(adamx.stochastic_float(jnp.bfloat16, seed=1)) == pytest.approx(
        expected, rel=0.01
    )
    assert final_nu(jnp.bfloat16) == pytest.approx(0.001, rel=0.01)  # stuck at v_1


def test_8bit_second_moment_decays_only_with_stochastic_rounding():
    # As for bfloat16: after v_1 = (1 - b2) g² and g = 0, v_t = (1 - b2) b2^(t-1) g².
    # Each step's decay, 0.1% of v, is below half a step of the E4M4 map (1/32 of v
    # at 1.0): rounded to nearest, v never moves; stochastically rounded, it decays.
    t = 400
    grads = jnp.zeros((t, 8192)).at[0].set(1.0)

    def final_nu(stochastic):
        fmt = adamx.blockwise_8bit(signed=False, stochastic=stochastic)
        tx = adamx.scale_by_moments(b2=0.999, nu_dtype=fmt)
        state = jax.lax.fori_loop(0, t, lambda i, s: tx.update(grads[i], s)[1], tx.init(grads[0]))
        return float(jnp.mean(fmt.decode((state.nu.codes, state.nu.scales), grads[0])))

    expected = 0.001 * 0.999 ** (t - 1)
    assert final_nu(None) == pytest.approx(expected, rel=0.01)  # the default for v
    # v_1 = 0.001 = 1.024 * 2^-10 rounds to nearest 2^-10 (E4M4), and v stays there.
    assert final_nu(False) == 2.0**-10


def test_8bit_stochastic_rounding_is_unbiased_and_reproducible():
    # Every element sits 30% of a step above a map value: nearest rounding always drops
    # that, stochastic rounding goes up with probability 0.3 (the mean over 8192 x 20
    # encodes is exact to a few 1e-4 of a step).
    step = 2.0**-4  # E4M4 spacing in [1, 2): 2^-5 of the block scale s = 2
    x = jnp.full((8, 1024), 1.5 + 0.3 * step).at[:, ::256].set(1.9)  # s = 2
    fmt = adamx.blockwise_8bit(signed=False, min_size=0, seed=3)
    stored, total = fmt.init(x), 0.0
    for i in range(20):
        stored = fmt.encode(x, stored, jax.random.fold_in(jax.random.key(3), i))
        back = np.asarray(fmt.decode(stored, x))
        assert set(np.unique(back[:, 1:256])) == {1.5, 1.5 + step}
        total = total + back
    mean_up = (total / 20)[:, 1:256].mean() - 1.5
    n = 20 * 8 * 255
    assert abs(mean_up - 0.3 * step) < 4 * step * np.sqrt(0.21 / n)  # 4 sigma
    key = jax.random.key(5)
    again = fmt.encode(x, fmt.init(x), key)
    chex.assert_trees_all_equal(again, fmt.encode(x, fmt.init(x), key))  # same key, same codes
    nearest = adamx.blockwise_8bit(signed=False, min_size=0, stochastic=False)
    back = nearest.decode(nearest.encode(x, nearest.init(x), key), x)
    np.testing.assert_array_equal(back[:, 1:256], 1.5)


def test_stochastic_float_format_is_reproducible_and_validated():
    fmt = adamx.stochastic_float(jnp.float16, seed=3)
    x = jnp.linspace(0, 1, 5000) * (1 + 2.0**-12)
    a = fmt.encode(x, fmt.init(x), jax.random.key(3))
    b = fmt.encode(x, fmt.init(x), jax.random.key(3))
    chex.assert_trees_all_equal(a, b)
    assert a[0].dtype == jnp.float16
    np.testing.assert_allclose(np.mean(fmt.decode(a, x)), np.mean(x), rtol=1e-4)
    with pytest.raises(
        ValueError, match=r"narrower than float32 \(bfloat16 or float16\), got float32"
    ):
        adamx.stochastic_float(jnp.float32)
    with pytest.raises(TypeError, match=r"seed must be a Python int"):
        adamx.stochastic_float(jnp.bfloat16, seed=1.5)


FORMATS = {
    "8bit": dict(mu_dtype=M8, nu_dtype=V8),
    "8bit_sqrt_linear": dict(
        mu_dtype=M8, nu_dtype=adamx.blockwise_8bit(False, qmap="linear", sqrt=True)
    ),
    "bf16": dict(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    "bf16_stochastic": dict(
        mu_dtype=adamx.stochastic_float(seed=0), nu_dtype=adamx.stochastic_float(seed=1)
    ),
}


@pytest.mark.parametrize("formats", FORMATS.values(), ids=FORMATS.keys())
def test_state_is_stable_across_steps_under_cond_and_compiles_once(formats):
    chex.clear_trace_counter()
    with warnings.catch_warnings():  # nu_dtype=jnp.bfloat16 warns that v cannot decay
        warnings.simplefilter("ignore")
        tx = adamx.adamw(1e-3, **formats)
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    state0 = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, pred):
        new = tx.update(grads, state, params)[1]
        return jax.lax.cond(pred, lambda: new, lambda: state)

    state = state0
    for pred in (True, False, True):
        state = step(state, pred)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
    assert jax.tree.structure(state) == jax.tree.structure(state0)


def test_works_under_inject_hyperparams_multisteps_and_masks():
    params = _params()
    p_ref, _, _ = _train(reference(optax.adam(1e-2)), params, steps=20)

    injected = optax.inject_hyperparams(adamx.adam)(learning_rate=1e-2, mu_dtype=M8, nu_dtype=V8)
    p_inj, state, _ = _train(injected, params, steps=20)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    np.testing.assert_allclose(p_inj["w"], p_ref["w"], atol=0.02)

    # MultiSteps(k=2): 20 micro-batches make 10 optimizer steps. MultiSteps's own code is not
    # strict-clean: it runs under the standard promotion rules, adamx inside it strict (_promotion).
    inner = strict(adamx.adam(1e-2, mu_dtype=M8, nu_dtype=V8))
    multi = reference(optax.MultiSteps(inner, every_k_schedule=2))
    p_multi, state, _ = _train(multi, params, steps=20)
    assert int(state.gradient_step) == 10
    assert state.inner_opt_state[0].mu.codes["w"].dtype == jnp.uint8
    assert not np.allclose(p_multi["w"], params["w"])

    # Masked: only "w" is optimized (8-bit); "b" is frozen by a second, inverted mask.
    def frozen_b(inner):
        return optax.chain(
            optax.masked(inner, {"w": True, "b": False}),
            optax.masked(optax.set_to_zero(), {"w": False, "b": True}),
        )

    p_mask, state, _ = _train(frozen_b(adamx.adam(1e-2, mu_dtype=M8, nu_dtype=V8)), params, 20)
    p_mask_ref, _, _ = _train(frozen_b(reference(optax.adam(1e-2))), params, 20)
    np.testing.assert_array_equal(p_mask["b"], params["b"])
    np.testing.assert_allclose(p_mask["w"], p_mask_ref["w"], atol=0.02)
    assert isinstance(state[0].inner_state[0].mu.codes["b"], optax.MaskedNode)
    assert state[0].inner_state[0].mu.codes["w"].dtype == jnp.uint8


def test_a_nan_gradient_spoils_only_its_own_element():
    params = {"w": jnp.zeros((16, 512))}
    g = jax.random.normal(jax.random.key(3), (16, 512))
    g = g.at[2, 5].set(0.0)
    bad = g.at[2, 5].set(jnp.nan)
    tx = adamx.adam(1e-3, mu_dtype=M8, nu_dtype=V8)
    state = tx.init(params)
    for _ in range(2):  # the NaN stays in the state for the second step
        u_bad, state = tx.update({"w": bad}, state, params)
    state = tx.init(params)
    for _ in range(2):
        u_ok, state = tx.update({"w": g}, state, params)
    nan = np.isnan(np.asarray(u_bad["w"]))
    assert nan[2, 5] and nan.sum() == 1
    keep = ~nan
    np.testing.assert_array_equal(np.asarray(u_bad["w"])[keep], np.asarray(u_ok["w"])[keep])


def test_state_bytes_per_parameter():
    big = {"w": jnp.zeros((1024, 1024))}
    n = 1024 * 1024
    assert adamx.state_nbytes(adamx.adam(1e-3).init(big)) == 8 * n + 4
    with pytest.warns(UserWarning, match=r"never decay"):
        bf16 = adamx.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    assert adamx.state_nbytes(bf16.init(big)) == 4 * n + 4
    eight = adamx.state_nbytes(adamx.adam(1e-3, mu_dtype=M8, nu_dtype=V8).init(big))
    # codes + one float32 scale per 256 elements, an 8-byte rounding key and a 1-byte
    # configuration tag per moment, the int32 count
    assert eight == 2 * (n + 4 * n // 256) + 2 * 8 + 2 + 4
    assert eight / n <= 2.1


def test_unsupported_combinations_fail_early():
    with pytest.raises(ValueError, match=r"mu_dtype=blockwise_8bit\(signed=False\) would clip"):
        adamx.adam(1e-3, mu_dtype=V8)
    with pytest.raises(TypeError, match=r"parameter at \['n'\] has dtype int32"):
        adamx.adam(1e-3, mu_dtype=M8, nu_dtype=V8).init({"n": jnp.zeros((64, 64), jnp.int32)})
    with pytest.raises(TypeError, match=r"nu_dtype must be a floating-point dtype"):
        adamx.scale_by_moments(nu_dtype=jnp.int8)
