"""The matrix's cells: the full product of the registry's axes, a greedy pairwise covering array
of it (the default run) and the markers that select each layer (``-m matrix_ci``,
``-m matrix_full``)."""

from __future__ import annotations

import itertools

import pytest
from registry import FORMATS, HOSTS, OPTIMIZERS, PATHS, Cell, rule_for

AXES = {
    "optimizer": [name for name, opt in OPTIMIZERS.items() if opt.matrix],
    "format": [name for name, fmt in FORMATS.items() if fmt.matrix],
    "path": list(PATHS),
    "host": list(HOSTS),
}


# ---------------------------------------------------------------------------
# The cells: the full product, and a greedy pairwise covering array of it.


def _expressible(cell: Cell) -> bool:
    found = rule_for(cell)
    return found is None or found[1].match is not None


def _works(cell: Cell) -> bool:
    return rule_for(cell) is None


FULL = [
    Cell(*values) for values in itertools.product(*AXES.values()) if _expressible(Cell(*values))
]


def _pairs(cell: Cell):
    return {((i, cell[i]), (j, cell[j])) for i, j in itertools.combinations(range(4), 2)}


def covering_array(cells: list[Cell]) -> list[Cell]:
    """A subset of ``cells`` in which every pair of axis values that occurs in ``cells``
    occurs at least once: pairs of working cells are covered by working cells, and the
    pairs only refused cells contain by refused cells. Greedy: take the first uncovered
    pair, and among the cells containing it the one covering most uncovered pairs."""
    chosen: list[Cell] = []
    for pool in ([c for c in cells if _works(c)], [c for c in cells if not _works(c)]):
        covered = set().union(*(_pairs(c) for c in chosen)) if chosen else set()
        uncovered = set().union(*(_pairs(c) for c in pool)) - covered
        by_pair: dict = {}
        for cell in pool:
            for pair in _pairs(cell):
                by_pair.setdefault(pair, []).append(cell)
        while uncovered:
            first = min(uncovered)
            best = max(by_pair[first], key=lambda c: len(_pairs(c) & uncovered))
            chosen.append(best)
            uncovered -= _pairs(best)
    return chosen


def with_every_refusal(chosen: list[Cell], cells: list[Cell]) -> list[Cell]:
    """``chosen`` plus, for each refusal rule it does not reach, the first cell of ``cells``
    that rule refuses: the default run asserts every refusal message at least once."""
    reached = {found[0] for found in map(rule_for, chosen) if found}
    extra = {}
    for cell in cells:
        found = rule_for(cell)
        if found and found[0] not in reached and found[0] not in extra:
            extra[found[0]] = cell
    return chosen + list(extra.values())


PAIRWISE = with_every_refusal(covering_array(FULL), FULL)
_PAIRWISE_SET = set(PAIRWISE)
# CI's layer between the two: every format x path x host for the optimizer with the most stages
# in play (a schedule, a mask, decoupled decay): 1,425 cells, ~24 CPU-minutes (12 min on 2 cores
# with pytest -n 2); the full product, 23,180 cells, is about 6.4 CPU-hours, beyond CI's 90 minutes.
CI_OPTIMIZERS = ("adamw_schedule_mask",)


def _marks(cell: Cell) -> list:
    marks = [pytest.mark.matrix_full]
    if cell in _PAIRWISE_SET:
        marks.append(pytest.mark.matrix_pairwise)
    if cell.optimizer in CI_OPTIMIZERS:
        marks.append(pytest.mark.matrix_ci)
    return marks


# Every cell is in matrix_full; the covering array is also matrix_pairwise (the default run).
CELLS = [pytest.param(cell, id="-".join(cell), marks=_marks(cell)) for cell in FULL]
