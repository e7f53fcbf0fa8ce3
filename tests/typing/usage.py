"""A typical user script, type-checked by pyright (pyrightconfig.json) against adamx's public API.

Not a test module (pytest collects ``test_*.py`` only): CI's pyright stage checks that what a
user writes with adamx type-checks without errors, so an editor shows them real types.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

import adamx


def loss(params, x: jax.Array) -> jax.Array:  # params: {"w", "b"}, as users write it
    return jnp.mean((x @ params["w"] + params["b"]) ** 2)


def embed_loss(params, ids: jax.Array) -> jax.Array:
    return jnp.sum(params["emb"][ids] ** 2)


def train(steps: int = 3) -> optax.Params:
    params: optax.Params = {"w": jnp.ones((16, 4)), "b": jnp.zeros(4)}
    x = jnp.ones((8, 16))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)

    # AdamW with a schedule, an 8-bit first moment and a bfloat16 second moment.
    fmt: adamx.MomentFormat = adamx.blockwise_8bit()
    formats: list[adamx.MomentFormat] = [
        adamx.stochastic_float(jnp.bfloat16),
        adamx.blockwise_4bit(),
        adamx.factored(),
        adamx.FloatFormat(jnp.bfloat16),
    ]
    assert all(isinstance(f, adamx.MomentFormat) for f in formats)
    tx: optax.GradientTransformationExtraArgs = adamx.adamw(
        schedule, weight_decay=1e-2, mu_dtype=fmt, nu_dtype=adamx.stochastic_float(jnp.bfloat16)
    )
    state = tx.init(params)

    @jax.jit
    def step(params: optax.Params, state: optax.OptState) -> tuple[optax.Params, optax.OptState]:
        grads = jax.grad(loss)(params, x)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)

    # The other members of the family, with their dtype and format arguments.
    others: list[optax.GradientTransformation] = [
        adamx.adam(1e-3, mu_dtype=jnp.bfloat16),
        adamx.adam(optax.constant_schedule(1e-3), nu_dtype=adamx.blockwise_4bit()),
        adamx.amsgrad(1e-3),
        adamx.nadamw(1e-3, weight_decay=1e-4),
        adamx.adafactor(1e-3),
        adamx.ademamix(1e-3),
        adamx.adopt(1e-3),
        adamx.laprop(1e-3),
        adamx.radam(1e-3),
        adamx.cautious_adamw(1e-3),
        adamx.stable_adamw(1e-3),
        adamx.adamax(1e-3),
        adamx.adamw(1e-3, nu_dtype=adamx.factored()),
        adamx.monitor(adamx.adam(1e-3)),
        optax.chain(
            adamx.scale_by_moments(mu_dtype="bfloat16"),
            adamx.bias_correct(),
            adamx.scale_by_rsqrt(),
            adamx.scale_by_lr(optax.linear_schedule(1e-3, 0.0, 100)),
        ),
    ]
    for other in others:
        other.update(jax.grad(loss)(params, x), other.init(params), params)

    # The packed and multi-tensor paths.
    packed: adamx.PackedTree = adamx.pack(params, min_size=1024)
    multi = adamx.multi_tensor(adamx.adam(1e-3), min_size=1024)
    multi.update(jax.grad(loss)(params, x), multi.init(params), params)
    del packed

    # Masks by path; hyperparameters injected (dtype arguments static); sparse rows.
    masked = [
        adamx.adamw(1e-3, weight_decay=1e-2, mask=adamx.exclude_paths(r"b$")),
        adamx.adamw(1e-3, mask=adamx.path_mask(lambda path, leaf: leaf.ndim > 1)),
        optax.inject_hyperparams(adamx.adamw, static_args=("mu_dtype",))(
            learning_rate=1e-3, mu_dtype=jnp.bfloat16
        ),
    ]
    for tx_m in masked:
        tx_m.update(jax.grad(loss)(params, x), tx_m.init(params), params)
    table = {"emb": jnp.ones((10, 4))}
    sparse = adamx.sparse_rows(adamx.adam(1e-3))
    grad_fn = adamx.value_and_row_grad(embed_loss, rows=lambda ids: {"emb": ids})
    _, sparse_grads = grad_fn(table, jnp.array([1, 3]))
    sparse.update(sparse_grads, sparse.init(table), table)

    # Memory: bytes of the state, and its layout on a mesh.
    nbytes: int = adamx.state_nbytes(state)
    training: adamx.TrainingBytes = adamx.training_nbytes(params, state)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    shardings = adamx.sharding.state_shardings(tx, params)
    zero = adamx.sharding.zero1(tx, mesh)
    per_device = adamx.sharding.state_bytes_per_device(state)
    del nbytes, training, shardings, zero, per_device
    return params


if __name__ == "__main__":
    train()
