"""``multi_tensor``: packed buckets give the per-leaf chain's numbers, bit for bit.

References: the same chain run per leaf (adamx), optax's own optimizers, and a
NumPy view of the packing (which leaf lands where in a bucket).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _paths import assert_path_matches
from _promotion import reference
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from registry import OPTIMIZERS, aliases, matrices
from registry.variants import PER_TENSOR

import adamx

STEPS = 6
MIN_SIZE = 16  # leaves below 16 elements are packed, the (4, 8) and (40,) leaves stay loose


def mixed_params(seed: int = 0) -> dict:
    """Small and large leaves, two float dtypes, a scalar and an empty leaf."""
    rng = np.random.default_rng(seed)
    draw = lambda shape, dtype: jnp.asarray(rng.normal(size=shape), dtype)  # noqa: E731
    return {
        "w": draw((4, 8), jnp.float32),  # 32 elements: loose
        "v": draw((40,), jnp.float32),  # loose
        "b": draw((3,), jnp.float32),  # packed
        "scale": draw((), jnp.float32),  # packed
        "empty": draw((0, 2), jnp.float32),  # packed (no elements)
        "block": {"k": draw((2, 5), jnp.float32), "h": draw((7,), jnp.bfloat16)},
        "emb": draw((3, 2), jnp.bfloat16),
    }


def run(tx, params, steps: int = STEPS):
    """``steps`` steps of ``tx``, each a jitted ``update``; gradients depend on the params.

    ``update`` and ``apply_updates`` are compiled apart, as the two programs compared must
    round alike: XLA:CPU contracts ``a*b + c`` into one FMA inside a fusion, so an update
    fused into ``θ + u`` can round differently depending on how the compiler fused it.
    """
    update, apply = jax.jit(tx.update), jax.jit(optax.apply_updates)
    grad = jax.jit(
        lambda p, i: jax.tree.map(lambda x: (jnp.sin(x * (i + 1.0)) * 3).astype(x.dtype), p)
    )
    state = tx.init(params)
    for i in range(steps):
        updates, state = update(grad(params, i), state, params)
        params = apply(params, updates)
    return params


# Every alias of the registry with its plain arguments, and two of its variants: a schedule with
# Nesterov momentum and a callable mask, a bfloat16 m.
# (adafactor, cautious_adamw and stable_adamw read whole leaves: refused on buckets, registry rule
# per_tensor_stage_in_buckets.)
CHAINS = {
    name: OPTIMIZERS[name].make
    for name in [*aliases(), "adamw_schedule_mask", "adam_mu_bf16"]
    if name != "adafactor" and name not in PER_TENSOR
}


@pytest.mark.parametrize("name", CHAINS)
def test_packed_chain_is_bit_identical_to_the_per_leaf_chain(name):
    params = mixed_params()
    packed = run(adamx.multi_tensor(CHAINS[name](), min_size=MIN_SIZE), params)
    chex.assert_trees_all_equal(packed, run(CHAINS[name](), params))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: adamx.adam(1e-2), lambda: reference(optax.adam(1e-2))),
        (
            lambda: adamx.adamw(1e-2, weight_decay=0.1),
            lambda: reference(optax.adamw(1e-2, weight_decay=0.1)),
        ),
    ],
)
def test_packed_chain_is_bit_identical_to_optax(ours, theirs):
    params = mixed_params(1)
    packed = run(adamx.multi_tensor(ours(), min_size=MIN_SIZE), params)
    chex.assert_trees_all_equal(packed, run(theirs(), params))


def many_leaves(n: int = 300) -> dict:
    rng = np.random.default_rng(5)
    return {f"b{i:03d}": jnp.asarray(rng.normal(size=64), jnp.float32) for i in range(n)}


def one_update(tx, params):
    grads = jax.tree.map(lambda x: jnp.sin(3 * x) * 0.01, params)
    return jax.jit(tx.update)(grads, tx.init(params), params)[0]


def test_large_bucket_without_bias_correction_is_bit_identical():
    def tx():
        return optax.chain(
            adamx.scale_by_moments(), adamx.scale_by_rsqrt(), adamx.scale_by_lr(1e-2)
        )

    params = many_leaves()
    chex.assert_trees_all_equal(
        one_update(adamx.multi_tensor(tx()), params), one_update(tx(), params)
    )


def test_large_bucket_op_by_op_is_bit_identical():
    # Without jit each operation runs alone, so no compiler rewrite can tell a bucket from a leaf.
    params = many_leaves(30)
    with jax.disable_jit():
        packed = adamx.multi_tensor(adamx.adamw(1e-2))
        grads = jax.tree.map(lambda x: jnp.sin(3 * x) * 0.01, params)
        ours = packed.update(grads, packed.init(params), params)[0]
        ref_tx = reference(optax.adamw(1e-2))
        ref = ref_tx.update(grads, ref_tx.init(params), params)[0]
    chex.assert_trees_all_equal(ours, ref)


def test_large_bucket_with_bias_correction_is_within_one_ulp():
    # Known limitation: on XLA:CPU the bias-corrected update of a 19200-element bucket and of
    # 300 separate 64-element leaves round differently in some elements (by one ulp), though
    # the elementwise operations are the same (optax.scale_by_adam shows the same difference):
    # one rounding apart in each of m/(1-b1^t) and v/(1-b2^t), so at most 2 ulp in u.
    params = many_leaves()
    packed = one_update(adamx.multi_tensor(adamx.adam(1e-2)), params)
    chex.assert_trees_all_close_ulp(packed, one_update(adamx.adam(1e-2), params), maxulp=2)


def test_state_is_packed_per_dtype_in_flattening_order():
    params = mixed_params()
    state = adamx.multi_tensor(adamx.adam(1e-3), min_size=MIN_SIZE).init(params)
    mu = state.inner[0].mu
    assert isinstance(mu, adamx.PackedTree)
    # Large leaves stay as they are, in the params' flattening order ("v" then "w").
    assert [x.shape for x in mu.loose] == [(40,), (4, 8)]
    # Small leaves: one bucket per dtype, sizes in flattening order (block.h; block.k, b, empty,
    # scale; emb), so a bucket is exactly the concatenation NumPy would build.
    assert sorted(mu.buckets) == ["bfloat16", "float32"]
    assert mu.buckets["float32"].shape == (3 + 10 + 0 + 1,)
    assert mu.buckets["bfloat16"].shape == (6 + 7,)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))


def test_packing_follows_the_numpy_concatenation():
    params = mixed_params()
    tx = adamx.multi_tensor(optax.scale_by_rms(decay=0.5), min_size=MIN_SIZE)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 2, params)
    _, state = tx.update(grads, tx.init(params))
    small = [params["b"], params["block"]["k"], params["empty"], params["scale"]]
    expected = 0.5 * np.concatenate([np.full(np.size(x), 4.0, np.float32) for x in small])
    np.testing.assert_array_equal(state.inner.nu.buckets["float32"], expected)


def test_no_retrace_and_dtypes_kept():
    params = mixed_params()
    tx = adamx.multi_tensor(adamx.adamw(1e-3), min_size=MIN_SIZE)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        return tx.update(jax.tree.map(jnp.ones_like, p), s, p)

    state = tx.init(params)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
        updates, state = step(params, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec


def test_min_size_zero_packs_nothing():
    params = mixed_params()
    state = adamx.multi_tensor(adamx.adam(1e-3), min_size=0).init(params)
    assert state.inner[0].mu.buckets == {}


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4096"])
def test_min_size_is_validated(bad):
    with pytest.raises(ValueError, match=r"multi_tensor: min_size must be an int >= 0"):
        adamx.multi_tensor(adamx.adam(1e-3), min_size=bad)


@pytest.mark.parametrize(
    "mask",
    [
        lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
        adamx.exclude_paths("b$", "scale", "emb"),
        {"w": True, "v": True, "b": False, "scale": False, "empty": True, "block": True,
         "emb": False},
    ],
    ids=["callable", "exclude_paths", "bool_tree"],
)  # fmt: skip
def test_an_adamx_mask_inside_the_chain_matches_optax_adamw_with_the_mask(mask):
    # The mask is resolved against the parameters' paths (see tests/test_paths_masks.py): the
    # float32 bucket mixes decayed (block.k) and excluded (b, scale) leaves.
    params = mixed_params(2)
    packed = adamx.multi_tensor(adamx.adamw(1e-2, weight_decay=0.3, mask=mask), min_size=MIN_SIZE)
    chex.assert_trees_all_equal(
        run(packed, params), run(reference(optax.adamw(1e-2, weight_decay=0.3, mask=mask)), params)
    )


def test_optax_masked_inside_the_chain_is_refused_with_the_fix():
    masked = optax.masked(adamx.adam(1e-3), matrices)
    tx = adamx.multi_tensor(masked, min_size=MIN_SIZE)
    with pytest.raises(ValueError, match=r"contains optax.masked .* optax.multi_transform"):
        tx.init(mixed_params())


def test_masks_outside_the_wrapper_match_adamw_with_a_mask():
    params = mixed_params(2)

    def labels(p):
        return jax.tree.map(lambda x: "decay" if x.ndim > 1 else "plain", p)

    packed = optax.multi_transform(
        {
            "decay": adamx.multi_tensor(adamx.adamw(1e-2, weight_decay=0.2), min_size=MIN_SIZE),
            "plain": adamx.multi_tensor(adamx.adam(1e-2), min_size=MIN_SIZE),
        },
        labels,
    )
    chex.assert_trees_all_equal(
        run(packed, params),
        run(reference(optax.adamw(1e-2, weight_decay=0.2, mask=matrices)), params),
    )


def test_composes_with_inject_hyperparams():
    params = mixed_params(3)

    @functools.wraps(adamx.adamw)
    def packed_adamw(*args, **kwargs):
        return adamx.multi_tensor(adamx.adamw(*args, **kwargs), min_size=MIN_SIZE)

    # optax.inject_hyperparams finds the params' lowest float dtype with jnp.promote_types,
    # which strict promotion refuses for float32 with bfloat16: both hosts run under the
    # standard rules (adamx's strictness is held by every other test of this file).
    ours = reference(optax.inject_hyperparams(packed_adamw)(learning_rate=1e-2, weight_decay=0.1))
    theirs = reference(optax.inject_hyperparams(adamx.adamw)(learning_rate=1e-2, weight_decay=0.1))
    chex.assert_trees_all_equal(run(ours, params), run(theirs, params))


def test_global_norm_clipping_before_the_wrapper_matches_to_an_ulp():
    # The clipped gradient g * (c / |g|) is fused into the moment update; XLA:CPU may contract
    # it into an FMA differently for a bucket and for a leaf: equal to within one rounding.
    params = {k: v for k, v in mixed_params(3).items() if k != "block" and k != "emb"}
    clip = lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx)  # noqa: E731
    packed = run(clip(adamx.multi_tensor(adamx.adamw(1e-2), min_size=MIN_SIZE)), params, 1)
    chex.assert_trees_all_close_ulp(packed, run(clip(adamx.adamw(1e-2)), params, 1), maxulp=1)


def test_gradient_and_param_dtypes_must_agree_for_packed_leaves():
    params = {"b": jnp.ones(3, jnp.bfloat16)}
    tx = adamx.multi_tensor(adamx.adamw(1e-3), min_size=MIN_SIZE)
    state = tx.init({"b": jnp.ones(3, jnp.float32)})
    with pytest.raises(TypeError, match=r"at \['b'\] the gradient is float32 but the parameter"):
        tx.update({"b": jnp.ones(3, jnp.float32)}, state, params)


# On the run's 8 CPU devices (conftest: jax_num_cpu_devices). A leaf's sharding is read
# from its type under jit (jax.typeof) and from .sharding on an array; a NamedSharding is
# split when its spec's mesh axes multiply to more than 1 (tests/paths/test_placement.py
# covers every spec on abstract meshes).


def _put(x, mesh, *spec):

    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _adamw_reference(params):
    """optax.adamw(1e-2)'s first update, jitted as ours is (init apart), standard rules."""
    tx = reference(optax.adamw(1e-2))
    return jax.jit(tx.update)(params, tx.init(params), params)[0]


