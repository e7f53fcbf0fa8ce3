"""The matrix's cells and rules: combinations refused by design, inexpressible ones, the ones
that fail today while their fix is under way (``PENDING``), and ``compose`` (a cell's
transformation)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import NamedTuple

import optax

import adamx

from .formats import FORMATS, Format
from .hosts import HOSTS
from .optimizers import OPTIMIZERS
from .paths import PACK_MIN_SIZE, PATHS
from .variants import OWN_MOMENTS, PER_TENSOR

PACKED_LARGEST = 128  # the largest leaf the matrix tree packs: (128,)
FACTORED_TABLE = 64 * 128  # the sparse paths' table, the (64, 128) leaf

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


def _is_adafactor(cell: Cell) -> bool:
    return OPTIMIZERS[cell.optimizer].alias == "adafactor"


def _per_tensor(cell: Cell) -> bool:
    """The cell's optimizer computes a statistic of each whole leaf."""
    return _is_adafactor(cell) or cell.optimizer in PER_TENSOR


def _factors_at_least(cell: Cell, size: int) -> bool:
    """Some leaf of ``size`` elements or more could be factored: the cell's format keeps v as
    ``adamx.factored`` means, or its optimizer is Adafactor, with min_dim_size_to_factor² <=
    ``size``."""
    values = _format(cell).kwargs.values()
    dims = [v.min_dim_size_to_factor for v in values if isinstance(v, adamx.Factored)]
    if _is_adafactor(cell):
        dims.append(OPTIMIZERS[cell.optimizer].kwargs.get("min_dim_size_to_factor", 128))
    return any(max(d, 1) ** 2 <= size for d in dims)


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
        r"blockwise_\dbit quantizes leaves of at least min_size=\d+ elements, but the leaf at "
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
    "factored_leaf_in_buckets": Rule(
        lambda c: c.path in ("pack", "multi_tensor") and _factors_at_least(c, PACKED_LARGEST),
        "a bucket is 1-D and keeps its full v, so a leaf that factored on its own (at least "
        "min_dim_size_to_factor² elements) would be stored otherwise when packed",
        ValueError,
        r"factored keeps the row and column means.*was packed into a flat bucket.*min_size <=",
    ),
    "per_tensor_stage_in_buckets": Rule(
        lambda c: c.path in ("pack", "multi_tensor") and _per_tensor(c),
        "a per-tensor statistic (Adafactor's update clipping and parameter scaling, cautious's "
        "kept fraction, StableAdamW's update RMS) is of one leaf: a bucket's would scale every "
        "leaf packed in it",
        ValueError,
        r"computes one statistic per parameter leaf.*buckets"
        r"|factored keeps the row and column means",
    ),
    "factored_table_on_rows": Rule(
        lambda c: (
            c.path in ("sparse_rows", "sparse_rows_catch_up")
            and not _is_adafactor(c)
            and _factors_at_least(c, FACTORED_TABLE)
        ),
        "every column mean of a factored v averages all rows of the table: its touched rows "
        "cannot be read and written alone",
        ValueError,
        r"the table at (tree/)?w has its second moment stored by nu_dtype=factored.*row-aligned",
    ),
    "per_tensor_stage_on_rows": Rule(
        lambda c: c.path in ("sparse_rows", "sparse_rows_catch_up") and _per_tensor(c),
        "a per-leaf statistic (an RMS, a kept fraction) of a table's touched rows is not the "
        "table's",
        ValueError,
        r"per-tensor stage.*statistic of those rows",
    ),
    "catch_up_without_moments": Rule(
        lambda c: (
            c.path == "sparse_rows_catch_up" and (_is_adafactor(c) or c.optimizer in OWN_MOMENTS)
        ),
        "catch_up decays Adam's moments of scale_by_moments; Adafactor, ADOPT, LaProp and "
        "simplified AdEMAMix keep moments of their own stages",
        ValueError,
        r"semantics='catch_up'\) decays the stored moments of adamx's scale_by_moments",
    ),
    "row_sparse_gradient_clipped_outside": Rule(
        lambda c: c.path.startswith("sparse_rows") and c.host == "clip_chain",
        "clip_by_global_norm computes with every leaf of the gradient, and a RowSparse's int32 "
        "indices are a leaf: optax refuses them. Chain the clip inside adamx.sparse_rows, where "
        "it sees the touched rows (their global norm is the row-sparse gradient's norm)",
        TypeError,
        r"lax.select requires arguments to have the same dtypes",
    ),
    "row_sparse_gradient_accumulated": Rule(
        lambda c: c.path.startswith("sparse_rows") and c.host == "multi_steps",
        "optax.MultiSteps keeps a running mean of the gradients shaped like the params, which a "
        "RowSparse is not (and different batches touch different rows): optax refuses it. "
        "Accumulate the mini-batches' rows yourself (concatenate their indices and values) or "
        "take dense gradients",
        ValueError,
        r"pytree structure error: different types at key path",
    ),
    "dense_update_of_a_row_sparse_gradient": Rule(
        lambda c: c.path == "sparse_rows_dense_equivalent" and c.host == "apply_if_finite",
        "semantics='dense_equivalent' moves every row, so its update is a dense array while the "
        "gradient is a RowSparse; apply_if_finite's reject branch returns zeros shaped like the "
        "gradient, and optax requires both branches alike. Chain apply_if_finite inside "
        "adamx.sparse_rows",
        TypeError,
        r"cond branch outputs must have the same pytree structure",
    ),
    "moment_format_of_adafactor": Rule(
        lambda c: _is_adafactor(c) and bool(_format(c).kwargs),
        "adafactor keeps its own factored v (in the parameters' dtype, as optax) and its momentum "
        "in dtype_momentum: it takes no mu_dtype / nu_dtype",
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
    is chained outside the path's wrapper: it updates the parameters as the loop holds them
    (inside it where the path says so: ``sparse_rows`` hands it the touched rows). A path's
    ``outer`` transformation comes first, outside the host's wrapper.
    """
    optimizer, fmt, path = (
        OPTIMIZERS[cell.optimizer],
        FORMATS[cell.format],
        PATHS[cell.path],
    )

    def factory(**hyperparameters):
        tx = optimizer.make(None, **fmt.kwargs, **hyperparameters)
        if fmt.post is None:
            return path.wrap(tx)
        if path.post_inside:
            return path.wrap(optax.chain(tx, fmt.post()))
        return optax.chain(path.wrap(tx), fmt.post())

    def build():
        tx = HOSTS[cell.host].wrap(factory, optimizer)
        return tx if path.outer is None else optax.chain(path.outer(), tx)

    return build


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
