"""Cautious weight decay, ``add_decoupled_weight_decay(cautious=True)`` (Chen et al. 2025,
arXiv:2510.12402): decay only where the update and the parameter agree in sign,

    u ← u + λ_t 1[u ⊙ θ ≥ 0] ⊙ θ          (Algorithm 1; ≥: where u = 0 the weight decays)

against the paper's pseudo-code in NumPy (AdamW + CWD with learning-rate and decay
schedules, fully decoupled decay and a mask; float64 to ``F64_ATOL``, float32 within
``FACTOR`` times NumPy's own float32 drift), in closed form, on the packed paths (with the
packed masked state), under ``inject_hyperparams``, and in every float dtype.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import gradient_stack, run_adamx_stream
from _family_tolerance import assert_within_rounding, max_abs_diff
from _paths import assert_path_matches
from _streams import make_mixed_params, make_params

import adamx
from adamx.stages.weight_decay import PackedMaskedState

STEPS = 500
PEAK = 1e-2
F64_ATOL = 1e-12  # measured worst: 2.2e-16
# adamx float32 vs NumPy float32, in units of NumPy's float32 drift. Measured worst: 2.5 (the
# undecayed leaf, fully decoupled; 1.6 plain decoupled). The float32 schedules are evaluated
# inside adamx's jitted program and eagerly for NumPy (with a constant α, as in
# test_cautious_adamw, the same comparison measures 0.05).
FACTOR = 5.0


def lr_schedule(count):
    """Linear warm-up over 50 steps, then linear decay to PEAK / 10 (jnp: float64 under x64)."""
    t = jnp.asarray(count).astype(float)
    return PEAK * jnp.minimum(1.0, (t + 1) / 50) * (1 - 0.9 * t / STEPS)


def decay_schedule(count):
    return 0.3 - 0.2 * jnp.asarray(count).astype(float) / STEPS


def at(schedule, t: int, dtype) -> float:
    with jax.enable_x64(dtype == jnp.float64):
        return float(schedule(jnp.asarray(t, jnp.int32)))


def numpy_adamw_cwd(theta0, grads, *, lr, decay, mask, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW with Chen et al.'s Algorithm 1 for the decay, per tensor in the leaves' dtype.

    ``lr(t)``, ``decay(t)``: α_t and the multiplier of the decay term (α_t λ_t / α̂ when
    fully decoupled); ``mask``: a tree of bools, which leaves decay at all.
    """
    leaves, treedef = jax.tree.flatten(theta0)
    theta = [np.array(x) for x in leaves]
    stacked = [np.asarray(g) for g in jax.tree.leaves(grads)]
    flags = treedef.flatten_up_to(mask)
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    out = []
    for t in range(1, len(stacked[0]) + 1):
        for i, x in enumerate(theta):
            g = stacked[i][t - 1]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
            agree = (u * x >= 0) & flags[i]  # the paper's 1[u_t x_t ≥ 0]
            theta[i] = x - (lr(t - 1) * u + decay(t - 1) * np.where(agree, x, 0))
        out.append([x.copy() for x in theta])
    return treedef.unflatten([np.stack(column) for column in zip(*out, strict=True)])


MASK = {"w": True, "b": False, "scale": True, "block": {"k": True}}


def chain(**decay_options):
    return optax.chain(
        adamx.scale_by_moments(0.9, 0.999),
        adamx.bias_correct(0.9, 0.999),
        adamx.scale_by_rsqrt(1e-8),
        adamx.add_decoupled_weight_decay(
            decay_schedule, MASK, cautious=True, learning_rate=lr_schedule, **decay_options
        ),
        adamx.scale_by_lr(lr_schedule),
    )


def run(dtype, fully: bool):
    options = dict(fully_decoupled=True, peak_learning_rate=PEAK) if fully else {}
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
        grads = gradient_stack(params, STEPS)
        ours, state = run_adamx_stream(chain(**options), params, grads)

        def lr(t):
            return at(lr_schedule, t, dtype)

        def decay(t):
            scale = lr(t) / PEAK if fully else lr(t)
            return scale * at(decay_schedule, t, dtype)

        theirs = numpy_adamw_cwd(params, grads, lr=lr, decay=decay, mask=MASK)
        return jax.tree.map(np.asarray, ours), state, theirs


