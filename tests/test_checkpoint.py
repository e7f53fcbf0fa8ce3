"""Optimizer state through orbax-checkpoint: exact round trips and bit-identical resumption.

The table ``CASES`` lists every optimizer (and state format) whose state must survive a
checkpoint. To cover a new family member or format, add one row: a name and a factory
returning the optimizer (and, if needed, the parameters' dtype).
"""

import pickle
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx._multi_tensor import multi_tensor  # TODO(lead): adamx.multi_tensor once exported

ocp = pytest.importorskip("orbax.checkpoint")

STEPS_BEFORE, STEPS_AFTER = 3, 3


class Case(NamedTuple):
    name: str
    make_tx: Any  # () -> optax.GradientTransformation; called afresh after a restart
    param_dtype: Any = jnp.float32


def _not_bias(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key != "b", params)


CASES = [
    Case("adam", lambda: adamx.adam(1e-2)),
    Case(
        "adamw_schedule_mask",
        lambda: adamx.adamw(
            optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10),
            weight_decay=optax.linear_schedule(0.1, 0.0, 10),
            mask=_not_bias,
        ),
    ),
    Case("adam_bf16_mu", lambda: adamx.adam(1e-2, mu_dtype=jnp.bfloat16)),
    Case("adam_nesterov", lambda: adamx.adam(1e-2, nesterov=True)),
    Case("adamw_bf16_params", lambda: adamx.adamw(1e-2, weight_decay=0.1), jnp.bfloat16),
    Case(
        "inject_hyperparams_adamw",
        lambda: optax.inject_hyperparams(adamx.adamw)(learning_rate=1e-2, weight_decay=0.1),
    ),
    Case("clip_adamw", lambda: optax.chain(optax.clip_by_global_norm(1.0), adamx.adamw(1e-2))),
    # The family.
    Case("nadam", lambda: adamx.nadam(1e-2)),
    Case("nadamw", lambda: adamx.nadamw(1e-2, weight_decay=0.1)),
    Case("radam", lambda: adamx.radam(1e-2)),
    Case("amsgrad", lambda: adamx.amsgrad(1e-2)),
    Case("adamax", lambda: adamx.adamax(1e-2)),
    Case("adamaxw", lambda: adamx.adamaxw(1e-2)),
    # State formats: 8-bit blockwise moments (uint8 codes + float32 scales), stochastic bfloat16
    # (bfloat16 values + a PRNG key), and low-precision parameters with Kahan compensation.
    Case(
        "nadam_8bit_moments",
        lambda: adamx.nadam(
            1e-2,
            mu_dtype=adamx.blockwise_8bit(block_size=4, min_size=1),
            nu_dtype=adamx.blockwise_8bit(signed=False, block_size=4, min_size=1),
        ),
    ),
    Case("adam_stochastic_bf16_mu", lambda: adamx.adam(1e-2, mu_dtype=adamx.stochastic_float())),
    Case(
        "adamw_kahan_bf16_params",
        lambda: optax.chain(adamx.adamw(1e-2), adamx.kahan_summation()),
        jnp.bfloat16,
    ),
    # The packed multi-tensor state (small leaves in flat per-dtype buckets).
    Case("multi_tensor_adamw", lambda: multi_tensor(adamx.adamw(1e-2), min_size=8)),
]
IDS = [case.name for case in CASES]


def _params(dtype):
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((4, 3)), dtype),
        "b": jnp.asarray(rng.standard_normal(3), dtype),
    }


def _data(step):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 3))


def _make_step(tx):
    def loss(params, x, y):
        pred = x.astype(params["w"].dtype) @ params["w"] + params["b"][None, :]
        return jnp.mean((pred.astype(jnp.float32) - y) ** 2)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _train(step, params, state, steps):
    for i in steps:
        params, state = step(params, state, *_data(i))
    return params, state


def _abstract(tx, params):
    """The restore target: shapes, dtypes and the state's own tree structure (NamedTuples)."""
    return jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)


def _save(path, tree):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)


def _restore(path, target):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, target)


@pytest.fixture
def no_pickle(monkeypatch):
    """Fail if anything unpickles while restoring: the checkpoint must be plain arrays."""

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was read with pickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_checkpoint_round_trips_and_resumes_bit_identically(case, tmp_path, no_pickle):
    tx = case.make_tx()
    step = _make_step(tx)
    params0 = _params(case.param_dtype)
    want = _train(step, params0, tx.init(params0), range(STEPS_BEFORE + STEPS_AFTER))

    # Train, checkpoint, and "restart": a fresh optimizer object and state from disk.
    params, state = _train(step, params0, tx.init(params0), range(STEPS_BEFORE))
    saved = {"params": params, "opt_state": state}
    _save(tmp_path / "ckpt", saved)
    tx = case.make_tx()
    restored = _restore(tmp_path / "ckpt", _abstract(tx, params0))

    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    chex.assert_trees_all_equal_dtypes(restored, saved)
    chex.assert_trees_all_equal(restored, saved)

    steps_after = range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)
    got = _train(_make_step(tx), restored["params"], restored["opt_state"], steps_after)
    chex.assert_trees_all_equal(got, want)
    assert not np.array_equal(got[0]["w"], params0["w"]), "training did not move the params"


def test_restore_gives_the_optimizers_own_types(tmp_path):
    """Restored against ``jax.eval_shape(tx.init, params)``, the state has adamx's types."""
    tx = adamx.adam(1e-2)
    params = _params(jnp.float32)
    _save(tmp_path / "ckpt", {"params": params, "opt_state": tx.init(params)})
    restored = _restore(tmp_path / "ckpt", _abstract(tx, params))
    assert isinstance(restored["opt_state"][0], adamx.ScaleByMomentsState)
    assert isinstance(restored["opt_state"][1], adamx.BiasCorrectState)
    assert restored["opt_state"][1].count.dtype == jnp.int32
