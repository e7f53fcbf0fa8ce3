r"""``adamx.factored``: a second moment kept as row and column means (Shazeer & Stern 2018).

Each check is against an independent reference: a NumPy float64 Adam whose v is the
factor pair (r, c) itself, updated by Adafactor's rule r' = β r + (1-β) mean_j g²; optax's
own ``scale_by_factored_rms`` (``accumulate`` is its factor update bit for bit) and its
``_factored_dims`` rule; the per-leaf run for the packed paths and the one-device run for
the 8-device mesh (the factors shard like the parameter without the averaged axis).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import standard
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from optax._src import factorized

import adamx
import adamx.sharding
from adamx._rates import ema

LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8
MIN = 4  # min_dim_size_to_factor of the small trees below
SHAPES = {
    "wide": (6, 10),  # d0 = 1: r over columns (6,), c over rows (10,)
    "tall": (10, 6),  # d0 = 0
    "cube": (3, 5, 8),  # d1 = 1, d0 = 2: r (3, 5), c (3, 8); axis 0 kept
    "thin": (2, 12),  # second-largest axis 2 < MIN: full v
    "bias": (10,),  # one axis: full v
}


def _params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}


def _grad(rng, shape, t):
    """Gradients over four decades, one step of exact zeros, a row of zeros now and then."""
    g = rng.standard_normal(shape) * 10.0 ** (t % 4 - 2)
    if t == 3:
        g[...] = 0.0
    if t % 7 == 0 and len(shape) > 1:
        g[0] = 0.0
    return g


# ---------------------------------------------------------------------------
# The NumPy float64 reference, from the maths (not from adamx.formats.factors).


def _np_dims(shape):
    """(d1, d0): the two largest axes, if the smaller is >= MIN (Shazeer & Stern; optax)."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    return None if shape[order[-2]] < MIN else (int(order[-2]), int(order[-1]))


def _np_vhat(r, c, dims):
    """V̂ = r c / mean(r), 0 where mean(r) = 0; r lacks axis d0, c lacks axis d1."""
    d1, d0 = dims
    axis = d1 - 1 if d1 > d0 else d1
    mean = r.mean(axis=axis, keepdims=True)
    ratio = np.divide(r, mean, out=np.zeros_like(r), where=mean > 0)
    return np.expand_dims(ratio, d0) * np.expand_dims(c, d1)


def _np_adam_factored(params, steps, correct_nu=True, seed=1):
    """Adam whose v is Adafactor's factor pair: r' = β2 r + (1-β2) mean_{d0} g², c' likewise;
    the step divides by the dense v_t = β2 V̂(r, c) + (1-β2) g² (what the stage hands on)."""
    rng = np.random.default_rng(seed)
    theta = {k: np.asarray(p, np.float64) for k, p in params.items()}
    m = {k: np.zeros_like(p) for k, p in theta.items()}
    state = {}
    for k, p in theta.items():
        dims = _np_dims(p.shape)
        state[k] = (
            (np.zeros_like(p), None)
            if dims is None
            else (np.zeros(np.delete(p.shape, dims[1])), np.zeros(np.delete(p.shape, dims[0])))
        )
    grads = []
    for t in range(1, steps + 1):
        gs = {k: _grad(rng, p.shape, t) for k, p in theta.items()}
        grads.append(gs)
        for k, g in gs.items():
            dims = _np_dims(g.shape)
            m[k] = B1 * m[k] + (1 - B1) * g
            if dims is None:
                v = B2 * state[k][0] + (1 - B2) * g * g
                state[k] = (v, None)
            else:
                r, c = state[k]
                v = B2 * _np_vhat(r, c, dims) + (1 - B2) * g * g
                d1, d0 = dims
                state[k] = (
                    B2 * r + (1 - B2) * (g * g).mean(axis=d0),
                    B2 * c + (1 - B2) * (g * g).mean(axis=d1),
                )
            vhat = v / (1 - B2**t) if correct_nu else v
            theta[k] = theta[k] - LR * (m[k] / (1 - B1**t)) / (np.sqrt(vhat) + EPS)
    return theta, state, grads


def _run(tx, params, grads):
    step = jax.jit(_step(tx))
    state = tx.init(params)
    for g in grads:
        params, state = step(params, state, jax.tree.map(jnp.asarray, g))
    return params, state


def _step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _relative(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)))


FORMAT = adamx.factored(min_dim_size_to_factor=MIN)
CHAINS = {
    "adam": lambda: adamx.adam(LR, B1, B2, EPS, nu_dtype=FORMAT),
    "stages_nu_uncorrected": lambda: optax.chain(
        adamx.scale_by_moments(B1, B2, nu_dtype=FORMAT),
        adamx.bias_correct(B1, B2, bias_correction_nu=False),
        adamx.scale_by_rsqrt(EPS),
        adamx.scale_by_lr(LR),
    ),
}


