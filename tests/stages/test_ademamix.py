"""``add_slow_ema`` and ``scale_by_simplified_ademamix``: formats, records, errors, jit, paths,
catch-up, and the authors' simplified AdEMAMix (with its β1 warm-up) written in NumPy.

Parity with optax.contrib and pytorch_optimizer: tests/aliases/test_parity_ademamix.py.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import gradient_stack, run_adamx_stream
from _streams import make_params

import adamx
from adamx import half_life_warmup, linear_warmup

STEPS = 200


def ademamix_max(alpha, b3=0.999):
    """AdEMAMix over AdaMax's infinity norm: the slow EMA joins m̂, u_t is left as it is."""
    return optax.chain(
        adamx.scale_by_moments(0.9, 0.999, infinity_norm=True),
        adamx.bias_correct(0.9, 0.999),
        adamx.add_slow_ema(b3, alpha),
        adamx.scale_by_rsqrt(1e-8),
        adamx.scale_by_lr(1e-3),
    )


# --- formats ----------------------------------------------------------------------------------

# name: (alias, its keyword arguments, the formats)
FORMATS = {
    "ademamix_mu_bf16": (adamx.ademamix, {}, {"mu_dtype": jnp.bfloat16}),
    "ademamix_8bit": (
        adamx.ademamix,
        {"alpha": linear_warmup(5.0, 100)},
        {"mu_dtype": adamx.blockwise_8bit(), "nu_dtype": adamx.blockwise_8bit()},
    ),
    "ademamix_stochastic_bf16": (
        adamx.ademamix,
        {"weight_decay": 0.1},
        {"mu_dtype": adamx.stochastic_float(jnp.bfloat16)},
    ),
    "simplified_mu_bf16": (adamx.simplified_ademamix, {}, {"mu_dtype": jnp.bfloat16}),
    "simplified_8bit": (
        adamx.simplified_ademamix,
        {"alpha": 2.0},
        {"mu_dtype": adamx.blockwise_8bit(), "nu_dtype": adamx.blockwise_8bit()},
    ),
}


def largest(tree) -> float:
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", FORMATS)
def test_formats_run_finite_and_keep_their_storage(name):
    """The formats run, stay finite, keep their storage (so no retrace), and stay near the
    float32 run: they store the moments, they do not change the maths."""
    alias, kwargs, formats = FORMATS[name]
    lr = 1e-3 if alias is adamx.ademamix else 1e-4
    params = make_params(jnp.float32)
    grads = gradient_stack(params, STEPS)
    tx = alias(lr, **kwargs, **formats)
    first = tx.init(params)
    trajectory, state = run_adamx_stream(tx, params, grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(trajectory))
    chex.assert_trees_all_equal_shapes_and_dtypes(first, state)
    exact, _ = run_adamx_stream(alias(lr, **kwargs), params, grads)
    off = largest(jax.tree.map(lambda a, b: a[-1] - b[-1], trajectory, exact))
    moved = largest(jax.tree.map(lambda a, p: a[-1] - p, exact, params))
    assert off < 0.25 * moved, (off, moved)


def test_stored_m2_has_its_own_rounding_stream():
    """m and m2 are stored by one stochastic format, with distinct random bits."""
    tx = adamx.ademamix(1e-3, mu_dtype=adamx.stochastic_float(jnp.bfloat16))
    state = tx.init(make_params(jnp.float32))
    assert not np.array_equal(state[0].mu.key, state[2].m2.key)


def test_8bit_m2_is_a_signed_blockwise_moment():
    tx = adamx.ademamix(1e-3, mu_dtype=adamx.blockwise_8bit())
    state = tx.init(make_params(jnp.float32))
    assert type(state[2].m2) is type(state[0].mu)
    assert state[2].m2.description == state[0].mu.description


# --- records ----------------------------------------------------------------------------------


