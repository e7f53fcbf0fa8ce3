"""value_and_row_grad: the gradient of a dense-table loss as RowSparse rows, no table-sized array.

Every gradient is checked against ``jax.grad`` of the same loss on the dense params (the
RowSparse densified), duplicates within and across lookups summed: bit for bit eagerly and
under ``jit`` when each table is read once; under ``jit`` a table read by several lookups
sums a row's contributions in whatever order XLA fuses each program into, so there the two
agree to within one ulp of the leaf's largest entry (|Δ| ≤ ε·max|g|; measured ≤ 0.75 ε over
30 batches).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import adamx
from adamx._sparse import RowSparse, is_row_sparse


def _dense(tree):
    return jax.tree.map(
        lambda g: g.todense() if is_row_sparse(g) else g, tree, is_leaf=is_row_sparse
    )


def _params(dtype=jnp.float32, rows=(100, 50), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "user": jnp.asarray(rng.normal(size=(rows[0], 8)), dtype),
        "tower": {
            "item": jnp.asarray(rng.normal(size=(rows[1], 8)), dtype),
            "w": jnp.asarray(rng.normal(size=(8, 3)), dtype),
            "b": jnp.asarray(rng.normal(size=(3,)), dtype),
        },
    }


def _loss(params, users, items, context):
    """Two lookups of "user" (users and context: duplicates across lookups), one of the items."""
    u = params["user"][users] + jnp.sum(params["user"][context], axis=1)
    v = params["tower"]["item"][items]
    h = jnp.tanh((u * v) @ params["tower"]["w"] + params["tower"]["b"][None, :])
    return jnp.mean(h**2)


def _rows(users, items, context):
    return {"user": jnp.concatenate([users, context.reshape(-1)]), "tower/item": items}


def _batch(seed, batch=16, rows=(100, 50)):
    rng = np.random.default_rng(seed)
    users = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)  # few users: many duplicates
    items = jnp.asarray(rng.zipf(1.5, batch) % rows[1], jnp.int32)
    context = jnp.asarray(rng.integers(0, rows[0], (batch, 3)), jnp.int32)
    return users, items, context


def _assert_within_one_ulp_of_max(got, want):
    """|got - want| <= ε·max|want| for each leaf (one ulp of its largest entry)."""
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        eps = float(jnp.finfo(y.dtype).eps)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.abs(x - y).max() <= eps * np.abs(y).max(), (np.abs(x - y).max(), eps)


def _one_lookup_each(params, users, items, context):
    """Each table read once, by 1-D ids with duplicates."""
    del context
    v = params["user"][users] * params["tower"]["item"][items]
    return jnp.mean(jnp.tanh(v @ params["tower"]["w"] + params["tower"]["b"][None, :]) ** 2)


def _one_lookup_rows(users, items, context):
    del context
    return {"user": users, "tower/item": items}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("lookups", ["one", "several"])
def test_equals_dense_grad(lookups, dtype, jit):
    """float32 and bfloat16 tables, eager and jitted: the dense gradient (module docstring)."""
    loss, rows = (_one_lookup_each, _one_lookup_rows) if lookups == "one" else (_loss, _rows)
    params, batch = _params(dtype), _batch(2)
    fn = adamx.value_and_row_grad(loss, rows=rows)
    dense = jax.value_and_grad(loss)
    if jit:
        fn, dense = jax.jit(fn), jax.jit(dense)
    (got_value, got), (want_value, want) = fn(params, *batch), dense(params, *batch)
    chex.assert_trees_all_equal(got_value, want_value)
    assert got["user"].values.dtype == dtype
    assert is_row_sparse(got["tower"]["item"]) and not is_row_sparse(got["tower"]["w"])
    if jit and lookups == "several":
        _assert_within_one_ulp_of_max(_dense(got), want)
    else:
        chex.assert_trees_all_equal(_dense(got), want)


def test_coalesced_layout():
    """Sorted distinct ids, padding (num_rows) last with zero rows, ``size`` entries."""
    params = _params()
    users = jnp.array([7, 3, 7, 7], jnp.int32)
    items = jnp.array([49, 0, 49, 0], jnp.int32)
    context = jnp.zeros((4, 3), jnp.int32)
    fn = adamx.value_and_row_grad(_loss, rows=_rows, size={"user": 6})
    _, g = fn(params, users, items, context)
    user, item = g["user"], g["tower"]["item"]
    assert isinstance(user, RowSparse) and user.coalesced and item.coalesced
    np.testing.assert_array_equal(user.indices, [0, 3, 7, 100, 100, 100])
    np.testing.assert_array_equal(user.values[3:], 0)
    np.testing.assert_array_equal(item.indices, [0, 49, 50, 50])  # default size: the 4 ids
    assert user.values.shape == (6, 8) and user.shape == (100, 8) and user.num_rows == 100


def test_has_aux_and_kwargs():
    params, (users, items, context) = _params(), _batch(3)

    def loss(params, users, items, *, context):
        value = _loss(params, users, items, context)
        return value, {"twice": 2 * value}

    def rows(users, items, *, context):
        return _rows(users, items, context)

    fn = adamx.value_and_row_grad(loss, rows=rows, has_aux=True)
    (value, aux), got = fn(params, users, items, context=context)
    (want_value, want_aux), want = jax.value_and_grad(loss, has_aux=True)(
        params, users, items, context=context
    )
    chex.assert_trees_all_equal((value, aux), (want_value, want_aux))
    chex.assert_trees_all_equal(_dense(got), want)


def test_ids_of_any_shape_and_basic_indices():
    """ids of shape (B, L) and ``table[ids, :4]``: the dense gradient."""
    params = _params()
    ids = jnp.array([[1, 2, 2], [5, 1, 9]], jnp.int32)

    def loss(params, ids):
        return jnp.sum(params["user"][ids, :4] ** 2) + jnp.sum(params["user"][ids[0], 6])

    _, got = adamx.value_and_row_grad(loss, rows=lambda ids: {"user": ids}, size=4)(params, ids)
    want = jax.grad(loss)(params, ids)
    chex.assert_trees_all_equal(_dense(got), want)


def test_jit_compiles_once_for_batches_of_one_size():
    """Batches with different numbers of distinct ids: one trace, one program."""
    params = _params()
    traces = []

    def loss(params, users, items, context):
        traces.append(1)
        return _loss(params, users, items, context)

    fn = jax.jit(adamx.value_and_row_grad(loss, rows=_rows))
    dense = jax.jit(jax.grad(_loss))
    for seed in range(4):
        batch = _batch(10 + seed)
        _, got = fn(params, *batch)
        _assert_within_one_ulp_of_max(_dense(got), dense(params, *batch))
    same = jnp.zeros(16, jnp.int32), jnp.zeros(16, jnp.int32), jnp.zeros((16, 3), jnp.int32)
    fn(params, *same)  # one distinct id per table
    assert len(traces) == 1


def test_no_table_sized_temporary():
    """A 262144 x 32 float32 table (32 MiB), 1024 ids: the jitted gradient's temporaries and
    outputs are a few times the batch's rows (k·row = 128 KiB; measured: 284 KiB of
    temporaries, sort and search scratch included, and 132 KiB out), not the table's size.

    ``jax.grad`` of the same loss needs a table-sized array (the dense gradient); the row
    gradient reads the table at the batch's rows only.
    """
    table = jax.ShapeDtypeStruct((262144, 32), jnp.float32)
    params = {"emb": table, "w": jax.ShapeDtypeStruct((32,), jnp.float32)}
    ids = jax.ShapeDtypeStruct((1024,), jnp.int32)

    def loss(params, ids):
        return jnp.mean((params["emb"][ids] @ params["w"]) ** 2)

    fn = adamx.value_and_row_grad(loss, rows=lambda ids: {"emb": ids})
    table_bytes, rows_bytes = 262144 * 32 * 4, 1024 * 32 * 4
    sparse = jax.jit(fn).lower(params, ids).compile().memory_analysis()
    dense = jax.jit(jax.value_and_grad(loss)).lower(params, ids).compile().memory_analysis()
    assert dense.temp_size_in_bytes + dense.output_size_in_bytes >= table_bytes  # the check bites
    assert sparse.temp_size_in_bytes <= 4 * rows_bytes < table_bytes / 60, sparse
    assert sparse.output_size_in_bytes <= 2 * rows_bytes, sparse


def test_linen_and_nnx_param_trees():
    """A linen tower beside an embedding ({"params": ...} paths) and an nnx model's State."""
    tower = nn.Dense(2)
    ids = jnp.array([4, 1, 4, 9], jnp.int32)
    params = {
        "emb": {"embedding": jnp.asarray(np.random.default_rng(0).normal(size=(20, 3)), "f4")},
        "tower": tower.init(jax.random.key(0), jnp.ones((1, 3))),
    }

    def loss(params, ids):
        return jnp.sum(tower.apply(params["tower"], params["emb"]["embedding"][ids]) ** 2)

    fn = adamx.value_and_row_grad(loss, rows=lambda ids: {"emb/embedding": ids})
    chex.assert_trees_all_equal(_dense(fn(params, ids)[1]), jax.grad(loss)(params, ids))

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Param(jax.random.normal(rngs.params(), (20, 3)))
            self.dense = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, ids):
            return jnp.sum(self.dense(self.embed[ids]) ** 2)

    graph, state = nnx.split(Model(nnx.Rngs(0)), nnx.Param)

    def nnx_loss(state, ids):
        return nnx.merge(graph, state)(ids)

    got = adamx.value_and_row_grad(nnx_loss, rows=lambda ids: {"embed/value": ids})(state, ids)[1]
    assert is_row_sparse(got["embed"].value)
    chex.assert_trees_all_equal(_dense(got), jax.grad(nnx_loss)(state, ids))