@pytest.mark.parametrize("name", CHAINS)
def test_adam_with_a_factored_v_equals_the_numpy_float64_reference_over_200_steps(name):
    with jax.enable_x64(True):
        params = _params(np.float64)
        want, want_state, grads = _np_adam_factored(params, 200, name == "adam")
        got, state = _run(CHAINS[name](), params, grads)
        nu = state[0].nu
        for k in SHAPES:
            assert _relative(got[k], want[k]) < 1e-12, k
            r, c = want_state[k]
            assert nu.row[k].dtype == jnp.float64 and _relative(nu.row[k], r) < 1e-12, k
            assert (nu.col[k] is None) == (c is None), k
            if c is not None:
                assert _relative(nu.col[k], c) < 1e-12, k


# ---------------------------------------------------------------------------
# The identity: encoding the new dense v by its means is Adafactor's factor update.


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decode_then_moving_average_then_encode_equals_accumulate(dtype):
    """mean_j V̂_ij = r_i and the mean is linear, so encode(β V̂ + (1-β) Y) = accumulate. In
    float64 to 1e-15; in float32 within 4 ulps of the factor (means of n numbers and one
    division apart)."""
    tol = 1e-15 if dtype == np.float64 else 4 * 2.0**-23
    rng = np.random.default_rng(3)

    @jax.jit
    def both(v, y):
        stored = FORMAT.encode(v, FORMAT.init(v), None)
        via_dense = FORMAT.encode(ema(y, FORMAT.decode(stored, v), B2), stored, None)
        return via_dense, FORMAT.accumulate(stored, y, B2)

    with jax.enable_x64(dtype == np.float64):
        for shape in [(10, 6), (3, 5, 8), (9, 9), (2, 12)]:
            v, y = rng.random(shape), rng.random(shape) ** 4
            via_dense, direct = both(jnp.asarray(v, dtype), jnp.asarray(y, dtype))
            for a, b in zip(via_dense, direct, strict=True):
                assert (a is None) == (b is None)
                if a is not None:
                    assert a.dtype == b.dtype == dtype
                    assert _relative(a, b) <= tol, (shape, _relative(a, b))


def _optax_factor_update(grad, v_row, v_col, v, count):
    """One step of optax.scale_by_factored_rms from a given state: its new (row, col, v)."""
    tx = factorized.scale_by_factored_rms(min_dim_size_to_factor=MIN)
    state = factorized.FactoredState(jnp.asarray(count, jnp.int32), v_row, v_col, v)
    with standard():
        _, new = tx.update(grad, state, grad)
    return new


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(6, 10), (3, 5, 8), (2, 12)])
def test_accumulate_is_optaxs_factor_update_bit_for_bit(dtype, shape):
    """``accumulate(stored, |g|² + ε, 1 - t^-0.8)`` is optax's new v_row / v_col (or v), with
    optax's float32 decay on a bfloat16 state (optax's choice of dtype, ``widen=False``): what
    adamx.adafactor builds on."""
    rng = np.random.default_rng(4)
    fmt = FORMAT._replace(widen=False)
    grad = jnp.asarray(rng.standard_normal(shape), dtype)
    stored = fmt.encode(jnp.asarray(rng.random(shape), dtype), fmt.init(grad), None)
    one = jnp.zeros((1,), dtype)
    row, col = stored
    v_row, v_col, v = (one, one, row) if col is None else (row, col, one)
    count = 6
    new = _optax_factor_update({"w": grad}, {"w": v_row}, {"w": v_col}, {"w": v}, count)
    with standard():
        decay = factorized._decay_rate_pow(jnp.asarray(count, jnp.int32), 0.8)
        y = grad * grad + 1e-30
    got = fmt.accumulate(stored, y, decay)
    if col is None:
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(new.v["w"]))
        assert got[1] is None
    else:
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(new.v_row["w"]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(new.v_col["w"]))
    assert got[0].dtype == dtype


# ---------------------------------------------------------------------------
# Which leaves factor, and the fallback.


