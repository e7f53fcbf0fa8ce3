"""The registry itself: every entry is exercised somewhere, and its rules are consistent."""

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from _cells import EACH, FULL, PAIRWISE
from _streams import make_mixed_params
from registry import (
    FORMATS,
    HOSTS,
    INEXPRESSIBLE,
    OPTIMIZERS,
    PATHS,
    PENDING,
    REFUSALS,
    Cell,
    compose,
)

# (adamx's field, optax's) where optax.contrib names the moments otherwise.
FIELDS = {
    "adafactor": (),
    "ademamix": (("mu", "m1"), ("nu", "nu"), ("m2", "m2")),
    "simplified_ademamix": (("mu", "m"), ("nu", "n")),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_is_exercised(name):
    """In the matrix, or checked against at least one reference (optax, torch or Keras)."""
    opt = OPTIMIZERS[name]
    assert opt.matrix or opt.optax or opt.torch or opt.keras, f"{name} is tested nowhere"
    if opt.optax:
        params = make_mixed_params((jnp.float32,))  # the optax suites' tree
        ours, theirs = opt.make(params).init(params), opt.reference(params).init(params)
        # Adam's moments keep optax's field names, so optax's tree tools keep working.
        # (Adafactor's factors are adamx.FactoredMoment records: nu.row / nu.col, where optax
        # has v_row / v_col; docs/family.md says so.)
        for field, optax_field in FIELDS.get(opt.alias, (("mu", "mu"), ("nu", "nu"))):
            jax.tree.map(
                lambda a, b: None, optax.tree.get(ours, field), optax.tree.get(theirs, optax_field)
            )
        if opt.alias == "adafactor":  # the same step counts (factored RMS, [momentum])
            counts = [optax.tree.get_all_with_path(s, "count") for s in (ours, theirs)]
            assert len(counts[0]) == len(counts[1]) >= 1, counts


def test_every_member_of_every_axis_is_in_the_default_matrix():
    for axis, members in (("optimizer", [n for n, o in OPTIMIZERS.items() if o.matrix]),
                          ("format", [n for n, f in FORMATS.items() if f.matrix]),
                          ("path", list(PATHS)), ("host", list(HOSTS))):  # fmt: skip
        seen = {getattr(cell, axis) for cell in EACH}
        assert seen == set(members), f"{axis}: {set(members) - seen} never run"


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_refusal_rule_is_reached(name):
    rule = REFUSALS[name]
    re.compile(rule.match)
    assert any(rule.applies(cell) for cell in FULL), f"the rule {name} applies to no cell"
    assert any(rule.applies(cell) for cell in EACH), f"{name} is not in the default run"
    assert any(rule.applies(cell) for cell in PAIRWISE), f"{name} is not in -m matrix_pairwise"


@pytest.mark.parametrize("name", list(INEXPRESSIBLE))
def test_inexpressible_cells_are_not_run(name):
    assert not any(INEXPRESSIBLE[name].applies(cell) for cell in FULL)


def test_pending_entries_name_cells_that_should_work():
    """Each entry names cells expected to work once fixed (refusals take precedence).
    PENDING is empty once every known defect is fixed; then there is nothing to check."""

    def refused(cell):
        return any(rule.applies(cell) for rule in REFUSALS.values())

    for defect, applies in PENDING.items():
        cells = [cell for cell in FULL if applies(cell) and not refused(cell)]
        assert cells, f"PENDING[{defect!r}] matches no working cell: delete it"


def test_compose_builds_every_member_once():
    """One cell per format and per host builds (the matrix builds the rest)."""
    for fmt in FORMATS:
        compose(Cell("adam", fmt, "per_leaf", "plain"))()
    for host in HOSTS:
        compose(Cell("adamw_schedule_mask", "default", "per_leaf", host))()
