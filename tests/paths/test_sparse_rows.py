"""``adamx.sparse_rows``: lazy updates of the touched rows of a table (edge cases, refusals,
equality with the dense optimizer when every row is touched, compiled-program checks).

The parity with NumPy references and with ``torch.optim.SparseAdam`` lives in its own file.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

ROWS, WIDTH = 16, 64


def table_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "emb": jnp.asarray(rng.normal(size=(ROWS, WIDTH)), jnp.float32),
        "dense": {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)},
    }


def all_rows(g: jax.Array, step: int) -> adamx.RowSparse:
    """``g`` as a RowSparse touching every row: scrambled, 4 rows in two halves, 3 padding
    entries carrying junk."""
    n = g.shape[0]
    order = (np.arange(n) * 5 + step) % n
    dup = order[:4]
    half = np.where(np.isin(order, dup), 0.5, 1.0).astype(np.float32)[:, None]
    indices = np.concatenate([order, dup, [n, n, n]]).astype(np.int32)
    junk = jnp.full((3, *g.shape[1:]), 7.0, g.dtype)
    values = jnp.concatenate([g[order] * half.astype(g.dtype), g[dup] * 0.5, junk])
    return adamx.RowSparse(jnp.asarray(indices), values, n)


def step_fn(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def test_lazy_touches_only_the_batch_rows():
    params = table_params()
    tx = adamx.sparse_rows(adamx.adamw(1e-2, weight_decay=0.1))
    state = tx.init(params)
    g = adamx.row_sparse(jnp.array([3, 9, 3, ROWS]), jnp.ones((4, WIDTH)), ROWS, size=6)
    grads = {"emb": g, "dense": {"w": jnp.ones((3, 5))}}
    new, state = jax.jit(step_fn(tx))(params, state, grads)
    moved = np.flatnonzero(np.any(np.asarray(new["emb"] != params["emb"]), axis=1))
    np.testing.assert_array_equal(moved, [3, 9])
    mu = np.asarray(state[0].mu["emb"])
    np.testing.assert_allclose(mu[3], 0.2, rtol=1e-6)  # duplicates summed: (1-β1)·2
    np.testing.assert_allclose(mu[9], 0.1, rtol=1e-6)
    assert not mu[np.setdiff1d(np.arange(ROWS), [3, 9])].any()
    assert np.all(np.asarray(new["dense"]["w"] != params["dense"]["w"]))