# ---------------------------------------------------------------------------
# Errors: each names the table and the fix.


def _simple(params, ids):
    return jnp.sum(params["tower"]["item"][ids])


def test_unknown_table_lists_paths():
    fn = adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/items": ids})
    with pytest.raises(ValueError, match=r"'tower/items'.*\['tower/b', 'tower/item', 'tower/w'"):
        fn(_params(), jnp.array([1]))


def test_ids_must_be_integers():
    fn = adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/item": ids})
    with pytest.raises(TypeError, match=r"rows\(...\)\['tower/item'\] must be integer ids"):
        fn(_params(), jnp.array([1.0]))


def test_size_too_small_when_concrete():
    fn = adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/item": ids}, size=2)
    with pytest.raises(
        ValueError, match=r"size must be >= the 3 distinct rows of rows\(...\)\['tower/item'\]"
    ):
        fn(_params(), jnp.array([1, 2, 3, 3]))


def test_out_of_range_ids_when_concrete():
    fn = adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/item": ids})
    with pytest.raises(ValueError, match=r"must be row ids in \[0, 50\).*got \[50, -1\]"):
        fn(_params(), jnp.array([1, 50, -1]))


def test_reading_an_unlisted_row():
    """Concrete: an error naming the rows. Under jit: NaN, never another row's value."""

    def loss(params, ids, other):
        return jnp.sum(params["tower"]["item"][other])

    fn = adamx.value_and_row_grad(loss, rows=lambda ids, other: {"tower/item": ids})
    ids, other = jnp.array([1, 2]), jnp.array([2, 7])
    with pytest.raises(ValueError, match=r"read rows \[7\] of the table 'tower/item' that rows"):
        fn(_params(), ids, other)
    value, _ = jax.jit(fn)(_params(), ids, other)
    assert np.isnan(value)
    # a row dropped because size was too small reads NaN too (under jit nothing can raise)
    small = adamx.value_and_row_grad(loss, rows=lambda ids, other: {"tower/item": ids}, size=1)
    assert np.isnan(jax.jit(small)(_params(), ids, ids)[0])