@pytest.mark.parametrize("fully", [False, True], ids=["decoupled", "fully_decoupled"])
def test_matches_the_papers_pseudo_code(fully):
    ours64, _, theirs64 = run(jnp.float64, fully)
    diff = max_abs_diff(ours64, theirs64)
    assert diff <= F64_ATOL, f"float64 runs differ by {diff:.3g}"
    ours32, _, theirs32 = run(jnp.float32, fully)
    assert_within_rounding(ours32, theirs32, theirs64, FACTOR, "AdamW + cautious weight decay")
    # the masked-out leaf never decays, so it differs from a run with decay everywhere
    everywhere = numpy_adamw_cwd(
        jax.tree.map(lambda x: x.astype(jnp.float32), make_params(jnp.float32)),
        gradient_stack(make_params(jnp.float32), STEPS),
        lr=lambda t: at(lr_schedule, t, jnp.float32),
        decay=lambda t: at(lr_schedule, t, jnp.float32) * at(decay_schedule, t, jnp.float32),
        mask=jax.tree.map(lambda _: True, MASK),
    )
    assert not np.allclose(ours32["b"], everywhere["b"])


def test_closed_form():
    """u + λ 1[u θ ≥ 0] θ: decays where u and θ agree, where u = 0 and where θ = 0."""
    u = jnp.array([1.0, 1.0, -2.0, 0.0, 3.0, -1.0])
    theta = jnp.array([2.0, -2.0, -1.0, 5.0, 0.0, 4.0])
    tx = adamx.add_decoupled_weight_decay(0.5, cautious=True)
    out, _ = tx.update(u, tx.init(theta), theta)
    np.testing.assert_array_equal(out, [2.0, 1.0, -2.5, 2.5, 3.0, -1.0])
    plain = adamx.add_decoupled_weight_decay(0.5)
    np.testing.assert_array_equal(plain.update(u, plain.init(theta), theta)[0], u + 0.5 * theta)


def test_complex_agreement_is_the_real_inner_product():
    u = jnp.array([1 + 1j, 1 + 1j], jnp.complex64)
    theta = jnp.array([1 - 0.5j, -1 + 0.5j], jnp.complex64)  # Re(ū θ) = 0.5, -0.5
    tx = adamx.add_decoupled_weight_decay(0.5, cautious=True)
    out, _ = tx.update(u, tx.init(theta), theta)
    assert out.dtype == jnp.complex64
    np.testing.assert_array_equal(out, [u[0] + 0.5 * theta[0], u[1]])


