"""``adamx.sparse_rows`` with a factored second moment (``adamx.factored``): a table whose v is
kept as row and column means has no per-row state (each column mean averages every row), so
the lazy path refuses it, naming the table, nu_dtype and the fix. The refusal recognises the
record, not its shapes: a square table's column means have one entry per row too."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx


def _params(rows: int, width: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "emb": jnp.asarray(rng.normal(size=(rows, width)), jnp.float32),
        "dense": {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)},
    }


def _grads(params: dict, rows: list[int]) -> dict:
    emb = params["emb"]
    values = jnp.sin(emb[jnp.asarray(rows)])
    return {
        "emb": adamx.row_sparse(jnp.asarray(rows), values, emb.shape[0]),
        "dense": {"w": jnp.cos(params["dense"]["w"])},
    }


def _message(min_dim_size_to_factor: int) -> str:
    return (
        r"sparse_rows: the table at emb has its second moment stored by "
        + re.escape(f"nu_dtype=factored(min_dim_size_to_factor={min_dim_size_to_factor}, ")
        + r".*row and column means.*row-aligned nu_dtype.*optax.multi_transform.*"
        r"min_dim_size_to_factor above its second-largest dimension"
    )


@pytest.mark.parametrize("shape", [(16, 8), (8, 16), (8, 8)], ids=["tall", "wide", "square"])
def test_a_factored_table_is_refused_naming_it_nu_dtype_and_the_fix(shape):
    params = _params(*shape)
    for inner in (adamx.adam, adamx.amsgrad):  # v, and AMSGrad's maximum of v
        tx = adamx.sparse_rows(inner(1e-2, nu_dtype=adamx.factored(min_dim_size_to_factor=8)))
        with pytest.raises(ValueError, match=_message(8)):
            tx.update(_grads(params, [1, 3]), tx.init(params), params)


def test_the_square_table_passes_the_shape_check_alone():
    """Why the record is recognised: both factors of an 8 x 8 table have 8 = num_rows
    entries, the leading dimension the row-alignment check looks at."""
    params = _params(8, 8)
    state = adamx.adam(1e-2, nu_dtype=adamx.factored(8)).init(params)
    nu = state[0].nu
    assert nu.row["emb"].shape == (8,) and nu.col["emb"].shape == (8,)


def test_an_unfactored_table_keeps_its_full_v_and_runs_lazily():
    """Below min_dim_size_to_factor the table's v is stored whole (row-aligned): sparse_rows
    then equals the dense optimizer when every row is touched; the factored dense leaf beside
    it is no table and is not refused."""
    params = _params(16, 8)
    fmt = adamx.factored(min_dim_size_to_factor=8)  # emb (16, 8): factored; the fix: 9
    fixed = adamx.factored(min_dim_size_to_factor=9)
    with pytest.raises(ValueError, match=_message(8)):
        tx = adamx.sparse_rows(adamx.adam(1e-2, nu_dtype=fmt))
        tx.update(_grads(params, [0]), tx.init(params), params)
    tx = adamx.sparse_rows(adamx.adam(1e-2, nu_dtype=fixed))
    dense_tx = adamx.adam(1e-2, nu_dtype=fixed)
    grads = _grads(params, list(range(16)))
    dense = {"emb": jnp.sin(params["emb"]), "dense": grads["dense"]}
    with jax.disable_jit():
        updates, _ = tx.update(grads, tx.init(params), params)
        want, _ = dense_tx.update(dense, dense_tx.init(params), params)
    got = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(got, optax.apply_updates(params, want), rtol=1e-6)


def test_the_fix_through_multi_transform():
    """The message's other fix: the table gets a row-aligned nu_dtype, the rest factored."""
    params = {"emb": jnp.ones((16, 16)), "w": jnp.ones((16, 16))}
    labels = {"emb": "table", "w": "dense"}
    tx = optax.multi_transform(
        {
            "table": adamx.sparse_rows(adamx.adam(1e-2)),
            "dense": adamx.adam(1e-2, nu_dtype=adamx.factored(8)),
        },
        labels,
    )
    grads = {
        "emb": adamx.row_sparse(jnp.asarray([2]), jnp.ones((1, 16)), 16),
        "w": jnp.ones((16, 16)),
    }
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    moved = np.flatnonzero(np.any(np.asarray(new["emb"] != params["emb"]), axis=1))
    assert moved.tolist() == [2]
    assert np.all(np.asarray(new["w"]) < 1)
