"""State formats on an 8-device mesh: ``state_shardings`` and ``zero1`` follow each parameter.

Regression tests for issue 10: ``state_shardings`` matched state leaves to parameters by
shape and tree path, so every 8-bit code and scale array was replicated (the "sharded"
8-bit state took more bytes per device than float32), a list of equal-shaped parameters or
a repeated key name gave a moment another leaf's sharding, and a quantization block longer
than a shard failed deep inside JAX. The checks here are stated without reference to how a
format lays out its arrays: bytes per device against the unsharded state, the collectives
in the compiled step, and results against the unsharded run.

The 8 devices are the test run's own (``conftest.py`` sets ``jax_num_cpu_devices``): each
check of ``CHECKS`` is one test, in this process.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _streams import jitted_step, run_steps
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adamx
import adamx.sharding

N = 8
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
SMALL = 64  # bytes: a state leaf this small (a step count, a PRNG key, a config tag) may stay whole

# Parameters that trip the old path/shape matching: a key name ("w") repeated at two depths
# with the same shape and different layouts, and a list of equal-shaped parameters with
# different layouts. "b" keeps a float32 moment (below min_size), "s" stays replicated.
SHAPES = {
    "w": (64, 2048),
    "x": {"w": (64, 2048)},
    "l": [(16, 4096), (16, 4096)],
    "b": (2048,),
    "s": (8,),
}
SPECS = {
    "w": ("x", None),
    "x": {"w": (None, "x")},
    "l": [(None, "x"), ("x", None)],
    "b": ("x",),
    "s": (),
}


# ---------------------------------------------------------------------------
# Helpers (each check builds its own 8-device mesh).


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _is_spec(x):
    return isinstance(x, tuple) and all(d is None or isinstance(d, str) for d in x)


def _mesh(mode, name="x"):

    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    return jax.make_mesh((N,), (name,), (kind,))


def _put(mesh, tree, specs):

    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, PartitionSpec(*s)), specs, is_leaf=_is_spec
    )
    return jax.device_put(tree, shardings)


def _draw(seed, shapes):

    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), shapes, is_leaf=_is_shape
    )


def _eight_bit(**kwargs):

    return adamx.adam(
        1e-2,
        mu_dtype=adamx.blockwise_8bit(**kwargs),
        nu_dtype=adamx.blockwise_8bit(signed=False, **kwargs),
    )


def _init(tx, params, mode):
    """The state on the parameters' mesh: Explicit axes by type, Auto ones via state_shardings."""

    if mode == "explicit":
        return jax.jit(tx.init)(params)
    return jax.jit(tx.init, out_shardings=adamx.sharding.state_shardings(tx, params))(params)


def _state_bytes(state):
    """Bytes per device (all devices alike) of a state; all its bytes if it is on one device."""

    per_device = set(adamx.sharding.state_bytes_per_device(state).values())
    assert len(per_device) == 1, per_device
    return per_device.pop()


def _assert_split_or_small(state):
    """Every state leaf is split into N distinct equal shards, or is small and whole."""

    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        shards = leaf.addressable_shards
        where = jax.tree_util.keystr(path)
        if leaf.nbytes <= SMALL:
            assert leaf.sharding.is_fully_replicated, (where, leaf.sharding)
            continue
        assert len({str(s.index) for s in shards}) == N, (where, leaf.shape, leaf.sharding)
        assert all(s.data.nbytes * N == leaf.nbytes for s in shards), (where, leaf.sharding)


def _assert_bits_equal(got, want):

    got, want = jax.device_get(got), jax.device_get(want)
    flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(flat_want, jax.tree.leaves(got), strict=True):
        assert np.array_equal(np.asarray(g), np.asarray(w)), jax.tree_util.keystr(path)


# ---------------------------------------------------------------------------
# The checks.


def _check_moments_follow_their_own_parameter(mode):
    """float32 adam: each moment has its own parameter's sharding (lists, repeated keys)."""

    mesh = _mesh(mode)
    with jax.set_mesh(mesh):
        params = _put(mesh, _draw(0, SHAPES), SPECS)
        tx = adamx.adamw(1e-2, weight_decay=0.1)
        for moments in (_init(tx, params, mode)[0], adamx.sharding.state_shardings(tx, params)[0]):
            for name in ("mu", "nu"):
                tree = getattr(moments, name)
                for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
                    got = jax.tree_util.tree_flatten_with_path(tree)[0]
                    s = dict((jax.tree_util.keystr(k), v) for k, v in got)[
                        jax.tree_util.keystr(path)
                    ]
                    s = getattr(s, "sharding", s)
                    assert s.is_equivalent_to(p.sharding, p.ndim), (name, path, s, p.sharding)


