"""``adamx.cautious_adamw`` against the papers' pseudo-code, written in NumPy below.

C-AdamW (Liang et al. 2024, arXiv:2411.16085) with either rescale and with or without
cautious weight decay (Chen et al. 2025, arXiv:2510.12402, Algorithm 1), and the authors'
released per-parameter loop (``rescale="mean", epsilon_hat=True``), 500 steps on an
open-loop gradient stream and on a small model (closed loop: the reference computes its
gradients at its own parameters with the same JAX loss). In float64 adamx and NumPy agree
to ``F64_ATOL``: the same formula. In float32 adamx stays within ``FACTOR`` times NumPy's
own float32 drift (its float32 run's distance from its float64 run), see
``_family_tolerance``.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import (
    gradient_stack,
    model_grad,
    model_params,
    run_adamx_model,
    run_adamx_stream,
)
from _family_tolerance import assert_within_rounding, max_abs_diff
from _streams import make_params

import adamx

STEPS = 500
F64_ATOL = 1e-12  # measured worst: 2.2e-16 on the stream, 2.1e-15 on the model
# adamx float32 vs NumPy float32, in units of NumPy's own float32 drift. Measured worst:
# stream 0.05; model 12.2 (count, dense kernel; 6.0 with cautious weight decay, 4.2 for
# "mean"): the closed loop amplifies rounding (plain AdamW against the same NumPy code
# measures 3.6 there). The mask is a discontinuous function of u·g: had the two float32
# programs decided one element differently, that step would move the leaf by ~α|u|/(Σφ + 2)
# ~ 1e-3, far beyond these bounds (20 x ~2e-6), so the bound also shows no decision differed.
FACTOR = {"stream": 2.0, "model": 20.0}

CASES = {
    "count": dict(rescale="count"),
    "mean": dict(rescale="mean"),
    "count_cwd": dict(rescale="count", cautious_weight_decay=True),
    "mean_cwd": dict(rescale="mean", cautious_weight_decay=True),
}
LR = {"stream": 1e-3, "model": 1e-2}
WEIGHT_DECAY = 0.1


def numpy_cautious_adamw(theta0, grad_fn, steps, *, lr, rescale, cautious_weight_decay=False,
                         weight_decay=WEIGHT_DECAY, b1=0.9, b2=0.999, eps=1e-8):  # fmt: skip
    """C-AdamW as the papers write it, per tensor, in the dtype of ``theta0``'s leaves.

    Returns (θ after each step, final m, final v) as trees like ``theta0``.
    """
    leaves, treedef = jax.tree.flatten(theta0)
    theta = [np.array(x) for x in leaves]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    out = []
    for t in range(1, steps + 1):
        g = [np.asarray(x, theta[0].dtype) for x in grad_fn(treedef.unflatten(theta), t - 1)]
        for i, (x, gi) in enumerate(zip(theta, g, strict=True)):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            u = m_hat / (np.sqrt(v_hat) + eps)
            phi = (u * gi > 0).astype(x.dtype)  # Liang et al.: φ = 1[u ⊙ g > 0]
            if rescale == "count":  # the authors' code: n / (Σφ + 1)
                scale = x.dtype.type(phi.size) / (phi.sum() + 1)
            else:  # timm: 1 / max(mean φ, 1e-3)
                scale = 1 / np.maximum(phi.mean(), x.dtype.type(1e-3))
            u = u * (phi * scale)
            keep = (u * x >= 0) if cautious_weight_decay else np.ones(x.shape, bool)
            theta[i] = x - lr * (u + weight_decay * np.where(keep, x, 0))  # Chen et al.: ≥ 0
        out.append([x.copy() for x in theta])
    trajectory = [np.stack(column) for column in zip(*out, strict=True)]
    return tuple(treedef.unflatten(z) for z in (trajectory, m, v))


def run(case, kind, dtype):
    """(adamx trajectory, adamx state, NumPy trajectory, NumPy m, NumPy v) for one case."""
    options = CASES[case]
    tx = adamx.cautious_adamw(LR[kind], weight_decay=WEIGHT_DECAY, **options)
    with jax.enable_x64(dtype == jnp.float64):
        if kind == "stream":
            params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
            grads = gradient_stack(params)
            ours, state = run_adamx_stream(tx, params, grads)
            stacked = jax.tree.map(np.asarray, grads)

            def grad_fn(_, t):
                return [g[t] for g in jax.tree.leaves(stacked)]
        else:
            params = model_params(dtype)
            ours, state = run_adamx_model(tx, params)

            def grad_fn(theta, t):
                return jax.tree.leaves(model_grad(theta, t))

        theirs, m, v = numpy_cautious_adamw(params, grad_fn, STEPS, lr=LR[kind], **options)
        ours = jax.tree.map(np.asarray, ours)
        return ours, state, theirs, m, v


@pytest.mark.parametrize("kind", ["stream", "model"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_papers_pseudo_code(case, kind):
    ours64, state64, theirs64, m64, v64 = run(case, kind, jnp.float64)
    diff = max_abs_diff(ours64, theirs64)
    assert diff <= F64_ATOL, f"{case} {kind}: float64 runs differ by {diff:.3g}"
    assert max_abs_diff(optax.tree.get(state64, "mu"), m64) <= F64_ATOL
    assert max_abs_diff(optax.tree.get(state64, "nu"), v64) <= F64_ATOL

    ours32, state32, theirs32, _, _ = run(case, kind, jnp.float32)
    assert jax.tree.leaves(ours32)[0].dtype == np.float32
    assert_within_rounding(
        ours32, theirs32, theirs64, FACTOR[kind], f"cautious_adamw {case} {kind}"
    )
    fraction = optax.tree.get(state32, "masked_fraction")
    assert fraction.dtype == jnp.float32 and 0.0 < float(fraction) < 1.0


def test_is_the_explicit_chain():
    """The alias is exactly the chain its docstring shows (same updates, bit for bit)."""
    params = make_params(jnp.float32)
    grads = gradient_stack(params, steps=50)
    explicit = optax.chain(
        adamx.cautious(
            optax.chain(
                adamx.scale_by_moments(0.9, 0.999),
                adamx.bias_correct(0.9, 0.999),
                adamx.scale_by_rsqrt(1e-8),
            ),
            rescale="mean",
        ),
        adamx.add_decoupled_weight_decay(0.1, cautious=True),
        adamx.scale_by_lr(1e-3),
    )
    alias = adamx.cautious_adamw(1e-3, weight_decay=0.1, rescale="mean", cautious_weight_decay=True)
    chex.assert_trees_all_equal(
        run_adamx_stream(alias, params, grads, with_updates=True)[2],
        run_adamx_stream(explicit, params, grads, with_updates=True)[2],
    )


def test_options_of_adamw_carry_over():
    """Schedules, masks, fully decoupled decay, formats and inject_hyperparams: the alias
    passes them to the same stages as ``adamx.adamw``."""
    params = make_params(jnp.float32)
    grads = gradient_stack(params, steps=30)
    schedule = optax.linear_schedule(1e-2, 1e-3, 30)
    tx = adamx.cautious_adamw(
        schedule,
        weight_decay=optax.linear_schedule(0.2, 0.0, 30),
        mask=adamx.exclude_paths("b$"),
        fully_decoupled=True,
        peak_learning_rate=1e-2,
        cautious_weight_decay=True,
        mu_dtype=jnp.bfloat16,
    )
    trajectory, state = run_adamx_stream(tx, params, grads)
    assert optax.tree.get(state, "mu")["w"].dtype == jnp.bfloat16
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(trajectory))

    injected = optax.inject_hyperparams(adamx.cautious_adamw)(
        learning_rate=1e-3, weight_decay=0.1, rescale="mean", cautious_weight_decay=True
    )
    plain = adamx.cautious_adamw(1e-3, weight_decay=0.1, rescale="mean", cautious_weight_decay=True)
    # Traced α and λ are not constant-folded as Python numbers are: a few float32 ulps apart.
    chex.assert_trees_all_close(
        run_adamx_stream(injected, params, grads)[0],
        run_adamx_stream(plain, params, grads)[0],
        rtol=2e-6,
        atol=1e-7,
    )


def test_weight_decay_none_adds_no_stage_and_refuses_its_options():
    assert len(adamx.cautious_adamw(1e-3, weight_decay=None).init(make_params(jnp.float32))) == 2
    with pytest.raises(ValueError, match="weight_decay=None adds none"):
        adamx.cautious_adamw(1e-3, weight_decay=None, cautious_weight_decay=True)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"rescale must be one of 'count', 'mean', got 'sum'"):
        adamx.cautious_adamw(1e-3, rescale="sum")
    with pytest.raises(TypeError, match=r"cautious must be True or False"):
        adamx.cautious_adamw(1e-3, cautious_weight_decay="yes")


def numpy_authors_c_adamw(theta0, grads, steps, *, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-6):
    """The authors' released per-parameter loop (kyleliang919/C-Optim, ``c_adamw.py``, AdamW
    after Hugging Face's): decay first, ε on the uncorrected root, the step size carrying the
    bias corrections, the mask against m with timm's mean rescale."""
    leaves, treedef = jax.tree.flatten(theta0)
    theta = [np.array(x) for x in leaves]
    stacked = [np.asarray(g) for g in jax.tree.leaves(grads)]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    out = []
    for t in range(1, steps + 1):
        for i in range(len(theta)):
            g = stacked[i][t - 1]
            theta[i] = theta[i] + theta[i] * (-lr * weight_decay)
            m[i] = m[i] * b1 + g * (1.0 - b1)
            v[i] = v[i] * b2 + g * g * (1.0 - b2)
            denom = np.sqrt(v[i]) + eps
            step_size = lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
            mask = (m[i] * g > 0).astype(g.dtype)
            mask = mask / np.maximum(mask.mean(), g.dtype.type(1e-3))
            theta[i] = theta[i] + (m[i] * mask) / denom * -step_size
        out.append([x.copy() for x in theta])
    return treedef.unflatten([np.stack(column) for column in zip(*out, strict=True)])


