"""The composition matrix: optimizer x state format x execution path x host.

Every combination of the registry's axes (``tests/registry/``) either works or is
refused. "Works" means, after ``STEPS`` closed-loop steps on a small mixed tree:

* the final parameters equal those of the per-leaf plain ``jit`` loop of the same
  optimizer and format (for a host that wraps the optimizer in an optax wrapper, of
  the same wrapper on that loop): bit for bit where the compiled step is the same
  program, otherwise within ``MAX_ULP`` float32 ulps per element (``_paths``), and
  within ``LOW_ULPS`` ulps for bfloat16 leaves: XLA rounds bfloat16 intermediates (the
  moments of bfloat16 params, the parameter itself) at points that depend on how it
  fuses each program, and each such rounding may go the other way once per step; a
  moment stored narrower than the parameters (``Format.update_rounding``) may move each
  update by one storage ulp (2^-8 of it for bfloat16 m), so ``STEPS * LR_MAX * 2^-8``
  more is allowed there (3% of the distance the parameters travel). Ulps
  are counted at magnitudes no smaller than the parameters' initial scale (``ulps``),
  where one step of ~lr moves a bfloat16 parameter by ~50 ulps: a wrong update, a
  leaf in the wrong place or a skipped step is far outside these bounds;
* the step function is traced once (no retrace on step 2);
* the state keeps its tree structure, shapes and dtypes across steps;
* parameters and state are finite.

"Refused" means the registry's ``RULES`` name the combination, and building or
running it raises that rule's error with that rule's message.

The default run covers every value of every axis at least once and every refusal rule
(``matrix_each``); ``-m matrix_pairwise`` every *pair* of axis values (covering arrays built
greedily in ``_cells.py``, deterministic); ``-m matrix_ci`` every format x path x host for
``CI_OPTIMIZERS`` (both run by ``.ci/run``); ``-m matrix_full`` the whole product.
Cells whose fix is under way are listed in ``registry.PENDING`` and expected to
fail (strictly: a cell that starts passing fails until its entry is deleted).
"""

from __future__ import annotations

import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cells import CELLS, FULL, PAIRWISE
from _paths import MAX_ULP
from registry import (
    ENSEMBLE,
    FORMATS,
    HOSTS,
    PATHS,
    REFUSALS,
    Cell,
    compose,
    ensemble_member,
    pending,
)

import adamx

STEPS = 4
NON_FINITE_STEP = 1  # the apply_if_finite host's loss gives a non-finite gradient here
LOW_ULPS = 2 * STEPS  # bfloat16 / float16 leaves: one other-way rounding per step, twice


# ---------------------------------------------------------------------------
# The tree and the loss.

SHAPES = {"w": (64, 128), "b": (128,), "layers": [{"k": (4, 8)}], "s": ()}


def _is_shape(x) -> bool:
    return isinstance(x, tuple)


def make_params(dtype) -> dict:
    """A matrix large enough to be quantized (8192 elements), vectors, a nested list, a scalar.

    Small values (~0.01), so that a step of ~lr = 3e-3 is hundreds of bfloat16 ulps: a wrong
    update cannot hide in the bfloat16 rounding of the parameter.
    """
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(0.01 * rng.normal(size=s), dtype), SHAPES, is_leaf=_is_shape
    )


def _wave(x, t, a: float, b: float):
    """A deterministic pseudo-random field over the elements of ``x`` (no constants in the
    program: they would dominate its compile time), varying with step ``t``."""
    i = jax.lax.broadcasted_iota(jnp.float32, jnp.shape(x), jnp.ndim(x) - 1) if jnp.ndim(x) else 0.0
    j = jax.lax.broadcasted_iota(jnp.float32, jnp.shape(x), 0) if jnp.ndim(x) > 1 else 0.0
    return jnp.sin(a * i + b * j + 1.7 * t + 0.3)


SCALE = (1.0, 1e-2, 10.0, 0.3, 1e-3)[:STEPS]  # |g| varies by 1e4 over the steps


