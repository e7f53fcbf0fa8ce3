"""State formats on the packed paths (``adamx.pack``, ``multi_tensor``) against the per-leaf run.

A packed bucket concatenates small leaves. An elementwise format stores it as it
stores a leaf; ``blockwise_8bit`` keeps it in float32, which is what the per-leaf run
does for leaves below its ``min_size``, and refuses a bucket holding a leaf it would
quantize; ``stochastic_float`` (noise by position) refuses buckets. The reference is
the same optimizer on the unpacked tree, bit for bit op by op (``jax.disable_jit``). Under
``jit`` XLA:CPU may round the bias-corrected float32 bucket differently from the separate
leaves (one or two roundings per step, a known limitation of ``multi_tensor`` that plain
``adam`` shows too), so compiled runs are compared within a few ulps there.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx


def _params():
    rng = np.random.default_rng(0)
    shapes = {"w": (32, 256), "b": (256,), "ln": (64,), "emb": (10, 30), "w2": (64, 128)}
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _grads(params, i):
    return jax.tree.map(lambda p: jnp.sin(p * (i + 1)) * 10.0 ** (i % 3 - 1), params)


def _run(tx, params, steps=3, jit=False):
    def step(params, state, i):
        updates, state = tx.update(_grads(params, i), state, params)
        return optax.apply_updates(params, updates), state

    if jit:
        step = jax.jit(step)
    else:  # op by op: the packed and per-leaf runs execute the same operations
        with jax.disable_jit():
            state = tx.init(params)
            for i in range(steps):
                params, state = step(params, state, i)
        return params, state

    state = tx.init(params)
    for i in range(steps):
        params, state = step(params, state, i)
    return params, state


EIGHT_BIT = {
    "adam_8bit": lambda: adamx.adam(
        1e-2, mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_8bit()
    ),
    "amsgrad_8bit_nearest": lambda: adamx.amsgrad(
        1e-2, nu_dtype=adamx.blockwise_8bit(stochastic=False)
    ),
    "adamw_8bit_min_size_8192": lambda: adamx.adamw(
        1e-2,
        mu_dtype=adamx.blockwise_8bit(min_size=8192),
        nu_dtype=adamx.blockwise_8bit(min_size=8192),
    ),
}


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_multi_tensor_with_8bit_moments_equals_the_per_leaf_run(name):
    params = _params()
    want, want_state = _run(EIGHT_BIT[name](), params)
    got, state = _run(adamx.multi_tensor(EIGHT_BIT[name]()), params)
    chex.assert_trees_all_equal(got, want)
    compiled = _run(adamx.multi_tensor(EIGHT_BIT[name]()), params, jit=True)[0]
    want = _run(EIGHT_BIT[name](), params, jit=True)[0]
    chex.assert_trees_all_equal(compiled["w"], want["w"])  # quantized, loose: bit for bit
    _assert_within_update_roundings(compiled, want)
    # The quantized leaves stay loose, with the same codes (their rounding keys follow the
    # leaf's index in the unpacked tree); the small ones share one float32 bucket.
    nu, want_nu = optax.tree.get(state, "nu"), optax.tree.get(want_state, "nu")
    assert nu.codes.buckets["float32"].dtype == jnp.float32 and nu.scales.buckets["float32"] is None
    assert nu.codes.loose[0].dtype == jnp.uint8
    chex.assert_trees_all_equal(nu.codes.loose[0], want_nu.codes["w"])
    chex.assert_trees_all_equal(nu.scales.loose[1], want_nu.scales["w2"])


def test_pack_with_8bit_moments_trains_like_the_per_leaf_run():
    params = _params()
    tx = EIGHT_BIT["adam_8bit"]

    def loss(p):
        return sum(jnp.sum(jnp.sin(x) ** 2) for x in jax.tree.leaves(p))

    def train(params, unpack):
        opt = tx()
        state = opt.init(params)

        @jax.jit
        def step(params, state):
            grads = jax.grad(lambda p: loss(unpack(p)))(params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        for _ in range(4):
            params, state = step(params, state)
        return unpack(params)

    packed, want = train(adamx.pack(params), lambda p: p.unpack()), train(params, lambda p: p)
    chex.assert_trees_all_equal(packed["w"], want["w"])  # quantized, loose: bit for bit
    _assert_within_update_roundings(packed, want)


def _assert_within_update_roundings(got, want, lr=1e-2, steps=4):
    """Each step's update (at most lr = 1e-2 in size) may round differently in the bucket by
    a couple of its ulps, and p + u may then round to the neighbouring float: per step at
    most one ulp of p plus a few of the update."""
    for name in want:
        bound = steps * 2.0**-23 * (np.abs(np.asarray(want[name])) + 4 * lr)
        diff = np.abs(np.asarray(got[name]) - np.asarray(want[name]))
        assert np.all(diff <= bound), (name, float(np.max(diff / bound)))


def test_a_bucket_holding_a_leaf_the_8bit_format_quantizes_is_refused():
    params = _params()  # "b" (256), "ln" (64) and "emb" (300) are packed below 4096
    tx = adamx.multi_tensor(adamx.adam(1e-2, nu_dtype=adamx.blockwise_8bit(min_size=256)))
    match = (
        r"scale_by_moments: nu_dtype at the parameter at .*: blockwise_8bit quantizes leaves "
        r"of at least min_size=256 elements, but the leaf at \['b'\] \(256 elements\) was "
        r"packed .*min_size > 256.*min_size <= the format's min_size \(256\)"
    )
    with pytest.raises(ValueError, match=match):
        tx.init(params)
    with pytest.raises(ValueError, match=r"the leaf at \['emb'\] \(300 elements\)"):
        adamx.adam(1e-2, mu_dtype=adamx.blockwise_8bit(min_size=300)).init(adamx.pack(params))
    # Following the message's fix: pack only what the format keeps in float32.
    fixed = adamx.multi_tensor(
        adamx.adam(1e-2, nu_dtype=adamx.blockwise_8bit(min_size=256)), min_size=256
    )
    want = _run(adamx.adam(1e-2, nu_dtype=adamx.blockwise_8bit(min_size=256)), params)[0]
    chex.assert_trees_all_equal(_run(fixed, params)[0], want)


def test_stochastic_float_refuses_buckets_and_works_unpacked():
    params = _params()
    sf = adamx.stochastic_float()
    with pytest.raises(
        ValueError, match=r"stochastic_float draws its rounding noise .* min_size=0"
    ):
        adamx.multi_tensor(adamx.adam(1e-2, mu_dtype=sf)).init(params)
    with pytest.raises(ValueError, match=r"mu_dtype at the parameter at \.buckets\['float32'\]"):
        adamx.adam(1e-2, mu_dtype=sf).init(adamx.pack(params))
    got = _run(adamx.multi_tensor(adamx.adam(1e-2, mu_dtype=sf), min_size=0), params)[0]
    chex.assert_trees_all_equal(got, _run(adamx.adam(1e-2, mu_dtype=sf), params)[0])


def test_float_formats_pack_as_before():
    params = _params()
    for mu_dtype in (None, jnp.bfloat16, adamx.FloatFormat(jnp.bfloat16, upcast=True)):
        tx = adamx.adam(1e-2, mu_dtype=mu_dtype)
        got = _run(adamx.multi_tensor(adamx.adam(1e-2, mu_dtype=mu_dtype)), params)[0]
        chex.assert_trees_all_equal(got, _run(tx, params)[0])