def test_matches_the_authors_released_code():
    """rescale="mean", epsilon_hat=True, eps=1e-6: the authors' current C-AdamW, 500 steps."""
    runs = {}
    for dtype in (jnp.float64, jnp.float32):
        with jax.enable_x64(dtype == jnp.float64):
            params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
            grads = gradient_stack(params)
            tx = adamx.cautious_adamw(
                1e-3, eps=1e-6, weight_decay=0.1, rescale="mean", epsilon_hat=True
            )
            ours = jax.tree.map(np.asarray, run_adamx_stream(tx, params, grads)[0])
            theirs = numpy_authors_c_adamw(params, grads, STEPS, lr=1e-3, weight_decay=0.1)
            runs[dtype] = ours, theirs
    diff = max_abs_diff(*runs[jnp.float64])
    assert diff <= F64_ATOL, f"float64 runs differ by {diff:.3g}"
    (ours32, theirs32), theirs64 = runs[jnp.float32], runs[jnp.float64][1]
    # Another operation order throughout (θ(1 - αλ) first, the corrections in the step size,
    # ε/√(1-β2^t)), and this loop's own float32 drift is small (6.5e-8): measured up to 12.8.
    assert_within_rounding(ours32, theirs32, theirs64, 25.0, "authors' C-AdamW")
