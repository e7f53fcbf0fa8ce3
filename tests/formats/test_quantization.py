"""Blockwise 8-bit codec and the ``blockwise_8bit`` format: maps, round trips, layout, errors.

References are independent: NumPy brute-force nearest-neighbour search over the
map, the dynamic-tree construction written out from the paper, the float grid
(1 + f/2^M) 2^-e enumerated in NumPy, np.frexp for power-of-two scales, closed-form
error bounds, hand-counted bytes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.formats.codec import dequantize, quantize
from adamx.formats.qmaps import INF_CODE, NAN_CODE, QuantMap, resolve_qmap

MAPS = [("dynamic", True), ("dynamic", False), ("linear", True), ("linear", False)]
FLOAT_MAPS = [("e4m3", True), ("e3m4", True), ("e4m4", False), ("e5m3", False)]


def _float_grid(signed: bool, mantissa_bits: int) -> np.ndarray:
    """The positive values of a float map: the largest 127 (signed) or 253 (unsigned: code
    254 is +inf) numbers (1 + f/2^M) 2^-e that are <= 1, enumerated in float64."""
    grid = {
        (1 + f / 2**mantissa_bits) * 2.0**-e for e in range(1, 40) for f in range(2**mantissa_bits)
    }
    grid = sorted(grid | {1.0})
    return np.array(grid[-(127 if signed else 253) :])


def _nearest_error(table: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance from each y to its nearest finite map value (NumPy brute force)."""
    finite = table[np.isfinite(table)]
    return np.abs(finite[None, :] - y[:, None]).min(axis=1)


@pytest.mark.parametrize(("kind", "signed"), MAPS + FLOAT_MAPS)
def test_map_is_sorted_with_endpoints_and_a_nan_code(kind, signed):
    table = QuantMap(kind, signed).values()
    assert table.shape == (256,) and table.dtype == np.float32
    assert np.isnan(table[NAN_CODE])
    finite = table[:NAN_CODE] if signed else table[:INF_CODE]
    if not signed:  # v = g² can overflow: +inf has its own code
        assert table[INF_CODE] == np.inf
    assert np.all(np.diff(finite) > 0)
    # The largest finite value: 1.0, except on the unsigned dynamic/linear maps, which give
    # their top code to +inf (their block scale is the absmax divided by this value).
    top = {("dynamic", False): 1 - 0.9 / 128, ("linear", False): 253 / 254}.get((kind, signed), 1)
    assert finite[-1] == np.float32(top) and 0.0 in finite
    assert finite[0] == (-1.0 if signed else 0.0)


def test_dynamic_map_matches_the_paper_construction():
    # Dettmers et al. 2021, dynamic tree: 10^-e times a linear fraction in (0.1, 1];
    # the fraction's resolution halves with each extra exponent digit.
    for signed, top in ((True, 64), (False, 128)):
        expected = sorted(
            10.0**-e * (0.1 + 0.9 * j / (top >> e))
            for e in range(7)
            for j in range(1, (top >> e) + 1)
        )
        positive = QuantMap("dynamic", signed).values()[: NAN_CODE if signed else INF_CODE]
        expected = expected if signed else expected[:-1]  # unsigned: the top code is +inf
        np.testing.assert_allclose(positive[positive > 0], expected, rtol=1e-6)
    smallest = QuantMap("dynamic", False).values()[1]
    assert 1e-7 < smallest < 1e-6  # the second moment keeps 7 decades below its block max


@pytest.mark.parametrize(("kind", "signed"), FLOAT_MAPS)
def test_float_map_is_the_float_grid(kind, signed):
    # Codes 1..top above zero: 1.0 at the top, then every float with M fraction bits below.
    mantissa_bits = int(kind[-1])
    table = QuantMap(kind, signed).values().astype(np.float64)
    zero = 127 if signed else 0
    top = NAN_CODE if signed else INF_CODE
    np.testing.assert_array_equal(table[zero + 1 : top], _float_grid(signed, mantissa_bits))
    assert table[zero] == 0.0
    if signed:  # symmetric: code 127 - k is minus code 127 + k
        np.testing.assert_array_equal(table[:127], -table[128:NAN_CODE][::-1])
    assert adamx.blockwise_8bit(signed).init(jnp.zeros(4096))[0].dtype == jnp.uint8
    assert adamx.blockwise_8bit(signed)._map() == QuantMap("e4m3" if signed else "e4m4", signed)


