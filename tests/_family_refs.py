"""Shared machinery of the family parity suites: gradient stacks, a small model, and runners.

adamx runs under ``lax.scan``; torch and Keras run in plain Python loops on the
same gradients (precomputed for open-loop streams, or computed from the
reference's own current parameters by the same JAX loss for the small model),
so any difference comes from the optimizers alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _promotion import standard

STEPS = 500


def gradient_stack(params, steps: int = STEPS, seed: int = 0):
    """An open-loop gradient stream, stacked: a tree of (steps, *shape) arrays.

    Each step's gradients are normal noise times a scale drawn log-uniformly in
    [1e-3, 1e2]; every 17th step is exactly zero. Drawn in float32 with NumPy and
    cast to the params' dtype, so float32 and float64 runs see the same numbers.
    """
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-3.0, 2.0, size=steps)
    scale[5::17] = 0.0

    def leaf(x):
        noise = rng.normal(size=(steps, *x.shape)).astype(np.float32)
        g = (noise * scale.reshape((steps,) + (1,) * x.ndim).astype(np.float32)).astype(np.float32)
        return jnp.asarray(g, x.dtype)

    return jax.tree.map(leaf, params)


# A small classifier on fixed synthetic data: closed loop, the gradients follow the params.
def model_params(dtype=jnp.float32, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"dense": {"kernel": (6, 8), "bias": (8,)}, "norm": {"scale": (8,)},
              "out": {"kernel": (8, 3), "bias": (3,)}}  # fmt: skip

    def init(shape):  # rounded to float32 first: float32 and float64 runs start alike
        return jnp.asarray(np.float32(rng.normal(size=shape) * 0.5), dtype)

    return jax.tree.map(init, shapes, is_leaf=lambda s: isinstance(s, tuple))


_DATA = np.random.default_rng(2)
_BATCH, _BATCHES = 16, 8
_X = jnp.asarray(_DATA.normal(size=(_BATCH * _BATCHES, 6)), jnp.float32)
_Y = jnp.asarray(_DATA.integers(0, 3, size=_BATCH * _BATCHES))  # random labels: never fit exactly


def model_loss(params, step) -> jax.Array:
    """Cross-entropy on mini-batch ``step % 8``: gradient noise keeps the dynamics tame."""
    start = (step % _BATCHES) * _BATCH
    x = jax.lax.dynamic_slice_in_dim(_X, start, _BATCH).astype(params["dense"]["kernel"].dtype)
    y = jax.lax.dynamic_slice_in_dim(_Y, start, _BATCH)
    h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"][None])
    h = h * params["norm"]["scale"][None]
    logits = h @ params["out"]["kernel"] + params["out"]["bias"][None]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


model_grad = jax.jit(jax.grad(model_loss))


def run_adamx_stream(tx, params, grads, with_updates: bool = False):
    """Scan ``tx`` over a gradient stack; returns (params after each step, final state)
    and, ``with_updates``, every update as well."""

    @jax.jit
    def run(params, grads):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), (p, u)

        (_, state), (trajectory, updates) = jax.lax.scan(body, (params, tx.init(params)), grads)
        return (trajectory, state, updates) if with_updates else (trajectory, state)

    return run(params, grads)


def run_adamx_model(tx, params, steps: int = STEPS, sign: float = 1.0):
    """``steps`` closed-loop steps on the small model; returns (trajectory, final state).

    ``sign=-1`` feeds the gradient of the negated loss (for optimizers that ascend).
    """

    @jax.jit
    def run(params):
        def body(carry, step):
            p, s = carry
            g = jax.tree.map(lambda x: sign * x, jax.grad(model_loss)(p, step))
            u, s = tx.update(g, s, p)
            p = optax.apply_updates(p, u)
            return (p, s), p

        init = (params, tx.init(params))
        (_, state), trajectory = jax.lax.scan(body, init, jnp.arange(steps))
        return trajectory, state

    return run(params)


def run_torch(make_optimizer, params, grads=None, steps: int = STEPS, sign: float = 1.0):
    """torch.optim in a Python loop; ``grads`` a stack (open loop) or None (the small model).

    Returns (trajectory tree of (steps, *shape) arrays, {state key: tree of final values}).
    """
    import torch

    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(np.array(x))) for x in leaves]
    optimizer = make_optimizer(tensors)
    stacked = None if grads is None else [np.asarray(g) for g in jax.tree.leaves(grads)]
    trajectory = []
    for t in range(steps):
        if stacked is None:
            current = treedef.unflatten([p.detach().numpy() for p in tensors])
            g_t = [sign * np.asarray(g) for g in jax.tree.leaves(model_grad(current, t))]
        else:
            g_t = [g[t] for g in stacked]
        for p, g in zip(tensors, g_t, strict=True):
            p.grad = torch.tensor(np.array(g))
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    per_leaf = [np.stack(column) for column in zip(*trajectory, strict=True)]
    keys = optimizer.state[tensors[0]].keys()
    state = {
        k: treedef.unflatten([optimizer.state[p][k].numpy().copy() for p in tensors])
        for k in keys
        if k != "step"
    }
    return treedef.unflatten(per_leaf), state


def run_keras(make_optimizer, params, grads=None, steps: int = STEPS):
    """A Keras 3 optimizer (JAX backend) in a Python loop of jitted ``stateless_apply`` steps.

    Returns (trajectory, {slot name: tree of final values}), slots named as Keras
    names them ("momentum", "velocity", "velocity_hat", "m", "u"). Keras is not
    strict-clean: it builds and steps under the standard promotion rules (``_promotion``).
    """
    with standard():
        return _run_keras(make_optimizer, params, grads, steps)


def _run_keras(make_optimizer, params, grads, steps):
    import keras

    leaves, treedef = jax.tree.flatten(params)
    variables = [keras.Variable(np.array(x), name=f"v{i}") for i, x in enumerate(leaves)]
    optimizer = make_optimizer()
    optimizer.build(variables)
    step = jax.jit(optimizer.stateless_apply)
    opt_values = [v.value for v in optimizer.variables]
    values = [v.value for v in variables]
    stacked = None if grads is None else jax.tree.leaves(grads)
    trajectory = []
    for t in range(steps):
        if stacked is None:
            g_t = jax.tree.leaves(model_grad(treedef.unflatten(values), t))
        else:
            g_t = [g[t] for g in stacked]
        values, opt_values = step(opt_values, g_t, values)
        trajectory.append([np.asarray(v) for v in values])
    per_leaf = [np.stack(column) for column in zip(*trajectory, strict=True)]
    slots: dict = {}
    for var, value in zip(optimizer.variables, opt_values, strict=True):
        name = var.path.split("/")[-1]  # e.g. "v3_velocity_hat"
        if "_" not in name or not name.startswith("v"):
            continue
        index, slot = name[1:].split("_", 1)
        slots.setdefault(slot, [None] * len(leaves))[int(index)] = np.asarray(value)
    return treedef.unflatten(per_leaf), {k: treedef.unflatten(v) for k, v in slots.items()}
