"""adamx's family aliases against optax's: nadam, nadamw, amsgrad, adamax, adamaxw, radam.

The cases are the registry's family table (``registry.OPTIMIZERS``: the alias name in
both libraries and its keyword arguments), run on a 500-step open-loop gradient stream
in float32 (and in bfloat16 for one case of each alias), and in float32 on 500 closed-
loop steps of a small model. The tolerance is zero: updates, parameters and moment
states must be equal bit for bit, because each adamx chain performs optax's operations
in optax's order. adamx and optax run in separate jitted programs.
"""

import chex
import jax.numpy as jnp
import optax
import pytest
from _family_refs import gradient_stack, model_params, run_adamx_model, run_adamx_stream
from _streams import make_params
from registry import FAMILY_TABLE, OPTIMIZERS, in_suite

# The cases: every registry optimizer of the family table (alias and keyword arguments shared
# by adamx and optax).
CASES = in_suite(FAMILY_TABLE)
STATE_FIELDS = ("mu", "nu", "nu_max")


def build(case):
    return OPTIMIZERS[case].make(), OPTIMIZERS[case].reference()


def assert_states_equal(ours, theirs):
    for field in STATE_FIELDS:
        try:
            expected = optax.tree.get(theirs, field)
        except KeyError:
            continue
        if expected is None:  # optax.adafactor: v_row / v_col (compared in test_adafactor.py)
            continue
        chex.assert_trees_all_equal(optax.tree.get(ours, field), expected)
        chex.assert_trees_all_equal_dtypes(optax.tree.get(ours, field), expected)


# A case of each optimizer also runs in bfloat16. Not the weight-decay *schedule* cases: there
# optax promotes bfloat16 updates to float32 (the schedule's value is float32), while adamx
# keeps the gradients' dtype by design.
BF16_CASES = [c for c in in_suite("bf16") if c in CASES]
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


@pytest.mark.parametrize("case", [c for c in in_suite("model") if c in CASES])
def test_model_bit_identical(case):
    ours, theirs = build(case)
    params = model_params(jnp.float32)
    trajectory_ours, s_ours = run_adamx_model(ours, params)
    trajectory_theirs, s_theirs = run_adamx_model(theirs, params)
    chex.assert_trees_all_equal(trajectory_ours, trajectory_theirs)
    assert_states_equal(s_ours, s_theirs)
