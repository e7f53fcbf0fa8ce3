"""adamx inside flax, unchanged: nnx.Optimizer and linen's TrainState, against optax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _flax_models import NnxMLP, batch, loss, nnx
from registry import OPTIMIZERS as REGISTRY

import adamx

linen = pytest.importorskip("flax.linen")
train_state = pytest.importorskip("flax.training.train_state")

STEPS = 5


# Registry optimizers with an optax reference they must equal bit for bit inside flax: a
# learning-rate schedule with a callable weight-decay mask, and a bfloat16 mu_dtype.
NAMES = ["adamw_schedule_mask", "adam_mu_bf16"]
OPTIMIZERS = [(name, REGISTRY[name].make, REGISTRY[name].reference) for name in NAMES]
IDS = NAMES


def _batches():
    """One fixed batch per step (the same one: full-batch training, so the loss must fall)."""
    x, y = batch()
    return np.stack([x] * STEPS), np.stack([y] * STEPS)


def _train_nnx(tx):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        value, grads = nnx.value_and_grad(loss)(model, x, y)
        optimizer.update(model, grads)
        return value

    x, y = _batches()
    losses = [step(model, optimizer, x[i], y[i]) for i in range(STEPS)]
    return nnx.state(model, nnx.Param), np.asarray(losses)


@pytest.mark.parametrize(("name", "make_adamx", "make_optax"), OPTIMIZERS, ids=IDS)
def test_nnx_optimizer_matches_optax(name, make_adamx, make_optax):
    got_params, got_losses = _train_nnx(make_adamx())
    want_params, want_losses = _train_nnx(make_optax())
    chex.assert_trees_all_equal(got_params, want_params)
    np.testing.assert_array_equal(got_losses, want_losses)
    assert got_losses[-1] < got_losses[0], "the model did not learn"


def test_nnx_optimizer_state_holds_adamx_moments():
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, adamx.adam(1e-3), wrt=nnx.Param)
    mu = nnx.to_pure_dict(optax.tree.get(optimizer.opt_state, "mu"))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    chex.assert_trees_all_equal_shapes_and_dtypes(mu, params)
    chex.assert_trees_all_equal(mu, jax.tree.map(jnp.zeros_like, params))


class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Dense(8)(x)
        x = linen.LayerNorm()(x)
        return linen.Dense(3)(jax.nn.relu(x))


def _train_linen(tx):
    model = LinenMLP()
    x, y = _batches()
    params = model.init(jax.random.key(0), x[0])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state, x, y):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for i in range(STEPS):
        state, loss = step(state, x[i], y[i])
        losses.append(loss)
    return state, np.asarray(losses)


@pytest.mark.parametrize(("name", "make_adamx", "make_optax"), OPTIMIZERS, ids=IDS)
def test_linen_train_state_matches_optax(name, make_adamx, make_optax):
    got, got_losses = _train_linen(make_adamx())
    want, want_losses = _train_linen(make_optax())
    chex.assert_trees_all_equal(got.params, want.params)
    np.testing.assert_array_equal(got_losses, want_losses)
    assert int(got.step) == STEPS
    assert got_losses[-1] < got_losses[0], "the model did not learn"
