"""Update clipping (StableAdamW): ``update_rms`` records RMS(g²/max(v̂, ε²)) per leaf,
``clip_by_update_rms`` divides the wrapped chain's whole step by max(1, that RMS).

Closed forms on hand-made moment records, the recorded RMS against NumPy on Adam's own
moments, equality with AdamW wherever the RMS stays <= 1, refusals, formats and dtypes.
Parity with torch-optimi and pytorch_optimizer: tests/aliases/test_parity_stable_adamw.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _streams import gradient_stream, make_params, run_open_loop

import adamx
from adamx import Moments

LR, WD = 0.1, 0.5


def records(ratio: float):
    """A stage that turns g into the record (m̂ = g, v̂ = g²/ratio², g): RMS = ratio exactly."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: Moments(g, g * g / ratio**2, g), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clipped_chain(ratio: float, wrap: bool = True):
    """records(ratio), update_rms, rsqrt (u = ratio·sign g), decoupled decay λ, lr α."""
    tx = optax.chain(
        records(ratio),
        adamx.update_rms(0.0),
        adamx.scale_by_rsqrt(0.0),
        adamx.add_decoupled_weight_decay(WD),
        adamx.scale_by_lr(LR),
    )
    return adamx.clip_by_update_rms(tx) if wrap else tx


@pytest.mark.parametrize("ratio", [4.0, 0.5])
def test_a_leaf_with_rms_4_steps_a_quarter_as_far_decay_included(ratio):
    """Δθ = -α(ratio·sign g + λθ) / max(1, ratio): RMS 4 quarters the whole step, RMS ½ keeps it."""
    params = {"w": jnp.array([1.0, -2.0, 0.5, 3.0])}
    grads = {"w": jnp.array([2.0, -1.0, 0.25, -8.0])}
    tx = clipped_chain(ratio)
    updates, state = tx.update(grads, tx.init(params), params)
    theta, g = np.asarray(params["w"], np.float64), np.asarray(grads["w"], np.float64)
    expected = -LR * (ratio * np.sign(g) + WD * theta) / max(1.0, ratio)
    np.testing.assert_allclose(updates["w"], expected, rtol=2e-7)
    assert float(optax.tree.get(state, "rms")["w"]) == ratio
    plain = clipped_chain(ratio, wrap=False)
    unclipped, _ = plain.update(grads, plain.init(params), params)
    if ratio <= 1:  # the wrapper changes nothing, bit for bit
        np.testing.assert_array_equal(updates["w"], unclipped["w"])


def test_each_leaf_is_clipped_by_its_own_rms():
    """Two leaves, one chain: the record is per leaf, not global."""
    tx = optax.chain(adamx.update_rms(0.0), adamx.scale_by_rsqrt(0.0))
    grads = {"big": jnp.full(3, 2.0), "small": jnp.full(5, 3.0)}
    moments = {
        "big": Moments(grads["big"], grads["big"] ** 2 / 9.0, grads["big"]),  # RMS 3
        "small": Moments(grads["small"], grads["small"] ** 2 * 4.0, grads["small"]),  # RMS ½
    }
    wrapped = adamx.clip_by_update_rms(optax.chain(_const(moments), tx))
    updates, state = wrapped.update(grads, wrapped.init(grads))
    np.testing.assert_allclose(updates["big"], jnp.full(3, 3.0 / 3.0), rtol=1e-7)
    np.testing.assert_allclose(updates["small"], jnp.full(5, 0.5), rtol=1e-7)
    rms = optax.tree.get(state, "rms")
    np.testing.assert_allclose([rms["big"], rms["small"]], [3.0, 0.5], rtol=1e-7)