@pytest.mark.parametrize(
    "shape",
    [
        (),
        (7,),
        (512,),
        (127, 4096),
        (128, 128),
        (128, 4096),
        (4096, 128),
        (3, 200, 130),
        (200, 3, 130),
        (130, 3, 200),
        (128, 128, 128),
        (2, 2, 300),
        (64, 3, 4, 500),
    ],
)
def test_which_axes_factor_is_optaxs_rule(shape):
    fmt = adamx.factored()  # bfloat16 parameters: float32 factors (dtype None widens)
    assert fmt.dims(shape) == factorized._factored_dims(shape, True, 128)
    row, col = fmt.init(jnp.zeros(shape, jnp.bfloat16))
    if fmt.dims(shape) is None:  # the documented fallback: the full v, in the same dtype
        assert col is None and row.shape == shape and row.dtype == jnp.float32
    else:
        d1, d0 = fmt.dims(shape)
        assert row.shape == tuple(np.delete(shape, d0)) and row.dtype == jnp.float32
        assert col.shape == tuple(np.delete(shape, d1)) and col.dtype == jnp.float32


def test_the_zero_state_decodes_to_exactly_zero():
    """All-zero factors (the initial state) and an all-zero slice of a 3-D leaf: 0, not NaN."""
    for shape in [(6, 10), (3, 5, 8)]:
        x = jnp.zeros(shape)
        np.testing.assert_array_equal(np.asarray(FORMAT.decode(FORMAT.init(x), x)), 0.0)
    y = np.ones((3, 5, 8), np.float32)
    y[1] = 0.0
    got = np.asarray(FORMAT.decode(FORMAT.encode(jnp.asarray(y), FORMAT.init(x), None), x))
    np.testing.assert_array_equal(got, y)  # rank one: decoded exactly


def test_a_nan_factor_is_not_hidden_by_the_safe_divide():
    """Only an exact zero mean decodes to 0: a NaN in v poisons the leaf's estimate (as it
    poisons a float v), rather than resetting it to 0."""
    v = np.ones((6, 10), np.float32)
    v[2, 3] = np.nan
    x = jnp.zeros((6, 10))
    stored = FORMAT.encode(jnp.asarray(v), FORMAT.init(x), None)
    assert np.all(np.isnan(np.asarray(FORMAT.decode(stored, x))))


def test_a_rank_one_matrix_is_stored_exactly():
    """V = a bᵀ has r = a mean(b), c = b mean(a), and r c / mean(r) = a bᵀ."""
    a, b = np.arange(1.0, 7.0), np.linspace(0.5, 2.0, 10)
    v = jnp.asarray(np.outer(a, b), jnp.float32)
    got = FORMAT.decode(FORMAT.encode(v, FORMAT.init(v), None), v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(v), rtol=4 * 2.0**-23)


# ---------------------------------------------------------------------------
# Composition: aliases, jit, dtypes, bytes, the other roles, the configuration check.


ALIASES = ["adamw", "nadam", "amsgrad"]
ALIASES += [pytest.param(a, marks=pytest.mark.slow) for a in ("nadamw", "radam", "adamax")]


@pytest.mark.parametrize("alias", ALIASES)
def test_aliases_run_with_a_factored_v_without_retracing(alias):
    params = _params()
    tx = getattr(adamx, alias)(LR, nu_dtype=FORMAT)
    traces = []

    def step(params, state, grads):
        traces.append(1)
        return _step(tx)(params, state, grads)

    step = jax.jit(step)
    state = tx.init(params)
    rng = np.random.default_rng(0)
    for t in range(3):
        grads = {k: jnp.asarray(_grad(rng, p.shape, t + 1), jnp.float32) for k, p in params.items()}
        params, state = step(params, state, grads)
    assert len(traces) == 1
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
    nu = optax.tree.get(state, "nu") if alias != "amsgrad" else state[0].nu
    assert nu.col["wide"].shape == (10,) and nu.col["bias"] is None