def _check_eight_bit_state_is_split(mode):
    """8-bit moments: 1/8 of the unsharded 8-bit state per device, no collectives, same bits."""

    mesh = _mesh(mode)
    host = _draw(0, SHAPES)
    grads_host = [_draw(1 + k, SHAPES) for k in range(3)]
    grads_host = [
        jax.tree.map(lambda g, k=k: g * 10.0 ** (k - 1), g) for k, g in enumerate(grads_host)
    ]
    tx = _eight_bit()

    one = jax.devices()[0]
    params1 = jax.device_put(host, one)
    unsharded = _state_bytes(tx.init(params1))
    fp32_sharded = (
        sum(2 * 4 * int(np.prod(s)) for s in jax.tree.leaves(SHAPES, is_leaf=_is_shape)) // N
    )

    with jax.set_mesh(mesh):
        params = _put(mesh, host, SPECS)
        state = _init(tx, params, mode)
        per_device = _state_bytes(state)
        # The leaves that stay whole (step count, PRNG keys, config tags, the 8-element "s") are
        # a few hundred bytes of ~800 KB.
        assert unsharded / N <= per_device <= unsharded / N + 512, (per_device, unsharded)
        assert per_device < fp32_sharded / 3, (per_device, fp32_sharded)
        _assert_split_or_small(state)

        grads = [_put(mesh, g, SPECS) for g in grads_host]
        step = jitted_step(tx)
        compiled = step.lower(params, state, grads[0]).compile()
        found = [c for c in COLLECTIVES if c in compiled.as_text()]
        assert not found, f"the sharded 8-bit step communicates: {found}"
        got = run_steps(step, params, state, grads)
        same_layout = jax.tree.map(lambda a: a.sharding, state)
        for a, s in zip(jax.tree.leaves(got[1]), jax.tree.leaves(same_layout), strict=True):
            assert a.sharding.is_equivalent_to(s, a.ndim), (a.sharding, s)

    want = run_steps(jitted_step(tx), params1, tx.init(params1), jax.device_put(grads_host, one))
    _assert_bits_equal(got, want)


def _check_block_longer_than_shard():
    """A 256-element block on a last axis split 512 / 8 = 64 per device: a clear error."""

    mesh = _mesh("auto")
    params = _put(mesh, {"emb": np.ones((4, 512), np.float32)}, {"emb": (None, "x")})
    # The leaf, its layout and per-device piece, the block size, and the fixes.
    message = [
        r"params\['emb'\] \(shape \(4, 512\), sharded .*: \(4, 64\) per device\)",
        r"blocks of 256",
        r"64 elements",
        r"block_size",
        r"shard",
    ]
    for fn in (adamx.sharding.state_shardings, adamx.sharding.abstract_state):
        try:
            fn(_eight_bit(min_size=0), params)
        except ValueError as err:
            assert all(re.search(m, str(err)) for m in message), str(err)
        else:
            raise AssertionError(f"{fn.__name__} accepted a block longer than the shard")
    # One block of 256 over the whole last axis (32 per device): refused too, not spread over
    # the devices (which would reduce each block's scale across them at every step).
    one_block = _put(mesh, {"emb": np.ones((4, 256), np.float32)}, {"emb": (None, "x")})
    try:
        adamx.sharding.state_shardings(_eight_bit(min_size=0), one_block)
    except ValueError as err:
        assert all(re.search(m, str(err)) for m in (r"params\['emb'\]", "32 elements")), err
    else:
        raise AssertionError("state_shardings spread one block over 8 devices")

    # On Explicit axes the layout is in the types, so init itself refuses, naming the leaf.
    explicit = _mesh("explicit")
    with jax.set_mesh(explicit):
        typed = _put(explicit, {"emb": np.ones((4, 512), np.float32)}, {"emb": (None, "x")})
        try:
            jax.jit(_eight_bit(min_size=0).init)(typed)
        except ValueError as err:
            assert all(re.search(m, str(err)) for m in (r"\['emb'\]", *message[1:])), err
        else:
            raise AssertionError("init on Explicit axes accepted a block longer than the shard")

    # The fix the message names: blocks of 64 fit, and the state is split 8 ways.
    tx = _eight_bit(min_size=0, block_size=64)
    state = _init(tx, params, "auto")
    _assert_split_or_small(state)
    unsharded = _state_bytes(tx.init(jax.device_put(jnp.ones((4, 512)), jax.devices()[0])))
    assert unsharded / N <= _state_bytes(state) <= unsharded / N + SMALL


# ZeRO-1 with 8-bit moments (blocks of 64, quantized from 1024 elements) on a list of
# replicated parameters: what zero1 may split, and along which dimension.
ZERO_SHAPES = [
    (64, 512),  # dimension 0 (64 / 8)
    (64, 512),  # the same shape again: its own state
    (4, 2048),  # dimension 0 does not divide; the last one does: 256 per device, 4 blocks each
    (4, 256),  # last axis 32 per device < a block of 64: its state stays whole
    (8, 8),  # float32 moment (below min_size), dimension 0
    (3,),  # nothing divides: whole
]
WHOLE = [3, 5]  # indices of ZERO_SHAPES whose state zero1 keeps whole


