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
    # The format averages over axes (adamx.factored's row and column means): split over
    # devices, a mean sums in another order, so like a reduced gradient its stored moment may
    # land on the neighbouring value (test_matrix.assert_matches allows one storage ulp a step).
    reduces_over_axes: bool = False

    def make(self, optimizer: Optimizer, params=None) -> optax.GradientTransformation:
        tx = optimizer.make(params, **self.kwargs)
        return tx if self.post is None else optax.chain(tx, self.post())


def _bf16_sr_factored_v(mu_dtype, storage_bits: int) -> Format:
    """bf16 params + stochastic rounding, m in ``mu_dtype``, v factored on the (64, 128) leaf."""
    return Format(
        dict(mu_dtype=mu_dtype, nu_dtype=adamx.factored(FACTOR_LARGE)),
        param_dtype=BF16,
        post=adamx.stochastic_rounding,
        stochastic=True,
        storage_bits=storage_bits,
        reduces_over_axes=True,
    )


FACTOR_ALL = 4  # min_dim_size_to_factor: every leaf of the matrix tree with two axes factors
FACTOR_LARGE = 64  # only the (64, 128) leaf factors (and 64² = 4096: the small leaves pack)

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
    # 4-bit m and v (E3M0 m, sqrt(v) on E3M1, both rounded stochastically): the (64, 128) leaf.
    "blockwise_4bit": Format(
        dict(mu_dtype=adamx.blockwise_4bit(), nu_dtype=adamx.blockwise_4bit()),
        stochastic=True,
        storage_bits=0,
    ),
    # v as row and column means of every leaf with two axes >= 4: the (64, 128) and (4, 8) ones.
    "factored_v": Format(
        dict(nu_dtype=adamx.factored(FACTOR_ALL)), storage_bits=23, reduces_over_axes=True
    ),
    # The issue-14 budgets: bf16 params + stochastic rounding, 8-bit (or 4-bit) m, factored v
    # (the (64, 128) leaf; the small ones keep a full float32 v, so they pack).
    "bf16_sr_8bit_m_factored_v": _bf16_sr_factored_v(adamx.blockwise_8bit(), storage_bits=3),
    "bf16_sr_4bit_m_factored_v": _bf16_sr_factored_v(adamx.blockwise_4bit(), storage_bits=0),
}
