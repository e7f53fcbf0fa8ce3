"""``adamx.sparse_rows``: lazy updates of the touched rows of a table (edge cases, refusals,
equality with the dense optimizer when every row is touched, compiled-program checks).

The parity with NumPy references and with ``torch.optim.SparseAdam`` lives in its own file.
"""

import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import standard
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adamx

ROWS, WIDTH = 16, 64
FMT8 = adamx.blockwise_8bit(block_size=32, min_size=0)


def table_params(seed: int = 0, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "emb": jnp.asarray(rng.normal(size=(rows, WIDTH)), jnp.float32),
        "dense": {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)},
    }


def dense_grads(params: dict, step: int) -> dict:
    rng = np.random.default_rng(100 + step)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


def all_rows(g: jax.Array, step: int) -> adamx.RowSparse:
    """``g`` as a RowSparse touching every row: scrambled, 4 rows in two halves (g/2 + g/2 is
    g exactly), and 3 padding entries carrying junk (NaN, inf, a large number)."""
    n = g.shape[0]
    order = (np.arange(n) * 5 + step) % n
    dup = order[:4]
    half = np.where(np.isin(order, dup), 0.5, 1.0).astype(np.float32)[:, None]
    indices = np.concatenate([order, dup, [n, n, n]]).astype(np.int32)
    junk = jnp.broadcast_to(
        jnp.asarray([np.nan, np.inf, 1e30], g.dtype)[:, None], (3, *g.shape[1:])
    )
    values = jnp.concatenate([g[order] * jnp.asarray(half, g.dtype), g[dup] * 0.5, junk])
    return adamx.RowSparse(jnp.asarray(indices), values, n)


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def run(tx, params, steps: int, sparse: bool, jit: bool):
    step = step_fn(tx)
    step = jax.jit(step) if jit else step
    state = tx.init(params)
    for t in range(steps):
        grads = dense_grads(params, t)
        if sparse:
            grads = {**grads, "emb": all_rows(grads["emb"], t)}
        params, state = step(params, state, grads)
    return params, state


def schedule(count: jax.Array) -> jax.Array:
    return 1e-2 / (1.0 + count.astype(jnp.float32))


def is_matrix(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


OPTIMIZERS = {
    "adam": lambda **kw: adamx.adam(1e-2, **kw),
    "adamw_mask_schedule": lambda **kw: adamx.adamw(
        schedule, weight_decay=0.1, mask=is_matrix, **kw
    ),
    "nadamw": lambda **kw: adamx.nadamw(1e-2, **kw),
    "radam": lambda **kw: adamx.radam(1e-2, **kw),
    "amsgrad": lambda **kw: adamx.amsgrad(1e-2, **kw),
    "adamaxw": lambda **kw: adamx.adamaxw(1e-2, **kw),
}
FORMATS = {
    "float32": {},
    "bf16_mu": {"mu_dtype": jnp.bfloat16},
    "blockwise_8bit": {"mu_dtype": FMT8, "nu_dtype": FMT8},
    "stochastic_float": {
        "mu_dtype": adamx.stochastic_float(jnp.bfloat16),
        "nu_dtype": adamx.stochastic_float(jnp.bfloat16, seed=1),
    },
}
CASES = [(o, f) for o in OPTIMIZERS for f in FORMATS if not (o == "adamaxw" and f == "bf16_mu")]
CASES += [("adamaxw", "bf16_mu")]
# The default run keeps adam in every format and every optimizer in float32; the rest of the
# product runs with -m slow (.ci/run's slow stage).
CASES = [
    pytest.param(o, f, marks=() if o == "adam" or f == "float32" else pytest.mark.slow)
    for o, f in CASES
]


def make(optimizer: str, fmt: str) -> optax.GradientTransformation:
    return OPTIMIZERS[optimizer](**FORMATS[fmt])


# --- every row touched: the dense optimizer, bit for bit ---------------------------------


@pytest.mark.parametrize(("optimizer", "fmt"), CASES)
def test_every_row_touched_is_dense_op_by_op(optimizer, fmt):
    """Touching every row (scrambled, duplicated, padded with junk), the lazy path computes
    the dense optimizer's numbers: the same operations on every element, the same rounding
    bits (rows gathered in sorted order). Run op by op, bit for bit."""
    inner, params = make(optimizer, fmt), table_params()
    ours = run(adamx.sparse_rows(inner), params, 3, sparse=True, jit=False)
    theirs = run(inner, params, 3, sparse=False, jit=False)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


@pytest.mark.parametrize(("optimizer", "fmt"), CASES)
def test_every_row_touched_is_dense_under_jit(optimizer, fmt):
    """Compiled, the lazy step is another XLA program than the dense one: it may fuse (and
    so contract a multiply-add into an FMA) differently, one rounding per step at most."""
    inner, params = make(optimizer, fmt), table_params()
    ours = run(adamx.sparse_rows(inner), params, 5, sparse=True, jit=True)
    theirs = run(inner, params, 5, sparse=False, jit=True)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        if jnp.issubdtype(b.dtype, jnp.floating) and jnp.finfo(b.dtype).bits == 32:
            np.testing.assert_allclose(a, b, rtol=5 * 2.0**-23, atol=1e-7)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("post", [adamx.kahan_summation, adamx.stochastic_rounding])
def test_every_row_touched_bf16_table_with_a_parameter_stage_inside(post):
    """A bfloat16 table with Kahan summation / stochastic rounding of the parameters inside
    the wrapper (their state or noise per element, row-aligned): the dense run, op by op."""
    inner = optax.chain(adamx.adamw(1e-2, weight_decay=0.1), post())
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), table_params())
    ours = run(adamx.sparse_rows(inner), params, 3, sparse=True, jit=False)
    theirs = run(inner, params, 3, sparse=False, jit=False)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


