"""The modern members (issue 15): cautious updates and weight decay, update clipping
(StableAdamW), ADOPT, AdEMAMix and its simplified form, LaProp, and one combination no single
library offers (cautious AdEMAMix with cautious weight decay).

Their parity suites are their own (tests/aliases/test_parity_{adopt,ademamix,laprop,
stable_adamw,cautious_pytorch_optimizer}.py and tests/stages/test_cautious*.py: optax.contrib bit
for bit, pytorch_optimizer and torch-optimi within their float32 drift, NumPy transcriptions of
the papers); here each joins the composition matrix, with its optax.contrib reference where
there is one (``optax="contrib.<name>"``).
"""

from __future__ import annotations

import optax

import adamx

from .common import LR, matrices
from .optimizer import Optimizer

# The per-tensor members (a statistic of each whole leaf): refused on packed buckets and on a
# table's rows (rules.py, "per_tensor_stage_in_buckets" / "per_tensor_stage_on_rows").
PER_TENSOR = frozenset({"cautious_adamw", "stable_adamw", "cautious_ademamix"})
# The members whose state holds an EMA beside scale_by_moments' (or none of it): catch_up's
# decay of scale_by_moments' moments would leave theirs stale (rules.py).
OWN_MOMENTS = frozenset({"adopt", "laprop", "simplified_ademamix"})


def _cautious_ademamix(
    learning_rate=LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, mu_dtype=None, nu_dtype=None
):
    """Cautious AdEMAMix with cautious weight decay, from stages: the mask acts on the whole
    direction (m̂ + α·m2) / (√v̂ + ε), the decay only where θ and the direction agree."""
    direction = optax.chain(
        adamx.scale_by_moments(b1, b2, mu_dtype, nu_dtype=nu_dtype),
        adamx.bias_correct(b1, b2),
        adamx.add_slow_ema(0.999, 2.0, mu_dtype),
        adamx.scale_by_rsqrt(eps),
    )
    return optax.chain(
        adamx.cautious(direction),
        adamx.add_decoupled_weight_decay(weight_decay, matrices, cautious=True),
        adamx.scale_by_lr(learning_rate),
    )


VARIANTS: dict[str, Optimizer] = {
    "cautious_adamw": Optimizer(
        "cautious_adamw",
        dict(learning_rate=LR, weight_decay=0.1, mask=matrices, cautious_weight_decay=True),
    ),
    "stable_adamw": Optimizer(
        "stable_adamw",
        dict(learning_rate=LR, weight_decay=0.1, mask=matrices, fully_decoupled=True),
    ),
    "adopt": Optimizer("adopt", dict(learning_rate=LR), optax="contrib.adopt"),
    "adopt_nesterov": Optimizer(
        "adopt",
        dict(learning_rate=LR, b2=0.999, nesterov=True, use_clipping=False),
        optax="contrib.adopt",
        matrix=False,
    ),
    "laprop": Optimizer("laprop", dict(learning_rate=LR)),
    "ademamix": Optimizer(
        "ademamix",
        dict(
            learning_rate=LR,
            b3=optax.linear_schedule(0.9, 0.999, 100),
            alpha=optax.linear_schedule(0.0, 5.0, 100),
            weight_decay=0.1,
            mask=matrices,
        ),
        optax="contrib.ademamix",
    ),
    "simplified_ademamix": Optimizer(
        "simplified_ademamix",
        dict(learning_rate=LR, alpha=2.0, weight_decay=0.1, mask=matrices),
        optax="contrib.simplified_ademamix",
    ),
    "cautious_ademamix": Optimizer("cautious_ademamix", chain=_cautious_ademamix),
}
