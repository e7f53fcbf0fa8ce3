"""State formats: how m and v are stored (and, for low-precision params, how the
parameters themselves are updated)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

import adamx

from .common import BF16, F16, F32
from .optimizer import Optimizer

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
        param_dtype=BF16,
        post=adamx.stochastic_rounding,
        stochastic=True,
        storage_bits=7,
    ),
    "kahan_bf16_params": Format(param_dtype=BF16, post=adamx.kahan_summation, storage_bits=7),
}
