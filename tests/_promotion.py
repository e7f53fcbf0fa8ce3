"""Dtype promotion in the tests: strict for adamx, the standard rules for its references.

The test run uses ``jax_numpy_dtype_promotion="strict"`` (``STRICT_PROMOTION`` in
``conftest.py``, or ``JAX_NUMPY_DTYPE_PROMOTION=strict`` in the environment), so adamx cannot
lean on an implicit promotion (``b ** count`` with an int32 count, bfloat16 * float32): every
cast it needs is written out. Its references are not all strict-clean, and are not ours to
fix, so they run under the standard rules:

* optax's aliases (``optax.adam``'s bias correction ``1 - b ** count``), ``optax.MultiSteps``
  (its running mean divides by an int32 step) and its cosine schedules
  (``warmup_cosine_decay_schedule`` computes ``π * count / steps`` from an int32 count);
* Keras's optimizers (``_family_refs.run_keras``).

``reference(tx)`` wraps a reference transformation, ``reference_factory(optax.adamw)`` a
factory of them, ``reference_schedule(fn)`` a reference schedule, ``apply_reference_updates``
applies a reference's updates (optax's may be wider than the params), ``standard()`` is the
context for anything else. An optax wrapper that is not strict-clean around adamx runs as
``reference(host(strict(inner)))``: the host's own code under the standard rules, adamx inside
it under the run's again (the innermost context wins). Measured with optax 0.2.8 around
``optax.sgd``:

* ``MultiSteps``: never strict-clean (its running mean divides by an int32 step);
* ``inject_hyperparams`` and ``clip_by_global_norm`` in a chain: strict-clean on a tree of one
  float dtype, not on a mixed tree (the hyperparameters' dtype is found with ``promote_types``;
  the global norm sums float32 and bfloat16 norms), and ``inject_hyperparams`` only with
  strict-clean schedules;
* ``apply_if_finite``, ``masked``, ``multi_transform``: strict-clean.

Each wrapper enters the promotion context while ``init``/``update`` run, i.e. while they are
traced under ``jit``/``scan``: the promotion rules apply at trace time, and jit keys its cache
on them, so the wrapped computation is the one the reference computes without the wrapper
(its bits unchanged).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import optax


def standard() -> contextlib.AbstractContextManager:
    """The context a reference that is not strict-clean runs in."""
    return jax.numpy_dtype_promotion("standard")


def _under(mode: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` with its ``init`` and ``update`` run under the promotion rules ``mode``."""
    extra = isinstance(tx, optax.GradientTransformationExtraArgs)

    def init(params):
        with jax.numpy_dtype_promotion(mode):
            return tx.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion(mode):
            if extra:
                return tx.update(updates, state, params, **extra_args)
            return tx.update(updates, state, params)

    if extra:
        return optax.GradientTransformationExtraArgs(init, update)
    return optax.GradientTransformation(init, update)


def reference(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """A reference transformation (optax's), run under the standard promotion rules."""
    return _under("standard", tx)


def strict(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """adamx's transformation inside a ``reference`` host: the run's own rules again (those
    in force when ``strict`` is called, outside any reference)."""
    return _under(jax.config.jax_numpy_dtype_promotion, tx)


def reference_schedule(schedule: Callable) -> Callable:
    """An optax schedule that is not strict-clean, evaluated under the standard rules."""

    @functools.wraps(schedule)
    def evaluate(count):
        with standard():
            return schedule(count)

    return evaluate


def reference_factory(factory: Callable) -> Callable:
    """An optax factory (``optax.adamw``) whose transformations run under the standard rules;
    it keeps the factory's signature, which ``optax.inject_hyperparams`` reads."""

    @functools.wraps(factory)
    def make(*args, **kwargs):
        return reference(factory(*args, **kwargs))

    return make


def apply_reference_updates(params: optax.Params, updates: optax.Updates) -> optax.Params:
    """``optax.apply_updates`` of a reference's updates, under the standard rules: optax's own
    updates may be wider than the params (float32 for bfloat16 params under a scheduled
    decay), and ``apply_updates`` adds them before casting back."""
    with standard():
        return optax.apply_updates(params, updates)
