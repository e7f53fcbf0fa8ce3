"""Each stage on its own, against NumPy computed by hand for a few steps."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

G = [np.array([0.5, -2.0, 0.0]), np.array([1.5, 1.0, -0.25]), np.array([-1.0, 0.5, 4.0])]
B1, B2 = 0.8, 0.95


def _run(tx, grads, params=None):
    params = jnp.zeros(3) if params is None else params
    state, outs = tx.init(params), []
    for g in grads:
        out, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        outs.append(out)
    return outs, state


def test_scale_by_moments_emits_the_moving_averages():
    outs, state = _run(adamx.scale_by_moments(B1, B2), G)
    m = v = np.zeros(3)
    for g, out in zip(G, outs, strict=True):
        m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g**2
        assert isinstance(out, adamx.Moments)
        np.testing.assert_allclose(out.mu, m, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out.nu, v, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(out.grad, g.astype(np.float32))
    np.testing.assert_allclose(state.mu, m, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.nu, v, rtol=1e-6, atol=1e-7)


def test_scale_by_moments_complex_uses_squared_modulus():
    g = np.array([3 + 4j, 1j], np.complex64)
    tx = adamx.scale_by_moments(B1, B2)
    out, _ = tx.update(jnp.asarray(g), tx.init(jnp.zeros(2, jnp.complex64)))
    np.testing.assert_allclose(out.nu.real, (1 - B2) * np.array([25.0, 1.0]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out.nu.imag, 0.0)


def test_scale_by_moments_stores_mu_in_mu_dtype_but_emits_full_precision():
    tx = adamx.scale_by_moments(B1, B2, mu_dtype=jnp.bfloat16)
    state = tx.init(jnp.zeros(3))
    out, state = tx.update(jnp.asarray([1 / 3, 1.0, 2.0]), state)
    assert state.mu.dtype == jnp.bfloat16 and state.nu.dtype == jnp.float32
    assert out.mu.dtype == jnp.float32  # downstream stages see the unrounded moment
    np.testing.assert_allclose(out.mu, (1 - B1) * np.array([1 / 3, 1.0, 2.0]), rtol=1e-6, atol=1e-7)


def _moments_then(*stages):
    return optax.chain(adamx.scale_by_moments(B1, B2), *stages)


def test_bias_correct_divides_by_one_minus_beta_power():
    outs, state = _run(_moments_then(adamx.bias_correct(B1, B2)), G)
    m = v = np.zeros(3)
    for t, (g, out) in enumerate(zip(G, outs, strict=True), start=1):
        m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g**2
        np.testing.assert_allclose(out.mu, m / (1 - B1**t), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out.nu, v / (1 - B2**t), rtol=1e-6, atol=1e-7)
    assert int(state[1].count) == len(G)


def test_bias_correct_first_step_recovers_the_gradient():
    # Without correction the first m is (1 - b1)·g: 10x too small for b1 = 0.9.
    tx = optax.chain(adamx.scale_by_moments(0.9, 0.999), adamx.bias_correct(0.9, 0.999))
    outs, _ = _run(tx, G[:1])
    np.testing.assert_allclose(outs[0].mu, G[0], rtol=1e-6, atol=1e-7)
    # (1 - 0.999) and 1 - 0.999^1 each lose three digits in float32: 1e-4 relative.
    np.testing.assert_allclose(outs[0].nu, G[0] ** 2, rtol=1e-4)


def test_bias_correct_nesterov_looks_one_step_ahead():
    outs, _ = _run(_moments_then(adamx.bias_correct(B1, B2, nesterov=True)), G)
    m = np.zeros(3)
    for t, (g, out) in enumerate(zip(G, outs, strict=True), start=1):
        m = B1 * m + (1 - B1) * g
        expected = B1 * m / (1 - B1 ** (t + 1)) + (1 - B1) * g / (1 - B1**t)
        np.testing.assert_allclose(out.mu, expected, rtol=1e-6, atol=1e-7)


def test_bias_correct_count_saturates():
    tx = adamx.bias_correct()
    state = adamx.BiasCorrectState(count=jnp.asarray(jnp.iinfo(jnp.int32).max, jnp.int32))
    moments = adamx.Moments(jnp.ones(2), jnp.ones(2), jnp.ones(2))
    _, state = tx.update({"x": moments}, state)
    assert int(state.count) == jnp.iinfo(jnp.int32).max  # no wrap to a negative step


@pytest.mark.parametrize("eps, eps_root", [(1e-8, 0.0), (0.1, 0.0), (1e-8, 0.5)])
def test_scale_by_rsqrt(eps, eps_root):
    tx = _moments_then(adamx.bias_correct(B1, B2), adamx.scale_by_rsqrt(eps, eps_root))
    outs, _ = _run(tx, G)
    m = v = np.zeros(3)
    for t, (g, out) in enumerate(zip(G, outs, strict=True), start=1):
        m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g**2
        m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
        np.testing.assert_allclose(
            out, m_hat / (np.sqrt(v_hat + eps_root) + eps), rtol=2e-6, atol=1e-7
        )


def test_scale_by_rsqrt_is_invariant_to_the_scale_of_the_loss():
    tx = _moments_then(adamx.bias_correct(B1, B2), adamx.scale_by_rsqrt(eps=0.0))
    small, _ = _run(tx, G)
    large, _ = _run(tx, [1000.0 * g for g in G])
    np.testing.assert_allclose(small[-1], large[-1], rtol=1e-5)


def test_scale_by_rsqrt_returns_the_gradient_dtype():
    # float32 moments of bfloat16 gradients: the update still comes back in bfloat16.
    tx = optax.chain(
        adamx.scale_by_moments(mu_dtype=jnp.float32, nu_dtype=jnp.float32),
        adamx.bias_correct(),
        adamx.scale_by_rsqrt(),
    )
    params = jnp.zeros(3, jnp.bfloat16)
    out, state = tx.update(jnp.ones(3, jnp.bfloat16), tx.init(params), params)
    assert out.dtype == jnp.bfloat16 and state[0].mu.dtype == jnp.float32


def test_add_decoupled_weight_decay_adds_lambda_theta():
    theta = jnp.asarray([1.0, -2.0, 3.0])
    tx = adamx.add_decoupled_weight_decay(0.1)
    u, _ = tx.update(jnp.asarray([0.5, 0.5, 0.5]), tx.init(theta), theta)
    np.testing.assert_allclose(u, [0.6, 0.3, 0.8], rtol=1e-6, atol=1e-7)


def test_add_decoupled_weight_decay_schedule_and_mask():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}

    def schedule(count):
        return 0.5 * (count + 1).astype(jnp.float32)

    tx = adamx.add_decoupled_weight_decay(schedule, mask={"w": True, "b": False})
    state = tx.init(params)
    zeros = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    for lam in (0.5, 1.0, 1.5):  # λ_t follows the schedule at t = 0, 1, 2
        u, state = tx.update(zeros, state, params)
        np.testing.assert_allclose(u["w"], lam)
        np.testing.assert_array_equal(u["b"], 0.0)


def test_scale_by_lr_constant_and_schedule():
    u = jnp.asarray([1.0, -2.0])
    tx = adamx.scale_by_lr(0.1)
    assert tx.init(u) == optax.EmptyState()
    np.testing.assert_allclose(tx.update(u, tx.init(u))[0], [-0.1, 0.2], rtol=1e-6, atol=1e-7)

    tx = adamx.scale_by_lr(lambda count: 1.0 / (count + 1).astype(jnp.float32))
    state = tx.init(u)
    for t in range(3):
        out, state = tx.update(u, state)
        np.testing.assert_allclose(out, -u / (t + 1), rtol=1e-6, atol=1e-7)


def test_adamw_decay_is_decoupled_from_the_gradient_scale():
    """AdamW shrinks every weight by α·λ·θ; an L2 term in the gradient would be rescaled."""
    theta = jnp.asarray([10.0, 0.1])
    grads = jnp.asarray([100.0, 1e-3])  # very different gradient scales
    decay_only = optax.chain(adamx.add_decoupled_weight_decay(0.1), adamx.scale_by_lr(0.01))
    full = adamx.adamw(0.01, weight_decay=0.1)
    adam = adamx.adam(0.01)
    u_full, _ = full.update(grads, full.init(theta), theta)
    u_adam, _ = adam.update(grads, adam.init(theta), theta)
    u_decay, _ = decay_only.update(jnp.zeros(2), decay_only.init(theta), theta)
    np.testing.assert_allclose(u_full - u_adam, u_decay, rtol=1e-5)
    np.testing.assert_allclose(u_decay, -0.01 * 0.1 * theta, rtol=1e-6, atol=1e-7)