# --- edge cases ---------------------------------------------------------------------------


def lazy_step(inner=None):
    tx = adamx.sparse_rows(inner or adamx.adamw(1e-2, weight_decay=0.1))
    return tx, jax.jit(step_fn(tx))


def test_duplicate_indices_are_summed_and_only_the_batch_rows_move():
    params = table_params()
    tx, step = lazy_step()
    g = adamx.row_sparse(jnp.array([3, 9, 3, ROWS]), jnp.ones((4, WIDTH)), ROWS, size=6)
    new, state = step(params, tx.init(params), {"emb": g, "dense": {"w": jnp.ones((3, 5))}})
    moved = np.flatnonzero(np.any(np.asarray(new["emb"] != params["emb"]), axis=1))
    np.testing.assert_array_equal(moved, [3, 9])
    mu = np.asarray(state[0].mu["emb"])
    np.testing.assert_allclose(mu[3], 0.2, rtol=1e-6)  # (1 - β1)·(1 + 1)
    np.testing.assert_allclose(mu[9], 0.1, rtol=1e-6)
    assert not np.delete(mu, [3, 9], axis=0).any()
    assert np.all(np.asarray(new["dense"]["w"] != params["dense"]["w"]))


def test_uncoalesced_gradient_is_coalesced_by_the_path():
    params = table_params()
    tx, step = lazy_step()
    raw = adamx.RowSparse(jnp.array([9, 3, 3], jnp.int32), jnp.ones((3, WIDTH)), ROWS)
    done = adamx.row_sparse(jnp.array([9, 3, 3]), jnp.ones((3, WIDTH)), ROWS)
    dense = {"w": jnp.ones((3, 5))}
    a = step(params, tx.init(params), {"emb": raw, "dense": dense})
    b = step(params, tx.init(params), {"emb": done, "dense": dense})
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_out_of_range_indices_are_ignored_under_jit_and_refused_when_concrete():
    """Under jit an index outside [0, num_rows) cannot be checked: it is padding (no wrap
    around for negative indices). ``row_sparse`` refuses it when the indices are concrete."""
    params = table_params()
    tx = adamx.sparse_rows(adamx.adam(1e-2))

    @jax.jit
    def step(params, state, indices):
        g = adamx.RowSparse(indices, jnp.ones((3, WIDTH)), ROWS)
        updates, state = tx.update({"emb": g, "dense": {"w": jnp.ones((3, 5))}}, state, params)
        return optax.apply_updates(params, updates), state

    new, state = step(params, tx.init(params), jnp.array([-1, ROWS + 5, 4], jnp.int32))
    moved = np.flatnonzero(np.any(np.asarray(new["emb"] != params["emb"]), axis=1))
    np.testing.assert_array_equal(moved, [4])
    assert np.flatnonzero(np.any(np.asarray(state[0].nu["emb"]) != 0, axis=1)).tolist() == [4]
    with pytest.raises(
        ValueError,
        match=r"indices must be row ids in \[0, \d+\] \(\d+ marks padding\).*got \[-1, 21\]",
    ):
        adamx.row_sparse(jnp.array([-1, ROWS + 5, 4]), jnp.ones((3, WIDTH)), ROWS)
    with pytest.raises(
        ValueError, match="size must be >= the 2 distinct rows of indices in this batch, got 1"
    ):
        adamx.row_sparse(jnp.array([2, 4]), jnp.ones((2, WIDTH)), ROWS, size=1)