def test_inf_norm_record_passes_through():
    """With α = 0 the slow EMA adds nothing: AdaMax's updates (to fusion's ulps); with α > 0 the
    update is (m̂ + α m2) / (u + ε) (u not rooted, so the record stayed InfNormMoments)."""
    params = make_params(jnp.float32)
    grads = gradient_stack(params, 30)
    _, _, plain = run_adamx_stream(
        optax.chain(
            adamx.scale_by_moments(0.9, 0.999, infinity_norm=True),
            adamx.bias_correct(0.9, 0.999),
            adamx.scale_by_rsqrt(1e-8),
            adamx.scale_by_lr(1e-3),
        ),
        params,
        grads,
        with_updates=True,
    )
    _, _, mixed = run_adamx_stream(ademamix_max(0.0), params, grads, with_updates=True)
    chex.assert_trees_all_close(mixed, plain, rtol=1e-6)  # one program each: fused apart

    _, _, ours = run_adamx_stream(ademamix_max(2.0), params, grads, with_updates=True)
    g = np.asarray(grads["w"], np.float64)
    m = u = m2 = np.zeros_like(g[0])
    for t in range(1, 31):
        m = 0.9 * m + 0.1 * g[t - 1]
        u = np.maximum(np.abs(g[t - 1]), 0.999 * u)
        m2 = 0.999 * m2 + 0.001 * g[t - 1]
        expected = -1e-3 * (m / (1 - 0.9**t) + 2.0 * m2) / (u + 1e-8)
        np.testing.assert_allclose(ours["w"][t - 1], expected, rtol=2e-5, atol=1e-9)


def test_plain_gradients_are_refused():
    tx = optax.chain(adamx.add_slow_ema(), adamx.scale_by_lr(1e-3))
    params = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match=r"add_slow_ema takes the moment tree.*scale_by_moments"):
        tx.update({"w": jnp.ones(3)}, tx.init(params), params)


def test_simplified_refuses_a_moment_tree():
    tx = optax.chain(adamx.scale_by_moments(), adamx.scale_by_simplified_ademamix())
    params = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match=r"scale_by_simplified_ademamix takes gradients"):
        tx.update({"w": jnp.ones(3)}, tx.init(params), params)


# --- errors name the argument -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (lambda: adamx.add_slow_ema(b3=1.0), ValueError, r"b3 must be in \[0, 1\)"),
        (lambda: adamx.add_slow_ema(b3="0.9"), TypeError, r"b3 must be a number"),
        (lambda: adamx.add_slow_ema(alpha=-1.0), ValueError, r"alpha must be a finite number"),
        (lambda: adamx.add_slow_ema(mu_dtype=jnp.int8), TypeError, r"mu_dtype"),
        (lambda: adamx.ademamix(1e-3, b3=1.5), ValueError, r"b3 must be in"),
        (lambda: adamx.ademamix(1e-3, nu_dtype=jnp.int32), TypeError, r"nu_dtype"),
        (lambda: adamx.ademamix(-1.0), ValueError, r"learning_rate"),
        (lambda: adamx.simplified_ademamix(1e-4, b1=1.0), ValueError, r"b1 must be in"),
        (lambda: adamx.simplified_ademamix(1e-4, b2=-0.1), ValueError, r"b2 must be in"),
        (lambda: adamx.simplified_ademamix(1e-4, eps=-1.0), ValueError, r"eps must be"),
        (lambda: adamx.simplified_ademamix(1e-4, mu_dtype="int8"), TypeError, r"mu_dtype"),
        (lambda: adamx.simplified_ademamix(1e-4, weight_decay=-1.0), ValueError, "weight_decay"),
        (lambda: linear_warmup(5.0, 0), ValueError, r"steps must be an int >= 1"),
        (lambda: half_life_warmup(0.0, 0.9999, 10), ValueError, r"start must be a number > 0"),
        (lambda: half_life_warmup(0.9, 1.0, 10), ValueError, r"end must be in \[0, 1\)"),
    ],
)
def test_errors_name_the_argument(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_a_state_of_another_format_is_refused():
    params = make_params(jnp.float32)
    state = adamx.ademamix(1e-3, mu_dtype=adamx.blockwise_8bit()).init(params)
    tx = adamx.ademamix(1e-3)
    with pytest.raises(ValueError, match=r"scale_by_moments: the state's mu .* \(mu_dtype\)"):
        tx.update(params, state, params)
    chain = optax.chain(adamx.scale_by_moments(), adamx.add_slow_ema())
    mixed = (chain.init(params)[0], state[2])
    with pytest.raises(ValueError, match=r"add_slow_ema: the state's mu .* \(mu_dtype\)"):
        chain.update(params, mixed, params)


# --- jit --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: adamx.ademamix(
            optax.linear_schedule(1e-3, 0.0, 100),
            b3=half_life_warmup(0.9, 0.9999, 50),
            alpha=linear_warmup(5.0, 50),
            mu_dtype=jnp.bfloat16,
            weight_decay=0.1,
        ),
        lambda: adamx.simplified_ademamix(
            1e-4, b1=half_life_warmup(0.9, 0.99, 50), alpha=2.0, nu_dtype=adamx.blockwise_8bit()
        ),
    ],
    ids=["ademamix", "simplified"],
)
def test_jit_does_not_retrace(build):
    tx, traces = build(), []

    @jax.jit
    def step(grads, state, params):
        traces.append(None)
        return tx.update(grads, state, params)

    params = make_params(jnp.float32)
    state = tx.init(params)
    for i in range(3):
        grads = jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1.0)), params)
        _, state = step(grads, state, params)
    assert len(traces) == 1


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: adamx.ademamix(1e-2, alpha=optax.linear_schedule(0.0, 5.0, 4), weight_decay=0.1),
        lambda: adamx.simplified_ademamix(1e-3, alpha=2.0),
    ],
    ids=["ademamix", "simplified"],
)
def test_multi_tensor_buckets_give_the_per_leaf_numbers(build):
    """Elementwise stages: packed into buckets they compute each leaf's numbers."""
    params = make_params(jnp.float32)
    grads = jax.tree.map(lambda x: jnp.stack([jnp.sin(x * (i + 1.0)) for i in range(5)]), params)
    ours, _ = run_adamx_stream(adamx.multi_tensor(build(), min_size=64), params, grads)
    theirs, _ = run_adamx_stream(build(), params, grads)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_skipped_rows_catch_up_like_zero_gradients():
    """``update(..., skipped_steps=...)`` (sparse_rows' catch-up) decays a row's m2 by β3^k,
    as k steps of zero gradients would."""
    tx = optax.chain(adamx.scale_by_moments(), adamx.add_slow_ema(b3=0.9, alpha=1.0))
    params = {"table": jnp.zeros((3, 2))}
    state = tx.init(params)
    g = {"table": jnp.arange(1.0, 7.0).reshape(3, 2)}
    _, state = tx.update(g, state, params)
    skipped = {"['table']": jnp.array([0, 2, 5], jnp.int32)}
    _, caught_up = tx.update(g, state, params, skipped_steps=skipped)
    for row, k in enumerate([0, 2, 5]):
        dense = state
        for _ in range(k):
            _, dense = tx.update(jax.tree.map(jnp.zeros_like, g), dense, params)
        _, dense = tx.update(g, dense, params)
        np.testing.assert_allclose(
            caught_up[1].m2["table"][row], dense[1].m2["table"][row], rtol=1e-6
        )


