"""AdEMAMix and simplified AdEMAMix against optax.contrib (bit for bit) and pytorch_optimizer.

optax.contrib: 500 open-loop steps (float32; bfloat16 with constant hyperparameters) and 500
closed-loop steps of the small model: updates, parameters and states equal bit for bit
(adamx performs optax's operations in optax's order). optax runs under the standard
promotion rules (``_promotion.reference``), adamx under strict promotion.

pytorch_optimizer (4.1.0, the test extra's pin): its ``t_alpha_beta3`` warm-ups are the
schedules ``adamx.aliases.ademamix.linear_warmup`` / ``half_life_warmup``; its coupled
(default), decoupled and fixed weight decays are adamx stages. Its SimplifiedAdEMAMix is not
optax's: m is an EMA (``lerp``, with 1 - β1) and the step is divided once more by
1 - β2^t, so it is written as a chain of adamx stages (``SIMPLIFIED_TORCH``). float64 agrees
to ``F64_ATOL``; float32 within ``FACTORS`` times the reference's own float32 drift.
"""

import inspect

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
from _family_tolerance import assert_f64_equal, assert_within_rounding
from _promotion import reference, reference_schedule
from _streams import make_params

import adamx
from adamx.aliases.ademamix import half_life_warmup, linear_warmup

LR = 1e-2
T = 300  # warm-up length: inside the 500 steps, so both phases run


def matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


# (keyword arguments shared by adamx and optax.contrib, bfloat16 too?)
ADEMAMIX = {
    "defaults": ({}, True),
    "schedules_decay_mask": (
        {
            "alpha": optax.linear_schedule(0.0, 8.0, T),
            "b3": optax.linear_schedule(0.99, 0.9999, T),
            "weight_decay": 0.1,
            "mask": matrices,
        },
        False,  # a float32 α_t promotes optax's bfloat16 updates to float32 (adamx keeps bf16)
    ),
    "b_eps_root_decay_schedule": (
        {
            "b1": 0.8,
            "b2": 0.99,
            "b3": 0.999,
            "alpha": 2.0,
            "eps_root": 1e-8,
            "weight_decay": optax.linear_schedule(0.1, 0.0, 200),
        },
        False,
    ),
}
SIMPLIFIED = {
    "defaults": ({}, True),
    "alpha_schedule_decay_mask": (
        {
            "b1": 0.9,
            "b2": 0.99,
            "alpha": optax.linear_schedule(0.0, 5.0, T),
            "weight_decay": 0.1,
            "mask": matrices,
        },
        False,
    ),
    "alpha_eps_root": ({"alpha": 3.0, "eps_root": 1e-8, "eps": 1e-6}, True),
}


def optax_pair(kind: str, kwargs: dict, lr: float = LR):
    ours = getattr(adamx, kind)(lr, **kwargs)
    kwargs = {
        k: reference_schedule(v) if callable(v) and k != "mask" else v for k, v in kwargs.items()
    }
    return ours, reference(getattr(optax.contrib, kind)(lr, **kwargs))


def assert_states_equal(kind: str, ours, theirs):
    """adamx's chain state against optax's, field by field; the decay's and lr's states too."""
    if kind == "ademamix":
        moments, bias, slow = ours[0], ours[1], ours[2]
        inner = theirs[0]
        pairs = [(moments.mu, inner.m1), (moments.nu, inner.nu), (slow.m2, inner.m2),
                 (bias.count, inner.count), (slow.count, inner.count_m2)]  # fmt: skip
    else:
        inner = theirs[0]
        pairs = [(ours[0].mu, inner.m), (ours[0].nu, inner.n), (ours[0].count, inner.t)]
    # the weight decay's and the learning rate's (step counts; their types differ by name)
    pairs.append((jax.tree.leaves(ours[-2:]), jax.tree.leaves(theirs[-2:])))
    for a, b in pairs:
        chex.assert_trees_all_equal(a, b)
        chex.assert_trees_all_equal_dtypes(a, b)