def test_empty_batch_changes_nothing_but_the_step_count():
    """Zero touched rows (all padding, junk values): the table and its state are unchanged;
    the step count (the global step of the bias correction) advances."""
    params = {"emb": table_params()["emb"]}
    tx, step = lazy_step(adamx.adamw(1e-2, weight_decay=0.1))
    state = tx.init(params)
    params, state = step(params, state, {"emb": all_rows(jnp.ones((ROWS, WIDTH)), 0)})
    junk = jnp.full((5, WIDTH), jnp.nan)
    empty = adamx.RowSparse(jnp.full((5,), ROWS, jnp.int32), junk, ROWS)
    new, new_state = step(params, state, {"emb": empty})
    np.testing.assert_array_equal(new["emb"], params["emb"])
    np.testing.assert_array_equal(new_state[0].mu["emb"], state[0].mu["emb"])
    np.testing.assert_array_equal(new_state[0].nu["emb"], state[0].nu["emb"])
    assert int(new_state[1].count) == int(state[1].count) + 1 == 2


@pytest.mark.parametrize("fmt", ["float32", "blockwise_8bit", "stochastic_float"])
def test_padding_entries_move_nothing(fmt):
    """Padding entries (index num_rows) carry NaN, inf and 1e30: no row of the table or of its
    state changes beyond the touched ones, and the touched rows are as without padding."""
    params = table_params()
    tx, step = lazy_step(make("adam", fmt))
    state = tx.init(params)
    dense = {"w": jnp.ones((3, 5))}
    values = jnp.ones((2, WIDTH))
    plain = adamx.RowSparse(jnp.array([2, 7], jnp.int32), values, ROWS)
    junk = jnp.broadcast_to(jnp.asarray([jnp.nan, jnp.inf, 1e30])[:, None], (3, WIDTH))
    padded = adamx.RowSparse(
        jnp.array([2, ROWS, 7, ROWS, ROWS], jnp.int32),
        jnp.concatenate([values[:1], junk[:1], values[1:], junk[1:]]),
        ROWS,
    )
    a = step(params, state, {"emb": plain, "dense": dense})
    b = step(params, state, {"emb": padded, "dense": dense})
    jax.tree.map(np.testing.assert_array_equal, a, b)
    untouched = np.delete(np.arange(ROWS), [2, 7])
    np.testing.assert_array_equal(b[0]["emb"][untouched], params["emb"][untouched])
    for new, old in zip(jax.tree.leaves(b[1]), jax.tree.leaves(state), strict=True):
        if jnp.ndim(old) and jnp.shape(old)[0] == ROWS:  # the table's per-row arrays
            np.testing.assert_array_equal(new[untouched], old[untouched])


def test_mixed_tree_dense_leaves_as_the_dense_optimizer():
    """One optimizer, one state: the dense leaves of a tree with a table step exactly as the
    inner optimizer steps them alone."""
    params = table_params()
    inner = adamx.adamw(1e-2, weight_decay=0.1)
    tx, step = lazy_step(inner)
    g = adamx.row_sparse(jnp.array([1, 5]), jnp.ones((2, WIDTH)), ROWS)
    gw = dense_grads(params, 0)["dense"]
    new, _ = step(params, tx.init(params), {"emb": g, "dense": gw})
    alone = {"dense": params["dense"]}
    ref, _ = jax.jit(step_fn(inner))(alone, inner.init(alone), {"dense": gw})
    np.testing.assert_array_equal(new["dense"]["w"], ref["dense"]["w"])