def test_bfloat16_parameters_keep_their_dtypes():
    """dtype=None stores the factors of bfloat16 parameters in float32 (widened: a bfloat16
    factor could not decay); widen=False keeps the parameters' bfloat16 (optax.adafactor's
    choice), the moving average then runs in float32 (decode widens). Updates and params stay
    bfloat16."""
    params = _params(jnp.bfloat16)
    optax_choice = FORMAT._replace(widen=False)
    for fmt, stored in [(FORMAT, jnp.float32), (optax_choice, jnp.bfloat16)]:
        tx = adamx.adamw(LR, nu_dtype=fmt)
        state = tx.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        updates, new_state = jax.jit(tx.update)(grads, state, params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        want = jax.tree.map(lambda x: x.dtype, state)
        assert jax.tree.map(lambda x: x.dtype, new_state) == want
        assert new_state[0].nu.row["wide"].dtype == (stored or jnp.float32)


def test_state_bytes_of_a_4096_square_leaf():
    """v of a 4096 x 4096 float32 leaf: (4096 + 4096) * 4 bytes, plus the config byte; the
    whole adam state adds m (4096² * 4) and the step count (4)."""
    params = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
    state = jax.eval_shape(adamx.adam(1e-3, nu_dtype=adamx.factored()).init, params)
    assert adamx.state_nbytes(state[0].nu) == (4096 + 4096) * 4 + 1
    assert adamx.state_nbytes(state) == 4096 * 4096 * 4 + (4096 + 4096) * 4 + 1 + 4


def test_roles_mu_is_refused_and_amsgrads_maximum_is_factored():
    with pytest.raises(ValueError, match=r"mu_dtype=factored\(.*first moment m is signed.*"):
        adamx.adam(1e-3, mu_dtype=FORMAT)
    assert FORMAT.bind("nu") is FORMAT and FORMAT.bind("nu_max") is FORMAT
    # AMSGrad: the stored maximum's factors never decrease (means of max(V̂max, v) >= V̂max's).
    tx = adamx.amsgrad(LR, nu_dtype=FORMAT)
    update = jax.jit(tx.update)
    params = _params()
    state, rng, last = tx.init(params), np.random.default_rng(5), None
    for t in range(5):
        grads = {k: jnp.asarray(_grad(rng, p.shape, t + 1), jnp.float32) for k, p in params.items()}
        _, state = update(grads, state, params)
        nu_max = state[1].nu_max if hasattr(state[1], "nu_max") else optax.tree.get(state, "nu_max")
        if last is not None:  # up to the roundings of a mean and a division
            for new, old in zip(jax.tree.leaves(nu_max), jax.tree.leaves(last), strict=True):
                assert np.all(np.asarray(new) >= np.asarray(old) * (1 - 4 * 2.0**-23))
        last = nu_max


def test_constructor_checks_and_description():
    assert adamx.factored() == adamx.Factored(128, None)
    assert isinstance(adamx.factored(), adamx.MomentFormat)
    assert adamx.factored(64, dtype=jnp.float32).describe() == (
        "factored(min_dim_size_to_factor=64, dtype=float32)"
    )
    with pytest.raises(ValueError, match=r"min_dim_size_to_factor must be an int >= 0"):
        adamx.factored(-1)
    assert adamx.factored(0).dims((1, 3)) == (0, 1)  # as optax: any leaf of two axes
    with pytest.raises(TypeError, match=r"dtype must be a floating-point dtype"):
        adamx.factored(dtype=jnp.int8)
    with pytest.raises(ValueError, match=r"dtype must be a real floating-point dtype"):
        adamx.factored(dtype=jnp.complex64)
    with pytest.warns(UserWarning, match=r"factored\(dtype=bfloat16\).*dtype=jnp.float32"):
        adamx.factored(dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match=r"nu_dtype at the parameter at \['z'\].*complex"):
        adamx.adam(1e-3, nu_dtype=FORMAT).init({"z": jnp.zeros((8, 8), jnp.complex64)})


def test_a_state_of_another_configuration_is_refused():
    params = _params()
    state = adamx.adam(LR, nu_dtype=adamx.factored(MIN)).init(params)
    tx = adamx.adam(LR, nu_dtype=adamx.factored(MIN + 1))
    with pytest.raises(ValueError, match=r"stored as factored\(min_dim_size_to_factor=4"):
        tx.update(jax.tree.map(jnp.ones_like, params), state, params)


# ---------------------------------------------------------------------------
# The packed paths: a bucket keeps its full v, as the per-leaf run does for small leaves.


def _packable_params():
    rng = np.random.default_rng(6)
    shapes = {"w": (64, 128), "b": (256,), "ln": (64,), "emb": (10, 30), "w2": (32, 128)}
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _op_by_op(tx, params, steps=2):
    with jax.disable_jit():
        state = tx.init(params)
        for i in range(steps):
            grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)) * 10.0 ** (i % 3 - 1), params)
            params, state = _step(tx)(params, state, grads)
    return params, state


def test_multi_tensor_equals_the_per_leaf_run():
    """Default min_size 4096 and min_dim_size_to_factor 32: "w" and "w2" factor, loose; the
    rest (<= 300 elements, none factorable) share a bucket with its full v."""
    params = _packable_params()
    fmt = adamx.factored(32)
    want, want_state = _op_by_op(adamx.adam(LR, nu_dtype=fmt), params)
    got, state = _op_by_op(adamx.multi_tensor(adamx.adam(LR, nu_dtype=fmt)), params)
    chex.assert_trees_all_equal(got, want)
    nu = optax.tree.get(state, "nu")
    assert nu.col.buckets["float32"] is None and nu.row.buckets["float32"].ndim == 1
    chex.assert_trees_all_equal(nu.col.loose[0], want_state[0].nu.col["w"])


