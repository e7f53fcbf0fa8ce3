"""adamx against torch.optim: Adam(weight_decay), AdamW, amsgrad, NAdam, Adamax, RAdam, maximize.

A declarative table: each case gives the torch optimizer, the adamx expression
that reproduces it, which torch state slots correspond to which adamx state
fields, and the float32 tolerance factor with its reason. Every case runs 500
steps on an open-loop gradient stream and on a small model (closed loop) in
float32, which must agree to within the reference's own float32 drift (its
distance from its float64 run, see ``_family_tolerance``); on the stream, adamx
and the reference must also agree in float64 to ``F64_ATOL`` (the same formula).
"""

import contextlib
import dataclasses
from collections.abc import Callable

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

import adamx

torch = pytest.importorskip("torch", reason="torch is a test-only reference (pip install torch)")
T = torch.optim
LR = 3e-3
ADAM_STATE = {"exp_avg": "mu", "exp_avg_sq": "nu"}
# Tolerance factors, in units of torch's own float32 drift (see _family_tolerance); measured
# needs on this suite: <= 4.7 for all cases but RAdam, <= 90 for RAdam; set at about 2x.
DEFAULT_FACTOR = 10.0
RADAM_WHY = (
    "optax's (and so adamx's) float32 rho_t = rho_inf - 2t b2^t/(1-b2^t) cancels ~3 of "
    "rho_inf ~ 2000's digits when rho_t ~ 5, so r_t carries ~1e-5 relative error in early "
    "steps; torch computes it in float64 Python floats"
)


@dataclasses.dataclass(frozen=True)
class Case:
    torch: Callable  # list of parameters -> torch optimizer
    adamx: Callable  # () -> optax.GradientTransformation
    state: dict = dataclasses.field(default_factory=lambda: dict(ADAM_STATE))
    factor: float = DEFAULT_FACTOR  # float32 tolerance, in units of torch's own float32 rounding
    why: str = "operation order differs (torch: lerp, sqrt(v)/sqrt(1-b2^t)); same formula"
    sign: float = 1.0  # -1: the model's gradients are of -loss (maximize ascends, staying stable)


def _adamw_amsgrad():
    return optax.chain(
        adamx.scale_by_moments(0.9, 0.999),
        adamx.running_max_nu(),
        adamx.bias_correct(0.9, 0.999),
        adamx.scale_by_rsqrt(1e-8),
        adamx.add_decoupled_weight_decay(0.1),
        adamx.scale_by_lr(LR),
    )


CASES = {
    "Adam(weight_decay)": Case(
        lambda p: T.Adam(p, LR, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, foreach=False),
        lambda: adamx.adam(LR, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
    ),
    "AdamW": Case(
        lambda p: T.AdamW(p, LR, weight_decay=0.1, foreach=False),
        lambda: adamx.adamw(LR, weight_decay=0.1),
    ),
    "Adam(amsgrad)": Case(
        lambda p: T.Adam(p, LR, amsgrad=True, weight_decay=0.01, foreach=False),
        lambda: adamx.amsgrad(LR, max_of="raw", weight_decay=0.01),
        state=dict(ADAM_STATE, max_exp_avg_sq="nu_max"),
    ),
    "AdamW(amsgrad)": Case(
        lambda p: T.AdamW(p, LR, amsgrad=True, weight_decay=0.1, foreach=False),
        _adamw_amsgrad,
        state=dict(ADAM_STATE, max_exp_avg_sq="nu_max"),
    ),
    "NAdam": Case(
        lambda p: T.NAdam(p, LR, foreach=False),
        lambda: adamx.nadam(LR, momentum_decay=4e-3),
        state=dict(ADAM_STATE, mu_product="mu_product"),
    ),
    "NAdam(weight_decay, momentum_decay)": Case(
        lambda p: T.NAdam(p, LR, weight_decay=0.01, momentum_decay=2e-2, foreach=False),
        lambda: adamx.nadam(LR, momentum_decay=2e-2, weight_decay=0.01),
    ),
    "NAdam(decoupled_weight_decay)": Case(
        lambda p: T.NAdam(p, LR, weight_decay=0.1, decoupled_weight_decay=True, foreach=False),
        lambda: adamx.nadamw(LR, weight_decay=0.1, momentum_decay=4e-3),
    ),
    "Adamax(weight_decay)": Case(
        lambda p: T.Adamax(p, LR, weight_decay=0.01, foreach=False),
        lambda: adamx.adamax(LR, weight_decay=0.01),
        state={"exp_avg": "mu", "exp_inf": "nu"},
    ),
    "RAdam": Case(
        lambda p: T.RAdam(p, LR, foreach=False),
        lambda: adamx.radam(LR, epsilon_hat=True),
        factor=200.0,
        why=RADAM_WHY,
    ),
    "RAdam(decoupled_weight_decay)": Case(
        lambda p: T.RAdam(p, LR, weight_decay=0.1, decoupled_weight_decay=True, foreach=False),
        lambda: adamx.radam(LR, epsilon_hat=True, weight_decay=0.1, decoupled_weight_decay=True),
        factor=200.0,
        why=RADAM_WHY,
    ),
    "Adam(maximize)": Case(
        lambda p: T.Adam(p, LR, maximize=True, foreach=False),
        lambda: optax.chain(optax.scale(-1.0), adamx.adam(LR)),
        sign=-1.0,
    ),
}


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


def run_both(case: Case, kind: str, dtype, with_adamx: bool = True):
    """(adamx, torch) trajectories and (adamx, torch) state pairs; adamx's are None if skipped."""
    ours, state = None, None
    with precision(dtype):
        if kind == "stream":
            params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
            grads = gradient_stack(params)
            if with_adamx:
                ours, state = run_adamx_stream(case.adamx(), params, grads)
            theirs, torch_state = run_torch(case.torch, params, grads)
        else:
            params = model_params(dtype)
            if with_adamx:
                ours, state = run_adamx_model(case.adamx(), params, sign=case.sign)
            theirs, torch_state = run_torch(case.torch, params, sign=case.sign)
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
    case = CASES[name]
    (ours32, theirs32), states32 = run_both(case, kind, jnp.float32)
    (ours64, theirs64), states64 = run_both(case, kind, jnp.float64, with_adamx=kind == "stream")

    if ours64 is not None:  # the formula check; the closed loop would only repeat it
        assert_f64_equal(ours64, theirs64, f"{name} params")
        for (ours_s, theirs_s), key in zip(states64, case.state, strict=True):
            if key != "mu_product":  # a scalar kept per parameter by torch, once by adamx
                assert_f64_equal(ours_s, theirs_s, f"{name} state {key}")
    assert_within_rounding(ours32, theirs32, theirs64, case.factor, f"{name} params ({case.why})")
    for (ours_s, theirs_s), (_, ref64), key in zip(states32, states64, case.state, strict=True):
        if key != "mu_product":
            assert_within_rounding(ours_s, theirs_s, ref64, case.factor, f"{name} state {key}")