def test_updates_are_a_coalesced_row_sparse_apply_updates_adds():
    params = table_params()
    tx = adamx.sparse_rows(adamx.adam(1e-2))
    g = adamx.RowSparse(jnp.array([5, 1, 5, ROWS], jnp.int32), jnp.ones((4, WIDTH)), ROWS)
    updates, _ = tx.update({"emb": g, "dense": {"w": jnp.ones((3, 5))}}, tx.init(params), params)
    u = updates["emb"]
    assert isinstance(u, adamx.RowSparse) and u.coalesced and u.num_rows == ROWS
    np.testing.assert_array_equal(u.indices, [1, 5, ROWS, ROWS])
    applied = optax.apply_updates(params, updates)["emb"]
    np.testing.assert_array_equal(applied, params["emb"] + u.todense())


def test_state_structure_and_dtypes_kept_no_retrace_across_batches():
    """The compiled step is traced once for batches with 1, 7 and 40 distinct rows (a static
    number of entries), and the state keeps its structure and dtypes."""
    params = {"emb": jnp.zeros((64, WIDTH)), "w": jnp.zeros((4,))}
    tx = adamx.sparse_rows(adamx.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=FMT8))
    traces = []

    @jax.jit
    def step(params, state, indices):
        traces.append(1)
        g = adamx.row_sparse(indices, jnp.ones((48, WIDTH)), 64)
        updates, state = tx.update({"emb": g, "w": jnp.ones((4,))}, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    rng = np.random.default_rng(0)
    for distinct in (1, 7, 40):
        rows = rng.choice(64, distinct, replace=False)
        indices = np.concatenate([rows, np.full(48 - distinct, 64)]).astype(np.int32)
        params, state = step(params, state, jnp.asarray(rng.permutation(indices)))
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec
    assert len(traces) == 1
    assert jax.tree.structure(state) == jax.tree.structure(tx.init(params))


def test_no_table_sized_temporary():
    """A 65536 x 64 float32 table (16 MiB), 512 touched rows, params and state donated: the
    compiled step's temporaries are a small fraction of the table (the rows it touches), and
    no table-sized array appears in the program beyond the donated buffers themselves."""
    rows, k = 65536, 512
    params = {"emb": jnp.zeros((rows, WIDTH)), "w": jnp.zeros((8, 8))}
    tx = adamx.sparse_rows(adamx.adamw(1e-3))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, indices, values):
        g = {"emb": adamx.row_sparse(indices, values, rows), "w": jnp.ones((8, 8))}
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = jax.eval_shape(tx.init, params)
    compiled = step.lower(
        params,
        state,
        jax.ShapeDtypeStruct((k,), jnp.int32),
        jax.ShapeDtypeStruct((k, WIDTH), jnp.float32),
    ).compile()
    table_bytes = rows * WIDTH * 4
    memory = compiled.memory_analysis()
    assert memory.temp_size_in_bytes < 0.05 * table_bytes, memory
    assert memory.alias_size_in_bytes >= 3 * table_bytes  # θ, m, v updated in place
    shapes = {
        tuple(map(int, s.split(","))) for s in re.findall(r"f32\[(\d+,\d+)\]", compiled.as_text())
    }
    assert max(np.prod(s) for s in shapes - {(rows, WIDTH)}) <= k * WIDTH


