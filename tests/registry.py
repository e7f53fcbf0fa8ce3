"""Every optimizer, state format, execution path and host of adamx, each declared once.

The suites read their cases from here: the parity suites (optax bit for bit, torch
and Keras within their own float32 rounding), the checkpoint, flax and property
suites, and the composition matrix (``test_matrix.py``), which runs every
combination optimizer x format x path x host and holds it to the per-leaf plain
``jit`` loop of the same optimizer and format (or to a refusal, see ``RULES``).

To add a member, add ONE entry:

* an optimizer: ``OPTIMIZERS["name"] = Optimizer("alias", dict(kwargs), optax=..., torch=...,
  keras=..., suites=...)``. It joins the matrix automatically (``matrix=False`` for
  hyperparameter variants that add no new code path), and every reference it names
  joins that reference's parity suite;
* a state format: ``FORMATS["name"] = Format(dict(mu_dtype=..., nu_dtype=...), param_dtype=...,
  post=...)``;
* an execution path: ``PATHS["name"] = Path(...)`` (how params are laid out, how ``tx`` is
  wrapped, how the state is initialised, whether its program is XLA-identical);
* a host: ``HOSTS["name"] = Host(run, wrap=...)`` (``run`` trains ``steps`` steps and
  returns the final params, the state after each step and the number of traces).

and, if some combination must be refused, a ``Rule`` in ``RULES`` with the message it
must raise; a combination that fails today although it should work goes in
``PENDING`` (an expected failure, strict: delete the entry when the fix lands).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from _promotion import reference, reference_schedule, strict

import adamx

F32, BF16, F16, C64 = jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64
ALL = (F32, BF16, F16, C64)
PARITY_STEPS = 1000  # length of the schedules below (the optax parity suites' horizon)
# optax's cosine schedule is not strict-clean (π * count / steps, count int32): see _promotion.
SCHEDULE = reference_schedule(
    optax.warmup_cosine_decay_schedule(0.0, 1e-2, 50, PARITY_STEPS, end_value=1e-4)
)
DECAY_SCHEDULE = optax.linear_schedule(0.1, 0.0, PARITY_STEPS)
LR = 3e-3
KERAS_LR = 2.0**-8  # Keras stores the rate as a float32 variable: 2**-8 is exact in both widths


def matrices(params):
    """A callable weight-decay mask: decay the matrices, not vectors or scalars."""
    return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


def pytree_mask(params):
    """A literal bool pytree over the optax suites' trees (``_streams.make_mixed_params``)."""
    return {
        group: {"w": True, "b": False, "scale": False, "block": {"k": True}} for group in params
    }


# ---------------------------------------------------------------------------
# Optimizers.


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
        return reference(getattr(optax, self.optax)(**_resolve(dict(self.kwargs), params)))


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