@pytest.mark.slow
def test_pack_equals_the_per_leaf_run():
    params, fmt = _packable_params(), adamx.factored(32)
    want, _ = _op_by_op(adamx.adam(LR, nu_dtype=fmt), params)
    packed, _ = _op_by_op(adamx.adam(LR, nu_dtype=fmt), adamx.pack(params))
    chex.assert_trees_all_equal(packed.unpack(), want)


def test_a_bucket_holding_a_leaf_that_could_factor_is_refused():
    params = _packable_params()  # "w2" (4096 elements) packed below min_size=8192
    tx = adamx.multi_tensor(adamx.adam(LR, nu_dtype=adamx.factored(32)), min_size=8192)
    match = (
        r"scale_by_moments: nu_dtype at the parameter at .*: factored keeps the row and column "
        r"means.*the leaf at \['w2'\] \(4096 elements\) was packed.*min_size <= 1024"
    )
    with pytest.raises(ValueError, match=match):
        tx.init(params)
    fixed = adamx.multi_tensor(adamx.adam(LR, nu_dtype=adamx.factored(32)), min_size=1024)
    want = _op_by_op(adamx.adam(LR, nu_dtype=adamx.factored(32)), params)[0]
    chex.assert_trees_all_equal(_op_by_op(fixed, params)[0], want)


# ---------------------------------------------------------------------------
# On 8 devices: the factors shard like the parameter without the averaged axis.

MESH_SHAPES = {"a": (2048, 256), "b": (2048, 256), "c": (8, 256, 512), "d": (8, 256, 512)}
MESH_SPECS = {
    "a": ("x", None),  # d0 = 0 split: r (256,) whole, c (2048,) split
    "b": (None, "x"),  # d1 = 1 split: r (256,) split, c (2048,) whole
    "c": ("x", None, None),  # the kept axis split: both factors split on it
    "d": (None, None, "x"),  # d0 = 2 split: r (8, 256) whole, c (8, 512) split on axis 1
    "bias": ("x",),  # not factored: the full v, like the parameter
}
EXPECTED = {  # (row spec, col spec), written out
    "a": ((), ("x",)),
    "b": (("x",), ()),
    "c": (("x",), ("x",)),
    "d": ((), (None, "x")),
    "bias": (("x",), None),
}


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_factors_shard_like_the_parameter_on_eight_devices(eight_devices, mode):
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("x",), (kind,), devices=eight_devices)
    rng = np.random.default_rng(7)
    shapes = {**MESH_SHAPES, "bias": (256,)}
    host = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grads_host = [jax.tree.map(lambda p, t=t: np.sin(p * (t + 1)), host) for t in range(2)]
    fmt = adamx.factored()
    tx = adamx.adam(LR, nu_dtype=fmt)

    def put(tree):
        return {k: jax.device_put(x, _named(mesh, MESH_SPECS[k])) for k, x in tree.items()}

    with jax.set_mesh(mesh):
        params = put(host)
        shardings = adamx.sharding.state_shardings(tx, params)
        if mode == "explicit":
            state = jax.jit(tx.init)(params)
        else:
            state = jax.jit(tx.init, out_shardings=shardings)(params)
        for got in (state[0].nu, shardings[0].nu):
            for k, want in EXPECTED.items():
                ndim = len(shapes[k]) - (want[1] is not None)
                specs = fmt.partition_specs(MESH_SPECS[k], shapes[k])
                assert specs == tuple(None if w is None else _pad(w, ndim) for w in want), k
                for stored, spec in zip((got.row[k], got.col[k]), want, strict=True):
                    if spec is None:
                        assert stored is None, k
                        continue
                    sharding = getattr(stored, "sharding", stored)
                    assert sharding.is_equivalent_to(_named(mesh, spec), ndim), (k, sharding)
        step = jax.jit(_step(tx))
        got = params, state
        for g in grads_host:
            got = step(*got, put(g))
    one = jax.devices()[0]
    want = jax.device_put(host, one), tx.init(jax.device_put(host, one))
    for g in grads_host:
        want = jax.jit(_step(tx))(*want, jax.device_put(g, one))
    chex.assert_trees_all_close(jax.device_get(got), jax.device_get(want), rtol=1e-5, atol=1e-7)


def _named(mesh, spec):
    return NamedSharding(mesh, PartitionSpec(*spec))


def _pad(spec, ndim):
    """``spec`` with one entry per axis (``partition_specs``' form)."""
    return tuple(spec) + (None,) * (ndim - len(spec))