@pytest.mark.parametrize(("kind", "signed"), MAPS + FLOAT_MAPS)
def test_encoding_picks_the_nearest_map_value(kind, signed):
    qmap = QuantMap(kind, signed)
    table = qmap.values()
    rng = np.random.default_rng(0)
    n = 4000
    sign = rng.choice([-1.0, 1.0], n) if signed else np.ones(n)
    y = np.concatenate(
        [
            rng.uniform(-1.0 if signed else 0.0, 1.0, n),
            sign * 10.0 ** rng.uniform(-9, 0, n),  # every decade of the dynamic range
            table[:NAN_CODE],  # the map values themselves
            (table[: NAN_CODE - 1] + table[1:NAN_CODE]) / 2 * (1 + 1e-6),  # near midpoints
        ]
    ).astype(np.float32)
    y = y[(y >= -1) & (y <= 1)]
    codes = np.asarray(qmap.index(jnp.asarray(y)))
    got = np.abs(table[codes] - y)
    np.testing.assert_array_less(got, _nearest_error(table, y) * (1 + 1e-5) + 1e-12)


@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_is_bounded_per_block(signed):
    # Blocks of very different magnitude: each keeps its own scale, so the error of
    # an element is at most half the map's gap near it, times its own block's max.
    rng = np.random.default_rng(1)
    scales = 10.0 ** rng.uniform(-6, 3, size=(3, 8, 1))
    x = rng.standard_normal((3, 8, 256)) * scales
    x = (x if signed else np.abs(x)).astype(np.float32)
    qmap = QuantMap("dynamic", signed)
    codes, scale = quantize(jnp.asarray(x.reshape(3, 2048)), qmap, 256)
    back = np.asarray(dequantize(codes, scale, qmap, (3, 2048))).reshape(3, 8, 256)
    absmax = np.abs(x).max(axis=-1, keepdims=True)
    top = 1.0 if signed else np.float32(1 - 0.9 / 128)  # unsigned: code 254 is +inf
    np.testing.assert_allclose(np.asarray(scale), absmax[..., 0] / top, rtol=2e-7)  # one rounding
    s = absmax / top
    bound = _nearest_error(qmap.values(), (x / s).ravel()).reshape(x.shape) * s
    f32_rounding = 4 * np.finfo(np.float32).eps * s  # of x / s and of q * s
    np.testing.assert_array_less(np.abs(back - x), bound + f32_rounding)
    # Within a decade of the block max the map is linear with 64 (signed) or 128 (unsigned)
    # steps over [0.1, 1]: the error is at most half a step, 0.45/64 or 0.45/128 of the max.
    big = np.abs(x) >= absmax / 10
    half_step = 0.45 / (64 if signed else 128)
    err = (np.abs(back - x) / s)[big]
    assert err.max() <= half_step * (1 + 1e-4) and err.max() > half_step / 2


@pytest.mark.parametrize(("kind", "signed"), FLOAT_MAPS)
def test_float_round_trip_error_is_bounded_per_block(kind, signed):
    # Closed form: s = 2^(floor(log2 max|x|) + 1) per block (x / s is exact), and each
    # element is off by at most half a step, 2^-(M+1) |x|, down to q_min s; below
    # that by at most q_min s / 2 (signed: 0 or q_min) or q_min s (unsigned: q_min).
    mantissa_bits = int(kind[-1])
    q_min = _float_grid(signed, mantissa_bits)[0]
    rng = np.random.default_rng(1)
    scales = 10.0 ** rng.uniform(-6, 3, size=(3, 8, 1))
    depth = 1.5 * np.log2(1 / q_min)  # a third of the elements fall below q_min s
    x = rng.standard_normal((3, 8, 256)) * 2.0 ** rng.uniform(-depth, 0, (3, 8, 256)) * scales
    x = (x if signed else np.abs(x)).astype(np.float32)
    qmap = QuantMap(kind, signed)
    codes, scale = quantize(jnp.asarray(x.reshape(3, 2048)), qmap, 256, zero_point=signed)
    back = np.asarray(dequantize(codes, scale, qmap, (3, 2048))).reshape(3, 8, 256)
    _, exponent = np.frexp(np.abs(x).max(axis=-1))  # max = f 2^exponent, f in [0.5, 1)
    np.testing.assert_array_equal(np.asarray(scale), np.ldexp(1.0, exponent))
    s = np.ldexp(1.0, exponent)[..., None]
    err = np.abs(back.astype(np.float64) - x)
    big = np.abs(x) >= q_min * s
    assert big.mean() > 0.4 and (~big).mean() > 0.1  # both regimes are exercised
    half_step = 2.0 ** -(mantissa_bits + 1)
    assert np.all(err[big] <= half_step * np.abs(x[big]))
    assert err[big].max() > half_step / 2 * np.abs(x[big]).max() / 2**3
    assert np.all(err[~big] <= (q_min / 2 if signed else q_min) * s.repeat(256, -1)[~big])


