"""Blockwise 4-bit moments (``adamx.blockwise(4)`` / ``blockwise_4bit``): maps, round trips,
stochastic rounding, NaN/inf, packing and bytes, checkpoints, sharding, and Adam with them.

References are independent: the float grid (1 + f/2^M) 2^-e and the dynamic tree enumerated
in NumPy, NumPy brute-force nearest-neighbour search, np.frexp for power-of-two scales,
closed-form error bounds and standard errors, nibbles packed by hand, fp32 optax.adam.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import reference, reference_schedule
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adamx
from adamx.formats.codec import dequantize, pack, quantize, unpack
from adamx.formats.qmaps import QuantMap

ocp = pytest.importorskip("orbax.checkpoint")

FLOAT_MAPS = [("e2m1", True), ("e3m0", True), ("e1m2", True)]
FLOAT_MAPS += [("e3m1", False), ("e2m2", False), ("e4m0", False), ("e1m3", False)]
ABSMAX_MAPS = [("dynamic", True), ("dynamic", False), ("linear", True), ("linear", False)]


def _float_grid(signed, mantissa_bits):
    """The largest 7 (signed) or 13 (unsigned: code 14 is +inf) numbers (1 + f/2^M) 2^-e <= 1."""
    grid = {
        (1 + f / 2**mantissa_bits) * 2.0**-e for e in range(1, 20) for f in range(2**mantissa_bits)
    }
    return np.array(sorted(grid | {1.0})[-(7 if signed else 13) :])


def _dynamic_grid(signed):
    """Dettmers' dynamic tree at 4 bits: 10^-e (0.1 + 0.9 j / n), n = 4, 2, 1 (signed) or
    8, 4, 2 (unsigned, whose top point 1.0 is +inf's code) for e = 0, 1, 2."""
    top = 4 if signed else 8
    grid = sorted(
        10.0**-e * (0.1 + 0.9 * j / (top >> e)) for e in range(3) for j in range(1, (top >> e) + 1)
    )
    return np.array(grid if signed else grid[:-1])


def _positives(kind, signed):
    if kind == "dynamic":
        return _dynamic_grid(signed)
    if kind == "linear":
        return np.arange(1, 8) / 7 if signed else np.arange(1, 14) / 14
    return _float_grid(signed, int(kind[-1]))


@pytest.mark.parametrize(("kind", "signed"), FLOAT_MAPS + ABSMAX_MAPS)
def test_map_values_codes_and_reserved_codes(kind, signed):
    table = QuantMap(kind, signed, 4).values()
    assert table.shape == (16,) and np.isnan(table[15])
    positives = _positives(kind, signed)
    if signed:  # 7 negative values, 0 at code 7, 7 positive values, NaN
        np.testing.assert_allclose(table[8:15], positives, rtol=1e-6)
        np.testing.assert_array_equal(table[:7], -table[8:15][::-1])
        assert table[7] == 0.0
    else:  # 0, 13 positive values, +inf at code 14, NaN
        assert table[0] == 0.0 and table[14] == np.inf
        np.testing.assert_allclose(table[1:14], positives, rtol=1e-6)
    assert np.all(np.diff(table[:15]) > 0)


@pytest.mark.parametrize(("kind", "signed"), FLOAT_MAPS + ABSMAX_MAPS)
def test_encoding_picks_the_nearest_map_value(kind, signed):
    qmap = QuantMap(kind, signed, 4)
    table = qmap.values()
    finite = table[np.isfinite(table)]
    rng = np.random.default_rng(0)
    y = np.concatenate(
        [
            rng.uniform(-1.0 if signed else 0.0, 1.0, 3000),
            10.0 ** rng.uniform(-5, 0, 1000) * (rng.choice([-1, 1], 1000) if signed else 1),
            finite,
            (finite[:-1] + finite[1:]) / 2 * (1 + 1e-6),
        ]
    ).astype(np.float32)
    got = np.abs(table[np.asarray(qmap.index(jnp.asarray(y)))] - y)
    nearest = np.abs(finite[None, :] - y[:, None]).min(axis=1)
    np.testing.assert_array_less(got, nearest * (1 + 1e-5) + 1e-12)


def _blocks(signed, depth, seed=1):
    """(3, 4, 128) blocks, each of its own magnitude, spread over ``depth`` binades."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-6, 3, size=(3, 4, 1))
    x = rng.standard_normal((3, 4, 128)) * 2.0 ** rng.uniform(-depth, 0, (3, 4, 128)) * scales
    return (x if signed else np.abs(x)).astype(np.float32)


def _round_trip(x, qmap, **kwargs):
    codes, scale = quantize(jnp.asarray(x.reshape(3, 512)), qmap, 128, **kwargs)
    assert codes.shape == (3, 4, 64) and codes.dtype == jnp.uint8  # two codes a byte
    back = np.asarray(dequantize(codes, scale, qmap, (3, 512))).reshape(x.shape)
    return back.astype(np.float64), np.asarray(scale)


@pytest.mark.parametrize(("kind", "signed"), FLOAT_MAPS)
def test_float_map_round_trip_error_per_binade(kind, signed):
    # s = max |x| per block (at 4 bits; 8 bits: the power of two above it); from q_min s up
    # each element is off by at most half a step, 2^-(M+1) |x| (the relative error in every
    # binade); below, by at most q_min s / 2 (signed: 0 or q_min) or q_min s (unsigned, v:
    # never 0, so q_min). Float32 rounding of x / s and q s adds a few 2^-24 relative.
    m = int(kind[-1])
    q_min = _float_grid(signed, m)[0]
    x = _blocks(signed, depth=np.log2(1 / q_min) + 1.5)
    back, scale = _round_trip(x, QuantMap(kind, signed, 4), zero_point=signed)
    np.testing.assert_array_equal(scale, np.abs(x).max(axis=-1))
    s = scale[..., None].astype(np.float64).repeat(128, -1)
    err = np.abs(back - x)
    big = np.abs(x) >= q_min * s
    assert big.sum() > 40 and (~big).sum() > 40  # both regimes are exercised
    half_step = 2.0 ** -(m + 1)
    f32 = 1 + 2**-21
    assert np.all(err[big] <= half_step * np.abs(x[big]) * f32)
    assert np.max(err[big] / np.abs(x[big])) > half_step / 2  # the bound is not loose
    assert np.all(err[~big] <= (q_min / 2 if signed else q_min) * s[~big] * f32)
    np.testing.assert_array_equal(np.abs(back).max(axis=-1), scale)  # the max is exact


@pytest.mark.parametrize(("kind", "signed"), ABSMAX_MAPS)
def test_absmax_map_round_trip_error(kind, signed):
    # Scale: the block's absmax over the largest finite value; each element is off by at most
    # its distance to the nearest map value (NumPy), times the scale, plus float32 rounding.
    qmap = QuantMap(kind, signed, 4)
    x = _blocks(signed, depth=8)
    back, scale = _round_trip(x, qmap)
    top = _positives(kind, signed)[-1]
    absmax = np.abs(x).max(axis=-1)
    np.testing.assert_allclose(scale, absmax / np.float32(top), rtol=2e-7)
    finite = qmap.values()[np.isfinite(qmap.values())].astype(np.float64)
    y = x / scale[..., None]
    bound = np.abs(finite[None, :] - y.reshape(-1, 1)).min(axis=1).reshape(x.shape)
    s = scale[..., None]
    np.testing.assert_array_less(np.abs(back - x), (bound + 4 * np.finfo(np.float32).eps) * s)


def test_codes_are_packed_two_a_byte_low_nibble_first():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (2, 3, 8), dtype=np.uint8)
    packed = np.asarray(pack(jnp.asarray(codes), 4))
    np.testing.assert_array_equal(packed, codes[..., 0::2] | (codes[..., 1::2] << 4))
    np.testing.assert_array_equal(unpack(jnp.asarray(packed), 4), codes)
    odd = rng.integers(0, 16, (2, 5), dtype=np.uint8)  # an odd block gets a zero code appended
    np.testing.assert_array_equal(unpack(pack(jnp.asarray(odd), 4), 4)[:, :5], odd)


@pytest.mark.parametrize(
    ("shape", "codes_shape", "scale_shape"),
    [
        ((8, 4096), (8, 32, 64), (8, 32)),  # leading axes kept; 128 codes in 64 bytes
        ((64, 100), (64, 1, 50), (64, 1)),  # a short last axis is one block
        ((4, 2, 600), (4, 2, 5, 64), (4, 2, 5)),  # a ragged last block is padded
        ((3, 5), (3, 1, 3), (3, 1)),  # an odd block: one zero code appended
    ],
)
def test_blocks_run_along_the_last_axis(shape, codes_shape, scale_shape):
    for role in ("mu", "nu"):
        fmt = adamx.blockwise_4bit(min_size=0).bind(role)
        codes, scales = stored = fmt.init(jnp.zeros(shape))
        assert codes.shape == codes_shape and codes.dtype == jnp.uint8
        assert scales.shape == scale_shape and scales.dtype == jnp.float32
        x = jax.random.normal(jax.random.key(0), shape)
        x = x if role == "mu" else x * x
        back = fmt.decode(fmt.encode(x, stored, jax.random.key(1)), x)
        assert back.shape == shape and back.dtype == jnp.float32
        np.testing.assert_allclose(np.max(back), np.max(x), rtol=0.5)


@pytest.mark.parametrize(("qmap", "role"), [("e2m1", "mu"), ("e3m1", "nu"), ("e3m0", "mu")])
def test_stochastic_rounding_is_unbiased(qmap, role):
    # Each column of a block holds one value (the first column the block max, so s = 2):
    # between two map values, and below the smallest one (signed: rounds to 0 or q_min).
    # Over 32 x 40 draws per value, the mean lies within 4 standard errors of x.
    fmt = adamx.blockwise_4bit(min_size=0, qmap=qmap, sqrt=False).bind(role)
    grid = np.concatenate([[0.0], _float_grid(role == "mu", int(qmap[-1]))]) * 2.0
    lower = grid[1:-1] if role == "nu" else grid[:-1]  # v never rounds to 0: from q_min up
    values = np.concatenate([[2.0], lower + 0.3 * np.diff(grid)[-len(lower) :]])
    x = jnp.asarray(np.tile(values, (32, 1)).astype(np.float32))
    draws = np.stack(
        [
            np.asarray(fmt.decode(fmt.encode(x, fmt.init(x), jax.random.key(i)), x))
            for i in range(40)
        ]
    )
    mean = draws.mean(axis=(0, 1))[1:]
    gap = np.diff(grid)[-len(lower) :]
    se = gap * np.sqrt(0.21 / draws[:, :, 0].size)  # Bernoulli(0.3) steps of ``gap``
    np.testing.assert_array_less(np.abs(mean - values[1:]), 4 * se)
    nearest = adamx.blockwise_4bit(min_size=0, qmap=qmap, sqrt=False, stochastic=False)
    nearest = nearest.bind(role)
    back = np.asarray(nearest.decode(nearest.encode(x, nearest.init(x)), x))[0, 1:]
    np.testing.assert_array_equal(back, lower)  # 0.3 of a step rounds down, always


@pytest.mark.parametrize("kind", ["float", "dynamic"])
def test_non_finite_elements_do_not_poison_their_block(kind):
    # A NaN decodes as NaN on its own (and so does inf in m); +inf in v stays +inf (Adam's
    # step there is m / inf = 0, as in float32). The block's scale is over the finite values:
    # every other element decodes exactly as it does in the block without the NaN and inf.
    rng = np.random.default_rng(2)
    for role in ("mu", "nu"):
        fmt = adamx.blockwise_4bit(min_size=0, qmap=kind, sqrt=False, stochastic=False)
        fmt = fmt.bind(role)
        clean = rng.standard_normal(512).astype(np.float32)
        clean = clean if role == "mu" else clean * clean
        clean[[3, 200]] = 0.0
        x = clean.copy()
        x[3], x[200] = np.nan, np.inf
        codes, scales = fmt.encode(jnp.asarray(x), fmt.init(jnp.asarray(x)))
        want_codes, want_scales = fmt.encode(jnp.asarray(clean), fmt.init(jnp.asarray(x)))
        np.testing.assert_array_equal(scales, want_scales)
        back = np.asarray(fmt.decode((codes, scales), x))
        want = np.asarray(fmt.decode((want_codes, want_scales), x))
        assert np.isnan(back[3])
        assert np.isnan(back[200]) if role == "mu" else back[200] == np.inf
        others = np.isfinite(x)
        assert others.sum() == 510
        np.testing.assert_array_equal(back[others], want[others])
        # ... which is within the map's bound: half a step of E3M0 (m) / E3M1 (v), 2^-(M+1)
        # of |x|, above the smallest value q_min s = s / 64, or the absmax maps' largest gap.
        s = np.repeat(np.asarray(scales), 128)[others]
        half_step = 2.0 ** -(fmt._map().mantissa_bits + 1) if kind == "float" else 0.0
        gap = 1 / 64 if kind == "float" else 0.225  # dynamic: 0.225 between 0.55 and 0.775
        bound = np.maximum(half_step * np.abs(clean[others]), gap * s)
        assert np.all(np.abs(back[others] - clean[others]) <= bound * (1 + 1e-6))


def test_bytes_per_moment_element_on_a_4096_squared_tensor():
    params = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
    n = 4096 * 4096
    fmt = adamx.blockwise_4bit()
    state = jax.eval_shape(adamx.adam(1e-3, mu_dtype=fmt, nu_dtype=fmt).init, params)
    total = adamx.state_nbytes(state)
    # Per moment: n/2 bytes of codes + a float32 scale per 128 elements, an 8-byte key and a
    # 1-byte configuration tag; and the int32 count.
    assert total == 2 * (n // 2 + 4 * n // 128 + 8 + 1) + 4
    assert total / (2 * n) <= 0.55
    eight = adamx.state_nbytes(jax.eval_shape(adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(),
                                                         nu_dtype=adamx.blockwise_8bit()).init,
                                              params))  # fmt: skip
    assert total < 0.53 * eight


def test_options_describe_and_validation():
    four = adamx.blockwise_4bit()
    assert four == adamx.blockwise(4) == adamx.blockwise(bits=4, block_size=128)
    assert four.bits == 4 and four.block_size == 128
    assert adamx.blockwise() == adamx.blockwise_8bit() == adamx.Blockwise8bit()
    assert adamx.blockwise_8bit().bits == 8 and adamx.blockwise(8).block_size == 256
    assert adamx.Blockwise8bit(True, 64).bits == 8  # positional construction of 8-bit formats
    assert four.bind("mu").describe() == (
        "blockwise(bits=4, signed=True, qmap='e3m0', sqrt=False, block_size=128, "
        "min_size=4096, stochastic=True)"
    )
    assert four.bind("nu").describe() == (  # v: sqrt(v) on E3M1 (sqrt=None: True for v)
        "blockwise(bits=4, signed=False, qmap='e3m1', sqrt=True, block_size=128, "
        "min_size=4096, stochastic=True)"
    )
    assert adamx.blockwise(8).bind("nu").sqrt is False and adamx.blockwise(8).sqrt is False
    assert adamx.blockwise_8bit().bind("nu").describe().startswith("blockwise_8bit(signed=False")
    with pytest.raises(ValueError, match=r"bits must be one of 8, 4, got 3\. Codes are 8 bits"):
        adamx.blockwise(3)
    with pytest.raises(ValueError, match=r"E \+ M = 3 for signed=True at bits=4 .*got 'e4m3'"):
        adamx.blockwise_4bit(True, qmap="e4m3")
    with pytest.raises(ValueError, match=r"block_size must be a power of two"):
        adamx.blockwise_4bit(block_size=100)
    with pytest.raises(ValueError, match=r"mu_dtype=blockwise_4bit\(signed=False\) would clip"):
        adamx.adam(1e-3, mu_dtype=adamx.blockwise_4bit(False))


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (16, 512)), "b": jax.random.normal(k2, (16,))}


def _run(tx, params, state, steps):
    for i in steps:
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 1)), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _4bit(**kwargs):
    fmt = adamx.blockwise_4bit(min_size=4096, **kwargs)
    return adamx.adam(1e-2, mu_dtype=fmt, nu_dtype=fmt)


def test_orbax_round_trip_is_bit_exact_and_another_config_is_refused(tmp_path):
    tx, params = _4bit(), _params()
    want = _run(tx, params, tx.init(params), range(4))
    p2, s2 = _run(tx, params, tx.init(params), range(2))
    assert s2[0].mu.codes["w"].shape == (16, 4, 64)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", {"params": p2, "opt_state": s2})

    def restore(tx):
        target = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(tmp_path / "ckpt", target)

    restored = restore(_4bit())
    chex.assert_trees_all_equal(restored, {"params": p2, "opt_state": s2})
    chex.assert_trees_all_equal_dtypes(restored, {"params": p2, "opt_state": s2})
    resumed = _run(_4bit(), restored["params"], restored["opt_state"], range(2, 4))
    chex.assert_trees_all_equal(resumed, want)
    # The configuration is a key of the state's tree: the 8-bit format, or another 4-bit map
    # or block size, is another checkpoint path, and the checkpointer names both.
    eight = adamx.adam(1e-2, mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_8bit())
    for other in (eight, _4bit(qmap="dynamic"), _4bit(block_size=64)):
        with pytest.raises(ValueError, match=r"(?s)not found in metadata.*blockwise\(bits=4"):
            restore(other)


def test_update_refuses_an_8bit_state():
    params = _params()
    state = adamx.scale_by_moments(nu_dtype=adamx.blockwise_8bit()).init(params)
    tx = adamx.scale_by_moments(nu_dtype=adamx.blockwise_4bit())
    match = r"stored as .*blockwise_8bit\(signed=False.*stores nu as .*blockwise\(bits=4"
    with pytest.raises(ValueError, match=match):
        tx.update(params, state)


@pytest.mark.parametrize("mode", [pytest.param("auto", marks=pytest.mark.slow), "explicit"])
def test_a_sharded_step_equals_the_one_device_step(eight_devices, mode):
    # The last axis, 4096 = 8 x 512, splits into 4 whole blocks of 128 per device.
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("x",), (kind,))
    specs = {"last": (None, "x"), "lead": ("x", None)}
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"last": jax.random.normal(keys[0], (8, 4096)), "lead": jnp.ones((64, 256))}
    grads = [jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape), params) for k in keys[1:]]
    tx = _4bit()

    def run(params, grads):
        state, step = tx.init(params), jax.jit(tx.update)
        for g in grads:
            u, state = step(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state

    def put(tree):
        return {k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(*specs[k])))
                for k, v in tree.items()}  # fmt: skip

    want = run(params, grads)
    with jax.set_mesh(mesh):
        got = run(put(params), [put(g) for g in grads])
    chex.assert_trees_all_equal(jax.device_get(got), want)
    codes = got[1][0].mu.codes["last"]
    assert codes.shape == (8, 32, 64)
    assert {s.data.shape for s in codes.addressable_shards} == {(8, 4, 64)}


def test_blocks_straddling_devices_are_refused(eight_devices):
    fmt = adamx.blockwise_4bit(min_size=1).bind("mu")  # block 128, 64 columns per device
    match = r"blockwise_4bit\(block_size=128\): a parameter of shape \(4, 512\) split along its"
    match += r" last axis over \('x',\) \(8 pieces of 64 elements\).*a block must lie on one"
    with pytest.raises(ValueError, match=match):
        fmt.partition_specs((None, "x"), (4, 512), {"x": 8})
    mesh = jax.make_mesh((8,), ("x",), (AxisType.Explicit,))
    params = {
        "w": jax.device_put(jnp.ones((4, 512)), NamedSharding(mesh, PartitionSpec(None, "x")))
    }
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=match):
        jax.jit(adamx.adam(1e-2, mu_dtype=fmt).init)(params)


def test_packed_buckets_follow_the_8bit_rule():
    params = {"w": jnp.ones((64, 128)), "b": jnp.ones((300,))}
    tx = adamx.multi_tensor(adamx.adam(1e-2, nu_dtype=adamx.blockwise_4bit(min_size=256)))
    with pytest.raises(ValueError, match=r"blockwise_4bit quantizes leaves of at least min_size"):
        tx.init(params)


def _teacher_task(steps=300):
    """A 64-128-10 MLP learning a random two-layer teacher's labels (2048 points), with
    mini-batches of 64; its first layer (8192 elements) is quantized."""
    kx, kt, kb, k1, k2 = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(kx, (2048, 64))
    teacher = jnp.tanh(x @ jax.random.normal(kt, (64, 32))) @ jax.random.normal(kb, (32, 10))
    y = jnp.argmax(teacher, axis=-1)
    params = {
        "w1": jax.random.normal(k1, (64, 128)) / 8,
        "b1": jnp.zeros(128),
        "w2": jax.random.normal(k2, (128, 10)) / 11,
    }

    def loss(p, idx):
        logits = jax.nn.relu(x[idx] @ p["w1"] + p["b1"][None, :]) @ p["w2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

    batches = jax.random.randint(jax.random.key(1), (steps, 64), 0, 2048)
    return params, loss, batches, jnp.arange(2048)


def _final_loss(tx, steps=300):
    params, loss, batches, everything = _teacher_task(steps)

    def step(carry, idx):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params, idx), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, batches))(
        (params, tx.init(params))
    )
    return float(loss(params, everything)), state


@pytest.mark.slow  # about 15 s: three 300-step runs
def test_4bit_adam_converges_close_to_fp32_adam():
    lr = reference_schedule(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 15, 300))
    start = _final_loss(optax.set_to_zero())[0]
    ref, _ = _final_loss(reference(optax.adam(lr)))
    fmt = adamx.blockwise_4bit()
    got, state = _final_loss(adamx.adam(lr, mu_dtype=fmt, nu_dtype=fmt))
    assert state[0].mu.codes["w1"].shape == (64, 1, 64) and state[0].mu.scales["w2"] is None
    # The loss falls from 2.57 to 0.33 (fp32). The 4-bit run ends 3% above it (8-bit: 0.3%;
    # 4-bit on other seeds of this task: 4-9%): within 10%, >= 98% of fp32's descent.
    assert start > 2.5 and ref < 0.35
    assert ref * 0.98 < got < ref * 1.10