def loss_for(host: str):
    """A quadratic bowl plus step-dependent noise, g_t = c (θ - θ*) + s_t n_t (closed loop),
    with c in [0.5, 1.5]. For the apply_if_finite host, step ``NON_FINITE_STEP``'s gradient
    is +inf on ``b``."""
    poison = host == "apply_if_finite"

    def loss(params, t):
        if isinstance(params, adamx.PackedTree):
            params = params.unpack()
        scale = jnp.asarray(SCALE)[t]

        def leaf(x):
            x = x.astype(jnp.float32)
            c = 1.0 + 0.5 * _wave(x, 0.0, 0.37, 0.11)
            target = _wave(x, 0.0, 0.13, 0.71)
            noise = _wave(x, t.astype(jnp.float32), 1.31, 0.53)
            return jnp.sum(0.5 * c * (x - target) ** 2 + scale * x * noise)

        total = sum(leaf(x) for x in jax.tree.leaves(params))
        if poison:
            total = total + jnp.sum(params["b"].astype(jnp.float32)) * jnp.where(
                t == NON_FINITE_STEP, jnp.inf, 0.0
            )
        return total

    return loss


# ---------------------------------------------------------------------------
# Running a cell and its reference.


def _reference_key(cell: Cell, member: int = 0):
    host = cell.host if HOSTS[cell.host].changes_maths else "plain"
    return (cell.optimizer, cell.format, host, member), host


def run_cell(cell: Cell):
    """(the final params as a plain tree of NumPy arrays, the run) of one cell."""
    host, path = HOSTS[cell.host], PATHS[cell.path]
    build = compose(cell)
    with path.context():
        params = path.prepare(make_params(FORMATS[cell.format].param_dtype))
        run = host.run(build, params, path, loss_for(cell.host), STEPS)
    final = run.params
    if host.vmapped:
        final = [jax.tree.map(lambda x, i=i: x[i], final) for i in range(ENSEMBLE)]
        final = [path.finish(p) for p in final]
    else:
        final = path.finish(final)
    final = jax.tree.map(np.asarray, final)
    key, ref_host = _reference_key(cell)
    if cell.path == "per_leaf" and cell.host == ref_host:  # this run is the reference
        _REFERENCES.setdefault(key, final)
    return final, run


_REFERENCES: dict = {}


_PROGRAMS: dict = {}


def reference(cell: Cell, member: int = 0):
    """The per-leaf plain jit loop of the cell's optimizer and format (wrapped like the
    cell's host when that host changes the maths), from ensemble member ``member``.
    One jitted step per reference serves every member (the plain host's program)."""
    key, host = _reference_key(cell, member)
    if key not in _REFERENCES:
        if key[:3] not in _PROGRAMS:
            tx, loss = (
                compose(Cell(cell.optimizer, cell.format, "per_leaf", host))(),
                loss_for(host),
            )

            @jax.jit
            def step(params, state, t):
                updates, state = tx.update(jax.grad(loss)(params, t), state, params)
                return optax.apply_updates(params, updates), state

            _PROGRAMS[key[:3]] = tx, step
        tx, step = _PROGRAMS[key[:3]]
        params = ensemble_member(make_params(FORMATS[cell.format].param_dtype), member)
        state = tx.init(params)
        for t in range(STEPS):
            params, state = step(params, state, jnp.int32(t))
        _REFERENCES[key] = jax.tree.map(np.asarray, params)
    return _REFERENCES[key]


def _spec(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]


PARAM_SCALE = 0.01  # the parameters' initial scale (make_params)
LR_MAX = 1e-2  # the largest learning rate of the registry's matrix optimizers (SCHEDULE's peak)


