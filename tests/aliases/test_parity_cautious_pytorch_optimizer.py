"""``adamx.cautious`` around other directions against pytorch_optimizer's ``cautious=True``.

pytorch_optimizer (4.1.0) applies caution in ``BaseOptimizer.apply_cautious``: per tensor,
φ = 1[u ⊙ x > 0] and u ← u ⊙ φ · n / (Σφ + 1), adamx's ``rescale="count"``. Its ADOPT
masks its momentum against the *normalised, clipped* gradient (sign(x) = sign(g): the divisor
is positive and the clip symmetric, so the mask is adamx's, which compares with g); its
LaProp masks its momentum against g. Both are compared on 500 steps of an open-loop gradient
stream and 500 closed-loop steps of a small model: float64 runs agree to ``F64_ATOL`` (the
same formula), float32 runs within ``FACTORS`` times pytorch_optimizer's own float32 drift.

The betas are β1 = 0.875 and β2 = 1 - 2⁻¹³, exact in float32, so that 1 - β is the same
number in both libraries. With ADOPT's defaults adamx keeps optax.contrib.adopt's bits,
whose 1 - β2 is formed in float32 (1.66e-4 relatively above torch's): m then differs by
more than rounding, and on the closed loop the mask decides some near-tie element (u·g ≈ 0)
differently, which changes that leaf's rescale n / (Σφ + 1) by a whole count and feeds
back (measured: 400 x torch's drift). The default betas are compared without caution in
test_parity_adopt.py. The mask is discontinuous even so: in the model run with decay,
torch's own float32 run decides differently from its float64 run (drift 0.04), so that
case's float32 bound is loose; its float64 check is not.

Where pytorch_optimizer's cautious variants differ from ``adamx.cautious`` (not tested here):
its AdEMAMix masks only the fast EMA m₁ before adding α m₂ (``adamx.cautious`` masks the whole
direction); its LaProp applies the decoupled decay *after* the step, to the updated weights.
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
from _family_tolerance import assert_within_rounding, max_abs_diff
from _streams import make_params

import adamx
from adamx.stages.adopt import quarter_power

torch = pytest.importorskip("torch", reason="torch is a test-only reference")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="a test-only reference")

LR = 1e-2
B1, B2 = 0.875, 1 - 2**-13
F64_ATOL = 1e-10
# float64: measured worst 2.7e-12 (ADOPT, model with decay; otherwise <= 2.5e-14).
# float32, in units of torch's own float32 drift, measured worst: ADOPT 0.99; LaProp 0.29 on
# the stream, 12.8 on the model (the closed loop amplifies rounding; 0.9 with LaProp's default
# betas). Both bounds also show that no mask decision differed: a flipped decision moves its
# leaf by ~α|u|/(Σφ + 2) ~ 1e-3 at once, beyond 20 x these drifts (<= 4e-5; not
# so in the ADOPT model run with decay, where torch's own float32 run flips, see above).
FACTORS = {"adopt": 5.0, "laprop": 20.0}


def torch_clip(t):
    """pytorch_optimizer's clip for ADOPT: the 1-based step to the 1/4."""
    return quarter_power(t + 1)


def adopt(weight_decay):
    """(adamx chain, pytorch_optimizer factory) for cautious ADOPT."""
    tx = optax.chain(
        adamx.cautious(adamx.scale_by_adopt(B1, B2, clip_value_fn=torch_clip)),
        *([adamx.add_decoupled_weight_decay(weight_decay)] if weight_decay else []),
        adamx.scale_by_lr(LR),
    )

    def make_torch(tensors):
        return pytorch_optimizer.ADOPT(
            tensors,
            lr=LR,
            betas=(B1, B2),
            weight_decay=weight_decay,
            weight_decouple=True,
            cautious=True,
        )

    return tx, make_torch


def laprop(weight_decay):
    """(adamx chain, pytorch_optimizer factory) for cautious LaProp (no decay: see the module
    docstring). pytorch_optimizer's ε̄ = 1e-15 and ε on the uncorrected v are adamx's
    ``eps_root=1e-15, epsilon_hat=True`` (test_parity_laprop.py)."""
    assert not weight_decay  # pytorch_optimizer.LaProp decays the updated weights
    tx = optax.chain(
        adamx.cautious(adamx.scale_by_laprop(B1, B2, eps_root=1e-15, epsilon_hat=True)),
        adamx.scale_by_lr(LR),
    )

    def make_torch(tensors):
        return pytorch_optimizer.LaProp(tensors, lr=LR, betas=(B1, B2), cautious=True)

    return tx, make_torch


CASES = {"adopt": adopt, "laprop": laprop}


def run_pair(name, kind, dtype, weight_decay):
    """(adamx trajectory, pytorch_optimizer trajectory) in ``dtype``."""
    tx, make_torch = CASES[name](weight_decay)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == jnp.float64 else torch.float32)
    try:
        with jax.enable_x64(dtype == jnp.float64):
            if kind == "stream":
                params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
                grads = gradient_stack(params)
                ours, _ = run_adamx_stream(tx, params, grads)
                theirs = torch_trajectory(make_torch, params, grads)
            else:
                ours, _ = run_adamx_model(tx, model_params(dtype))
                theirs = torch_trajectory(make_torch, model_params(dtype))
    finally:
        torch.set_default_dtype(previous)
    return ours, theirs


def torch_trajectory(make_optimizer, params, grads=None):
    """The torch optimizer in a Python loop over ``STEPS`` steps: θ after each step.

    ``_family_refs.run_torch`` without its state read-out (LaProp's state holds floats).
    """
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(np.array(x))) for x in leaves]
    optimizer = make_optimizer(tensors)
    stacked = None if grads is None else [np.asarray(g) for g in jax.tree.leaves(grads)]
    trajectory = []
    for t in range(STEPS):
        if stacked is None:
            current = treedef.unflatten([p.detach().numpy() for p in tensors])
            g_t = [np.asarray(g) for g in jax.tree.leaves(model_grad(current, t))]
        else:
            g_t = [g[t] for g in stacked]
        for p, g in zip(tensors, g_t, strict=True):
            p.grad = torch.tensor(np.array(g))
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    return treedef.unflatten([np.stack(column) for column in zip(*trajectory, strict=True)])


RUNS = [
    pytest.param(name, kind, decay, id=f"{name}-{kind}-{'decay' if decay else 'no_decay'}")
    for name in CASES
    for kind in ("stream", "model")
    for decay in ((0.0, 0.1) if name == "adopt" else (0.0,))
]


@pytest.mark.parametrize(("name", "kind", "weight_decay"), RUNS)
def test_matches_pytorch_optimizer_cautious(name, kind, weight_decay):
    ours32, theirs32 = run_pair(name, kind, jnp.float32, weight_decay)
    ours64, theirs64 = run_pair(name, kind, jnp.float64, weight_decay)
    diff = max_abs_diff(ours64, theirs64)
    assert diff <= F64_ATOL, f"cautious {name} {kind}: float64 runs differ by {diff:.3g}"
    what = f"cautious {name} {kind} (weight_decay={weight_decay})"
    assert_within_rounding(ours32, theirs32, theirs64, FACTORS[name], what)
