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
import optax
import pytest
from _family_refs import gradient_stack, model_params, run_adamx_model, run_adamx_stream, run_torch
from _family_tolerance import assert_within_rounding, max_abs_diff
from _streams import make_params

import adamx
from adamx.stages.adopt import quarter_power

torch = pytest.importorskip("torch", reason="torch is a test-only reference")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="a test-only reference")

LR = 1e-2
B1, B2 = 0.875, 1 - 2**-13
F64_ATOL = 1e-10
# float64: measured worst 2.7e-12 (model with decay; 2.5e-14 without, 3e-15 on the stream).
# float32, in units of torch's own float32 drift: measured worst 0.99 (ADOPT).
FACTORS = {"adopt": 5.0}


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


CASES = {"adopt": adopt}


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
                theirs, _ = run_torch(make_torch, params, grads)
            else:
                ours, _ = run_adamx_model(tx, model_params(dtype))
                theirs, _ = run_torch(make_torch, model_params(dtype))
    finally:
        torch.set_default_dtype(previous)
    return ours, theirs


@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["no_decay", "decoupled_decay"])
@pytest.mark.parametrize("kind", ["stream", "model"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_pytorch_optimizer_cautious(name, kind, weight_decay):
    ours32, theirs32 = run_pair(name, kind, jnp.float32, weight_decay)
    ours64, theirs64 = run_pair(name, kind, jnp.float64, weight_decay)
    diff = max_abs_diff(ours64, theirs64)
    assert diff <= F64_ATOL, f"cautious {name} {kind}: float64 runs differ by {diff:.3g}"
    what = f"cautious {name} {kind} (weight_decay={weight_decay})"
    assert_within_rounding(ours32, theirs32, theirs64, FACTORS[name], what)
