"""AdEMAMix and simplified AdEMAMix against pytorch_optimizer (4.1.0, the test extra's pin).

Its ``t_alpha_beta3`` warm-ups are the schedules ``adamx.linear_warmup`` /
``half_life_warmup``; its coupled (default), decoupled and fixed weight decays are adamx
stages. Its SimplifiedAdEMAMix is not optax's: m is an EMA (``lerp``, with 1 - β1) and the step
is divided once more by 1 - β2^t, so it is written as a chain of adamx stages
(``simplified_torch``). 500 steps on an open-loop stream (float64 and float32) and on the small
model (float32, -m slow): float64 agrees to ``F64_ATOL``; float32 within ``FACTORS`` times the
reference's own float32 drift.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import gradient_stack, model_grad, model_params, run_adamx_model, run_adamx_stream
from _family_tolerance import assert_f64_equal, assert_within_rounding
from _streams import make_params

import adamx
from adamx import half_life_warmup, linear_warmup

T = 300  # warm-up length: inside the 500 steps, so both phases run

torch = pytest.importorskip("torch", reason="torch is a test-only reference (pip install torch)")
po = pytest.importorskip("pytorch_optimizer", reason="pip install pytorch_optimizer==4.1.0")

TORCH_LR = 1e-3
# adamx float32 vs pytorch_optimizer float32, in units of pytorch_optimizer's own float32 drift
# (|its float32 run - its float64 run|), set at about 2x the measured need (500 steps, stream
# and model, every case): params <= 2.5, exp_avg <= 5.4, exp_avg_sq <= 1.1 (operation order:
# torch's lerp and sqrt(v)/sqrt(1-b2^t), as for torch.optim.Adam), exp_avg_slow <= 12 with a
# constant b3 and <= 132 with the b3 warm-up: b3 = 0.9999 rounds in float32, so optax's
# (1-b3)g + b3*m2 (adamx's, bit for bit) decays m2 ~2e-9 per step off exact, and a float32 b3_t
# carries up to ~6e-4 relative error in 1 - b3_t, where torch keeps b3_t in float64.
FACTORS = {"params": 10.0, "exp_avg": 10.0, "exp_avg_sq": 10.0, "exp_avg_slow": 300.0}


def _power_complement(b: float):
    """count -> 1 - b^(count + 1), in the default float dtype (float64 under x64)."""

    def schedule(count):
        return 1.0 - jnp.asarray(b) ** (count + 1).astype(float)

    return schedule


def simplified_torch(lr: float, b1: float, b2: float, alpha: float, weight_decay: float):
    r"""pytorch_optimizer.SimplifiedAdEMAMix(lr, (b1, b2), alpha=α, weight_decay=λ) as a chain.

    Its step is :math:`\theta \leftarrow (1 - \eta\lambda)\theta - \eta (m_t + \alpha g_t) /
    (d_t (\sqrt{v_t/d_t} + \varepsilon))` with m_t an EMA (1 - β1) and
    :math:`d_t = 1 - \beta_2^t`: m is Adam's uncorrected m (``bias_correct(...,
    bias_correction_mu=False)``), α·g is a "slow EMA" of decay 0, and 1/d_t is a learning-rate
    schedule (so the decay, which it must not reach, is multiplied by d_t).
    """
    d = _power_complement(b2)
    return optax.chain(
        adamx.scale_by_moments(b1, b2),
        adamx.bias_correct(b1, b2, bias_correction_mu=False),
        adamx.add_slow_ema(b3=0.0, alpha=alpha),
        adamx.scale_by_rsqrt(1e-8),
        adamx.add_decoupled_weight_decay(lambda count: weight_decay * d(count)),
        adamx.scale_by_lr(lambda count: lr / d(count)),
    )


def ademamix_l2_warmup(lr: float, weight_decay: float, steps: int):
    """pytorch_optimizer.AdEMAMix(lr, weight_decay=λ, t_alpha_beta3=T): coupled L2 (its
    default), α and β3 warmed up over T steps."""
    return optax.chain(
        adamx.add_coupled_weight_decay(weight_decay),
        adamx.scale_by_moments(0.9, 0.999),
        adamx.bias_correct(0.9, 0.999),
        adamx.add_slow_ema(half_life_warmup(0.9, 0.9999, steps), linear_warmup(5.0, steps)),
        adamx.scale_by_rsqrt(1e-8),
        adamx.scale_by_lr(lr),
    )


STATE_AE = {"exp_avg": "mu", "exp_avg_sq": "nu", "exp_avg_slow": "m2"}
STATE_SIMPLE = {"exp_avg": "mu", "exp_avg_sq": "nu"}
# name: (torch optimizer, adamx transformation, torch state slot -> adamx state field)
TORCH_CASES = {
    "ademamix": (
        lambda ps: po.AdEMAMix(ps, lr=TORCH_LR, foreach=False),
        lambda: adamx.ademamix(TORCH_LR, weight_decay=None),
        STATE_AE,
    ),
    "ademamix_warmup_l2": (
        lambda ps: po.AdEMAMix(ps, lr=TORCH_LR, t_alpha_beta3=T, weight_decay=1e-2, foreach=False),
        lambda: ademamix_l2_warmup(TORCH_LR, 1e-2, T),
        STATE_AE,
    ),
    "ademamix_decoupled": (
        lambda ps: po.AdEMAMix(ps, lr=TORCH_LR, weight_decay=0.1, weight_decouple=True),
        lambda: adamx.ademamix(TORCH_LR, weight_decay=0.1),
        STATE_AE,
    ),
    "ademamix_fixed_decay": (
        lambda ps: po.AdEMAMix(
            ps, lr=TORCH_LR, weight_decay=1e-3, weight_decouple=True, fixed_decay=True
        ),
        lambda: adamx.ademamix(TORCH_LR, weight_decay=1e-3, fully_decoupled=True),
        STATE_AE,
    ),
    "simplified": (
        # foreach=False: its foreach path rounds sqrt(1 - b2^t) to float32 in float64 runs
        lambda ps: po.SimplifiedAdEMAMix(
            ps, lr=TORCH_LR, alpha=2.0, weight_decay=0.1, foreach=False
        ),
        lambda: simplified_torch(TORCH_LR, 0.99, 0.95, 2.0, 0.1),
        STATE_SIMPLE,
    ),
}


def run_torch(make_optimizer, params, grads=None, steps: int = 500):
    """A torch optimizer in a Python loop (open loop on ``grads``, or the small model);
    returns (trajectory, {state slot: tree}) with the tensor slots only."""
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
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    per_leaf = [np.stack(column) for column in zip(*trajectory, strict=True)]
    slots = [k for k, v in optimizer.state[tensors[0]].items() if isinstance(v, torch.Tensor)]
    state = {k: treedef.unflatten([optimizer.state[p][k].numpy() for p in tensors]) for k in slots}
    return treedef.unflatten(per_leaf), state


def run_both(name: str, kind: str, dtype, with_adamx: bool = True):
    make_torch, make_ours, _ = TORCH_CASES[name]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == jnp.float64 else torch.float32)
    try:
        with jax.enable_x64(dtype == jnp.float64):
            ours = state = None
            if kind == "stream":
                params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
                grads = gradient_stack(params)
                if with_adamx:
                    ours, state = run_adamx_stream(make_ours(), params, grads)
                theirs, torch_state = run_torch(make_torch, params, grads)
            else:
                params = model_params(dtype)
                if with_adamx:
                    ours, state = run_adamx_model(make_ours(), params)
                theirs, torch_state = run_torch(make_torch, params)
    finally:
        torch.set_default_dtype(previous)
    return ours, theirs, state, torch_state


def check_torch(name: str, kind: str):
    slots = TORCH_CASES[name][2]
    ours32, theirs32, state32, torch32 = run_both(name, kind, jnp.float32)
    ours64, theirs64, state64, torch64 = run_both(name, kind, jnp.float64, kind == "stream")
    if ours64 is not None:  # the formula check; the closed loop would only repeat it
        assert_f64_equal(ours64, theirs64, f"{name} params")
        for slot, field in slots.items():
            got = optax.tree.get(state64, field)
            assert_f64_equal(got, torch64[slot], f"{name} state {slot}")
    assert_within_rounding(ours32, theirs32, theirs64, FACTORS["params"], f"{name} params")
    for slot, field in slots.items():
        got = optax.tree.get(state32, field)
        assert_within_rounding(got, torch32[slot], torch64[slot], FACTORS[slot], f"{name} {slot}")


# The default run: a case per weight decay and warm-up; the rest under -m slow.
DEFAULT_TORCH = ("ademamix_warmup_l2", "ademamix_decoupled", "simplified")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n in DEFAULT_TORCH else [pytest.mark.slow]) for n in TORCH_CASES],
)
def test_matches_pytorch_optimizer_stream(name):
    check_torch(name, "stream")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_pytorch_optimizer_model(name):
    check_torch(name, "model")


def test_pytorch_optimizer_pinned():
    """The parity above is with this version (its SimplifiedAdEMAMix differs from optax's)."""
    from importlib.metadata import version

    assert version("pytorch_optimizer") == "4.1.0"
