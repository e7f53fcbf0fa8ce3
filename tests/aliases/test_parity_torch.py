"""adamx against torch.optim: Adam(weight_decay), AdamW, amsgrad, NAdam, Adamax, RAdam,
maximize.

The cases are the registry's optimizers with a torch reference: each gives the torch
optimizer, the adamx expression that reproduces it, which torch state slots correspond
to which adamx state fields, and the float32 tolerance factor with its reason. Every
case runs 500 steps on an open-loop gradient stream and on a small model (closed loop)
in float32, which must agree to within the reference's own float32 drift (its distance
from its float64 run, see ``_family_tolerance``); on the stream, adamx and the reference
must also agree in float64 to ``F64_ATOL`` (the same formula).
"""

import contextlib

import jax
import jax.numpy as jnp
import optax
import pytest
from _family_refs import (
    gradient_stack,
    model_params,
    run_adamx_model,
    run_adamx_stream,
    run_torch,
)
from _family_tolerance import assert_f64_equal, assert_within_rounding
from _streams import make_params
from registry import OPTIMIZERS, Optimizer, with_reference

torch = pytest.importorskip("torch", reason="torch is a test-only reference (pip install torch)")
# The cases: every registry optimizer with a torch reference (its builder, the state slots that
# correspond, and the float32 tolerance factor with its reason).
CASES = {name: OPTIMIZERS[name] for name in with_reference("torch")}


@contextlib.contextmanager
def precision(dtype):
    """jax x64 and torch's default dtype (NAdam's mu_product follows it) set together."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == jnp.float64 else torch.float32)
    try:
        with jax.enable_x64(dtype == jnp.float64):
            yield
    finally:
        torch.set_default_dtype(previous)


def run_both(optimizer: Optimizer, kind: str, dtype, with_adamx: bool = True):
    """(adamx, torch) trajectories and (adamx, torch) state pairs; adamx's are None if skipped."""
    ours, state, case = None, None, optimizer.torch
    with precision(dtype):
        if kind == "stream":
            params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
            grads = gradient_stack(params)
            if with_adamx:
                ours, state = run_adamx_stream(optimizer.make(), params, grads)
            theirs, torch_state = run_torch(case.make, params, grads)
        else:
            params = model_params(dtype)
            if with_adamx:
                ours, state = run_adamx_model(optimizer.make(), params, sign=case.sign)
            theirs, torch_state = run_torch(case.make, params, sign=case.sign)
    assert jax.tree.leaves(theirs)[0].dtype == dtype
    assert ours is None or jax.tree.leaves(ours)[0].dtype == dtype
    pairs = [
        (None if state is None else optax.tree.get(state, ours_name), torch_state[k])
        for k, ours_name in case.state.items()
    ]
    return (ours, theirs), pairs


@pytest.mark.parametrize("kind", ["stream", "model"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name, kind):
    (ours32, theirs32), states32 = run_both(CASES[name], kind, jnp.float32)
    (ours64, theirs64), states64 = run_both(
        CASES[name], kind, jnp.float64, with_adamx=kind == "stream"
    )
    case = CASES[name].torch

    if ours64 is not None:  # the formula check; the closed loop would only repeat it
        assert_f64_equal(ours64, theirs64, f"{name} params")
        for (ours_s, theirs_s), key in zip(states64, case.state, strict=True):
            if key != "mu_product":  # a scalar kept per parameter by torch, once by adamx
                assert_f64_equal(ours_s, theirs_s, f"{name} state {key}")
    assert_within_rounding(ours32, theirs32, theirs64, case.factor, f"{name} params ({case.why})")
    for (ours_s, theirs_s), (_, ref64), key in zip(states32, states64, case.state, strict=True):
        if key != "mu_product":
            assert_within_rounding(ours_s, theirs_s, ref64, case.factor, f"{name} state {key}")