def _const(tree):
    """A stage that replaces the updates by ``tree`` (hand-made moment records)."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(), lambda updates, state, params=None: (tree, state)
    )


def test_eps_floors_v_hat_inside_the_rms():
    """v̂ below ε² counts as ε²: g = 1e-3, v̂ = 0, ε = 1e-2 gives RMS = 1e-3/1e-2."""
    g = jnp.full(4, 1e-3)
    tx = optax.chain(_const({"w": Moments(g, jnp.zeros(4), g)}), adamx.update_rms(1e-2))
    _, state = tx.update({"w": g}, tx.init({"w": g}))
    np.testing.assert_allclose(optax.tree.get(state, "rms")["w"], 0.1, rtol=1e-6)


def test_recorded_rms_is_numpys_on_adams_moments():
    """Over a stream, the record of the last step is RMS(g²/max(v̂, ε²)) of that step's v̂ and g."""
    params = make_params(jnp.float32)
    steps, b2, eps = 40, 0.99, 1e-6
    tx = adamx.stable_adamw(1e-2, b2=b2, eps=eps)
    _, state, _ = run_open_loop(tx, params, steps)
    g_last = jax.tree.map(lambda g: g[-1], gradient_stream(params, steps))
    nu, rms = optax.tree.get(state, "nu"), optax.tree.get(state, "rms")

    def expected(g, v):
        v_hat = np.asarray(v, np.float64) / (1 - b2**steps)
        return np.sqrt(np.mean(np.asarray(g, np.float64) ** 2 / np.maximum(v_hat, eps**2)))

    leaves = jax.tree_util.tree_leaves_with_path(rms), jax.tree.leaves(g_last), jax.tree.leaves(nu)
    for (path, r), g, v in zip(*leaves, strict=True):
        np.testing.assert_allclose(float(r), expected(g, v), rtol=1e-5, err_msg=str(path))


def test_equals_adamw_bit_for_bit_while_rms_stays_below_one():
    """Shrinking gradients keep g² below v̂: the clip never binds, the step is AdamW's."""
    params = make_params(jnp.float32)
    ours = adamx.stable_adamw(1e-2)
    adamw = adamx.adamw(1e-2, b2=0.99, eps=1e-6, weight_decay=1e-2)
    step_ours, step_adamw = jax.jit(ours.update), jax.jit(adamw.update)
    s_ours, s_adamw = ours.init(params), adamw.init(params)
    for t in range(20):
        grads = jax.tree.map(lambda p, t=t: jnp.ones_like(p) * 0.5**t, params)
        u_ours, s_ours = step_ours(grads, s_ours, params)
        u_adamw, s_adamw = step_adamw(grads, s_adamw, params)
        chex.assert_trees_all_equal(u_ours, u_adamw)
        assert all(float(r) <= 1.0 for r in jax.tree.leaves(optax.tree.get(s_ours, "rms")))


def test_update_rms_hands_the_records_on_unchanged():
    params = make_params(jnp.float32)
    grads = jax.tree.map(lambda g: g[3], gradient_stream(params, 4))
    with_stage = optax.chain(adamx.scale_by_moments(), adamx.bias_correct(), adamx.update_rms())
    without = optax.chain(adamx.scale_by_moments(), adamx.bias_correct())
    got = with_stage.update(grads, with_stage.init(params))[0]
    want = without.update(grads, without.init(params))[0]
    chex.assert_trees_all_equal(got, want)


# Refusals.


def test_refused_on_packed_buckets():
    params = make_params(jnp.float32)
    match = r"computes one statistic per parameter leaf.*buckets"
    with pytest.raises(ValueError, match=match):
        adamx.multi_tensor(adamx.stable_adamw(1e-3), min_size=64).init(params)
    with pytest.raises(ValueError, match=match):
        adamx.stable_adamw(1e-3).init(adamx.pack(params, min_size=64))
    with pytest.raises(ValueError, match=match):
        adamx.update_rms().init(adamx.pack(params, min_size=64))


def test_nothing_packed_runs_and_matches_the_plain_chain():
    params = make_params(jnp.float32)
    grads = jax.tree.map(lambda g: g[2], gradient_stream(params, 3))
    packed = adamx.multi_tensor(adamx.stable_adamw(1e-3), min_size=0)
    plain = adamx.stable_adamw(1e-3)
    got = packed.update(grads, packed.init(params), params)[0]
    want = plain.update(grads, plain.init(params), params)[0]
    chex.assert_trees_all_close(got, want, rtol=1e-6)


def test_refused_inside_sparse_rows():
    table = jnp.ones((10, 4))
    tx = adamx.sparse_rows(adamx.stable_adamw(1e-3))
    state = tx.init({"emb": table})
    grads = {"emb": adamx.row_sparse(jnp.array([1, 3]), jnp.ones((2, 4)), 10)}
    with pytest.raises(ValueError, match=r"per-tensor stage.*clip_by_update_rms"):
        tx.update(grads, state, {"emb": table})


