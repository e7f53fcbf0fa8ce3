"""AdEMAMix and simplified AdEMAMix against optax.contrib, bit for bit.

500 open-loop steps (float32; bfloat16 with constant hyperparameters) and 500 closed-loop steps
of the small model: updates, parameters and states equal bit for bit (adamx performs optax's
operations in optax's order). optax runs under the standard promotion rules
(``_promotion.reference``), adamx under strict promotion. pytorch_optimizer:
test_parity_ademamix_pytorch_optimizer.py.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from _family_refs import (
    gradient_stack,
    model_params,
    run_adamx_model,
    run_adamx_stream,
)
from _promotion import reference, reference_schedule
from _streams import make_params

import adamx

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