# --- the authors' simplified AdEMAMix, with its β1 warm-up (NumPy, float64) --------------------


def authors_beta1(step: int, end: float, start: float, warmup: int) -> float:
    """The authors' ``linear_hl_warmup_scheduler`` (step counted from 1)."""

    def f(beta, eps=1e-8):
        return math.log(0.5) / math.log(beta + eps) - 1

    if step < warmup:
        a = step / float(warmup)
        return math.pow(0.5, 1 / ((1.0 - a) * f(start) + a * f(end) + 1))
    return end


def authors_simplified(grads, params, lr, b1, b2, alpha, eps, warmup, min_b1):
    """SimAdEMAMix of the authors' code (theory-style momentum, bias_correction2 only)."""
    m = np.zeros_like(params)
    v = np.zeros_like(params)
    den_sum, out = 0.0, []
    for step, g in enumerate(grads, start=1):
        beta1 = authors_beta1(step, b1, min_b1, warmup)
        m = beta1 * m + g
        v = b2 * v + (1 - b2) * g * g
        den_sum = b2 * den_sum + (1.0 - b2)
        update = (alpha * g + m) / (np.sqrt(v) + eps * math.sqrt(den_sum)) * math.sqrt(den_sum)
        params = params - lr * update
        out.append(params)
    return np.stack(out)


def test_simplified_matches_the_authors_code_with_beta1_warmup():
    def beta1(count):  # the authors' warm-up, as an optax schedule (count = step - 1)
        def f(beta):
            return math.log(0.5) / jnp.log(beta + 1e-8) - 1

        a = (count + 1).astype(float) / 100
        warm = 0.5 ** (1 / ((1.0 - a) * f(0.9) + a * f(0.99) + 1))
        return jnp.where(count + 1 < 100, warm, 0.99)

    with jax.enable_x64(True):
        params = make_params(jnp.float64)
        grads = gradient_stack(params, STEPS)
        tx = adamx.simplified_ademamix(1e-4, b1=beta1, b2=0.95, alpha=2.0, weight_decay=None)
        ours, _ = run_adamx_stream(tx, params, grads)
        for leaf, g, p in zip(*map(jax.tree.leaves, (ours, grads, params)), strict=True):
            expected = authors_simplified(
                np.asarray(g), np.asarray(p), 1e-4, 0.99, 0.95, 2.0, 1e-8, 100, 0.9
            )
            np.testing.assert_allclose(np.asarray(leaf), expected, rtol=0, atol=1e-10)
