"""The hosts' training loops: ``run(build, params, path, loss, steps)`` trains ``steps``
closed-loop steps of ``loss`` (a plain jit loop, through an orbax checkpoint, in flax nnx and
linen, an ensemble under vmap) and returns a ``Run``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import adamx

from .paths import Path


class Run(NamedTuple):
    params: Any  # final params, laid out as given (unpacked / gathered by the caller)
    states: list  # the optimizer state after init and after each step
    traces: int  # how many times the step function was traced


class Counter:
    """Counts traces of a step function (incremented in its Python body)."""

    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def _plain_loop(tx, params, path: Path, loss, steps: range, state=None, counter=None):
    counter = counter or Counter()

    @jax.jit
    def step(params, state, t):
        counter()
        grads = jax.grad(loss)(params, t)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = path.make_init(tx)(params) if state is None else state
    states = [state]
    for t in steps:
        params, state = step(params, state, jnp.int32(t))
        states.append(state)
    return params, states, counter


def run_plain(build, params, path: Path, loss, steps: int) -> Run:
    params, states, counter = _plain_loop(build(), params, path, loss, range(steps))
    return Run(params, states, counter.n)


def run_orbax(build, params, path: Path, loss, steps: int) -> Run:
    """Train half the steps, save params and state, restore them into a fresh optimizer
    against ``adamx.sharding.abstract_state`` (the README recipe), and train the rest."""
    import tempfile

    import orbax.checkpoint as ocp

    half = steps // 2
    tx = build()
    params, states, counter = _plain_loop(tx, params, path, loss, range(half))
    with tempfile.TemporaryDirectory() as tmp:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(f"{tmp}/ckpt", {"params": params, "opt_state": states[-1]})
        tx = build()  # "after a restart": a fresh optimizer object
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
        target = {
            "params": abstract,
            "opt_state": adamx.sharding.abstract_state(tx, abstract),
        }
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(f"{tmp}/ckpt", target)
    params, more, counter2 = _plain_loop(
        tx, restored["params"], path, loss, range(half, steps), restored["opt_state"]
    )
    return Run(params, states + more, max(counter.n, counter2.n))


def run_nnx(build, params, path: Path, loss, steps: int) -> Run:
    """``flax.nnx.Optimizer`` over a module that holds the parameter tree."""
    from flax import nnx

    class Holder(nnx.Module):
        def __init__(self, tree):
            self.tree = nnx.data(jax.tree.map(nnx.Param, tree))

    def is_variable(x):
        return isinstance(x, nnx.Variable)

    def values(model):
        return jax.tree.map(lambda v: v[...], model.tree, is_leaf=is_variable)

    model = Holder(params)
    optimizer = nnx.Optimizer(model, build(), wrt=nnx.Param)
    counter = Counter()

    @nnx.jit
    def step(model, optimizer, t):
        counter()
        grads = nnx.grad(lambda m: loss(values(m), t))(model)
        optimizer.update(model, grads)

    def opt_state():  # as the user sees it: the transformation's state types, nnx variables
        return jax.tree.map(lambda x: x, optimizer.opt_state)

    states = [opt_state()]
    for t in range(steps):
        step(model, optimizer, jnp.int32(t))
        states.append(opt_state())
    return Run(values(model), states, counter.n)


def run_linen(build, params, path: Path, loss, steps: int) -> Run:
    """flax linen's ``TrainState``: ``create`` (which calls ``tx.init``), ``apply_gradients``."""
    from flax.training import train_state

    state = train_state.TrainState.create(apply_fn=None, params=params, tx=build())
    counter = Counter()

    @jax.jit
    def step(state, t):
        counter()
        return state.apply_gradients(grads=jax.grad(loss)(state.params, t))

    states = [state.opt_state]
    for t in range(steps):
        state = step(state, jnp.int32(t))
        states.append(state.opt_state)
    return Run(state.params, states, counter.n)


ENSEMBLE = 2


def run_vmap(build, params, path: Path, loss, steps: int) -> Run:
    """An ensemble of ``ENSEMBLE`` models trained by one ``jax.vmap``-ed step; returns the
    stacked params (member i starts from ``ensemble_member(params, i)``)."""
    tx = build()
    stacked = jax.tree.map(
        lambda *xs: jnp.stack(xs),
        *[ensemble_member(params, i) for i in range(ENSEMBLE)],
    )
    counter = Counter()

    @jax.jit
    def step(params, state, t):
        counter()

        def one(p, s):
            updates, s = tx.update(jax.grad(loss)(p, t), s, p)
            return optax.apply_updates(p, updates), s

        return jax.vmap(one)(params, state)

    state = jax.jit(jax.vmap(tx.init))(stacked)
    states = [state]
    for t in range(steps):
        stacked, state = step(stacked, state, jnp.int32(t))
        states.append(state)
    return Run(stacked, states, counter.n)


def ensemble_member(params, i: int):
    """Member ``i`` of the vmap host's ensemble: the params shifted by ``i / 4``."""
    return jax.tree.map(lambda x: (x + 0.25 * i).astype(x.dtype), params)