# --- dense_equivalent ---------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "adamw_mask_schedule", "amsgrad"])
def test_dense_equivalent_is_the_dense_optimizer_on_the_densified_gradient(optimizer):
    inner, params = make(optimizer, "float32"), table_params()
    tx = adamx.sparse_rows(inner, semantics="dense_equivalent")
    first = {**dense_grads(params, 0), "emb": all_rows(dense_grads(params, 0)["emb"], 0)}
    g = adamx.row_sparse(jnp.array([2, 2, 9]), jnp.ones((3, WIDTH)), ROWS, size=4)
    second = {"emb": g, "dense": dense_grads(params, 1)["dense"]}
    ours, theirs = (params, tx.init(params)), (params, inner.init(params))
    for grads in (first, second):
        updates, state = jax.jit(tx.update)(grads, ours[1], ours[0])
        ref_grads = {**grads, "emb": grads["emb"].todense()}
        ref_updates, ref_state = jax.jit(inner.update)(ref_grads, theirs[1], theirs[0])
        assert not isinstance(updates["emb"], adamx.RowSparse)  # dense: every row moves
        jax.tree.map(np.testing.assert_array_equal, (updates, state), (ref_updates, ref_state))
        ours = (optax.apply_updates(ours[0], updates), state)
        theirs = (optax.apply_updates(theirs[0], ref_updates), ref_state)
    assert np.all(np.asarray(updates["emb"]) != 0)  # β1·m moves the untouched rows too
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(inner.init(params))


# --- refusals -----------------------------------------------------------------------------


class FlatFormat(NamedTuple):
    """A user's moment format that stores each leaf flat (not row-aligned)."""

    elementwise = True
    stochastic = False
    fields = None
    record = None
    seed = 0

    def bind(self, role):
        return self

    def init(self, param, packed=None):
        return jnp.zeros((param.size,), jnp.float32)

    def decode(self, stored, like):
        return stored.reshape(like.shape)

    def encode(self, value, stored, key):
        return value.reshape(-1).astype(stored.dtype)

    def describe(self):
        return "flat"

    def partition_specs(self, spec, shape, axis_sizes=None):
        return (None,)


def sparse_grads(params: dict) -> dict:
    g = adamx.row_sparse(jnp.array([1, 2]), jnp.ones((2, WIDTH)), ROWS)
    return {"emb": g, "dense": {"w": jnp.ones((3, 5))}}


def test_refuses_a_state_that_is_not_row_aligned():
    params = table_params()
    tx = adamx.sparse_rows(adamx.adam(1e-2, nu_dtype=FlatFormat()))
    with pytest.raises(
        ValueError,
        match=r"table at emb has 16 rows, but its optimizer state at "
        r"0/nu/emb has shape \(1024,\).*row-aligned format.*nu_dtype",
    ):
        tx.update(sparse_grads(params), tx.init(params), params)


def test_refuses_a_one_dimensional_table_in_8bit_blocks():
    params = {"emb": jnp.zeros((256,))}
    tx = adamx.sparse_rows(adamx.adam(1e-2, mu_dtype=FMT8))
    g = adamx.row_sparse(jnp.array([1, 2]), jnp.ones((2,)), 256)
    with pytest.raises(ValueError, match=r"state at 0/mu/codes/emb has shape \(8, 32\)"):
        tx.update({"emb": g}, tx.init(params), params)


def test_refuses_a_gradient_of_another_shape():
    params = table_params()
    tx = adamx.sparse_rows(adamx.adam(1e-2))
    grads = sparse_grads(params)
    grads["emb"] = adamx.row_sparse(jnp.array([1]), jnp.ones((1, WIDTH)), ROWS + 1)
    with pytest.raises(
        ValueError,
        match=r"RowSparse gradient at emb stands for a table of "
        r"shape \(17, 64\).*parameter there has shape \(16, 64\)",
    ):
        tx.update(grads, tx.init(params), params)


def test_refuses_packed_state_inside():
    params = table_params()
    tx = adamx.sparse_rows(adamx.multi_tensor(adamx.adam(1e-2)))
    with pytest.raises(ValueError, match=r"packed buckets.*optax.multi_transform"):
        tx.update(sparse_grads(params), tx.init(params), params)


