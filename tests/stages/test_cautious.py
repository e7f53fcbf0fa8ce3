"""``adamx.cautious``: the mask and both rescales on hand-made cases (closed form), the state,
refusals (packed buckets, sparse_rows, a moment tree), jit (no retrace) and dtypes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _streams import make_mixed_params, make_params

import adamx


def direction(d):
    """A transformation that returns the fixed direction ``d``, whatever gradient it gets."""
    return optax.stateless(lambda updates, params: d)


def apply(tx, grads):
    """One update of a fresh ``tx``: (updates, state)."""
    return tx.update(grads, tx.init(grads))


G = jnp.array([1.0, 1.0, -1.0, 2.0, 0.0, -3.0])
U = jnp.array([2.0, -1.0, 3.0, 0.5, 4.0, -1.5])
# u ⊙ g = [2, -1, -3, 1, 0, 4.5]: φ = [1, 0, 0, 1, 0, 1] (0 is not > 0), Σφ = 3, n = 6
PHI = np.array([1.0, 0, 0, 1, 0, 1])


@pytest.mark.parametrize(("rescale", "scale"), [("count", 6 / (3 + 1)), ("mean", 1 / 0.5)])
def test_mask_and_rescale_closed_form(rescale, scale):
    tx = adamx.cautious(direction(U), rescale=rescale)
    u, state = tx.update(G, tx.init(G))
    np.testing.assert_array_equal(u, np.asarray(U) * PHI * np.float32(scale))
    assert float(state.masked_fraction) == 0.5
    assert state.masked_fraction.dtype == jnp.float32


def test_each_leaf_has_its_own_scale_and_the_fraction_counts_every_element():
    grads = {"a": G, "b": jnp.ones(2)}
    tx = adamx.cautious(direction({"a": U, "b": jnp.array([1.0, -1.0])}))
    u, state = tx.update(grads, tx.init(grads))
    np.testing.assert_array_equal(u["a"], np.asarray(U) * PHI * 1.5)
    np.testing.assert_array_equal(u["b"], [2 / 2, 0.0])  # n / (Σφ + 1) = 2 / 2
    assert float(state.masked_fraction) == pytest.approx(4 / 8)


def test_mean_rescale_is_floored_at_a_thousandth():
    """One element of 4000 kept: mean φ = 2.5e-4 is floored to 1e-3, so s = 1000."""
    g = jnp.ones(4000)
    u = jnp.full(4000, -1.0).at[7].set(2.0)
    out = apply(adamx.cautious(direction(u), rescale="mean"), g)[0]
    expected = np.zeros(4000, np.float32)
    expected[7] = 2.0 * 1000
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    out = apply(adamx.cautious(direction(u), rescale="count"), g)[0]
    assert float(out[7]) == 2.0 * 4000 / 2


def test_all_agreeing_count_rescale_is_n_over_n_plus_one():
    g = jnp.arange(1.0, 5.0)
    tx = adamx.cautious(optax.identity())
    u, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(u, g * 4 / 5, rtol=1e-7)
    assert float(state.masked_fraction) == 0.0
    assert float(apply(adamx.cautious(optax.identity(), rescale="mean"), g)[0][3]) == 4.0


def test_a_negated_direction_is_masked_entirely():
    """Wrapping a chain that already negates (scale_by_lr) masks everything: the docstring's
    placement rule, visible in masked_fraction."""
    g = jnp.array([1.0, -2.0, 3.0])
    tx = adamx.cautious(adamx.scale_by_lr(0.1))
    u, state = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(u, jnp.zeros(3))
    assert float(state.masked_fraction) == 1.0


def test_complex_elements_agree_by_their_real_inner_product():
    """φ = 1[Re(conj(u) g) > 0]: each complex element as a vector of R²."""
    g = jnp.array([1 - 0.5j, -1 + 0.5j, 1j], jnp.complex64)
    u = jnp.array([1 + 1j, 1 + 1j, 1 + 1j], jnp.complex64)  # Re(ū g) = 0.5, -0.5, 1
    out, state = apply(adamx.cautious(direction(u)), g)
    assert out.dtype == jnp.complex64
    np.testing.assert_array_equal(out, np.array([1 + 1j, 0, 1 + 1j]) * 3 / 3)
    assert float(state.masked_fraction) == pytest.approx(1 / 3)


def test_nan_in_the_direction_stays_nan():
    """u is multiplied by φ·s (as pytorch_optimizer does), not selected: a NaN is not hidden."""
    g = jnp.array([1.0, 1.0])
    out = apply(adamx.cautious(direction(jnp.array([jnp.nan, 1.0]))), g)[0]
    assert np.isnan(out[0]) and float(out[1]) == 2 / 2


def test_scalar_and_empty_leaves():
    grads = {"s": jnp.array(2.0), "e": jnp.zeros((0, 3))}
    tx = adamx.cautious(optax.identity())
    u, state = tx.update(grads, tx.init(grads))
    assert float(u["s"]) == 1.0  # 1 / (1 + 1) * 2
    assert u["e"].shape == (0, 3)
    assert float(state.masked_fraction) == 0.0
    empty = {"e": jnp.zeros((0,))}
    assert float(tx.update(empty, tx.init(empty))[1].masked_fraction) == 0.0


def test_state_holds_the_inner_state_and_is_readable_by_name():
    params = make_params(jnp.float32)
    tx = adamx.cautious_adamw(1e-3)
    state = tx.init(params)
    assert isinstance(state[0], adamx.CautiousState)
    assert isinstance(state[0].inner[0], adamx.ScaleByMomentsState)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)
    assert optax.tree.get(state, "masked_fraction").shape == ()
    chex.assert_trees_all_equal_structs(optax.tree.get(state, "mu"), params)


def test_extra_args_reach_the_wrapped_chain():
    seen = {}

    def update(updates, state, params=None, *, tag=None):
        seen["tag"] = tag
        return updates, state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    tx = adamx.cautious(inner)
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), tag="x")
    assert seen == {"tag": "x"}


# -- dtypes and jit -------------------------------------------------------------------------
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64]


def test_dtypes_preserved_and_no_retrace():
    params = make_mixed_params(DTYPES)
    tx = adamx.cautious_adamw(1e-3, weight_decay=0.1, cautious_weight_decay=True)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    state = tx.init(params)
    for i in range(3):
        grads = jax.tree.map(lambda x, i=i: (jnp.sin(x * (i + 2.0)) * 0.1).astype(x.dtype), params)
        new, state, updates = step(params, state, grads)
        chex.assert_trees_all_equal_dtypes(updates, params)
        chex.assert_trees_all_equal_dtypes(new, params)
        params = new
    assert len(traces) == 1
    assert state[0].masked_fraction.dtype == jnp.float32


def test_float64_direction_under_x64():
    with jax.enable_x64(True):
        g = jnp.array([1.0, -1.0, 2.0], jnp.float64)
        u = jnp.array([1.0, 1.0, 1.0], jnp.float64)
        out = apply(adamx.cautious(direction(u)), g)[0]
        assert out.dtype == jnp.float64
        np.testing.assert_array_equal(out, [3 / 3, 0.0, 3 / 3])


def test_a_wider_direction_than_gradient_keeps_its_dtype():
    """u in float32 for bfloat16 gradients (e.g. float32 moments): promoted explicitly."""
    g = jnp.array([1.0, -1.0], jnp.bfloat16)
    out = apply(adamx.cautious(direction(jnp.array([0.5, 0.5], jnp.float32))), g)[0]
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [0.5 * 2 / 2, 0.0])


# -- refusals -------------------------------------------------------------------------------
def tree():
    return {"w": jnp.ones((40, 40)), "b": jnp.ones(8), "c": jnp.ones(3)}


def test_refused_on_packed_buckets_naming_the_stage_and_the_fix():
    inner = optax.chain(adamx.scale_by_moments(0.9, 0.999), adamx.scale_by_rsqrt(1e-8))
    pattern = r"cautious computes one statistic per parameter leaf.*buckets.*min_size=0"
    with pytest.raises(ValueError, match=pattern):
        adamx.cautious(inner).init(adamx.pack(tree(), min_size=64))
    with pytest.raises(ValueError, match=pattern):
        adamx.multi_tensor(adamx.cautious_adamw(1e-3), min_size=64).init(tree())
    adamx.multi_tensor(adamx.cautious_adamw(1e-3), min_size=0).init(tree())  # nothing packed


def test_refused_inside_sparse_rows():
    table = jnp.ones((10, 4))
    tx = adamx.sparse_rows(adamx.cautious_adamw(1e-3))
    state = tx.init({"emb": table})
    grads = {"emb": adamx.row_sparse(jnp.array([1, 3]), jnp.ones((2, 4)), 10)}
    with pytest.raises(ValueError, match=r"per-tensor stage \(.*cautious.*statistic of those rows"):
        tx.update(grads, state, {"emb": table})


def test_refuses_a_chain_that_leaves_the_moment_segment_open():
    tx = adamx.cautious(adamx.scale_by_moments(0.9, 0.999))
    g = jnp.ones(3)
    pattern = r"cautious: the chain it wraps returned the moment tree.*scale_by_rsqrt"
    with pytest.raises(TypeError, match=pattern):
        tx.update(g, tx.init(g))


def test_bad_rescale_is_named():
    with pytest.raises(ValueError, match=r"rescale must be one of 'count', 'mean', got 'sum'"):
        adamx.cautious(optax.identity(), rescale="sum")


def test_under_zero1_the_statistic_is_of_the_whole_tensor(eight_devices):
    """zero1 splits the moments over 8 devices; the mask's count is still taken over each
    whole leaf (a global reduction, exact in int32): the unsharded run's mask and fraction,
    its updates to an ulp (the sharded program is compiled differently, as zero1(adamw)'s is;
    a count taken per shard would change s by far more)."""
    mesh = jax.make_mesh((8,), ("data",))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 2)), params) for i in range(4)]

    def run(tx):
        state = jax.jit(tx.init)(params)
        out = []
        for g in grads:
            updates, state = jax.jit(tx.update)(g, state, params)
            out.append(updates)
        return out, state

    plain = run(adamx.cautious_adamw(1e-2))
    with jax.set_mesh(mesh):
        sharded = run(adamx.sharding.zero1(adamx.cautious_adamw(1e-2), mesh))
    chex.assert_trees_all_close(sharded[0], plain[0], rtol=1e-6, atol=1e-8)  # |u| ~ 1e-2
    assert optax.tree.get(sharded[1], "mu")["w"].sharding.spec[0] == "data"
    fraction = optax.tree.get(sharded[1], "masked_fraction")
    assert float(fraction) == float(optax.tree.get(plain[1], "masked_fraction")) > 0
