"""adamx.laprop against pytorch_optimizer.LaProp and the authors' algorithm written in NumPy.

pytorch_optimizer 4.1.0 puts ε and a fixed ε̄ = 1e-15 on the *uncorrected* v
(``(sqrt(v + 1e-15) + ε) / sqrt(1 - β2^t)``): adamx matches it with
``eps_root=1e-15, epsilon_hat=True``. Its batched path (``foreach``, the default on CPU)
rounds the step size 1/(1-β1^t) to float32 even in a float64 run (2e-9 off in float64), so
the reference runs its per-parameter path (``foreach=False``). Both keep the learning rate
inside the momentum (m accumulates α·x, the correction α): for a constant α this is adamx's
stage followed by ``scale_by_lr``. 500 steps on an open-loop stream and on a small model:
float64 to ``F64_ATOL``, float32 within ``FACTOR`` times the reference's own float32 drift
(measured up to 3.4).

The authors' code (Z-T-WANG/LaProp-Optimizer) puts ε after the correction,
``g / (sqrt(v / (1 - β2^t)) + ε)``: adamx's default, checked in float64 against a NumPy
transcription of it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import (
    STEPS,
    gradient_stack,
    model_grad,
    model_params,
    run_adamx_model,
    run_adamx_stream,
)
from _family_tolerance import assert_f64_equal, assert_within_rounding
from _streams import make_params

import adamx

LR = 1e-2
FACTOR = 10.0  # operation order differs (torch: lr inside m, 1/bc1 from lr sums); measured 3.4
TORCH_OPTIONS = dict(eps_root=1e-15, epsilon_hat=True)


def run_torch(make_optimizer, params, grads=None, steps=STEPS, schedule=None):
    """The torch optimizer in a Python loop: (trajectory, {tensor slot: final values}).

    As ``_family_refs.run_torch``, but LaProp's state also holds Python floats
    (``exp_avg_lr_1``), which are left out, and ``schedule(t)`` (if given) sets the
    learning rate before step t.
    """
    import torch

    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(np.array(x))) for x in leaves]
    optimizer = make_optimizer(tensors)
    stacked = None if grads is None else [np.asarray(g) for g in jax.tree.leaves(grads)]
    trajectory = []
    for t in range(steps):
        if stacked is None:
            current = treedef.unflatten([p.detach().numpy() for p in tensors])
            g_t = [np.asarray(g) for g in jax.tree.leaves(model_grad(current, t))]
        else:
            g_t = [g[t] for g in stacked]
        for p, g in zip(tensors, g_t, strict=True):
            p.grad = torch.tensor(np.array(g))
        if schedule is not None:
            optimizer.param_groups[0]["lr"] = float(schedule(jnp.int32(t)))
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    per_leaf = [np.stack(column) for column in zip(*trajectory, strict=True)]
    slots = {
        k: treedef.unflatten([optimizer.state[p][k].numpy().copy() for p in tensors])
        for k, v in optimizer.state[tensors[0]].items()
        if isinstance(v, torch.Tensor)
    }
    return treedef.unflatten(per_leaf), slots


def warmup_cosine(count):
    """A warmup from 0 and a cosine decay, strict-clean (optax's cosine schedules are not)."""
    t = count.astype(float)
    warm = LR * t / 50.0
    cosine = 1e-4 + (LR - 1e-4) * 0.5 * (1.0 + jnp.cos(jnp.pi * (t - 50.0) / 450.0))
    return jnp.where(t < 50.0, warm, cosine)


def run_pair(kind, dtype, schedule=None):
    """(adamx, pytorch_optimizer) trajectories, and (m, v) of each (torch's m divided by α;
    with a schedule, v only)."""
    torch = pytest.importorskip("torch")
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

    def make_torch(tensors):
        return pytorch_optimizer.LaProp(tensors, lr=LR, foreach=False)

    if schedule is None:
        tx = adamx.laprop(LR, **TORCH_OPTIONS)
    else:
        tx = adamx.laprop(schedule, **TORCH_OPTIONS, lr_weighted=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == jnp.float64 else torch.float32)
    try:
        with jax.enable_x64(dtype == jnp.float64):
            if kind == "stream":
                params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
                grads = gradient_stack(params)
                ours, state = run_adamx_stream(tx, params, grads)
                theirs, slots = run_torch(make_torch, params, grads, schedule=schedule)
            else:
                ours, state = run_adamx_model(tx, model_params(dtype))
                theirs, slots = run_torch(make_torch, model_params(dtype), schedule=schedule)
    finally:
        torch.set_default_dtype(previous)
    moments = (optax.tree.get(state, "mu"), optax.tree.get(state, "nu"))
    if schedule is not None:  # both keep m weighted by α: compare as they are
        return (ours, theirs), (moments, (slots["exp_avg"], slots["exp_avg_sq"]))
    torch_m = jax.tree.map(lambda m: m / LR, slots["exp_avg"])
    return (ours, theirs), (moments, (torch_m, slots["exp_avg_sq"]))


@pytest.mark.parametrize(
    ("kind", "schedule"),
    [("stream", None), ("model", None), ("stream", warmup_cosine)],
    ids=["stream", "model", "stream_schedule"],
)
def test_matches_pytorch_optimizer(kind, schedule):
    """With a schedule (from α = 0) adamx runs ``lr_weighted=True``, as torch weighs m by α."""
    (ours32, theirs32), ((m32, v32), (tm32, tv32)) = run_pair(kind, jnp.float32, schedule)
    (ours64, theirs64), ((m64, v64), (tm64, tv64)) = run_pair(kind, jnp.float64, schedule)
    assert_f64_equal(ours64, theirs64, f"LaProp {kind} params")
    assert_f64_equal(m64, tm64, f"LaProp {kind} mu")
    assert_f64_equal(v64, tv64, f"LaProp {kind} nu")
    why = "operation order"
    assert_within_rounding(ours32, theirs32, theirs64, FACTOR, f"LaProp {kind} ({why})")
    assert_within_rounding(m32, tm32, tm64, FACTOR, f"LaProp {kind} mu ({why})")
    assert_within_rounding(v32, tv32, tv64, FACTOR, f"LaProp {kind} nu ({why})")


def authors_laprop(params, grads, lr, b1=0.9, b2=0.999, eps=1e-15):
    """Z-T-WANG/LaProp-Optimizer's ``LaProp.step`` (no centering, amsgrad or decay), NumPy
    float64: every parameter after each step."""
    trajectory = []
    leaves = [np.asarray(p, np.float64) for p in jax.tree.leaves(params)]
    stacks = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    m = [np.zeros_like(p) for p in leaves]
    v = [np.zeros_like(p) for p in leaves]
    state = dict(lr_1=0.0, lr_2=0.0)
    for t in range(stacks[0].shape[0]):
        state["lr_1"] = state["lr_1"] * b1 + (1 - b1) * lr
        state["lr_2"] = state["lr_2"] * b2 + (1 - b2)
        step_size = 1 / (state["lr_1"] / lr)
        for i, g in enumerate(s[t] for s in stacks):
            v[i] = v[i] * b2 + (1 - b2) * g * g
            x = g / (np.sqrt(v[i] / state["lr_2"]) + eps)
            m[i] = m[i] * b1 + (1 - b1) * lr * x
            leaves[i] = leaves[i] - step_size * m[i]
        trajectory.append(list(leaves))
    per_leaf = [np.stack(column) for column in zip(*trajectory, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(params), per_leaf)


def test_default_is_the_authors_algorithm_in_float64():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: x.astype(jnp.float64), make_params(jnp.float32))
        grads = gradient_stack(params)
        ours, _ = run_adamx_stream(adamx.laprop(LR), params, grads)
        assert_f64_equal(ours, authors_laprop(params, grads, LR), "LaProp vs the authors' code")


def test_lr_weighted_differs_under_a_schedule_only():
    """A constant α: the weighting changes rounding only. A schedule: it changes the steps."""
    params = make_params(jnp.float32)
    grads = gradient_stack(params, 100)
    plain = run_adamx_stream(adamx.laprop(LR), params, grads)[0]
    weighted = run_adamx_stream(adamx.laprop(LR, lr_weighted=True), params, grads)[0]
    np.testing.assert_allclose(plain["w"], weighted["w"], rtol=1e-5, atol=1e-6)
    plain = run_adamx_stream(adamx.laprop(warmup_cosine), params, grads)[0]
    weighted = run_adamx_stream(adamx.laprop(warmup_cosine, lr_weighted=True), params, grads)[0]
    assert np.max(np.abs(plain["w"] - weighted["w"])) > 1e-3


def test_weight_decay_none_adds_no_stage():
    params = make_params(jnp.float32)
    assert len(adamx.laprop(LR).init(params)) == 2
    assert len(adamx.laprop(LR, weight_decay=0.1).init(params)) == 3