@pytest.mark.parametrize("before", [optax.clip(1.0), optax.scale(0.5)], ids=["clip", "scale"])
def test_refuses_indices_a_transformation_before_it_computed_with(before):
    """A RowSparse's indices are a pytree leaf: optax.clip / scale chained before sparse_rows
    turn them into floats (they would name other rows); the path refuses them."""
    params = table_params()
    tx = optax.chain(before, adamx.sparse_rows(adamx.adam(1e-2)))
    with (
        standard(),
        pytest.raises(ValueError, match=r"at 'emb' has float32 indices.*inside adamx.sparse_rows"),
    ):
        tx.update(sparse_grads(params), tx.init(params), params)


def test_refuses_unknown_semantics():
    with pytest.raises(ValueError, match=r"semantics must be one of 'lazy', 'dense_equivalent'"):
        adamx.sparse_rows(adamx.adam(1e-2), semantics="eager")


def test_decoupled_decay_without_params_names_the_stage():
    params = table_params()
    tx = adamx.sparse_rows(adamx.adamw(1e-2))
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(sparse_grads(params), tx.init(params))
    tx = adamx.sparse_rows(adamx.adam(1e-2))  # a chain that needs no params runs without
    tx.update(sparse_grads(params), tx.init(params))


# --- catch_up -----------------------------------------------------------------------------


def numpy_catch_up(theta, batches, lr, b1, b2, eps):
    """Adam with the lazy catch-up, in float64: a touched row last updated k steps ago first
    decays m by β1^k and v by β2^k; bias corrections use the global step."""
    theta = np.array(theta, np.float64)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    last = np.zeros(theta.shape[0], np.int64)
    for t, (indices, values) in enumerate(batches):
        g = np.zeros_like(theta)
        keep = (indices >= 0) & (indices < theta.shape[0])
        np.add.at(g, indices[keep], values[keep])
        rows = np.unique(indices[keep])
        k = (t - last[rows])[:, None]
        m[rows] = b1 * (b1**k * m[rows]) + (1 - b1) * g[rows]
        v[rows] = b2 * (b2**k * v[rows]) + (1 - b2) * g[rows] ** 2
        m_hat, v_hat = m[rows] / (1 - b1 ** (t + 1)), v[rows] / (1 - b2 ** (t + 1))
        theta[rows] -= lr * m_hat / (np.sqrt(v_hat) + eps)
        last[rows] = t + 1
    return theta, m, v


