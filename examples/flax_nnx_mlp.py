"""A flax nnx classifier for scikit-learn's bundled digits, trained with adamx.adamw.

adamx optimizers are optax transformations, so ``nnx.Optimizer`` takes them as they are:

    optimizer = nnx.Optimizer(model, adamx.adamw(schedule, weight_decay=1e-2), wrt=nnx.Param)

Run (about half a minute on 2 CPU cores; the plot goes to ``--plot``):

    python examples/flax_nnx_mlp.py
    python examples/flax_nnx_mlp.py --steps 5 --plot /tmp/digits.png   # a quick smoke run
"""

import argparse

import jax
import matplotlib
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import adamx

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class MLP(nnx.Module):
    """8x8 images (64 pixels) -> 10 digit classes."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(64, hidden, rngs=rngs)
        self.hidden2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden1(x))
        x = self.dropout(nnx.relu(self.norm(self.hidden2(x))))
        return self.out(x)


def loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)  # adamx.adamw's update, then optax.apply_updates
    return loss


@nnx.jit
def evaluate(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="flax_nnx_mlp.png", help="where to save the loss plot")
    args = parser.parse_args(argv)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )

    model = MLP(args.hidden, rngs=nnx.Rngs(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.lr, warmup_steps=max(1, args.steps // 20), decay_steps=args.steps
    )
    optimizer = nnx.Optimizer(model, adamx.adamw(schedule, weight_decay=1e-2), wrt=nnx.Param)

    rng = np.random.default_rng(args.seed)
    eval_every = max(1, args.steps // 30)
    losses, evals = [], []
    bar = tqdm(range(args.steps), desc="digits", unit="step")
    for step in bar:
        idx = rng.integers(0, len(x_train), args.batch)
        model.train()
        losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
        if (step + 1) % eval_every == 0 or step + 1 == args.steps:
            model.eval()
            test_loss, test_acc = evaluate(model, x_test, y_test)
            evals.append((step + 1, float(test_loss), float(test_acc)))
            bar.set_postfix(loss=f"{np.mean(losses[-eval_every:]):.3f}", test_acc=f"{test_acc:.3f}")

    print(f"final test accuracy: {evals[-1][2]:.3f} ({len(x_test)} held-out digits)")
    plot(losses, evals, args.plot)


def plot(losses, evals, path):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax_loss.plot(steps, losses, alpha=0.3, label="batch loss")
    ax_loss.plot(steps[window - 1 :], smooth, label=f"train, mean of {window}")
    eval_steps, test_loss, test_acc = zip(*evals, strict=True)
    ax_loss.plot(eval_steps, test_loss, marker=".", label="held out")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.plot(eval_steps, test_acc, marker=".")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="held-out accuracy", ylim=(0.8, 1.0))
    fig.suptitle("flax nnx MLP on sklearn digits, adamx.adamw + warmup-cosine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    main()
