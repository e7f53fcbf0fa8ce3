"""adamx's family aliases against optax's: nadam, nadamw, amsgrad, adamax, adamaxw, radam.

A declarative table of (alias name in both libraries, keyword arguments),
run on a 500-step open-loop gradient stream in float32 (and in bfloat16 for one
case of each alias), and in float32 on 500 closed-loop steps of a small model.
The tolerance is zero: updates, parameters and moment states must be equal bit
for bit, because each adamx chain performs optax's operations in optax's order.
adamx and optax run in separate jitted programs.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from _family_refs import STEPS, gradient_stack, model_params, run_adamx_model, run_adamx_stream
from _streams import make_params

import adamx

LR_SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, STEPS, end_value=1e-4)
DECAY_SCHEDULE = optax.linear_schedule(0.2, 0.0, STEPS)


def matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


# name: (alias in adamx and optax, keyword arguments shared by both)
CASES = {
    "nadam": ("nadam", dict(learning_rate=3e-3)),
    "nadam_schedule": ("nadam", dict(learning_rate=LR_SCHEDULE, b1=0.8, eps_root=1e-12)),
    "nadamw": ("nadamw", dict(learning_rate=3e-3, weight_decay=0.1, mask=matrices)),
    "nadamw_decay_schedule": ("nadamw", dict(learning_rate=1e-3, weight_decay=DECAY_SCHEDULE)),
    "amsgrad": ("amsgrad", dict(learning_rate=3e-3)),
    "amsgrad_raw_paper": (
        "amsgrad",
        dict(learning_rate=3e-3, bias_correction_mu=False, bias_correction_nu=False),
    ),
    "amsgrad_nu_uncorrected": ("amsgrad", dict(learning_rate=3e-3, bias_correction_nu=False)),
    "amsgrad_mu_bf16": ("amsgrad", dict(learning_rate=LR_SCHEDULE, mu_dtype=jnp.bfloat16)),
    "adamax": ("adamax", dict(learning_rate=3e-3)),
    "adamax_eps": ("adamax", dict(learning_rate=LR_SCHEDULE, b1=0.5, b2=0.99, eps=1e-3)),
    "adamaxw": ("adamaxw", dict(learning_rate=3e-3, weight_decay=0.1, mask=matrices)),
    "adamaxw_decay_schedule": ("adamaxw", dict(learning_rate=1e-3, weight_decay=DECAY_SCHEDULE)),
    "radam": ("radam", dict(learning_rate=3e-3)),
    "radam_nesterov": ("radam", dict(learning_rate=LR_SCHEDULE, nesterov=True)),
    "radam_threshold": ("radam", dict(learning_rate=3e-3, threshold=3.0, eps_root=1e-10)),
}
STATE_FIELDS = ("mu", "nu", "nu_max")


def build(case):
    name, kwargs = CASES[case]
    return getattr(adamx, name)(**kwargs), getattr(optax, name)(**kwargs)


def assert_states_equal(ours, theirs):
    for field in STATE_FIELDS:
        try:
            expected = optax.tree.get(theirs, field)
        except KeyError:
            continue
        chex.assert_trees_all_equal(optax.tree.get(ours, field), expected)
        chex.assert_trees_all_equal_dtypes(optax.tree.get(ours, field), expected)


# A case of each optimizer also runs in bfloat16. Not the weight-decay *schedule* cases: there
# optax promotes bfloat16 updates to float32 (the schedule's value is float32), while adamx
# keeps the gradients' dtype by design.
BF16_CASES = ["nadamw", "amsgrad_mu_bf16", "adamax_eps", "radam_nesterov"]
STREAM_CASES = [(c, jnp.float32) for c in CASES] + [(c, jnp.bfloat16) for c in BF16_CASES]


@pytest.mark.parametrize(("case", "dtype"), STREAM_CASES, ids=lambda x: getattr(x, "__name__", x))
def test_stream_bit_identical(case, dtype):
    ours, theirs = build(case)
    params = make_params(dtype)
    grads = gradient_stack(params)
    p_ours, s_ours, u_ours = run_adamx_stream(ours, params, grads, with_updates=True)
    p_theirs, s_theirs, u_theirs = run_adamx_stream(theirs, params, grads, with_updates=True)
    chex.assert_trees_all_equal(u_ours, u_theirs)
    chex.assert_trees_all_equal_dtypes(u_ours, u_theirs)
    chex.assert_trees_all_equal(p_ours, p_theirs)
    assert_states_equal(s_ours, s_theirs)


@pytest.mark.parametrize("case", ["nadamw", "amsgrad", "adamaxw", "radam_nesterov"])
def test_model_bit_identical(case):
    ours, theirs = build(case)
    params = model_params(jnp.float32)
    trajectory_ours, s_ours = run_adamx_model(ours, params)
    trajectory_theirs, s_theirs = run_adamx_model(theirs, params)
    chex.assert_trees_all_equal(trajectory_ours, trajectory_theirs)
    assert_states_equal(s_ours, s_theirs)