def zipf_batches(rows: int, steps: int, k: int, seed: int = 0):
    """``steps`` batches of ``k`` entries drawn from a Zipf law over the rows (the last two
    entries of each batch are padding), values N(0, 1)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, rows + 1)
    out = []
    for _ in range(steps):
        indices = rng.choice(rows, k, p=p / p.sum()).astype(np.int32)
        indices[-2:] = rows
        out.append((indices, rng.normal(size=(k, WIDTH)).astype(np.float32)))
    return out


def test_catch_up_matches_a_numpy_reference():
    lr, b1, b2, eps = 1e-2, 0.8, 0.95, 1e-8
    params = {"emb": table_params()["emb"]}
    tx = adamx.sparse_rows(adamx.adam(lr, b1=b1, b2=b2, eps=eps), semantics="catch_up")
    step = jax.jit(step_fn(tx))
    state = tx.init(params)
    batches = zipf_batches(ROWS, 40, 6)
    for indices, values in batches:
        g = adamx.RowSparse(jnp.asarray(indices), jnp.asarray(values), ROWS)
        params, state = step(params, state, {"emb": g})
    theta, m, v = numpy_catch_up(table_params()["emb"], batches, lr, b1, b2, eps)
    np.testing.assert_allclose(state.inner[0].mu["emb"], m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.inner[0].nu["emb"], v, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(params["emb"], theta, rtol=1e-5, atol=1e-6)
    assert isinstance(state, adamx.SparseRowsState) and int(state.count) == 40


def test_catch_up_is_lazy_when_every_row_is_touched():
    """k = 0 for every row at every step: β^0 = 1, the lazy numbers bit for bit."""
    inner, params = make("adamw_mask_schedule", "blockwise_8bit"), table_params()
    ours = run(adamx.sparse_rows(inner, semantics="catch_up"), params, 4, sparse=True, jit=True)
    lazy = run(adamx.sparse_rows(inner), params, 4, sparse=True, jit=True)
    jax.tree.map(np.testing.assert_array_equal, (ours[0], ours[1].inner), lazy)
    assert {k: v.tolist() for k, v in ours[1].last_step.items()} == {
        "['dense']['w']": [4] * 3,
        "['emb']": [4] * ROWS,
    }


def test_catch_up_needs_scale_by_moments():
    with pytest.raises(ValueError, match=r"catch_up.*no ScaleByMomentsState.*semantics='lazy'"):
        adamx.sparse_rows(optax.adam(1e-2), semantics="catch_up").init(table_params())


# --- inside the wrapper: gradient statistics; tables split over a mesh -------------------


def test_clip_by_global_norm_inside_sees_the_whole_gradient_norm():
    """The untouched rows of a row-sparse gradient are zero, so the global norm of the touched
    rows and the dense leaves is the gradient's: clipping inside the wrapper is the dense
    clip (up to the order of the sum of squares)."""
    inner = optax.chain(optax.clip_by_global_norm(1.0), adamx.adam(1e-2))
    params = table_params()
    with standard():
        ours = run(adamx.sparse_rows(inner), params, 3, sparse=True, jit=True)
        theirs = run(inner, params, 3, sparse=False, jit=True)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), ours, theirs)


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("semantics", ["lazy", "catch_up"])
def test_table_split_by_rows_over_a_mesh(eight_devices, explicit, semantics):
    """A (1024, 16) table split by rows over 8 devices, 8-bit m: the rows are read and written
    where they live, the layout is kept, and the numbers are the one-device run's."""
    axis_type = AxisType.Explicit if explicit else AxisType.Auto
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,), devices=eight_devices)
    inner = adamx.adamw(1e-2, mu_dtype=adamx.blockwise_8bit(block_size=16, min_size=0))
    tx = adamx.sparse_rows(inner, semantics=semantics)
    rows, width = 1024, 16

    def step(params, state, indices):
        g = adamx.row_sparse(indices, jnp.ones((64, width)), rows)
        updates, state = tx.update({"emb": g, "w": jnp.ones(3)}, state, params)
        return optax.apply_updates(params, updates), state

    batches = [
        jnp.asarray(np.random.default_rng(t).integers(0, rows, 64), jnp.int32) for t in range(3)
    ]
    single = {"emb": jnp.ones((rows, width)), "w": jnp.ones(3)}
    state = tx.init(single)
    for indices in batches:
        single, state = jax.jit(step)(single, state, indices)
    with jax.set_mesh(mesh):
        split = NamedSharding(mesh, PartitionSpec("data", None))
        params = {"emb": jax.device_put(jnp.ones((rows, width)), split), "w": jnp.ones(3)}
        state = jax.jit(tx.init)(params)
        for indices in batches:
            params, state = jax.jit(step)(params, state, indices)
    assert params["emb"].sharding.spec == PartitionSpec("data", None)
    np.testing.assert_array_equal(params["emb"], single["emb"])


def test_catch_up_moments_of_touched_rows_are_dense_adams():
    """What the catch-up buys: on the same gradients, the stored m and v of a row the step
    touches are dense Adam's (there: decayed once per skipped step; here: by β^k at once)."""
    inner = adamx.adam(1e-2, b1=0.8, b2=0.9)
    params = {"emb": table_params()["emb"]}
    lazy, dense = (
        adamx.sparse_rows(inner, semantics="catch_up"),
        adamx.sparse_rows(inner, semantics="dense_equivalent"),
    )
    ours, theirs = lazy.init(params), dense.init(params)
    for indices, values in zipf_batches(ROWS, 30, 6):
        g = {"emb": adamx.RowSparse(jnp.asarray(indices), jnp.asarray(values), ROWS)}
        ours = jax.jit(lazy.update)(g, ours, params)[1]
        theirs = jax.jit(dense.update)(g, theirs, params)[1]
    rows = np.unique(indices[indices < ROWS])
    for ours_x, theirs_x in ((ours.inner[0].mu, theirs[0].mu), (ours.inner[0].nu, theirs[0].nu)):
        np.testing.assert_allclose(ours_x["emb"][rows], theirs_x["emb"][rows], rtol=1e-5)
