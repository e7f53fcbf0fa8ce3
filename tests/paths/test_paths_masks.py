"""Weight-decay masks on packed paths (``adamx.pack``, ``multi_tensor``) follow the model's paths.

The mask of an adamx weight-decay stage is evaluated on the tree that was packed
(its paths, shapes and dtypes), then applied element by element inside each bucket.
Reference: the same optimizer run leaf by leaf on the unpacked tree (``optax.adamw``
itself for AdamW), held to the packed-path bound of ``tests/_paths.py``. The test
tree puts decayed and excluded leaves side by side in one bucket, a bucket whose
leaves all agree, and an excluded leaf that stays loose, so a mask read off the
buckets (the old behaviour) is off by the decay itself, ~10^5 ulps.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _paths import assert_path_matches
from _promotion import apply_reference_updates, reference_factory
from registry import matrices

import adamx
from adamx.stages.weight_decay import PackedMaskedState

STEPS = 6
MIN_SIZE = 16
DECAY_SCHEDULE = optax.linear_schedule(0.5, 0.1, 10)


def model_params(seed: int = 0) -> dict:
    """A flax-like tree: kernels, biases, a norm scale; float32 and bfloat16."""
    rng = np.random.default_rng(seed)
    draw = lambda shape, dtype=jnp.float32: jnp.asarray(rng.normal(size=shape), dtype)  # noqa: E731
    return {
        "dense": {"kernel": draw((4, 8)), "bias": draw((8,))},  # loose kernel, packed bias
        "head": {"kernel": draw((2, 3)), "bias": draw((40,))},  # packed kernel, loose bias
        "norm": {"scale": draw((8,)), "bias": draw((8,))},  # packed, excluded
        "lora": {"a": draw((2, 3), jnp.bfloat16), "b": draw((3, 2), jnp.bfloat16)},  # one bucket
    }


# Three spellings of one decision: decay the matrices, not the biases or the norm.
MASKS = {
    "exclude_paths": lambda: adamx.exclude_paths("bias", "norm"),
    "callable": lambda: matrices,
    "bool_tree": lambda: {  # "norm" and "lora" as prefixes: one bool for a subtree
        "dense": {"kernel": True, "bias": False},
        "head": {"kernel": True, "bias": False},
        "norm": False,
        "lora": True,
    },
}

OPTAX_ADAMW = reference_factory(optax.adamw)  # under the standard promotion rules (_promotion)
# name: (adamx factory of (weight_decay, mask), reference factory of the same, or None for the
# per-leaf adamx chain, which the parity suites hold to optax/torch).
OPTIMIZERS = {
    "adamw": (
        lambda wd, mask: adamx.adamw(1e-2, weight_decay=wd, mask=mask),
        lambda wd, mask: OPTAX_ADAMW(1e-2, weight_decay=wd, mask=mask),
    ),
    "adamw_decay_schedule": (
        lambda wd, mask: adamx.adamw(1e-2, weight_decay=DECAY_SCHEDULE, mask=mask),
        lambda wd, mask: OPTAX_ADAMW(1e-2, weight_decay=DECAY_SCHEDULE, mask=mask),
    ),
    "nadamw": (lambda wd, mask: adamx.nadamw(1e-2, weight_decay=wd, mask=mask), None),
    "adamaxw": (lambda wd, mask: adamx.adamaxw(1e-2, weight_decay=wd, mask=mask), None),
    "radam_decoupled": (
        lambda wd, mask: adamx.radam(1e-2, weight_decay=wd, decoupled_weight_decay=True, mask=mask),
        None,
    ),
    "adam_l2": (lambda wd, mask: adamx.adam(1e-2, weight_decay=wd, mask=mask), None),
    "adam_l2_decay_schedule": (
        lambda wd, mask: adamx.adam(1e-2, weight_decay=DECAY_SCHEDULE, mask=mask),
        None,
    ),
}


def grad_of(tree, step):
    """A gradient that depends on the params and the step, distinct for every leaf."""
    return jax.tree.map(lambda x: (jnp.sin(x * (step + 1.0)) * 3).astype(x.dtype), tree)


def run_per_leaf(tx, params, steps=STEPS):
    # optax's float32 updates onto bfloat16 params: added under the standard rules (_promotion).
    update, apply = jax.jit(tx.update), jax.jit(apply_reference_updates)
    state = tx.init(params)
    for i in range(steps):
        updates, state = update(jax.jit(grad_of)(params, i), state, params)
        params = apply(params, updates)
    return params, state


def run_packed(tx, params, steps=STEPS):
    """The optimizer, unwrapped, on params held packed (``adamx.pack``) between steps."""
    packed = adamx.pack(params, min_size=MIN_SIZE)
    grad = jax.jit(lambda p, i: adamx.pack(grad_of(p.unpack(), i), min_size=MIN_SIZE))
    update, apply = jax.jit(tx.update), jax.jit(optax.apply_updates)
    state = tx.init(packed)
    structure = jax.tree.structure(state)
    for i in range(steps):
        updates, state = update(grad(packed, i), state, packed)
        packed = apply(packed, updates)
        assert jax.tree.structure(state) == structure
    return packed.unpack(), state


def run_multi_tensor(tx, params, steps=STEPS):
    return run_per_leaf(adamx.multi_tensor(tx, min_size=MIN_SIZE), params, steps)


PATH_RUNS = {"pack": run_packed, "multi_tensor": run_multi_tensor}


def reference(name, mask):
    ours, theirs = OPTIMIZERS[name]
    return (theirs or ours)(0.5, mask)


def _cases():
    """Every (optimizer, mask, path); the default run keeps a covering array of the pairs.

    Optimizer i with mask j runs on path (i + j) % 2: every optimizer and every mask meet
    both paths, and every optimizer meets every mask. The rest runs under ``matrix_full``.
    """
    for i, name in enumerate(OPTIMIZERS):
        for j, mask in enumerate(MASKS):
            for k, path in enumerate(PATH_RUNS):
                marks = () if k == (i + j) % 2 else (pytest.mark.matrix_full,)
                yield pytest.param(name, mask, path, marks=marks, id=f"{name}-{mask}-{path}")


@pytest.mark.parametrize(("name", "mask", "path"), list(_cases()))
def test_masked_decay_on_packed_paths_matches_the_per_leaf_run(name, mask, path):
    params = model_params()
    ours, _ = PATH_RUNS[path](OPTIMIZERS[name][0](0.5, MASKS[mask]()), params)
    theirs, _ = run_per_leaf(reference(name, MASKS[mask]()), params)
    assert_path_matches("multi_tensor", ours, theirs)


@pytest.mark.parametrize("path", list(PATH_RUNS))
@pytest.mark.parametrize("name", ["adamw", "adam_l2"])
def test_masked_decay_on_packed_paths_is_bit_identical_op_by_op(name, path):
    # Without jit no compiler rewrite can tell a bucket from a leaf: the same numbers, bit for
    # bit (under jit XLA:CPU fuses the coupled stage's select differently: 2 ulps measured).
    params = model_params(1)
    mask = adamx.exclude_paths("bias", "norm")
    with jax.disable_jit():
        ours, _ = PATH_RUNS[path](OPTIMIZERS[name][0](0.5, mask), params, 2)
        theirs, _ = run_per_leaf(reference(name, mask), params, 2)
    chex.assert_trees_all_equal(ours, theirs)


@pytest.mark.parametrize("path", list(PATH_RUNS))
@pytest.mark.parametrize("coupled", [False, True], ids=["adamw", "adam_l2"])
def test_with_zero_gradients_exactly_the_masked_in_leaves_move(path, coupled):
    # Adam's step is 0 for a zero gradient (decoupled) or moves every decayed leaf (coupled L2):
    # either way a leaf moves if and only if the mask decays it.
    params = model_params(2)
    mask = adamx.exclude_paths("bias", "norm")
    decay = (adamx.adam if coupled else adamx.adamw)(1e-2, weight_decay=0.5, mask=mask)
    tx = optax.chain(optax.scale(0.0), decay)  # the gradient is zeroed before the optimizer
    final, _ = PATH_RUNS[path](tx, params, 2)
    for (where, before), after in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(final), strict=True
    ):
        name = jax.tree_util.keystr(where)
        moved = not np.array_equal(np.asarray(before), np.asarray(after))
        assert moved == ("bias" not in name and "norm" not in name), name


def test_a_bucket_mixing_decayed_and_excluded_leaves_gets_an_element_mask():
    # The float32 bucket holds dense.bias, head.kernel, norm.bias, norm.scale in flattening order.
    from adamx._masks import resolve_mask

    packed = adamx.pack(model_params(), min_size=MIN_SIZE)
    flags = resolve_mask("test", adamx.exclude_paths("bias", "norm"), packed)
    expected = np.concatenate([np.zeros(8, bool), np.ones(6, bool), np.zeros(16, bool)])
    np.testing.assert_array_equal(flags.buckets["float32"], expected)
    assert flags.buckets["bfloat16"] is True  # both lora leaves decay: a plain bool
    assert flags.loose == (True, False)  # dense.kernel, head.bias (flattening order)


def test_the_mask_sees_the_models_paths_shapes_and_dtypes_not_the_buckets():
    seen = {}

    def predicate(path, leaf):
        seen[path] = (leaf.shape, jnp.dtype(leaf.dtype).name)
        return True

    params = model_params()
    tx = adamx.adamw(1e-2, mask=adamx.path_mask(predicate))
    tx.init(adamx.pack(params, min_size=MIN_SIZE))
    expected = {
        "/".join(k.key for k in p): (x.shape, x.dtype.name)
        for p, x in jax.tree_util.tree_leaves_with_path(params)
    }
    assert seen == expected


@pytest.mark.parametrize("path", list(PATH_RUNS))
def test_no_retrace_and_stable_state_with_a_masked_schedule(path):
    chex.clear_trace_counter()  # both parametrizations define the same `step`
    params = model_params()
    tx = adamx.adamw(1e-2, weight_decay=DECAY_SCHEDULE, mask=adamx.exclude_paths("bias"))
    if path == "multi_tensor":
        tx, tree, grads = adamx.multi_tensor(tx, min_size=MIN_SIZE), params, grad_of(params, 0)
    else:
        tree = adamx.pack(params, min_size=MIN_SIZE)
        grads = adamx.pack(grad_of(params, 0), min_size=MIN_SIZE)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        return tx.update(grads, s, p)

    state = tx.init(tree)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
        updates, state = step(tree, state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)


def masked_states(state):
    is_masked = lambda x: isinstance(x, (optax.MaskedState, PackedMaskedState))  # noqa: E731
    return [x for x in jax.tree.leaves(state, is_leaf=is_masked) if is_masked(x)]


@pytest.mark.parametrize("decay", [0.5, DECAY_SCHEDULE], ids=["constant", "schedule"])
def test_on_a_plain_tree_the_masked_stage_keeps_optaxs_masked_state(decay):
    params = model_params()
    for mask in MASKS.values():
        ours = masked_states(adamx.adamw(1e-2, weight_decay=decay, mask=mask()).init(params))
        theirs = masked_states(optax.masked(optax.add_decayed_weights(decay), mask()).init(params))
        # The wrapper is optax's; inside it, a constant has no state and a schedule a count
        # (adamx's ScheduleState where optax has WeightDecaySchedule: same leaves).
        assert len(ours) == 1 and type(ours[0]) is optax.MaskedState
        chex.assert_trees_all_equal(jax.tree.leaves(ours), jax.tree.leaves(theirs))


def test_a_mask_that_does_not_fit_the_packed_tree_names_the_original_paths():
    packed = adamx.pack(model_params(), min_size=MIN_SIZE)
    tx = adamx.adamw(1e-2, mask={"dense": True, "head": False, "nrom": False, "lora": True})
    with pytest.raises(ValueError, match=r"the mask does not match the params.*\['nrom'\]"):
        tx.init(packed)


# --------------------------------------------------------------------------- refusals


def test_optax_masked_inside_multi_tensor_is_refused_with_the_fix():
    tx = adamx.multi_tensor(
        optax.chain(optax.masked(optax.add_decayed_weights(0.1), matrices), optax.adam(1e-2)),
        min_size=MIN_SIZE,
    )
    with pytest.raises(
        ValueError,
        match=r"multi_tensor: the wrapped chain contains optax.masked .* packed buckets.*"
        r"adamx\.adamw\(lr, mask=.*put the optax wrapper outside",
    ):
        tx.init(model_params())


def test_optax_masked_around_an_adamx_decay_inside_multi_tensor_is_refused_by_the_stage():
    # The decay stage's init sees the masked-out buckets before multi_tensor sees the state.
    tx = adamx.multi_tensor(optax.masked(adamx.adamw(1e-2), matrices), min_size=MIN_SIZE)
    with pytest.raises(ValueError, match=r"was given a PackedTree.*outside adamx.multi_tensor"):
        tx.init(model_params())


def test_optax_multi_transform_inside_multi_tensor_is_refused():
    labels = lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "b", p)  # noqa: E731
    inner = optax.multi_transform({"a": optax.adam(1e-2), "b": optax.sgd(1e-2)}, labels)
    with pytest.raises(ValueError, match=r"contains optax.masked \(or optax.multi_transform\)"):
        adamx.multi_tensor(inner, min_size=MIN_SIZE).init(model_params())


def test_adamx_path_masks_refuse_a_packed_tree_handed_by_optax_masked():
    # optax.masked calls its mask on the tree it gets: with packed params, the buckets.
    packed = adamx.pack(model_params(), min_size=MIN_SIZE)
    tx = optax.masked(optax.add_decayed_weights(0.1), adamx.exclude_paths("bias"))
    with pytest.raises(ValueError, match=r"exclude_paths was handed a PackedTree.*mask="):
        tx.init(packed)


def test_an_adamx_stage_refuses_packed_params_masked_by_optax():
    # A user's own mask callable cannot be intercepted, but the masked-out buckets reach the stage.
    packed = adamx.pack(model_params(), min_size=MIN_SIZE)
    tx = optax.masked(adamx.add_decoupled_weight_decay(0.1), matrices)
    with pytest.raises(ValueError, match=r"add_decoupled_weight_decay was given a PackedTree"):
        tx.update(packed, tx.init(packed), packed)


def test_optax_masked_around_a_whole_adamx_optimizer_on_packed_params_is_refused_at_init():
    packed = adamx.pack(model_params(), min_size=MIN_SIZE)
    tx = optax.masked(adamx.adamw(1e-2, mask=adamx.exclude_paths("norm")), matrices)
    with pytest.raises(ValueError, match=r"add_decoupled_weight_decay was given a PackedTree"):
        tx.init(packed)


def test_a_bool_tree_given_to_optax_masked_on_packed_params_fails_loudly():
    packed = adamx.pack(model_params(), min_size=MIN_SIZE)
    mask = jax.tree.map(lambda x: x.ndim > 1, model_params())
    with pytest.raises(ValueError):
        optax.masked(optax.add_decayed_weights(0.1), mask).init(packed)
