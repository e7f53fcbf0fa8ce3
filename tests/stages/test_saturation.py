"""Step counts saturate at 2**31 - 1: every counted stage stays finite and exact there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx

SATURATED = 2**31 - 1


def _saturate(state):
    """The state after "infinitely many" steps: counts at the int32 maximum, the NAdam momentum
    product underflowed to 0 (as it does after a few thousand steps)."""

    def leaf(path, x):
        name = getattr(path[-1], "name", None)
        if name == "count":
            return jnp.full_like(x, SATURATED)
        if name == "mu_product":
            return jnp.zeros_like(x)
        return x

    return jax.tree_util.tree_map_with_path(leaf, state)


def test_torch_nadam_schedule_at_the_saturated_count_is_the_limit_of_the_formula():
    """At t -> inf: μ_t = μ_{t+1} = β1, Π μ = 0 and 1 - β2^t = 1, so
    m̂ = β1·m_t + (1 - β1)·g_t and the update is -α·m̂ / (√v_t + ε) (it was NaN: t + 1 wrapped)."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
    tx = adamx.nadam(lr, b1, b2, eps, momentum_decay=4e-3)
    params = jnp.asarray([0.5, -1.0, 2.0], jnp.float32)
    g = np.asarray([0.3, -0.2, 1.5], np.float32)
    state = _saturate(tx.init(params))
    updates, new_state = jax.jit(tx.update)(jnp.asarray(g), state, params)
    m = (1 - b1) * g.astype(np.float64)
    v = (1 - b2) * g.astype(np.float64) ** 2
    m_hat = b1 * m + (1 - b1) * g
    expected = -lr * m_hat / (np.sqrt(v) + eps)
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-5)
    counts = [x for p, x in jax.tree_util.tree_leaves_with_path(new_state) if "count" in str(p)]
    assert counts and all(int(c) == SATURATED for c in counts)


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamx.adam(1e-3),
        lambda: adamx.nadam(1e-3),
        lambda: adamx.radam(1e-3),
        lambda: adamx.amsgrad(1e-3, max_of="raw"),
        lambda: adamx.adam(1e-3, epsilon_hat=True),
    ],
    ids=["adam", "nadam", "radam", "amsgrad_raw", "epsilon_hat"],
)
def test_counted_stages_stay_finite_at_the_saturated_count(make):
    tx = make()
    params = jnp.asarray([0.5, -1.0, 2.0], jnp.float32)
    state = _saturate(tx.init(params))
    updates, _ = jax.jit(tx.update)(jnp.asarray([0.3, -0.2, 1.5]), state, params)
    assert np.all(np.isfinite(np.asarray(updates)))
