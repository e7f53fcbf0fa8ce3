"""What an optimizer entry is: the ``Optimizer`` record, its torch and Keras references,
and the builders and constants the entries of ``adam.py`` and ``family.py`` use."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import optax
from _promotion import reference

import adamx

from .common import ALL, BF16, C64, F32, KERAS_LR, LR, pytree_mask


@dataclasses.dataclass(frozen=True)
class TorchRef:
    """A ``torch.optim`` optimizer that computes the same maths (the torch suite)."""

    make: Callable  # list of torch parameters -> torch optimizer
    state: dict  # torch state slot -> adamx state field (optax.tree.get name)
    factor: float = 10.0  # float32 tolerance, in units of torch's own float32 drift
    why: str = "operation order differs (torch: lerp, sqrt(v)/sqrt(1-b2^t)); same formula"
    sign: float = 1.0  # -1: the model's gradients are of -loss (maximize ascends)


@dataclasses.dataclass(frozen=True)
class KerasRef:
    """A Keras 3 optimizer (JAX backend) that computes the same maths (the Keras suite)."""

    make: Callable  # () -> keras optimizer
    slots: dict  # Keras slot name -> adamx state field
    factor: float = 16.0  # measured need <= 6.9 (v's EMA)
    why: str = (
        "Keras's EMA v += (g²-v)(1-β2) rounds once per step where optax's (1-β2)g² + β2·v "
        "rounds twice, so adamx's v drifts up to ~7x further from exact over 500 steps"
    )


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """One member of the family: how to build it and what it must equal.

    ``alias`` and ``kwargs`` build it (``adamx.<alias>(**kwargs)``), or ``chain``
    (a callable taking the same keyword overrides) for members that are not one
    alias call. ``optax`` names the optax alias that takes the same ``kwargs`` and
    must be bit-identical (on parameters of ``optax_dtypes``); ``torch`` and
    ``keras`` are references within a stated float32 tolerance. ``suites`` adds
    the member to the optax suites' extra runs: ``"adam_table"`` / ``"family_table"``
    (the two optax tables), ``"x64"`` (float64), ``"bf16"`` (a bfloat16 stream),
    ``"model"`` (closed-loop training).
    """

    alias: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    optax: str | None = None
    optax_dtypes: tuple = ALL
    torch: TorchRef | None = None
    keras: KerasRef | None = None
    suites: frozenset = frozenset()
    chain: Callable | None = None
    matrix: bool = True

    def make(self, params=None, **overrides) -> optax.GradientTransformation:
        """The adamx optimizer; ``overrides`` (e.g. ``mu_dtype``) replace ``kwargs``."""
        kwargs = _resolve(dict(self.kwargs, **overrides), params)
        if self.chain is not None:
            return self.chain(**kwargs)
        return getattr(adamx, self.alias)(**kwargs)

    def reference(self, params=None) -> optax.GradientTransformation:
        """optax's optimizer with the same arguments (bit-identical to ``make``), run under
        the standard promotion rules (optax is not strict-clean, see ``_promotion``)."""
        make = functools.reduce(getattr, self.optax.split("."), optax)  # "contrib.adopt" too
        return reference(make(**_resolve(dict(self.kwargs), params)))


def _resolve(kwargs: dict, params) -> dict:
    if kwargs.get("mask") == "pytree":
        kwargs["mask"] = pytree_mask(params)
    return kwargs


def _adamw_amsgrad(learning_rate=LR):
    """torch's AdamW(amsgrad=True): the raw-v maximum, then decoupled decay."""
    return optax.chain(
        adamx.scale_by_moments(0.9, 0.999),
        adamx.running_max_nu(),
        adamx.bias_correct(0.9, 0.999),
        adamx.scale_by_rsqrt(1e-8),
        adamx.add_decoupled_weight_decay(0.1),
        adamx.scale_by_lr(learning_rate),
    )


def _maximize(learning_rate=LR):
    return optax.chain(optax.scale(-1.0), adamx.adam(learning_rate))


def _torch(name, **kwargs):
    """A torch.optim builder: ``name(params, LR, **kwargs, foreach=False)``."""

    def make(params):
        import torch

        return getattr(torch.optim, name)(params, LR, **kwargs, foreach=False)

    return make


def _keras(name, **kwargs):
    def make():
        import keras

        return getattr(keras.optimizers, name)(KERAS_LR, **kwargs)

    return make


ADAM_STATE = {"exp_avg": "mu", "exp_avg_sq": "nu"}
ADAM_SLOTS = {"momentum": "mu", "velocity": "nu"}
RADAM_WHY = (
    "optax's (and so adamx's) float32 rho_t = rho_inf - 2t b2^t/(1-b2^t) cancels ~3 of "
    "rho_inf ~ 2000's digits when rho_t ~ 5, so r_t carries ~1e-5 relative error in early "
    "steps; torch computes it in float64 Python floats"
)
# Tolerance factors in units of torch's own float32 drift: measured needs <= 4.7 for all
# cases but RAdam, <= 90 for RAdam; set at about 2x.
RADAM_FACTOR = 200.0
# A bfloat16 mu_dtype is exact against optax for float32 and bfloat16 params (float16 or
# complex params would promote or truncate it). A scheduled weight decay is exact for float32
# and complex64; in bfloat16/float16 adamx deliberately keeps the gradients' dtype.
MU_BF16_DTYPES = (F32, BF16)
DECAY_SCHEDULE_DTYPES = (F32, C64)
ADAM_TABLE, FAMILY_TABLE = "adam_table", "family_table"