OPTIMIZERS: dict[str, Optimizer] = {
    # adam / adamw (optax.adam, optax.adamw; test_parity_optax.py).
    "adam": Optimizer(
        "adam", dict(learning_rate=LR), optax="adam", suites=frozenset({ADAM_TABLE, "x64", "model"})
    ),
    "adam_schedule": Optimizer(
        "adam",
        dict(learning_rate=SCHEDULE, eps_root=1e-12),
        optax="adam",
        suites=frozenset({ADAM_TABLE}),
        matrix=False,
    ),
    "adam_nesterov": Optimizer(
        "adam",
        dict(learning_rate=LR, nesterov=True),
        optax="adam",
        suites=frozenset({ADAM_TABLE, "x64"}),
    ),
    "adam_no_momentum": Optimizer(
        "adam",
        dict(learning_rate=1e-3, b1=0.0),
        optax="adam",
        suites=frozenset({ADAM_TABLE}),
        matrix=False,
    ),
    "adam_mu_bf16": Optimizer(
        "adam",
        dict(learning_rate=1e-3, mu_dtype=BF16),
        optax="adam",
        optax_dtypes=MU_BF16_DTYPES,
        suites=frozenset({ADAM_TABLE}),
        matrix=False,  # the format axis covers mu_dtype
    ),
    "adam_coupled_decay": Optimizer(
        "adam",
        dict(learning_rate=LR, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
        torch=TorchRef(
            _torch("Adam", betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), dict(ADAM_STATE)
        ),
    ),
    "adam_epsilon_hat": Optimizer(
        "adam",
        dict(learning_rate=KERAS_LR, b1=0.8, b2=0.99, eps=1e-6, epsilon_hat=True),
        keras=KerasRef(_keras("Adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6), dict(ADAM_SLOTS)),
    ),
    "adam_maximize": Optimizer(
        "adam",
        dict(learning_rate=LR),
        chain=_maximize,
        torch=TorchRef(_torch("Adam", maximize=True), dict(ADAM_STATE), sign=-1.0),
        matrix=False,  # optax.scale(-1) before adam: no new code path
    ),
    "adamw": Optimizer(
        "adamw",
        dict(learning_rate=LR, weight_decay=0.1),
        optax="adamw",
        suites=frozenset({ADAM_TABLE}),
        torch=TorchRef(_torch("AdamW", weight_decay=0.1), dict(ADAM_STATE)),
        matrix=False,  # adamw_schedule_mask and adamw_fully_decoupled cover its code
    ),
    "adamw_schedule_mask": Optimizer(
        "adamw",
        dict(learning_rate=SCHEDULE, weight_decay=0.05, mask=matrices, nesterov=True),
        optax="adamw",
        suites=frozenset({ADAM_TABLE, "x64", "model"}),
    ),
    "adamw_pytree_mask": Optimizer(
        "adamw",
        dict(learning_rate=1e-3, weight_decay=0.3, mask="pytree"),
        optax="adamw",
        suites=frozenset({ADAM_TABLE}),
        matrix=False,  # the mask is a literal tree of the optax suites' params
    ),
    "adamw_decay_schedule": Optimizer(
        "adamw",
        dict(learning_rate=1e-3, weight_decay=DECAY_SCHEDULE),
        optax="adamw",
        optax_dtypes=DECAY_SCHEDULE_DTYPES,
        suites=frozenset({ADAM_TABLE, "x64"}),
        matrix=False,
    ),
    "adamw_fully_decoupled": Optimizer(
        "adamw",
        dict(
            learning_rate=SCHEDULE, weight_decay=0.1, fully_decoupled=True, peak_learning_rate=1e-2
        ),
    ),
    "adamw_epsilon_hat": Optimizer(
        "adamw",
        dict(learning_rate=KERAS_LR, eps=1e-7, weight_decay=0.1, epsilon_hat=True),
        keras=KerasRef(_keras("AdamW", weight_decay=0.1), dict(ADAM_SLOTS)),
        matrix=False,  # adam_epsilon_hat covers the option
    ),
    # The family (optax.nadam, nadamw, amsgrad, adamax, adamaxw, radam; test_parity_family_optax).
    "nadam": Optimizer(
        "nadam", dict(learning_rate=LR), optax="nadam", suites=frozenset({FAMILY_TABLE})
    ),
    "nadam_schedule": Optimizer(
        "nadam",
        dict(learning_rate=SCHEDULE, b1=0.8, eps_root=1e-12),
        optax="nadam",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "nadam_momentum_decay": Optimizer(
        "nadam",
        dict(learning_rate=LR, momentum_decay=4e-3),
        torch=TorchRef(
            _torch("NAdam"), dict(ADAM_STATE, mu_product="mu_product")
        ),  # torch's NAdam: the ψ momentum schedule
    ),
    "nadam_momentum_decay_l2": Optimizer(
        "nadam",
        dict(learning_rate=LR, momentum_decay=2e-2, weight_decay=0.01),
        torch=TorchRef(_torch("NAdam", weight_decay=0.01, momentum_decay=2e-2), dict(ADAM_STATE)),
        matrix=False,
    ),
    "nadamw": Optimizer(
        "nadamw",
        dict(learning_rate=LR, weight_decay=0.1, mask=matrices),
        optax="nadamw",
        suites=frozenset({FAMILY_TABLE, "bf16", "model"}),
    ),
    "nadamw_decay_schedule": Optimizer(
        "nadamw",
        dict(learning_rate=1e-3, weight_decay=optax.linear_schedule(0.2, 0.0, PARITY_STEPS)),
        optax="nadamw",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "nadamw_momentum_decay": Optimizer(
        "nadamw",
        dict(learning_rate=LR, weight_decay=0.1, momentum_decay=4e-3),
        torch=TorchRef(
            _torch("NAdam", weight_decay=0.1, decoupled_weight_decay=True), dict(ADAM_STATE)
        ),
        matrix=False,
    ),
    "amsgrad": Optimizer(
        "amsgrad",
        dict(learning_rate=LR),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE, "model"}),
    ),
    "amsgrad_raw_paper": Optimizer(
        "amsgrad",
        dict(learning_rate=LR, bias_correction_mu=False, bias_correction_nu=False),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "amsgrad_nu_uncorrected": Optimizer(
        "amsgrad",
        dict(learning_rate=LR, bias_correction_nu=False),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "amsgrad_mu_bf16": Optimizer(
        "amsgrad",
        dict(learning_rate=SCHEDULE, mu_dtype=BF16),
        optax="amsgrad",
        suites=frozenset({FAMILY_TABLE, "bf16"}),
        matrix=False,
    ),
    "amsgrad_max_of_raw": Optimizer(  # torch's flavour: the maximum of the raw v
        "amsgrad",
        dict(learning_rate=LR, max_of="raw", weight_decay=0.01),
        torch=TorchRef(
            _torch("Adam", amsgrad=True, weight_decay=0.01),
            dict(ADAM_STATE, max_exp_avg_sq="nu_max"),
        ),
    ),
    "amsgrad_epsilon_hat": Optimizer(  # Keras's flavour
        "amsgrad",
        dict(learning_rate=KERAS_LR, eps=1e-7, max_of="raw", epsilon_hat=True),
        keras=KerasRef(_keras("Adam", amsgrad=True), dict(ADAM_SLOTS, velocity_hat="nu_max")),
        matrix=False,
    ),
    "adamw_amsgrad": Optimizer(
        "adamw_amsgrad",
        dict(learning_rate=LR),
        chain=_adamw_amsgrad,
        torch=TorchRef(
            _torch("AdamW", amsgrad=True, weight_decay=0.1),
            dict(ADAM_STATE, max_exp_avg_sq="nu_max"),
        ),
        matrix=False,
    ),
    "adamax": Optimizer(
        "adamax", dict(learning_rate=LR), optax="adamax", suites=frozenset({FAMILY_TABLE})
    ),
    "adamax_eps": Optimizer(
        "adamax",
        dict(learning_rate=SCHEDULE, b1=0.5, b2=0.99, eps=1e-3),
        optax="adamax",
        suites=frozenset({FAMILY_TABLE, "bf16"}),
        matrix=False,
    ),
    "adamax_l2": Optimizer(
        "adamax",
        dict(learning_rate=LR, weight_decay=0.01),
        torch=TorchRef(_torch("Adamax", weight_decay=0.01), {"exp_avg": "mu", "exp_inf": "nu"}),
        matrix=False,
    ),
    "adamax_eps_after_max": Optimizer(  # Keras's flavour
        "adamax",
        dict(learning_rate=KERAS_LR, eps=1e-7, eps_in_max=False),
        keras=KerasRef(_keras("Adamax"), {"momentum": "mu", "norm": "nu"}),
    ),
    "adamaxw": Optimizer(
        "adamaxw",
        dict(learning_rate=LR, weight_decay=0.1, mask=matrices),
        optax="adamaxw",
        suites=frozenset({FAMILY_TABLE, "model"}),
    ),
    "adamaxw_decay_schedule": Optimizer(
        "adamaxw",
        dict(learning_rate=1e-3, weight_decay=optax.linear_schedule(0.2, 0.0, PARITY_STEPS)),
        optax="adamaxw",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "radam": Optimizer(
        "radam", dict(learning_rate=LR), optax="radam", suites=frozenset({FAMILY_TABLE})
    ),
    "radam_nesterov": Optimizer(
        "radam",
        dict(learning_rate=SCHEDULE, nesterov=True),
        optax="radam",
        suites=frozenset({FAMILY_TABLE, "bf16", "model"}),
        matrix=False,
    ),
    "radam_threshold": Optimizer(
        "radam",
        dict(learning_rate=LR, threshold=3.0, eps_root=1e-10),
        optax="radam",
        suites=frozenset({FAMILY_TABLE}),
        matrix=False,
    ),
    "radam_epsilon_hat": Optimizer(  # torch's RAdam
        "radam",
        dict(learning_rate=LR, epsilon_hat=True),
        torch=TorchRef(_torch("RAdam"), dict(ADAM_STATE), factor=RADAM_FACTOR, why=RADAM_WHY),
        matrix=False,
    ),
    "radam_decoupled": Optimizer(
        "radam",
        dict(learning_rate=LR, epsilon_hat=True, weight_decay=0.1, decoupled_weight_decay=True),
        torch=TorchRef(
            _torch("RAdam", weight_decay=0.1, decoupled_weight_decay=True),
            dict(ADAM_STATE),
            factor=RADAM_FACTOR,
            why=RADAM_WHY,
        ),
    ),
}


def with_reference(kind: str) -> list[str]:
    """Names of the optimizers that declare a ``kind`` reference ("optax", "torch", "keras")."""
    return [name for name, opt in OPTIMIZERS.items() if getattr(opt, kind) is not None]


def in_suite(suite: str) -> list[str]:
    return [name for name, opt in OPTIMIZERS.items() if suite in opt.suites]


# ---------------------------------------------------------------------------
# State formats: how m and v are stored (and, for low-precision params, how the
# parameters themselves are updated).


@dataclasses.dataclass(frozen=True)
class Format:
    """A storage choice: ``kwargs`` for the optimizer (``mu_dtype``/``nu_dtype``), the
    parameters' dtype, and an optional parameter-side stage chained after the optimizer.

    ``storage_bits`` is the mantissa width of the narrowest stored number (a moment code
    or a parameter): a last-bit difference before a rounding to it can move the result
    by one of its steps. ``stochastic`` says the format draws random bits.
    """

    kwargs: dict = dataclasses.field(default_factory=dict)
    param_dtype: Any = F32
    post: Callable | None = None  # () -> a stage chained after the optimizer
    stochastic: bool = False
    storage_bits: int = 23
    matrix: bool = True
    # A moment stored narrower than the parameter is rounded where XLA places the cast, which
    # differs between programs (sharded layouts fuse differently): one storage ulp of m is a
    # relative change of the update of this much, per step.
    update_rounding: float = 0.0

    def make(self, optimizer: Optimizer, params=None) -> optax.GradientTransformation:
        tx = optimizer.make(params, **self.kwargs)
        return tx if self.post is None else optax.chain(tx, self.post())


FORMATS: dict[str, Format] = {
    "default": Format(),
    "bf16_params": Format(param_dtype=BF16, storage_bits=7),
    "mu_bf16": Format(dict(mu_dtype=BF16), storage_bits=7, update_rounding=2.0**-8),
    "f32_moments_f16_params": Format(
        dict(mu_dtype=F32, nu_dtype=F32), param_dtype=F16, storage_bits=10
    ),
    "nu_f32_bf16_params": Format(
        dict(mu_dtype=F32, nu_dtype=F32), param_dtype=BF16, storage_bits=7
    ),
    "stochastic_bf16": Format(
        dict(
            mu_dtype=adamx.stochastic_float(BF16, seed=0),
            nu_dtype=adamx.stochastic_float(BF16, seed=1),
        ),
        stochastic=True,
        storage_bits=7,
        update_rounding=2.0**-8,
    ),
    "blockwise_8bit": Format(
        dict(mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_8bit(signed=False)),
        stochastic=True,  # v rounds stochastically by default
        storage_bits=3,
    ),
    "blockwise_8bit_mu": Format(dict(mu_dtype=adamx.blockwise_8bit()), storage_bits=3),
    # Every leaf quantized, in blocks of 4 (the small-tree checkpoint case).
    "blockwise_8bit_small_blocks": Format(
        dict(
            mu_dtype=adamx.blockwise_8bit(block_size=4, min_size=1),
            nu_dtype=adamx.blockwise_8bit(signed=False, block_size=4, min_size=1),
        ),
        stochastic=True,
        storage_bits=3,
    ),
    "stochastic_rounding_bf16_params": Format(
        param_dtype=BF16, post=adamx.stochastic_rounding, stochastic=True, storage_bits=7
    ),
    "kahan_bf16_params": Format(param_dtype=BF16, post=adamx.kahan_summation, storage_bits=7),
}


# ---------------------------------------------------------------------------
# Execution paths: the same optimizer run per leaf, packed, or sharded.

N_DEVICES = 8
PACK_MIN_SIZE = 4096  # the matrix tree's (64, 128) leaf stays unpacked, the rest is packed


def _mesh(explicit: bool):
    """A 1-D ``"data"`` mesh of 8 devices; ``explicit``: ``jax.make_mesh``'s default axes."""
    from jax.sharding import AxisType

    if explicit:
        return jax.make_mesh((N_DEVICES,), ("data",))
    return jax.make_mesh((N_DEVICES,), ("data",), (AxisType.Auto,))


def _on_mesh():
    """``jax.set_mesh`` of the Explicit mesh, as the README's recipes run."""
    return jax.set_mesh(_mesh(explicit=True))


def _split_first_divisible(mesh, leaf):
    """FSDP-style: split a leaf along its first dimension divisible by the mesh size."""
    from jax.sharding import NamedSharding, PartitionSpec

    for dim, size in enumerate(jnp.shape(leaf)):
        if size % N_DEVICES == 0:  # no trailing Nones: jit returns the spec without them
            return NamedSharding(mesh, PartitionSpec(*[None] * dim, "data"))
    return NamedSharding(mesh, PartitionSpec())


@dataclasses.dataclass(frozen=True)
class Path:
    """How params are laid out (``prepare``/``finish``), how ``tx`` is wrapped, how its
    state is initialised, and whether the compiled step is the per-leaf program
    (``exact``: bit for bit) or another one (within ``MAX_ULP``, see ``_paths``)."""

    exact: bool
    wrap: Callable = lambda tx: tx
    prepare: Callable = lambda params: params
    finish: Callable = lambda params: params
    init: Callable | None = None  # (tx, params) -> state; None: tx.init, eagerly
    devices: int = 1
    packed: bool = False  # the training loop holds an ``adamx.PackedTree``
    context: Callable = contextlib.nullcontext  # () -> the context the loop runs in

    def make_init(self, tx):
        # On one device, eagerly: its few zeros_like ops are compiled once per shape for the
        # whole session. On a mesh under jit, so that every state leaf (step counts too) is
        # laid out as the jitted step returns it: an eager count on one device would make
        # step 2 retrace.
        if self.init is not None:
            return functools.partial(self.init, tx)
        return jax.jit(tx.init) if self.devices > 1 else tx.init


def _unpack(params):
    return params.unpack() if isinstance(params, adamx.PackedTree) else params


def _zero1(tx):
    import adamx.sharding

    return adamx.sharding.zero1(tx, _mesh(explicit=True))


def _replicate(params):
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(params, NamedSharding(_mesh(explicit=True), PartitionSpec()))


def _shard(explicit: bool):
    def prepare(params):
        mesh = _mesh(explicit)
        return jax.device_put(
            params, jax.tree.map(lambda x: _split_first_divisible(mesh, x), params)
        )

    return prepare


def _auto_init(tx, params):
    import adamx.sharding

    return jax.jit(tx.init, out_shardings=adamx.sharding.state_shardings(tx, params))(params)


PATHS: dict[str, Path] = {
    "per_leaf": Path(exact=True),
    "pack": Path(
        exact=False,
        prepare=lambda p: adamx.pack(p, min_size=PACK_MIN_SIZE),
        finish=_unpack,
        packed=True,
    ),
    "multi_tensor": Path(
        exact=False, wrap=lambda tx: adamx.multi_tensor(tx, min_size=PACK_MIN_SIZE)
    ),
    # ZeRO-1 as its docstring and the README show it: replicated params, make_mesh's axes.
    "zero1": Path(
        exact=False, wrap=_zero1, prepare=_replicate, devices=N_DEVICES, context=_on_mesh
    ),
    "sharded_auto": Path(exact=False, prepare=_shard(False), init=_auto_init, devices=N_DEVICES),
    "sharded_explicit": Path(
        exact=False, prepare=_shard(True), devices=N_DEVICES, context=_on_mesh
    ),
}


# ---------------------------------------------------------------------------
# Hosts: where a JAX user trains. ``run(build, params, path, loss, steps)`` trains
# ``steps`` closed-loop steps of ``loss`` and returns a ``Run``.


class Run(NamedTuple):
    params: Any  # final params, laid out as given (unpacked / gathered by the caller)
    states: list  # the optimizer state after init and after each step
    traces: int  # how many times the step function was traced


class Counter:
    """Counts traces of a step function (incremented in its Python body)."""

    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def _plain_loop(tx, params, path: Path, loss, steps: range, state=None, counter=None):
    counter = counter or Counter()

    @jax.jit
    def step(params, state, t):
        counter()
        grads = jax.grad(loss)(params, t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = path.make_init(tx)(params) if state is None else state
    states = [state]
    for t in steps:
        params, state = step(params, state, jnp.int32(t))
        states.append(state)
    return params, states, counter


def run_plain(build, params, path: Path, loss, steps: int) -> Run:
    params, states, counter = _plain_loop(build(), params, path, loss, range(steps))
    return Run(params, states, counter.n)


def run_orbax(build, params, path: Path, loss, steps: int) -> Run:
    """Train half the steps, save params and state, restore them into a fresh optimizer
    against ``adamx.sharding.abstract_state`` (the README recipe), and train the rest."""
    import tempfile

    import orbax.checkpoint as ocp

    half = steps // 2
    tx = build()
    params, states, counter = _plain_loop(tx, params, path, loss, range(half))
    with tempfile.TemporaryDirectory() as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(f"{tmp}/ckpt", {"params": params, "opt_state": states[-1]})
        tx = build()  # "after a restart": a fresh optimizer object
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
        target = {"params": abstract, "opt_state": adamx.sharding.abstract_state(tx, abstract)}
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(f"{tmp}/ckpt", target)
    params, more, counter2 = _plain_loop(
        tx, restored["params"], path, loss, range(half, steps), restored["opt_state"]
    )
    return Run(params, states + more, max(counter.n, counter2.n))


def run_nnx(build, params, path: Path, loss, steps: int) -> Run:
    """``flax.nnx.Optimizer`` over a module that holds the parameter tree."""
    from flax import nnx

    class Holder(nnx.Module):
        def __init__(self, tree):
            self.tree = nnx.data(jax.tree.map(nnx.Param, tree))

    def values(model):
        is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
        return jax.tree.map(lambda v: v[...], model.tree, is_leaf=is_var)

    model = Holder(params)
    optimizer = nnx.Optimizer(model, build(), wrt=nnx.Param)
    counter = Counter()

    @nnx.jit
    def step(model, optimizer, t):
        counter()
        grads = nnx.grad(lambda m: loss(values(m), t))(model)
        optimizer.update(model, grads)

    def opt_state():  # as the user sees it: the transformation's state types, nnx variables
        return jax.tree.map(lambda x: x, optimizer.opt_state)

    states = [opt_state()]
    for t in range(steps):
        step(model, optimizer, jnp.int32(t))
        states.append(opt_state())
    return Run(values(model), states, counter.n)


def run_linen(build, params, path: Path, loss, steps: int) -> Run:
    """flax linen's ``TrainState``: ``create`` (which calls ``tx.init``), ``apply_gradients``."""
    from flax.training import train_state

    state = train_state.TrainState.create(apply_fn=None, params=params, tx=build())
    counter = Counter()

    @jax.jit
    def step(state, t):
        counter()
        return state.apply_gradients(grads=jax.grad(loss)(state.params, t))

    states = [state.opt_state]
    for t in range(steps):
        state = step(state, jnp.int32(t))
        states.append(state.opt_state)
    return Run(state.params, states, counter.n)


ENSEMBLE = 2


def run_vmap(build, params, path: Path, loss, steps: int) -> Run:
    """An ensemble of ``ENSEMBLE`` models trained by one ``jax.vmap``-ed step; returns the
    stacked params (member i starts from ``ensemble_member(params, i)``)."""
    tx = build()
    stacked = jax.tree.map(
        lambda *xs: jnp.stack(xs), *[ensemble_member(params, i) for i in range(ENSEMBLE)]
    )
    counter = Counter()

    @jax.jit
    def step(params, state, t):
        counter()

        def one(p, s):
            updates, s = tx.update(jax.grad(loss)(p, t), s, p)
            return optax.apply_updates(p, updates), s

        return jax.vmap(one)(params, state)

    state = jax.jit(jax.vmap(tx.init))(stacked)
    states = [state]
    for t in range(steps):
        stacked, state = step(stacked, state, jnp.int32(t))
        states.append(state)
    return Run(stacked, states, counter.n)


def ensemble_member(params, i: int):
    """Member ``i`` of the vmap host's ensemble: the params shifted by ``i / 4``."""
    return jax.tree.map(lambda x: (x + 0.25 * i).astype(x.dtype), params)


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
        return factory(**hyperparams)

    kind = inspect.Parameter.KEYWORD_ONLY
    make.__signature__ = inspect.Signature([inspect.Parameter(k, kind) for k in numeric])
    return optax.inject_hyperparams(make)(**numeric)


def _non_finite_at_step_1(tx):
    """apply_if_finite around ``tx``; the matrix's loss makes step 1's gradient non-finite."""
    return optax.apply_if_finite(tx, max_consecutive_errors=3)


HOSTS: dict[str, Host] = {
    "plain": Host(run_plain, exact=True),
    "nnx": Host(run_nnx, eager_init=True),
    "linen": Host(run_linen, exact=True, eager_init=True),
    "orbax": Host(run_orbax, exact=True),
    "inject_hyperparams": Host(run_plain, wrap=_inject, changes_maths=True, exact=True),
    # MultiSteps's own code is not strict-clean (its running mean divides by an int32 step):
    # it runs under the standard rules, the optimizer inside it under the run's (_promotion).
    "multi_steps": Host(
        run_plain,
        wrap=lambda f, _: reference(
            optax.MultiSteps(strict(f()), every_k_schedule=2).gradient_transformation()
        ),
        changes_maths=True,
        exact=True,
    ),
    "apply_if_finite": Host(
        run_plain, wrap=lambda f, _: _non_finite_at_step_1(f()), changes_maths=True, exact=True
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
        wrap=lambda f, _: optax.chain(optax.clip_by_global_norm(1.0), f()),
        changes_maths=True,
        exact=True,
        reduces_gradient=True,
    ),
    "vmap": Host(run_vmap, vmapped=True),
}


# ---------------------------------------------------------------------------
# The matrix's rules: combinations refused by design, inexpressible ones, and the
# ones that fail today while their fix is under way.


class Cell(NamedTuple):
    optimizer: str
    format: str
    path: str
    host: str


@dataclasses.dataclass(frozen=True)
class Rule:
    """A combination that must be refused: ``applies(cell)``, why, and the error it raises
    (``error`` type and ``match``, a regular expression its message must contain).
    ``match=None`` marks a combination that cannot be written at all (not a refusal)."""

    applies: Callable[[Cell], bool]
    reason: str
    error: type | tuple = ValueError
    match: str | None = None


def _has_mask(cell: Cell) -> bool:
    return "mask" in OPTIMIZERS[cell.optimizer].kwargs


def _format(cell: Cell) -> Format:
    return FORMATS[cell.format]


def _quantizes_below(cell: Cell, size: int) -> bool:
    """The cell's format quantizes some leaf with fewer than ``size`` elements."""
    return any(
        isinstance(v, adamx.Blockwise8bit) and v.min_size < size
        for v in _format(cell).kwargs.values()
    )


def _lays_state_out_like_params(cell: Cell) -> bool:
    """The cell's 8-bit state is laid out like its sharded params (and so must fit them)."""
    if cell.path == "sharded_explicit":
        return cell.host != "multi_transform"
    if cell.path == "sharded_auto":
        return cell.host != "multi_transform" and not HOSTS[cell.host].eager_init
    return False


RULES: dict[str, Rule] = {
    "path_mask_on_packed_tree": Rule(
        lambda c: PATHS[c.path].packed and c.host in ("masked", "multi_transform"),
        "optax.masked / multi_transform hand the mask function the PackedTree, whose leaves are "
        "buckets mixing many parameters: no per-leaf mask of them exists",
        ValueError,
        r"path_mask/exclude_paths was handed a PackedTree.*Pass the mask to adamx instead",
    ),
    "stochastic_float_in_buckets": Rule(
        lambda c: (
            c.path in ("pack", "multi_tensor")
            and any(isinstance(v, adamx.StochasticFloatFormat) for v in _format(c).kwargs.values())
        ),
        "stochastic_float's noise depends on each element's position: packed, a leaf would be "
        "rounded differently from the per-leaf run",
        ValueError,
        r"stochastic_float draws its rounding noise from each element's position.*Keep these "
        r"leaves out of the buckets",
    ),
    "quantized_leaf_in_buckets": Rule(
        lambda c: c.path in ("pack", "multi_tensor") and _quantizes_below(c, PACK_MIN_SIZE),
        "a blockwise format that quantizes leaves smaller than the packing min_size would cut "
        "blocks across unrelated leaves of a bucket",
        ValueError,
        r"blockwise_8bit quantizes leaves of at least min_size=\d+ elements, but the leaf at "
        r".* was packed into a flat bucket.*Give pack / multi_tensor a min_size <=",
    ),
    "block_across_devices": Rule(
        lambda c: _lays_state_out_like_params(c) and _quantizes_below(c, 32),
        "the matrix tree's (4, 8) leaf is split over 8 devices along its last axis (1 element "
        "each), and a block of the 8-bit format must lie on one device (where the state is laid "
        "out like the parameters: not under multi_transform, whose label sends that leaf to "
        "sgd, nor on Auto axes for hosts that call tx.init eagerly, whose state stays whole)",
        ValueError,
        r"cannot be laid out like the parameter.*a block must lie on one device",
    ),
    "nnx_holds_no_packed_tree": Rule(
        lambda c: c.host == "nnx" and PATHS[c.path].packed,
        "nnx.Optimizer owns the model's parameters, so the loop cannot hold a PackedTree: "
        "use multi_tensor (the same buckets, inside the optimizer) with nnx",
    ),
    "vmap_over_meshes": Rule(
        lambda c: HOSTS[c.host].vmapped and PATHS[c.path].devices > 1,
        "an ensemble vmapped over a device mesh is a layout question of its own (the ensemble "
        "axis); the sharded paths are exercised by every other host",
    ),
}
REFUSALS = {name: rule for name, rule in RULES.items() if rule.match is not None}
INEXPRESSIBLE = {name: rule for name, rule in RULES.items() if rule.match is None}


def rule_for(cell: Cell) -> tuple[str, Rule] | None:
    """The rule a cell falls under (a combination that cannot be written comes first)."""
    for name, rule in (*INEXPRESSIBLE.items(), *REFUSALS.items()):
        if rule.applies(cell):
            return name, rule
    return None


# PENDING: combinations that fail today and are being fixed (issue 10). Each entry is a cell
# predicate and the defect's name; the matrix marks those cells xfail(strict=True), so an entry
# must be deleted as soon as its fix lands (the cell then passes and strict xfail fails).
def compose(cell: Cell) -> Callable[[], optax.GradientTransformation]:
    """``build()``: the cell's optimizer in its format, on its path, wrapped by its host.

    The format's parameter-side stage (``stochastic_rounding``, ``kahan_summation``)
    is chained outside the path's wrapper: it updates the parameters as the loop holds them.
    """
    optimizer, fmt, path = OPTIMIZERS[cell.optimizer], FORMATS[cell.format], PATHS[cell.path]

    def factory(**hyperparameters):
        tx = path.wrap(optimizer.make(None, **fmt.kwargs, **hyperparameters))
        return tx if fmt.post is None else optax.chain(tx, fmt.post())

    return lambda: HOSTS[cell.host].wrap(factory, optimizer)


def pending(cell: Cell) -> str | None:
    for defect, applies in PENDING.items():
        if applies(cell):
            return defect
    return None


def _is(**want) -> Callable[[Cell], bool]:
    """A cell predicate: each field equal to (or, for a tuple/set, in) the wanted value(s)."""

    def applies(cell: Cell) -> bool:
        for field, value in want.items():
            got = getattr(cell, field)
            if isinstance(value, (tuple, set, frozenset)):
                if got not in value:
                    return False
            elif isinstance(value, re.Pattern):
                if not value.search(got):
                    return False
            elif got != value:
                return False
        return True

    return applies


PENDING: dict[str, Callable[[Cell], bool]] = {}