def test_block_max_round_trips_exactly_and_zero_blocks_stay_zero():
    x = np.zeros((2, 512), np.float32)
    x[0, :256] = np.linspace(-3.0, 2.0, 256)
    qmap = QuantMap("dynamic", True)
    codes, scale = quantize(jnp.asarray(x), qmap, 256)
    back = np.asarray(dequantize(codes, scale, qmap, x.shape))
    assert back[0, 0] == -3.0
    np.testing.assert_array_equal(back[:, 256:], 0.0)
    np.testing.assert_array_equal(back[1], 0.0)


def _scale_reference(kind, absmax, signed=True):
    """Block scale: absmax (dynamic, linear; unsigned: over the largest finite value, whose
    top code is +inf) or the power of two above it (float maps)."""
    if kind in ("dynamic", "linear"):
        top = {"dynamic": 1 - 0.9 / 128, "linear": 253 / 254}[kind]
        return absmax if signed else absmax / np.float32(top)
    return np.ldexp(1.0, np.frexp(absmax)[1])


@pytest.mark.parametrize("kind", ["dynamic", "e4m3"])
def test_non_finite_elements_do_not_poison_their_block(kind):
    # Each NaN/inf decodes as NaN on its own; the block's scale ignores it.
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1024).astype(np.float32)
    x[3], x[300], x[600] = np.nan, np.inf, -np.inf
    qmap = QuantMap(kind, True)
    codes, scale = quantize(jnp.asarray(x), qmap, 256)
    back = np.asarray(dequantize(codes, scale, qmap, x.shape))
    assert np.isnan(back[[3, 300, 600]]).all()
    finite = np.isfinite(x)
    assert np.isfinite(back[finite]).all()
    absmax = np.nanmax(np.where(finite, np.abs(x), 0).reshape(4, 256), -1)
    np.testing.assert_allclose(np.asarray(scale), _scale_reference(kind, absmax))
    tol = dict(atol=0.01 * absmax.max()) if kind == "dynamic" else dict(rtol=1 / 16, atol=1e-4)
    np.testing.assert_allclose(back[finite], x[finite], **tol)


@pytest.mark.parametrize("kind", ["dynamic", "float"])
def test_denormal_blocks_stay_finite(kind):
    tiny = np.float32(1e-40)  # a float32 denormal
    x = np.full(512, tiny, np.float32)
    x[256:] = np.linspace(-1.0, 1.0, 256)
    x[300] = tiny
    for signed in (True, False):
        qmap = resolve_qmap(kind, signed)
        xs = x if signed else np.abs(x)
        codes, scale = quantize(jnp.asarray(xs), qmap, 256)
        back = np.asarray(dequantize(codes, scale, qmap, x.shape))
        assert np.isfinite(back).all()
        assert np.all(np.abs(back[:256]) <= 2e-40)  # kept or flushed to zero, never blown up
        np.testing.assert_allclose(back[256:], xs[256:], rtol=1 / 16, atol=1e-3)


@pytest.mark.parametrize("kind", ["dynamic", "e4m4"])
def test_positive_second_moment_never_rounds_to_zero(kind):
    # v = 1e-12 next to v = 1 in one block: the nearest map value is 0, but a zero v
    # would make m / (sqrt(v) + eps) explode, so the unsigned format keeps it positive.
    v = np.ones(256, np.float32)
    v[7] = 1e-12
    qmap = QuantMap(kind, False)
    codes, scale = quantize(jnp.asarray(v), qmap, 256, zero_point=False)
    back = np.asarray(dequantize(codes, scale, qmap, v.shape))
    smallest = qmap.values()[1] * _scale_reference(kind, 1.0, signed=False)
    assert back[7] == np.float32(smallest) and back[7] > 0
    codes, scale = quantize(jnp.asarray(v), qmap, 256)  # plain nearest rounding
    assert np.asarray(dequantize(codes, scale, qmap, v.shape))[7] == 0.0