def test_sharded_small_leaves_are_declined_and_large_ones_keep_their_sharding(eight_devices):
    mesh = jax.make_mesh((8,), ("data",), devices=eight_devices)  # make_mesh's default axes
    tx = adamx.multi_tensor(adamx.adamw(1e-2), min_size=64)
    split = _put(jnp.ones(8), mesh, "data")
    # A small leaf split over the devices: packing would gather it, so both decline.
    with pytest.raises(ValueError, match=r"multi_tensor: the parameter at \['b'\].*gather it"):
        tx.init({"b": split})
    with pytest.raises(ValueError, match=r"pack: the leaf at \['b'\]"):
        adamx.pack({"b": split}, min_size=64)
    # A large split leaf stays loose and keeps its sharding; a replicated small one is packed.
    params = {"w": _put(jnp.arange(128.0), mesh, "data"), "b": _put(jnp.ones(8), mesh)}
    state = tx.init(params)
    updates, state = jax.jit(lambda p, s, g: tx.update(g, s, p))(params, state, params)
    assert updates["w"].sharding == params["w"].sharding
    assert state.inner[0].mu.loose[0].sharding == params["w"].sharding
    chex.assert_trees_all_equal(updates, _adamw_reference(params))


def test_explicit_axes_are_read_from_the_types(eight_devices):

    explicit = jax.make_mesh(
        (8, 1), ("data", "model"), (AxisType.Explicit,) * 2, devices=eight_devices
    )
    tx = adamx.multi_tensor(adamx.adamw(1e-2), min_size=64)
    with jax.set_mesh(explicit):
        with pytest.raises(ValueError, match=r"parameter at \['b'\].*over several devices"):
            jax.jit(tx.init)({"b": _put(jnp.ones(8), explicit, "data")})  # traced: jax.typeof
        with pytest.raises(ValueError, match=r"at \['b'\].*Explicit mesh axes in its type"):
            jax.jit(tx.init)({"b": _put(jnp.ones(8), explicit, "model")})  # even of size 1
        params = {
            "b": _put(jnp.arange(8.0), explicit),
            "w": _put(jnp.ones((64, 2)), explicit, "data"),
        }
        state = jax.jit(tx.init)(params)
        updates, _ = jax.jit(lambda p, s: tx.update(p, s, p))(params, state)
        chex.assert_trees_all_equal(updates, _adamw_reference(params))