def ulps(a, b) -> float:
    """Largest |a - b| in ulps of b's dtype, at magnitudes no smaller than PARAM_SCALE.

    The floor keeps a leaf that crosses zero (a scalar near 0) from turning a difference
    of one rounding at the parameters' scale into thousands of ulps of its tiny value.
    """
    mantissa = jnp.finfo(b.dtype).nmant
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    magnitude = np.maximum(np.maximum(np.abs(a), np.abs(b)), PARAM_SCALE)
    ulp = 2.0 ** (np.floor(np.log2(magnitude)) - mantissa)
    return float(np.max(np.abs(a - b) / ulp)) if a.size else 0.0


def assert_matches(cell: Cell, ours, theirs) -> None:
    """Bit for bit on an exact program, else within MAX_ULP (float32) / LOW_ULPS (narrower)."""
    chex.assert_trees_all_equal_structs(ours, theirs)
    chex.assert_trees_all_equal_dtypes(ours, theirs)
    if PATHS[cell.path].exact and HOSTS[cell.host].exact:
        chex.assert_trees_all_equal(ours, theirs)
        return
    fmt = FORMATS[cell.format]
    drift = STEPS * LR_MAX * fmt.update_rounding  # see Format.update_rounding
    sharded = PATHS[cell.path].devices > 1
    reduced = sharded and (HOSTS[cell.host].reduces_gradient or fmt.reduces_over_axes)
    if reduced or PATHS[cell.path].regathers_gradient:
        # The gradient (Host.reduces_gradient, Path.regathers_gradient) or a mean the format
        # takes over a split axis (Format.reduces_over_axes) differs by a rounding, so a
        # stored moment may land on its neighbouring value: one storage ulp of m, a
        # relative 2^-storage_bits of that element's update, per step.
        drift += STEPS * LR_MAX * 2.0**-fmt.storage_bits
    for (where, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs), strict=True
    ):
        bound = MAX_ULP if jnp.finfo(b.dtype).bits >= 32 else LOW_ULPS
        bound += drift / (2.0 ** np.floor(np.log2(PARAM_SCALE)) * float(jnp.finfo(b.dtype).eps))
        worst = ulps(a, b)
        assert worst <= bound, (
            f"{cell}: {jax.tree_util.keystr(where)} is {worst} ulps off (bound {bound})"
        )


def assert_works(cell: Cell) -> None:
    final, run = run_cell(cell)
    host, path = HOSTS[cell.host], PATHS[cell.path]
    allowed = 2 if host.eager_init and path.devices > 1 else 1  # see Host.eager_init
    assert run.traces <= allowed, f"the step was traced {run.traces} times"
    first = _spec(run.states[0])
    for i, state in enumerate(run.states[1:], 1):
        assert _spec(state) == first, f"the state changed structure or dtypes at step {i}"
    for state in run.states[-1:]:
        for x in jax.tree.leaves(state):
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
                assert np.all(np.isfinite(np.asarray(x, np.float64))), "non-finite state"
    members = final if HOSTS[cell.host].vmapped else [final]
    for member, params in enumerate(members):
        for x in jax.tree.leaves(params):
            assert np.all(np.isfinite(np.asarray(x, np.float64))), "non-finite params"
        assert_matches(cell, params, reference(cell, member))


@pytest.mark.parametrize("cell", CELLS)
def test_cell(cell, request):
    refusals = [rule for rule in REFUSALS.values() if rule.applies(cell)]
    if refusals:  # refused, with the message of one of the rules it falls under
        with pytest.raises(tuple(rule.error for rule in refusals)) as raised:
            run_cell(cell)
        message = str(raised.value)
        assert any(re.search(rule.match, message, re.S) for rule in refusals), message
        return
    defect = pending(cell)
    if defect is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"pending fix: {defect}"))
    assert_works(cell)


def test_pairwise_covers_every_pair():
    """Each pair of axis values that some cell contains is in -m matrix_pairwise."""
    want = set().union(*(set(itertools.combinations(enumerate(c), 2)) for c in FULL))
    got = set().union(*(set(itertools.combinations(enumerate(c), 2)) for c in PAIRWISE))
    assert want == got
    assert len(PAIRWISE) < len(FULL) / 10
