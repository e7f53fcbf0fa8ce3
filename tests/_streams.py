"""Shared test machinery: parameter trees, gradient streams, and jitted runs of many steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_params(dtype, seed: int = 0) -> dict:
    """A small tree with a matrix, a vector, a scalar and a nested leaf."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (5, 3), "b": (3,), "scale": (), "block": {"k": (2, 4)}}

    def leaf(shape):
        x = rng.normal(size=shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.normal(size=shape)
        return jnp.asarray(x, dtype=dtype)

    return jax.tree.map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))


def gradient(params, step, key):
    """Open-loop gradient for ``step``: random, of varying magnitude, sometimes exactly zero."""
    key = jax.random.fold_in(key, step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, 2 * len(leaves) + 1)
    scale = 10.0 ** jax.random.uniform(keys[-1], (), minval=-3.0, maxval=2.0)
    zero = (step % 17) == 5  # an all-zero gradient now and then

    def one(x, k_re, k_im):
        g = jax.random.normal(k_re, x.shape, jnp.float32)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            g = g + 1j * jax.random.normal(k_im, x.shape, jnp.float32)
        return jnp.where(zero, 0.0, scale * g).astype(x.dtype)

    grads = [one(x, keys[2 * i], keys[2 * i + 1]) for i, x in enumerate(leaves)]
    return treedef.unflatten(grads)


def run_open_loop(tx, params, steps: int, seed: int = 0):
    """``steps`` jitted updates on a gradient stream: final params, state and every update."""
    key = jax.random.key(seed)

    @jax.jit
    def run(params):
        def body(carry, step):
            params, state = carry
            updates, state = tx.update(gradient(params, step, key), state, params)
            return (optax.apply_updates(params, updates), state), updates

        (params, state), updates = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
        return params, state, updates

    return run(params)