@pytest.mark.parametrize("count", [0, 2])
def test_wrapper_needs_exactly_one_update_rms(count):
    chain = optax.chain(
        adamx.scale_by_moments(),
        adamx.bias_correct(),
        *[adamx.update_rms() for _ in range(count)],
        adamx.scale_by_rsqrt(),
    )
    what = "no update_rms stage" if count == 0 else "2 update_rms stages"
    with pytest.raises(ValueError, match=rf"clip_by_update_rms.*holds {what}.*update_rms\(eps\)"):
        adamx.clip_by_update_rms(chain).init(make_params(jnp.float32))
    with pytest.raises(ValueError, match="no update_rms stage"):
        adamx.clip_by_update_rms(adamx.adamw(1e-3)).init(make_params(jnp.float32))


def test_refuses_adamaxs_infinity_norm_and_plain_gradients():
    params = {"w": jnp.ones(3)}
    adamax = optax.chain(adamx.scale_by_moments(infinity_norm=True), adamx.update_rms())
    with pytest.raises(TypeError, match=r"update_rms reads the mean square.*infinity norm"):
        adamax.update(params, adamax.init(params))
    with pytest.raises(TypeError, match="update_rms takes the moment tree"):
        adamx.update_rms().update(params, adamx.update_rms().init(params))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="eps"):
        adamx.update_rms(-1.0)
    with pytest.raises(TypeError, match=r"tx must be an optax.GradientTransformation.*got 0.1"):
        adamx.clip_by_update_rms(0.1)


# Formats, dtypes, tracing.


@pytest.mark.parametrize(
    "formats",
    [
        dict(nu_dtype=adamx.blockwise_8bit()),
        dict(mu_dtype=jnp.bfloat16),
        dict(mu_dtype=jnp.bfloat16, nu_dtype=adamx.blockwise_8bit()),
    ],
    ids=["8bit_nu", "bf16_mu", "both"],
)
def test_state_formats_run_and_stay_finite(formats):
    params = {"w": jax.random.normal(jax.random.key(0), (64, 128)), "b": jnp.zeros(128)}
    tx = adamx.stable_adamw(1e-3, **formats)
    final, state, updates = run_open_loop(tx, params, 50)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(final))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(updates))
    rms = optax.tree.get(state, "rms")
    assert all(x.dtype == jnp.float32 and bool(jnp.isfinite(x)) for x in jax.tree.leaves(rms))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_dtypes_kept_and_no_retrace(dtype):
    params = make_params(dtype)
    tx = adamx.stable_adamw(1e-3)
    chex.clear_trace_counter()  # the counter is per function, across the parametrized runs

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s, g):
        return tx.update(g, s, p)

    state = tx.init(params)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), state)
    stream = gradient_stream(params, 3)
    for t in range(3):
        updates, state = step(params, state, jax.tree.map(lambda g, t=t: g[t], stream))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), state) == spec
    rms = jax.tree.leaves(optax.tree.get(state, "rms"))
    assert all(r.dtype == jnp.float32 and r.shape == () for r in rms)


def test_float64_leaves_keep_a_float64_rms():
    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        tx = adamx.stable_adamw(1e-3)
        _, state = tx.update(params, tx.init(params), params)
        assert all(r.dtype == jnp.float64 for r in jax.tree.leaves(optax.tree.get(state, "rms")))


def test_empty_leaf_records_zero():
    params = {"empty": jnp.zeros((0, 3)), "w": jnp.ones(2)}
    tx = adamx.stable_adamw(1e-3)
    updates, state = tx.update(params, tx.init(params), params)
    assert float(optax.tree.get(state, "rms")["empty"]) == 0.0
    assert updates["empty"].shape == (0, 3)


def test_hyperparameters_can_be_injected():
    """Under optax.inject_hyperparams (α, β, ε, λ as arrays) the step is the alias's."""
    params = make_params(jnp.float32)
    grads = jax.tree.map(lambda g: g[1], gradient_stream(params, 2))
    injected = optax.inject_hyperparams(adamx.stable_adamw)(
        learning_rate=1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=1e-2
    )
    plain = adamx.stable_adamw(1e-2)
    s_injected, s_plain = injected.init(params), plain.init(params)
    for _ in range(3):
        got, s_injected = injected.update(grads, s_injected, params)
        want, s_plain = plain.update(grads, s_plain, params)
        chex.assert_trees_all_close(got, want, rtol=1e-6)
