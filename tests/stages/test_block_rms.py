"""Adafactor's per-tensor RMS stages: optax's maths bit for bit, refused where a "tensor" would
be a bucket of packed leaves or a table's touched rows."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import reference

import adamx

STAGES = {
    "clip": (lambda: adamx.clip_by_block_rms(0.5), lambda: optax.clip_by_block_rms(0.5)),
    "param_scale": (
        lambda: adamx.scale_by_param_block_rms(1e-2),
        lambda: optax.scale_by_param_block_rms(1e-2),
    ),
}


def tree(dtype):
    rng = np.random.default_rng(0)
    shapes = {"w": (16, 8), "b": (8,), "tiny": (3,), "zero": (4,)}
    out = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}
    return {**out, "zero": jnp.zeros(4, dtype)}  # RMS 0: the min_scale branch


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", STAGES)
def test_equals_optax_bit_for_bit(name, dtype):
    ours, theirs = STAGES[name][0](), reference(STAGES[name][1]())
    params = tree(dtype)
    grads = jax.tree.map(lambda x: 3 * x + 1, params)
    for jit in (False, True):
        run = jax.jit if jit else (lambda f: f)
        got = run(ours.update)(grads, ours.init(params), params)[0]
        want = run(theirs.update)(grads, theirs.init(params), params)[0]
        jax.tree.map(np.testing.assert_array_equal, got, want)
        assert jax.tree.map(jnp.dtype, got) == jax.tree.map(jnp.dtype, params)


def test_clip_bounds_each_leaf_rms_independently():
    """Closed form: a leaf with RMS r > d is divided by r / d; one with RMS <= d is unchanged."""
    tx = adamx.clip_by_block_rms(2.0)
    grads = {"big": jnp.full(4, 8.0), "small": jnp.full(4, 1.0)}
    out = tx.update(grads, tx.init(grads))[0]
    np.testing.assert_array_equal(out["big"], jnp.full(4, 2.0))
    np.testing.assert_array_equal(out["small"], grads["small"])


@pytest.mark.parametrize("name", STAGES)
def test_refused_on_packed_buckets(name):
    params = tree(jnp.float32)
    stage = STAGES[name][0]()
    with pytest.raises(ValueError, match=r"computes one statistic per parameter leaf.*buckets"):
        adamx.multi_tensor(stage, min_size=64).init(params)
    with pytest.raises(ValueError, match=r"computes one statistic per parameter leaf.*buckets"):
        stage.init(adamx.pack(params, min_size=64))
    adamx.multi_tensor(stage, min_size=0).init(params)  # nothing packed: allowed


def test_refused_inside_sparse_rows():
    table = jnp.ones((10, 4))
    tx = adamx.sparse_rows(optax.chain(adamx.clip_by_block_rms(1.0), optax.sgd(0.1)))
    state = tx.init({"emb": table})
    grads = {"emb": adamx.row_sparse(jnp.array([1, 3]), jnp.ones((2, 4)), 10)}
    with pytest.raises(ValueError, match=r"per-tensor stage.*statistic of those rows"):
        tx.update(grads, state, {"emb": table})


@pytest.mark.parametrize(
    ("make", "arg"),
    [(adamx.clip_by_block_rms, "threshold"), (adamx.scale_by_param_block_rms, "min_scale")],
)
def test_bad_arguments_are_named(make, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        make(-1.0)


def test_mixed_dtypes_are_promoted_as_optax_under_standard_promotion():
    """A float32 update on bfloat16 params (optax's float32 momentum) and an array threshold:
    strict-clean here, optax's bits under the standard rules."""
    params = tree(jnp.bfloat16)
    grads = jax.tree.map(lambda x: (3 * x + 1).astype(jnp.float32), params)
    for ours, theirs in [
        (adamx.scale_by_param_block_rms(), optax.scale_by_param_block_rms()),
        (adamx.clip_by_block_rms(jnp.float32(0.5)), optax.clip_by_block_rms(jnp.float32(0.5))),
    ]:
        got = ours.update(grads, ours.init(params), params)[0]
        with jax.numpy_dtype_promotion("standard"):
            want = theirs.update(grads, theirs.init(params), params)[0]
        jax.tree.map(np.testing.assert_array_equal, got, want)
        jax.tree.map(lambda a, b: np.testing.assert_equal(a.dtype, b.dtype), got, want)