def test_every_dtype_is_kept_under_a_float32_schedule():
    params = make_mixed_params([jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
    tx = adamx.add_decoupled_weight_decay(optax.linear_schedule(0.1, 0.0, 10), cautious=True)
    updates = jax.tree.map(lambda x: (-x).astype(x.dtype), params)
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    chex.assert_trees_all_equal_dtypes(out, params)
    chex.assert_trees_all_equal(out, updates)  # u = -θ disagrees everywhere (θ ≠ 0): no decay


def test_inject_hyperparams_matches_the_constant():
    params = make_params(jnp.float32)
    make = optax.inject_hyperparams(adamx.add_decoupled_weight_decay)
    injected = make(weight_decay=0.2, mask=MASK, cautious=True)
    plain = adamx.add_decoupled_weight_decay(0.2, MASK, cautious=True)
    updates = jax.tree.map(lambda x: jnp.sin(3.0 * x), params)
    state = injected.init(params)
    assert float(state.hyperparams["weight_decay"]) == pytest.approx(0.2)
    ours = jax.jit(injected.update)(updates, state, params)[0]
    chex.assert_trees_all_close(ours, plain.update(updates, plain.init(params), params)[0])


# -- packed paths: elementwise, so a bucket's elements get exactly their leaf's result ------
MIN_SIZE = 16


def flax_like(seed=0):
    rng = np.random.default_rng(seed)

    def draw(shape, dtype=jnp.float32):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {
        "dense": {"kernel": draw((4, 8)), "bias": draw((8,))},
        "head": {"kernel": draw((2, 3)), "bias": draw((40,))},
        "lora": {"a": draw((2, 3), jnp.bfloat16), "b": draw((3, 2), jnp.bfloat16)},
    }


def grad_of(tree, step):
    return jax.tree.map(lambda x: (jnp.sin(x * (step + 1.0)) * 3).astype(x.dtype), tree)


def run_per_leaf(tx, params, steps):
    update = jax.jit(tx.update)
    state = tx.init(params)
    for i in range(steps):
        updates, state = update(grad_of(params, i), state, params)
        params = optax.apply_updates(params, updates)
    return params


def run_packed(tx, params, steps):
    packed = adamx.pack(params, min_size=MIN_SIZE)
    update = jax.jit(tx.update)
    state = tx.init(packed)
    assert any(isinstance(s, PackedMaskedState) for s in jax.tree.leaves(
        state, is_leaf=lambda x: isinstance(x, PackedMaskedState)))  # fmt: skip
    for i in range(steps):
        grads = adamx.pack(grad_of(packed.unpack(), i), min_size=MIN_SIZE)
        updates, state = update(grads, state, packed)
        packed = optax.apply_updates(packed, updates)
    return packed.unpack()


DECAY_SCHEDULE = optax.linear_schedule(0.5, 0.1, 10)


def adamw_cwd(decay):
    """AdamW + cautious weight decay, masked (no per-tensor stage, so packable)."""
    return optax.chain(
        adamx.scale_by_moments(0.9, 0.999),
        adamx.bias_correct(0.9, 0.999),
        adamx.scale_by_rsqrt(1e-8),
        adamx.add_decoupled_weight_decay(decay, adamx.exclude_paths("bias"), cautious=True),
        adamx.scale_by_lr(1e-2),
    )


@pytest.mark.parametrize("decay", [0.5, DECAY_SCHEDULE], ids=["constant", "schedule"])
def test_on_pack_and_multi_tensor_matches_the_per_leaf_run(decay):
    params = flax_like()
    theirs = run_per_leaf(adamw_cwd(decay), params, 6)
    assert_path_matches("multi_tensor", run_packed(adamw_cwd(decay), params, 6), theirs)
    multi = adamx.multi_tensor(adamw_cwd(decay), min_size=MIN_SIZE)
    assert_path_matches("multi_tensor", run_per_leaf(multi, params, 6), theirs)


def test_on_pack_op_by_op_bit_identical():
    params = flax_like(1)
    with jax.disable_jit():
        ours = run_packed(adamw_cwd(0.5), params, 2)
        theirs = run_per_leaf(adamw_cwd(0.5), params, 2)
    chex.assert_trees_all_equal(ours, theirs)


def test_cautious_must_be_a_bool():
    with pytest.raises(TypeError, match=r"cautious must be True or False, got 1"):
        adamx.add_decoupled_weight_decay(0.1, cautious=1)


def test_adamw_option_is_the_stage_option():
    params = make_params(jnp.float32)
    grads = gradient_stack(params, 40)
    alias = adamx.adamw(1e-2, weight_decay=0.3, mask=MASK, cautious_weight_decay=True)
    explicit = optax.chain(
        adamx.scale_by_moments(0.9, 0.999),
        adamx.bias_correct(0.9, 0.999),
        adamx.scale_by_rsqrt(1e-8),
        adamx.add_decoupled_weight_decay(0.3, MASK, cautious=True),
        adamx.scale_by_lr(1e-2),
    )
    ours = run_adamx_stream(alias, params, grads, with_updates=True)[2]
    chex.assert_trees_all_equal(
        ours, run_adamx_stream(explicit, params, grads, with_updates=True)[2]
    )
    plain = run_adamx_stream(adamx.adamw(1e-2, weight_decay=0.3, mask=MASK), params, grads)[0]
    assert not np.array_equal(plain["w"], run_adamx_stream(alias, params, grads)[0]["w"])


def test_on_sparse_rows_touching_every_row_matches_the_dense_run():
    """Elementwise, so a table's gathered rows decay as the dense table would (lazy rows: only
    touched rows move; here every row is touched at every step)."""
    rng = np.random.default_rng(0)
    table = {"emb": jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)}
    tx = adamx.adamw(1e-2, weight_decay=0.3, cautious_weight_decay=True)
    sparse = adamx.sparse_rows(tx)
    dense_p, sparse_p = table, table
    dense_s, sparse_s = tx.init(table), sparse.init(table)
    for _ in range(5):
        g = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
        u, dense_s = tx.update({"emb": g}, dense_s, dense_p)
        dense_p = optax.apply_updates(dense_p, u)
        rows = {"emb": adamx.row_sparse(jnp.arange(10), g, 10)}
        u, sparse_s = sparse.update(rows, sparse_s, sparse_p)
        sparse_p = optax.apply_updates(sparse_p, u)
    chex.assert_trees_all_equal(sparse_p, dense_p)
