"""Quickstart: train an MLP on handwritten digits with adamx.adamw, then check it against optax.

    python examples/quickstart.py [--epochs 30]

The data is scikit-learn's bundled 8x8 digits (1797 images, no download). The
optimizer is AdamW with a warmup-cosine learning rate and weight decay on the
weight matrices only. The same run with optax.adamw must give the same
parameters, bit for bit: adamx's chain of stages computes exactly optax's maths.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import adamx

BATCH = 64


def load_data(seed: int = 0):
    """Standardised digits, split 80/20 into train and test."""
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = jnp.asarray(x[order], jnp.float32), jnp.asarray(y[order], jnp.int32)
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def init_mlp(key, sizes=(64, 128, 128, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def logits_fn(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def make_optimizer(lib, total_steps: int):
    """The same AdamW from adamx or optax: warmup-cosine, decay on matrices only."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=3e-3, warmup_steps=total_steps // 10, decay_steps=total_steps
    )
    decay_matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return lib.adamw(schedule, weight_decay=1e-2, mask=decay_matrices)


def train(tx, train_data, epochs: int, report=None):
    """Train with ``tx``; one jitted scan per epoch over shuffled minibatches."""
    x, y = train_data
    steps_per_epoch = len(x) // BATCH

    @jax.jit
    def epoch(params, opt_state, key):
        batches = jax.random.permutation(key, len(x))[: steps_per_epoch * BATCH]

        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), batches.reshape(steps_per_epoch, BATCH)
        )
        return params, opt_state, losses.mean()

    params = init_mlp(jax.random.key(0))
    opt_state = tx.init(params)
    for i in range(epochs):
        params, opt_state, loss = epoch(params, opt_state, jax.random.key(i + 1))
        if report is not None:
            report(i, float(loss), params)
    return params, float(loss)


def accuracy(params, data) -> float:
    x, y = data
    return float(jnp.mean(jnp.argmax(logits_fn(params, x), -1) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    train_data, test_data = load_data()
    total_steps = args.epochs * (len(train_data[0]) // BATCH)
    print(
        f"digits: {len(train_data[0])} train / {len(test_data[0])} test images, "
        f"{total_steps} AdamW steps"
    )

    def report(i, loss, params):
        bar = "#" * int(30 * (i + 1) / args.epochs)
        print(
            f"  epoch {i + 1:3d}/{args.epochs} [{bar:<30}] loss {loss:.4f}  "
            f"test acc {accuracy(params, test_data):.3f}",
            flush=True,
        )

    start = time.perf_counter()
    params, loss = train(make_optimizer(adamx, total_steps), train_data, args.epochs, report)
    print(
        f"adamx.adamw: final train loss {loss:.4f}, test accuracy "
        f"{accuracy(params, test_data):.3f} ({time.perf_counter() - start:.1f} s)"
    )

    print("re-running the same training with optax.adamw ...")
    reference, _ = train(make_optimizer(optax, total_steps), train_data, args.epochs)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True)
    )
    print(f"final loss: {loss:.6f}")
    print(f"largest parameter difference from optax.adamw: {diff}")


if __name__ == "__main__":
    main()
