"""Shared test machinery: parameter trees, gradient streams, and jitted runs of many steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_params(dtype, seed: int = 0) -> dict:
    """A small tree of ``dtype`` with a matrix, a vector, a scalar and a nested leaf."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (5, 3), "b": (3,), "scale": (), "block": {"k": (2, 4)}}

    def leaf(shape):
        x = rng.normal(size=shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.normal(size=shape)
        return jnp.asarray(x, dtype=dtype)

    return jax.tree.map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))


def make_mixed_params(dtypes, seed: int = 0) -> dict:
    """One small tree per dtype, side by side: {"float32": {...}, "bfloat16": {...}, ...}.

    Adam works leaf by leaf, so one program checks every dtype at once.
    """
    return {jnp.dtype(d).name: make_params(d, seed + i) for i, d in enumerate(dtypes)}


def gradient(params, step, key):
    """Open-loop gradient for ``step``: random, of varying magnitude, sometimes exactly zero."""
    key = jax.random.fold_in(key, step)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, 2 * len(leaves) + 1)
    log_scale = jax.random.uniform(keys[-1], (), minval=-3.0, maxval=2.0)
    zero = (step % 17) == 5  # an all-zero gradient now and then

    def one(x, k_re, k_im):
        # float16 overflows at 65504, so g² must stay below it: keep |g| below ~15.
        top = 0.5 if x.dtype == jnp.float16 else 2.0
        scale = 10.0 ** jnp.minimum(log_scale, top)
        g = jax.random.normal(k_re, x.shape, jnp.float32)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):  # g + 1j·n, written out (strict)
            g = jax.lax.complex(g, jax.random.normal(k_im, x.shape, jnp.float32))
        return jnp.where(zero, 0.0, scale.astype(g.dtype) * g).astype(x.dtype)

    grads = [one(x, keys[2 * i], keys[2 * i + 1]) for i, x in enumerate(leaves)]
    return treedef.unflatten(grads)


_STREAMS: dict = {}


def gradient_stream(params, steps: int, seed: int = 0):
    """The first ``steps`` open-loop gradients for a tree like ``params``, stacked on axis 0.

    Made once per tree layout and cached: generating them inside each run's
    program would triple its compile time.
    """
    layout = (
        jax.tree.structure(params),
        tuple((x.shape, x.dtype) for x in jax.tree.leaves(params)),
    )
    cache_key = (layout, steps, seed, jax.config.jax_enable_x64)
    if cache_key not in _STREAMS:
        key = jax.random.key(seed)
        make = jax.jit(lambda p: jax.lax.map(lambda t: gradient(p, t, key), jnp.arange(steps)))
        _STREAMS[cache_key] = make(params)
    return _STREAMS[cache_key]


def run_open_loop(tx, params, steps: int, seed: int = 0):
    """``steps`` jitted updates on a gradient stream: final params, state and every update."""

    @jax.jit
    def run(params, grads):
        def body(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (optax.apply_updates(params, updates), state), updates

        (params, state), updates = jax.lax.scan(body, (params, tx.init(params)), grads)
        return params, state, updates

    return run(params, gradient_stream(params, steps, seed))


def jitted_step(tx):
    """One jitted training step, ``(params, state, grads) -> (params, state)``."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def run_steps(step, params, state, grads_list):
    """``step`` applied once per gradient tree of ``grads_list``: the final params and state."""
    for grads in grads_list:
        params, state = step(params, state, grads)
    return params, state
