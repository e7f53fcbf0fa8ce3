"""Optimizer state through orbax-checkpoint: exact round trips and bit-identical resumption.

The table ``CASES`` lists the optimizers, state formats, paths and optax wrappers whose state
must survive a checkpoint, as cells of the registry (``tests/registry/``); the composition matrix's
``orbax`` host runs the same save -> restore -> resume on every other combination.
"""

import pickle
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import FORMATS, Cell, aliases, compose

import adamx

ocp = pytest.importorskip("orbax.checkpoint")

STEPS_BEFORE, STEPS_AFTER = 3, 3


class Case(NamedTuple):
    name: str
    cell: Cell  # (optimizer, format, path, host) in the registry

    @property
    def make_tx(self):  # () -> optax.GradientTransformation; called afresh after a restart
        return compose(self.cell)

    @property
    def param_dtype(self):
        return FORMATS[self.cell.format].param_dtype


def _case(optimizer, fmt="default", path="per_leaf", host="plain", name=None):
    return Case(name or optimizer, Cell(optimizer, fmt, path, host))


CASES = [
    _case("adam"),
    _case("adamw_schedule_mask"),
    _case("adam", "mu_bf16", name="adam_bf16_mu"),
    _case("adam_nesterov"),
    _case("adamw", "bf16_params", name="adamw_bf16_params"),
    _case("adamw", host="inject_hyperparams", name="inject_hyperparams_adamw"),
    _case("adamw", host="clip_chain", name="clip_adamw"),
    # The family: every other alias of the registry, with its plain arguments.
    *[_case(name) for name in aliases() if name not in ("adam", "adamw")],
    # State formats: 8-bit blockwise moments (uint8 codes + float32 scales), stochastic bfloat16
    # (bfloat16 values + a PRNG key), and low-precision parameters with Kahan compensation.
    _case("nadam", "blockwise_8bit_small_blocks", name="nadam_8bit_moments"),
    _case("adam", "stochastic_bf16", name="adam_stochastic_bf16"),
    _case("adamw", "kahan_bf16_params", name="adamw_kahan_bf16_params"),
    # The packed multi-tensor state (small leaves in flat per-dtype buckets).
    _case("adamw", path="multi_tensor", name="multi_tensor_adamw"),
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