# Every case in float32; in bfloat16 the defaults of each alias (the others under -m slow).
STREAM_CASES = [
    pytest.param(
        kind,
        case,
        dtype,
        marks=[pytest.mark.slow] if dtype == jnp.bfloat16 and case != "defaults" else [],
    )
    for kind, table in (("ademamix", ADEMAMIX), ("simplified_ademamix", SIMPLIFIED))
    for case, (_, bf16) in table.items()
    for dtype in ((jnp.float32, jnp.bfloat16) if bf16 else (jnp.float32,))
]


def table(kind):
    return ADEMAMIX if kind == "ademamix" else SIMPLIFIED


@pytest.mark.parametrize(
    ("kind", "case", "dtype"), STREAM_CASES, ids=lambda x: getattr(x, "__name__", x)
)
def test_optax_stream_bit_identical(kind, case, dtype):
    ours, theirs = optax_pair(kind, table(kind)[case][0])
    params = make_params(dtype)
    grads = gradient_stack(params)
    p_ours, s_ours, u_ours = run_adamx_stream(ours, params, grads, with_updates=True)
    p_theirs, s_theirs, u_theirs = run_adamx_stream(theirs, params, grads, with_updates=True)
    chex.assert_trees_all_equal(u_ours, u_theirs)
    chex.assert_trees_all_equal_dtypes(u_ours, u_theirs)
    chex.assert_trees_all_equal(p_ours, p_theirs)
    assert_states_equal(kind, s_ours, s_theirs)


@pytest.mark.parametrize(
    ("kind", "case"),
    [("ademamix", "schedules_decay_mask"), ("simplified_ademamix", "alpha_schedule_decay_mask")],
)
def test_optax_model_bit_identical(kind, case):
    ours, theirs = optax_pair(kind, table(kind)[case][0], lr=1e-3)
    params = model_params(jnp.float32)
    trajectory_ours, s_ours = run_adamx_model(ours, params)
    trajectory_theirs, s_theirs = run_adamx_model(theirs, params)
    chex.assert_trees_all_equal(trajectory_ours, trajectory_theirs)
    assert_states_equal(kind, s_ours, s_theirs)


def run_stepwise(tx, params, grads, steps: int):
    """``steps`` jitted updates in a Python loop (a state whose dtype changes cannot scan)."""
    state, step = tx.init(params), jax.jit(tx.update)
    for t in range(steps):
        updates, state = step(jax.tree.map(lambda g, t=t: g[t], grads), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_optax_mu_dtype_only_sets_its_first_zeros():
    """optax.contrib.ademamix(mu_dtype=bf16) on float32 params makes bfloat16 zeros for m1, m2
    *and* nu, then keeps float32 from step 1 on (it cannot run under lax.scan, and a jitted
    update retraces once); its zeros being exact, it is optax's mu_dtype=None (which adamx
    matches above), bit for bit: the "what differs" row of mu_dtype."""
    params = make_params(jnp.float32)
    grads = gradient_stack(params, steps=20)
    narrow = reference(optax.contrib.ademamix(LR, mu_dtype=jnp.bfloat16))
    assert narrow.init(params)[0].nu["w"].dtype == jnp.bfloat16
    p_narrow, s_narrow = run_stepwise(narrow, params, grads, 20)
    p_plain, s_plain = run_stepwise(reference(optax.contrib.ademamix(LR)), params, grads, 20)
    assert s_narrow[0].nu["w"].dtype == jnp.float32  # the state's dtype changed at step 1
    chex.assert_trees_all_equal((p_narrow, s_narrow), (p_plain, s_plain))


@pytest.mark.parametrize("name", ["ademamix", "simplified_ademamix"])
def test_positional_parameters_are_optax_contribs(name):
    """``adamx.X(*args)`` means ``optax.contrib.X(*args)``; adamx's own options are keywords."""

    def positional(fn):
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        return [
            (p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.kind == kind
        ]

    assert positional(getattr(adamx, name)) == positional(getattr(optax.contrib, name))


# --- pytorch_optimizer ------------------------------------------------------------------------

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
