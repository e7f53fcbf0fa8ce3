"""Hosts: where a JAX user trains. Each ``Host`` names its loop (``runs.py``) and how it wraps
the optimizer (optax's wrappers: inject_hyperparams, MultiSteps, apply_if_finite, masked,
multi_transform, a clip chain)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import optax
from _promotion import reference, strict

import adamx

from .optimizer import Optimizer
from .runs import run_linen, run_nnx, run_orbax, run_plain, run_vmap


@dataclasses.dataclass(frozen=True)
class Host:
    """``run`` trains; ``wrap(factory)`` builds the transformation the host trains with
    from ``factory(**hyperparameters)`` (the optimizer on its path). Hosts whose
    ``wrap`` changes the maths (an optax wrapper) are compared with the same wrapper
    on the per-leaf plain loop; the others with the plain loop itself. ``exact``: the
    host compiles the plain loop's program (so exact paths stay bit for bit)."""

    run: Callable
    wrap: Callable = lambda factory, optimizer: factory()
    changes_maths: bool = False
    exact: bool = False
    vmapped: bool = False
    # The host calls ``tx.init`` eagerly (TrainState.create, nnx.Optimizer): on a mesh, leaves
    # such as step counts start on one device and the first step moves them onto the mesh, so
    # the step is traced once more (optax's optimizers alike); never after that.
    eager_init: bool = False
    # The host reduces over the whole gradient (a global norm): on a mesh the reduction order
    # differs from one device's, so the gradient differs by a rounding, and a moment stored in
    # a narrow format may then round to the neighbouring value (measured: one 8-bit code of m
    # in 8192 on the sharded clip chain; test_matrix.assert_matches allows it).
    reduces_gradient: bool = False


def _inject(factory, optimizer: Optimizer):
    """``optax.inject_hyperparams`` over every numeric hyperparameter the optimizer takes
    (the learning rate, β1, β2, ε, λ: numbers or schedules), so they arrive traced."""
    numeric = {
        k: v
        for k, v in optimizer.kwargs.items()
        if k in ("learning_rate", "b1", "b2", "eps", "weight_decay")
        and (isinstance(v, float) or callable(v))
    }

    def make(**hyperparams):
        return strict(factory(**hyperparams))

    kind = inspect.Parameter.KEYWORD_ONLY
    make.__signature__ = inspect.Signature([inspect.Parameter(k, kind) for k in numeric])
    # inject_hyperparams picks the hyperparameters' dtype with promote_types over the params'
    # dtypes, which strict refuses for a mixed tree: its code under the standard rules.
    return reference(optax.inject_hyperparams(make)(**numeric))


def _non_finite_at_step_1(tx):
    """apply_if_finite around ``tx``; the matrix's loss makes step 1's gradient non-finite."""
    return optax.apply_if_finite(tx, max_consecutive_errors=3)


HOSTS: dict[str, Host] = {
    "plain": Host(run_plain, exact=True),
    "nnx": Host(run_nnx, eager_init=True),
    "linen": Host(run_linen, exact=True, eager_init=True),
    "orbax": Host(run_orbax, exact=True),
    "inject_hyperparams": Host(run_plain, wrap=_inject, changes_maths=True, exact=True),
    # Hosts whose own code is not strict-clean run under the standard rules, the optimizer
    # inside them under the run's (_promotion): MultiSteps (its running mean divides by an
    # int32 step), inject_hyperparams and clip_by_global_norm (for a tree of mixed dtypes).
    "multi_steps": Host(
        run_plain,
        wrap=lambda f, _: reference(
            optax.MultiSteps(strict(f()), every_k_schedule=2).gradient_transformation()
        ),
        changes_maths=True,
        exact=True,
    ),
    "apply_if_finite": Host(
        run_plain,
        wrap=lambda f, _: _non_finite_at_step_1(f()),
        changes_maths=True,
        exact=True,
    ),
    "masked": Host(
        run_plain,
        wrap=lambda f, _: optax.masked(f(), adamx.exclude_paths(r"(^|/)b$")),
        changes_maths=True,
        exact=True,
    ),
    "multi_transform": Host(
        run_plain,
        wrap=lambda f, _: optax.multi_transform(
            {"adam": f(), "sgd": optax.sgd(1e-3)},
            adamx.path_mask(lambda path, _: "sgd" if path.startswith("layers") else "adam"),
        ),
        changes_maths=True,
        exact=True,
    ),
    "clip_chain": Host(
        run_plain,
        wrap=lambda f, _: reference(optax.chain(optax.clip_by_global_norm(1.0), strict(f()))),
        changes_maths=True,
        exact=True,
        reduces_gradient=True,
    ),
    "vmap": Host(run_vmap, vmapped=True),
}