@pytest.mark.parametrize(
    ("shape", "codes_shape", "scale_shape"),
    [
        ((8, 4096), (8, 16, 256), (8, 16)),  # leading axes kept
        ((64, 100), (64, 1, 100), (64, 1)),  # a short last axis is one block
        ((4, 2, 600), (4, 2, 3, 256), (4, 2, 3)),  # a ragged last block is padded
    ],
)
def test_blocks_run_along_the_last_axis(shape, codes_shape, scale_shape):
    fmt = adamx.blockwise_8bit(signed=True, min_size=0)
    codes, scales = stored = fmt.init(jnp.zeros(shape))
    assert codes.shape == codes_shape and codes.dtype == jnp.uint8
    assert scales.shape == scale_shape and scales.dtype == jnp.float32
    x = jax.random.normal(jax.random.key(0), shape)
    back = fmt.decode(fmt.encode(x, stored), x)
    assert back.shape == shape and back.dtype == jnp.float32
    np.testing.assert_allclose(back, x, rtol=1 / 16, atol=1e-4)  # E4M3: half a step, 2^-4


def test_small_and_scalar_parameters_stay_float32():
    fmt = adamx.blockwise_8bit(signed=False)  # min_size=4096
    for param in (jnp.zeros((63, 65), jnp.bfloat16), jnp.zeros(()), jnp.zeros((4095,))):
        stored, scales = fmt.init(param)
        assert scales is None and isinstance(stored, jax.Array)
        assert stored.shape == param.shape and stored.dtype == jnp.float32
    assert fmt.init(jnp.zeros((64, 64)))[0].dtype == jnp.uint8
    assert adamx.blockwise_8bit(True, min_size=10).init(jnp.zeros(10))[0].dtype == jnp.uint8


def test_sqrt_companding_stores_the_root():
    fmt = adamx.blockwise_8bit(signed=False, sqrt=True, min_size=0, qmap="dynamic")
    v = (4.0 * 10.0 ** np.linspace(-14, 0, 256)).astype(np.float32)
    stored = fmt.encode(jnp.asarray(v), fmt.init(jnp.asarray(v)))
    s = _scale_reference("dynamic", 2.0, signed=False)  # sqrt of the block max, over the top
    assert float(stored[1][0]) == pytest.approx(s)
    # Decoded: the square of the map value nearest sqrt(v)/s (never 0), times s².
    finite = QuantMap("dynamic", False).values()[1:INF_CODE]
    root = np.sqrt(v) / s
    nearest = finite[np.abs(finite[None, :] - root[:, None]).argmin(axis=1)]
    np.testing.assert_allclose(fmt.decode(stored, v), s**2 * nearest**2, rtol=1e-5)
    assert np.all(np.asarray(fmt.decode(stored, v)) > 0)


def test_state_nbytes_counts_codes_and_scales():
    big, small = jnp.zeros((64, 1024)), jnp.zeros((10,))
    fmt = adamx.blockwise_8bit(signed=True)
    tree = {"big": fmt.init(big), "small": fmt.init(small)}
    # 65536 one-byte codes + 256 float32 block scales + 10 float32 entries.
    assert adamx.state_nbytes(tree) == 65536 + 4 * 256 + 4 * 10
    assert adamx.state_nbytes(jax.eval_shape(lambda: tree)) == 65536 + 4 * 256 + 4 * 10
    assert adamx.state_nbytes({"k": jax.random.key(0), "n": 3}) == 8


@pytest.mark.parametrize("block_size", [0, 1, 3, 100, 257, 256.0, True])
def test_block_size_must_be_a_power_of_two(block_size):
    with pytest.raises(ValueError, match=r"block_size must be a power of two >= 2"):
        adamx.blockwise_8bit(block_size=block_size)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match=r'qmap must be "float", "dynamic", "linear" or a float'):
        adamx.blockwise_8bit(qmap="log")
    with pytest.raises(ValueError, match=r"E \+ M = 8 for signed=False .*got 'e4m3'"):
        adamx.blockwise_8bit(signed=False, qmap="e4m3")
    with pytest.raises(ValueError, match=r"stochastic=True rounds on a float map.*'dynamic'"):
        adamx.blockwise_8bit(signed=False, qmap="dynamic", stochastic=True)
    with pytest.raises(TypeError, match=r"stochastic must be True, False or None"):
        adamx.blockwise_8bit(stochastic=1)
    with pytest.raises(ValueError, match=r"min_size must be an int >= 0"):
        adamx.blockwise_8bit(min_size=-1)
    with pytest.raises(ValueError, match=r"sqrt=True .* needs signed=False"):
        adamx.blockwise_8bit(signed=True, sqrt=True)
    with pytest.raises(TypeError, match=r"signed must be True, False or None, got 'v'"):
        adamx.blockwise_8bit(signed="v")
    with pytest.raises(TypeError, match=r"blockwise_8bit stores real moments.*complex64"):
        adamx.blockwise_8bit(min_size=0).bind("mu").init(jnp.zeros(8, jnp.complex64))