def _zero_bytes_of(shape, block=64, min_size=1024):
    """A leaf's m and v bytes: a code per element and a float32 scale per block, or float32."""
    size = int(np.prod(shape))
    if size < min_size:
        return 2 * 4 * size
    n_blocks = -(-shape[-1] // block)
    lead = size // shape[-1]
    return 2 * lead * n_blocks * (block + 4)


def _check_zero1_eight_bit(mode):
    """zero1 + 8-bit: split leaves take 1/8 per device, the rest whole, same results."""

    mesh = _mesh(mode, "data")
    replicated = NamedSharding(mesh, PartitionSpec())
    host = _draw(3, ZERO_SHAPES)
    grads_host = [_draw(4 + k, ZERO_SHAPES) for k in range(3)]

    def make():
        return _eight_bit(block_size=64, min_size=1024)

    zero = adamx.sharding.zero1(make(), mesh, "data")
    with jax.set_mesh(mesh):
        params = jax.device_put(host, replicated)
        grads = [jax.device_put(g, replicated) for g in grads_host]
        state = jax.jit(zero.init)(params)
        expected_layout = adamx.sharding.state_shardings(zero, params)
        for a, s in zip(jax.tree.leaves(state), jax.tree.leaves(expected_layout), strict=True):
            assert a.sharding.is_equivalent_to(s, a.ndim), (a.sharding, s)

        split = sum(_zero_bytes_of(s) for i, s in enumerate(ZERO_SHAPES) if i not in WHOLE)
        whole = sum(_zero_bytes_of(s) for i, s in enumerate(ZERO_SHAPES) if i in WHOLE)
        per_device = _state_bytes(state)
        # + the step count, PRNG keys and config tags (under 64 bytes in all)
        assert split // N + whole <= per_device <= split // N + whole + SMALL, (per_device,)

        step = jitted_step(zero)
        got = run_steps(step, params, state, grads)
        for a in jax.tree.leaves(got[0]):
            assert a.sharding.is_fully_replicated, a.sharding
        for a, s in zip(jax.tree.leaves(got[1]), jax.tree.leaves(expected_layout), strict=True):
            assert a.sharding.is_equivalent_to(s, a.ndim), (a.sharding, s)

    # The reference: the same optimizer on one device. The same maths on another layout:
    # XLA:CPU may fuse it differently (an FMA), a float32 rounding of a step; every 8-bit
    # code comes out the same (a tolerance below 1 on integers).
    one = jax.devices()[0]
    tx = make()
    params1 = jax.device_put(host, one)
    want = run_steps(jitted_step(tx), params1, tx.init(params1), jax.device_put(grads_host, one))
    chex.assert_trees_all_close(jax.device_get(got), jax.device_get(want), atol=1e-6, rtol=1e-6)


def _check_zero1_list_float32(mode):
    """zero1 on a list of equal-shaped float32 parameters: each moment split, same results."""

    mesh = _mesh(mode, "data")
    shapes = [(16, 8), (16, 8), (64,), (5, 16)]
    host = _draw(7, shapes)
    grads_host = [_draw(8 + k, shapes) for k in range(3)]
    zero = adamx.sharding.zero1(adamx.adamw(1e-2, weight_decay=0.1), mesh, "data")
    with jax.set_mesh(mesh):
        params = jax.device_put(host, NamedSharding(mesh, PartitionSpec()))
        state = jax.jit(zero.init)(params)
        _assert_split_or_small(state[0].mu)  # every moment here is at least 64 bytes
        _assert_split_or_small(state[0].nu)
        got = run_steps(jitted_step(zero), params, state, grads_host)
    tx = adamx.adamw(1e-2, weight_decay=0.1)
    one = jax.devices()[0]
    params1 = jax.device_put(host, one)
    want = run_steps(jitted_step(tx), params1, tx.init(params1), jax.device_put(grads_host, one))
    # The same maths on another layout: XLA:CPU may fuse it differently (an FMA).
    chex.assert_trees_all_close(jax.device_get(got), jax.device_get(want), atol=1e-7, rtol=1e-6)


CHECKS = {}
for _mode in ("auto", "explicit"):
    CHECKS[f"moments_follow_their_own_parameter-{_mode}"] = lambda m=_mode: (
        _check_moments_follow_their_own_parameter(m)
    )
    CHECKS[f"eight_bit_state_is_split-{_mode}"] = lambda m=_mode: _check_eight_bit_state_is_split(m)
    CHECKS[f"zero1_eight_bit-{_mode}"] = lambda m=_mode: _check_zero1_eight_bit(m)
    CHECKS[f"zero1_list_float32-{_mode}"] = lambda m=_mode: _check_zero1_list_float32(m)
CHECKS["block_longer_than_shard"] = _check_block_longer_than_shard


@pytest.mark.parametrize("check", list(CHECKS))
def test_on_eight_devices(eight_devices, check):
    CHECKS[check]()