def test_auto_axes_of_size_one_are_packed_and_host_values_too(eight_devices):

    auto = jax.make_mesh((8, 1), ("data", "model"), (AxisType.Auto,) * 2, devices=eight_devices)
    tx = adamx.multi_tensor(adamx.adamw(1e-2), min_size=64)
    params = {
        "b": _put(jnp.arange(8.0), auto, "model"),  # over a size-1 axis: whole on every device
        "c": _put(jnp.ones(4), auto),
        "w": _put(jnp.ones((64, 2)), auto, "data"),
    }
    state = tx.init(params)
    assert state.inner[0].mu.buckets["float32"].shape == (12,)  # b and c
    updates, _ = jax.jit(lambda p, s: tx.update(p, s, p))(params, state)
    reference_updates = _adamw_reference(params)
    for k in params:  # within the bias-correction rounding of the module docstring
        np.testing.assert_array_max_ulp(updates[k], reference_updates[k], maxulp=4)
    with pytest.raises(ValueError, match=r"pack: the leaf at \['b'\]"):
        adamx.pack({"b": _put(jnp.ones(8), auto, "data")}, min_size=64)
    # Host values (NumPy arrays) have no sharding: packed.
    assert adamx.pack({"a": np.ones(3, np.float32)}, min_size=64).buckets["float32"].shape == (3,)


