"""The matrix's cells: the full product of the registry's axes, two greedy covering arrays of it
and the markers that select each layer.

* default run (``matrix_each``): every value of every axis at least once, in working cells,
  plus one cell per refusal rule: about 50 cells, the fast loop of a developer;
* ``-m matrix_pairwise`` (run by ``.ci/run``): every *pair* of axis values;
* ``-m matrix_ci`` (run by ``.ci/run``): every format x path x host for ``CI_OPTIMIZERS``;
* ``-m matrix_full``: the whole product.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

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


def _pairs(cell: Cell) -> set:
    return {((i, cell[i]), (j, cell[j])) for i, j in itertools.combinations(range(4), 2)}


def _values(cell: Cell) -> set:
    return set(enumerate(cell))


def covering_array(cells: list[Cell], parts: Callable[[Cell], set] = _pairs) -> list[Cell]:
    """A subset of ``cells`` in which every part (by default every pair of axis values) that
    occurs in ``cells`` occurs at least once: parts of working cells are covered by working
    cells, and the parts only refused cells contain by refused cells. Greedy: take the first
    uncovered part, and among the cells containing it the one covering most uncovered parts."""
    chosen: list[Cell] = []
    for pool in ([c for c in cells if _works(c)], [c for c in cells if not _works(c)]):
        covered = set().union(*(parts(c) for c in chosen)) if chosen else set()
        uncovered = set().union(*(parts(c) for c in pool)) - covered
        by_part: dict = {}
        for cell in pool:
            for part in parts(cell):
                by_part.setdefault(part, []).append(cell)
        while uncovered:
            first = min(uncovered)
            best = max(by_part[first], key=lambda c: len(parts(c) & uncovered))
            chosen.append(best)
            uncovered -= parts(best)
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
EACH = with_every_refusal(covering_array(FULL, _values), FULL)
_PAIRWISE_SET, _EACH_SET = set(PAIRWISE), set(EACH)
# CI's layer between the two: every format x path x host for the optimizer with the most stages
# in play (a schedule, a mask, decoupled decay): 1,425 cells, ~24 CPU-minutes (12 min on 2 cores
# with pytest -n 2); the full product, 23,180 cells, is about 6.4 CPU-hours, beyond CI's 90 minutes.
CI_OPTIMIZERS = ("adamw_schedule_mask",)


def _marks(cell: Cell) -> list:
    marks = [pytest.mark.matrix_full]
    if cell in _PAIRWISE_SET:
        marks.append(pytest.mark.matrix_pairwise)
    if cell in _EACH_SET:
        marks.append(pytest.mark.matrix_each)
    if cell.optimizer in CI_OPTIMIZERS:
        marks.append(pytest.mark.matrix_ci)
    return marks


# Every cell is in matrix_full; the covering arrays are matrix_pairwise and matrix_each (the
# default run).
CELLS = [pytest.param(cell, id="-".join(cell), marks=_marks(cell)) for cell in FULL]