def _take(params, ids):
    return jnp.sum(jnp.take(params["user"], ids, axis=0))


def _matmul(params, ids):
    return jnp.sum(jnp.ones((2, 100)) @ params["user"]) + jnp.sum(params["user"][ids])


def _nnx_embed(params, ids):
    embed = nnx.Embed(100, 8, rngs=nnx.Rngs(0))
    embed.embedding = nnx.Param(params["user"])  # reads embedding[...], then jnp.take
    return jnp.sum(embed(ids))


@pytest.mark.parametrize("loss", [_take, _matmul, _nnx_embed])
def test_table_used_as_an_array(loss):
    """Anything but ``table[ids]`` (jnp.take, @, flax's Embed) names the table and the fix."""
    fn = adamx.value_and_row_grad(loss, rows=lambda ids: {"user": ids})
    with pytest.raises(TypeError, match=r"'user' was used as an array.*table\[ids\]"):
        fn(_params(), jnp.array([1]))


def test_out_of_range_ids_under_jit_read_nan():
    """Under jit nothing can raise: an out-of-range id is dropped from the gradient (padding)
    and its lookup reads NaN, so the loss says so."""
    fn = jax.jit(adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/item": ids}))
    value, g = fn(_params(), jnp.array([1, 50, -1]))
    assert np.isnan(value)
    np.testing.assert_array_equal(g["tower"]["item"].indices, [1, 50, 50])


def test_empty_batch():
    """No ids: a RowSparse with no entries (a step with it changes no row)."""
    fn = adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/item": ids})
    for f in (fn, jax.jit(fn)):
        value, g = f(_params(), jnp.zeros((0,), jnp.int32))
        assert value == 0 and g["tower"]["item"].indices.shape == (0,)
        assert g["tower"]["item"].values.shape == (0, 8)


def test_through_transformations_inside_the_loss():
    """The table reaches the lookup through jax.checkpoint, an inner jax.jit and lax.scan (a
    ``RowTable`` is a pytree)."""

    def loss(params, ids):
        @jax.checkpoint
        def remat(params, ids):
            return jnp.sum(jnp.sin(params["user"][ids]))

        def body(carry, i):
            return carry + jnp.sum(params["user"][i] ** 2), None

        scanned = jax.lax.scan(body, jnp.float32(0), ids)[0]
        return remat(params, ids) + jax.jit(_simple)(params, ids) + scanned

    fn = adamx.value_and_row_grad(loss, rows=lambda ids: {"user": ids, "tower/item": ids})
    ids = jnp.array([3, 1, 3], jnp.int32)
    chex.assert_trees_all_equal(_dense(fn(_params(), ids)[1]), jax.grad(loss)(_params(), ids))


def test_size_names_an_unknown_table():
    fn = adamx.value_and_row_grad(_simple, rows=lambda ids: {"tower/item": ids}, size={"user": 4})
    with pytest.raises(
        ValueError, match=r"size names tables that rows\(...\) does not: \['user'\]"
    ):
        fn(_params(), jnp.array([1]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rows": {"user": [1]}}, TypeError, r"rows must be a callable"),
        ({"rows": _rows, "size": -1}, ValueError, r"size must be an int >= 0"),
        ({"rows": _rows, "size": {"user": 1.5}}, ValueError, r"size\['user'\] must be an int"),
        ({"rows": _rows, "has_aux": 1}, TypeError, r"has_aux must be True or False"),
    ],
)
def test_argument_checks(kwargs, error, match):
    with pytest.raises(error, match=match):
        adamx.value_and_row_grad(_loss, **kwargs)