def test_packed_state_round_trips_through_orbax_and_resumes_bit_identically(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params = mixed_params(4)
    tx = adamx.multi_tensor(adamx.adamw(1e-2), min_size=MIN_SIZE)
    update = jax.jit(tx.update)
    grads = jax.tree.map(lambda x: (jnp.cos(x) * 0.5).astype(x.dtype), params)
    _, state = update(grads, tx.init(params), params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "state", tx.init(params))
    chex.assert_trees_all_equal_structs(restored, state)
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal(update(grads, restored, params), update(grads, state, params))


# --------------------------------------------------------------------------- adamx.pack


def loss_of_tree(tree):
    """A loss that touches every leaf differently, so each gradient leaf is distinct."""
    leaves = jax.tree.leaves(tree)
    return sum(jnp.sum(jnp.sin(x.astype(jnp.float32) * (i + 1))) for i, x in enumerate(leaves))


def test_pack_round_trips_the_tree_exactly():
    params = mixed_params()
    packed = adamx.pack(params, min_size=MIN_SIZE)
    assert sorted(packed.buckets) == ["bfloat16", "float32"]
    assert [x.shape for x in packed.loose] == [(40,), (4, 8)]
    chex.assert_trees_all_equal(packed.unpack(), params)
    chex.assert_trees_all_equal(jax.jit(lambda p: p.unpack())(packed), params)


def test_the_gradient_through_unpack_is_the_packed_gradient():
    # Reference: jax.grad on the unpacked tree, packed afterwards.
    params = mixed_params(1)
    packed = adamx.pack(params, min_size=MIN_SIZE)
    grads = jax.jit(jax.grad(lambda p: loss_of_tree(p.unpack())))(packed)
    assert isinstance(grads, adamx.PackedTree)
    expected = adamx.pack(jax.grad(loss_of_tree)(params), min_size=MIN_SIZE)
    chex.assert_trees_all_equal(grads, expected)


def test_training_packed_params_matches_per_leaf_optax():
    # The optimizer, unwrapped, runs on the PackedTree; the step takes and returns packed params.
    params = mixed_params(2)

    def train(tx, params, unpack):
        grad = jax.jit(jax.grad(lambda p: loss_of_tree(unpack(p))))
        update, apply = jax.jit(tx.update), jax.jit(optax.apply_updates)
        state = tx.init(params)
        for _ in range(STEPS):
            updates, state = update(grad(params), state, params)
            params = apply(params, updates)
        return params

    packed = train(adamx.adamw(1e-2), adamx.pack(params, min_size=MIN_SIZE), lambda p: p.unpack())
    want = train(reference(optax.adamw(1e-2)), params, lambda p: p)
    chex.assert_trees_all_equal(packed.unpack(), want)


def test_a_packed_training_step_compiles_once():
    packed = adamx.pack(mixed_params(), min_size=MIN_SIZE)
    tx = adamx.adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    @chex.assert_max_traces(n=1)
    def step(p, s):
        updates, s = tx.update(jax.grad(lambda q: loss_of_tree(q.unpack()))(p), s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(packed)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), (packed, state))
    for _ in range(3):
        packed, state = step(packed, state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), (packed, state)) == spec


@pytest.mark.parametrize("bad", [-1, 2.0, False])
def test_pack_validates_min_size(bad):
    with pytest.raises(ValueError, match=r"pack: min_size must be an int >= 0"):
        adamx.pack(mixed_params(), min_size=bad)


def test_the_path_tolerance_catches_a_misplaced_leaf():
    # The parity suite holds the multi_tensor path to MAX_ULP ulps; a packing mistake must fail.

    params = mixed_params()
    nudged = jax.tree.map(lambda x: x + 3 * jnp.finfo(x.dtype).eps * jnp.abs(x), params)
    assert_path_matches("multi_tensor", nudged, params)  # a few ulps: accepted
    swapped = dict(params, b=params["b"][::-1])
    with pytest.raises(AssertionError, match=r"\['b'\]: .* ulps apart"):
        assert_path_matches("multi_tensor", swapped, params)
