"""A table sharded by rows over 8 CPU devices trains lazily: adamx.sparse_rows on the row
gradients of adamx.value_and_row_grad, beside a dense leaf.

Each run takes a few steps of ``sparse_rows(adamw(...))`` (float32 or 8-bit moments) on a
4096 x 16 table split over the mesh axis "rows" and a replicated vector, the batch whole on
every device (mesh (8,)) or split over a "data" axis (mesh (2, 4)), and checks:

- params and state equal the one-device run: bit for bit with the batch whole (with 8-bit
  moments the state bit for bit and θ within 1 ulp: XLA:CPU fuses the decode-and-update of
  each layout's program on its own, and may contract a multiply-add into an FMA in one and
  not the other; measured: 1 element of 65,536 off by 1 ulp after 3 steps); with the batch
  split over "data" its sums are reassociated, so within float32 rounding (rtol 1e-5,
  atol 1e-7);
- the state of the table shards like the table (``adamx.sharding.state_shardings``), and
  keeps that layout step after step;
- the step compiles once for batches with different numbers of distinct ids;
- the compiled step moves no table: every collective carries at most ``k`` rows (the
  batch's distinct ids), never the table's 4096 (with the batch whole, no all-gather at
  all; split over "data", the batch's ids and looked-up rows are all-gathered). What it
  does move: each device gathers the touched rows it owns (zeros elsewhere) and an
  all-reduce combines them, for θ, m and v (and the 8-bit scales and codes): O(k·row)
  bytes a step. Measured (Auto axes, k = 64, batch whole): one all-reduce of five (64, 16)
  float32 arrays (θ's rows are read three times: for the gradient, by sparse_rows, by
  apply_updates), with 8-bit moments also the (64, 2) scales and (64, 2, 8) codes; 38 KB
  of temporaries per device.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adamx
import adamx.sharding
from adamx._row_ops import gather_rows, scatter_rows

NUM_ROWS, WIDTH, BATCH, STEPS = 4096, 16, 64, 3
COLLECTIVE = re.compile(
    r"= (.+?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(-start)?\("
)
SHAPE = re.compile(r"[a-z0-9]+\[([0-9,]*)\]")


def _loss(params, ids, target):
    return jnp.mean((params["emb"][ids] @ params["w"] - target) ** 2)


def _rows(ids, target):
    del target
    return {"emb": ids}


def _optimizers():
    q8 = adamx.blockwise_8bit(block_size=8, min_size=0)  # blocks of 8 inside rows of 16
    return {
        "float32": adamx.sparse_rows(adamx.adamw(1e-2, weight_decay=0.1)),
        "8bit": adamx.sparse_rows(adamx.adamw(1e-2, weight_decay=0.1, mu_dtype=q8, nu_dtype=q8)),
    }


def _data():
    rng = np.random.default_rng(0)
    params = {
        "emb": rng.normal(size=(NUM_ROWS, WIDTH)).astype(np.float32),
        "w": rng.normal(size=(WIDTH,)).astype(np.float32),
    }
    # Zipf ids: batches with different numbers of distinct rows (and duplicates)
    ids = (rng.zipf(1.3, (STEPS, BATCH)) % NUM_ROWS).astype(np.int32)
    target = rng.normal(size=(STEPS, BATCH)).astype(np.float32)
    return params, ids, target


def _step_fn(tx, traces):
    grad_fn = adamx.value_and_row_grad(_loss, rows=_rows)

    def step(params, state, ids, target):
        traces.append(1)
        _, grads = grad_fn(params, ids, target)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def _run(step, params, state, ids, target):
    for t in range(STEPS):
        params, state = step(params, state, ids[t], target[t])
    return params, state


def _one_device(tx):
    params0, ids, target = _data()
    params = jax.device_put(params0, jax.devices()[0])
    return _run(_step_fn(tx, []), params, tx.init(params), ids, target)


def _collectives(hlo: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """Each collective of the compiled program: its kind and the shapes it produces."""
    found = []
    for match in COLLECTIVE.finditer(hlo):
        shapes = [tuple(int(d) for d in s.split(",") if d) for s in SHAPE.findall(match[1])]
        found.append((match[2], shapes))
    return found


def _assert_like(tree, shardings):
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.shape, x.sharding, s)


# Mesh layouts: (mesh shape, axis names, how a batch's ids are split).
LAYOUTS = {
    "rows": ((8,), ("rows",), PartitionSpec()),  # the table split 8 ways, batch whole
    "data_rows": ((2, 4), ("data", "rows"), PartitionSpec(None, "data")),  # batch split 2 ways
}
CASES = [("rows", "float32"), ("rows", "8bit"), ("data_rows", "float32")]


def _check(mode, layout_name, name):
    tx = _optimizers()[name]
    shape, axes, batch_spec = LAYOUTS[layout_name]
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh(shape, axes, (kind,) * len(axes))
    params0, ids, target = _data()
    with jax.set_mesh(mesh):
        layout = {
            "emb": NamedSharding(mesh, PartitionSpec("rows", None)),
            "w": NamedSharding(mesh, PartitionSpec()),
        }
        params = jax.device_put(params0, layout)
        ids, target = jax.device_put((ids, target), NamedSharding(mesh, batch_spec))
        expected = adamx.sharding.state_shardings(tx, params)
        state = jax.jit(tx.init, out_shardings=expected)(params)
        _assert_like(state, expected)
        for path, s in jax.tree_util.tree_flatten_with_path(expected)[0]:
            if "emb" in jax.tree_util.keystr(path):  # m, v (codes, scales) of the table
                assert s.spec[0] == "rows", (path, s)

        traces = []
        step = _step_fn(tx, traces)
        collectives = _collectives(step.lower(params, state, ids[0], target[0]).compile().as_text())
        if layout_name == "rows":  # nothing to gather: the batch is whole on every device
            assert "all-gather" not in [kind for kind, _ in collectives], collectives
        for kind_, shapes in collectives:  # only the batch's rows travel, never the table
            assert all(not s or s[0] <= BATCH for s in shapes), (kind_, shapes)
        got = _run(step, params, state, ids, target)
        assert len(traces) == 1
        _assert_like(got[0], layout)
        _assert_like(got[1], expected)

    got, want = jax.device_get(got), jax.device_get(_one_device(tx))
    if layout_name == "data_rows":  # the batch's sums split over "data": float32 reassociated
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
        return
    chex.assert_trees_all_equal(got[1], want[1])  # the state: bit for bit
    if name == "float32":
        chex.assert_trees_all_equal(got[0], want[0])
    else:  # XLA:CPU fuses the decode-and-update of each layout's program on its own (an FMA
        chex.assert_trees_all_close_ulp(got[0], want[0], maxulp=1)  # in one, not the other)


@pytest.mark.parametrize(("layout", "name"), CASES)
def test_auto_axes(eight_devices, layout, name):
    """Auto axes (the compiler places the rows): equal to one device, no table moved."""
    del eight_devices
    _check("auto", layout, name)


@pytest.mark.parametrize(("layout", "name"), CASES)
def test_explicit_axes(eight_devices, layout, name):
    """Explicit axes (the layout in the array types): same checks as Auto."""
    del eight_devices
    _check("explicit", layout, name)


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_row_ops_on_a_row_split_table(eight_devices, mode):
    """adamx._row_ops.gather_rows / scatter_rows on a table split by rows (the Explicit case
    is what sparse_rows needs): NumPy's values, padding read as 0 and dropped on write, the
    rows whole along axis 0, the table's layout kept."""
    del eight_devices
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((4, 2), ("rows", "cols"), (kind, kind))
    table = np.arange(64 * 6, dtype=np.float32).reshape(64, 6)
    indices = np.array([3, 17, 40, 63, 64, 64], np.int32)  # 64: padding
    new = -np.ones((6, 6), np.float32)
    with jax.set_mesh(mesh):
        x = jax.device_put(table, NamedSharding(mesh, PartitionSpec("rows", "cols")))
        i = jax.device_put(indices, NamedSharding(mesh, PartitionSpec()))
        rows = jax.jit(gather_rows)(x, i)
        written = jax.jit(scatter_rows)(x, i, jnp.asarray(new))
        if mode == "explicit":
            assert rows.sharding.spec == PartitionSpec(None, "cols"), rows.sharding
        assert written.sharding.is_equivalent_to(x.sharding, 2), written.sharding
    want_rows = np.concatenate([table[indices[:4]], np.zeros((2, 6), np.float32)])
    np.testing.assert_array_equal(rows, want_rows)
    want = table.copy()
    want[indices[:4]] = -1
    np.testing.assert_array_equal(written, want)
