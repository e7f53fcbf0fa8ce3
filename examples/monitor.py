"""Watch an optimizer's steps: adamx.monitor records, at every step, what a practitioner logs.

    python examples/monitor.py [--steps 1000] [--out /tmp/adamx_monitor.png]

The digits MLP of quickstart.py is trained with ``adamx.monitor(adamx.adamw(...))`` and with
variants of it. The monitor changes nothing (its updates are AdamW's, bit for bit) and keeps,
in its state, the statistics of the last step, each read with ``optax.tree.get``:

    update_rms            RMS of the update Δθ over every element
    update_param_ratio    ‖Δθ‖ / ‖θ‖ (and group_update_param_ratio: per layer)
    grad_rms              RMS of the gradient g
    effective_lr          η = -⟨Δθ, g⟩ / ‖g‖²  (for SGD: the learning rate)
    descent_cosine        -⟨Δθ, g⟩ / (‖Δθ‖ ‖g‖): 1 along -g, < 0 uphill
    cautious_masked_fraction   elements cautious masking zeroed (cautious_adamw)
    clipped_fraction      elements in tensors update clipping scaled down (stable_adamw)
    nonfinite_grads       NaN or infinite gradient elements

The run scans over the steps inside one jitted function and returns those statistics for
every step; they are printed every few steps and plotted (matplotlib, Agg) to ``--out``.
"""

import argparse

import jax
import matplotlib
import numpy as np
import optax
from quickstart import BATCH, init_mlp, load_data, loss_fn

import adamx

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LOGGED = (
    "update_rms",
    "update_param_ratio",
    "grad_rms",
    "effective_lr",
    "descent_cosine",
    "cautious_masked_fraction",
    "clipped_fraction",
    "nonfinite_grads",
    "group_update_param_ratio",
)
STYLES = ["-", "--", ":", "-."]  # one per layer


def variants(lr: float) -> dict[str, optax.GradientTransformation]:
    """The optimizers compared, each wrapped in the monitor."""
    return {
        f"adamw lr={lr:g}": adamx.monitor(adamx.adamw(lr, weight_decay=1e-2)),
        f"adamw lr={10 * lr:g}": adamx.monitor(adamx.adamw(10 * lr, weight_decay=1e-2)),
        f"cautious_adamw lr={lr:g}": adamx.monitor(adamx.cautious_adamw(lr, weight_decay=1e-2)),
        f"stable_adamw lr={10 * lr:g}": adamx.monitor(
            adamx.stable_adamw(10 * lr, weight_decay=1e-2)
        ),
    }


def train(tx: optax.GradientTransformation, data, steps: int, seed: int = 0):
    """``steps`` minibatch steps in one jitted scan: the loss and the logged stats of each."""
    x, y = data
    batches = jax.random.randint(jax.random.key(seed + 1), (steps, BATCH), 0, len(x))

    @jax.jit
    def run(params):
        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            logged = {name: optax.tree.get(opt_state, name) for name in LOGGED}
            return (optax.apply_updates(params, updates), opt_state), (loss, logged)

        return jax.lax.scan(step, (params, tx.init(params)), batches)[1]

    losses, logged = run(init_mlp(jax.random.key(seed)))
    return np.asarray(losses), jax.tree.map(np.asarray, logged)


def report(name: str, losses: np.ndarray, logged: dict, every: int) -> None:
    print(f"\n{name}")
    print(
        "  step    loss  update_rms  upd/param  grad_rms  effective_lr  cosine  masked  clipped"
        "  nonfinite"
    )
    for i in sorted({*range(0, len(losses), every), len(losses) - 1}):
        print(
            f"  {i + 1:4d}  {losses[i]:6.3f}  {logged['update_rms'][i]:10.2e}  "
            f"{logged['update_param_ratio'][i]:9.2e}  {logged['grad_rms'][i]:8.2e}  "
            f"{logged['effective_lr'][i]:12.2e}  {logged['descent_cosine'][i]:6.3f}  "
            f"{logged['cautious_masked_fraction'][i]:6.3f}  {logged['clipped_fraction'][i]:7.3f}"
            f"  {logged['nonfinite_grads'][i]:9d}"
        )


def fractions(run) -> dict:
    """The masked and clipped fractions a run has (a variant without the stage records 0)."""
    logged = run[1]
    named = {"masked": logged["cautious_masked_fraction"], "clipped": logged["clipped_fraction"]}
    return {k: v for k, v in named.items() if np.any(v > 0)}


PANELS = [  # title, the series of a run (label -> values), y scale
    ("training loss", lambda r: {"": r[0]}, "log"),
    ("update RMS", lambda r: {"": r[1]["update_rms"]}, "log"),
    ("‖Δθ‖ / ‖θ‖", lambda r: {"": r[1]["update_param_ratio"]}, "log"),
    ("‖Δθ‖ / ‖θ‖ per layer", lambda r: r[1]["group_update_param_ratio"], "log"),
    ("gradient RMS", lambda r: {"": r[1]["grad_rms"]}, "log"),
    ("effective lr  -⟨Δθ,g⟩/‖g‖²", lambda r: {"": r[1]["effective_lr"]}, "symlog"),
    ("descent cosine  -⟨Δθ,g⟩/(‖Δθ‖‖g‖)", lambda r: {"": r[1]["descent_cosine"]}, "linear"),
    ("fraction masked (cautious) / clipped (stable)", fractions, "linear"),
]


def plot(runs: dict, out: str) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(20, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, series, scale) in zip(axes.flat, PANELS, strict=True):
        for color, (name, run) in zip(colors, runs.items(), strict=False):
            for style, (label, values) in zip(STYLES, series(run).items(), strict=False):
                text = f"{name}: {label}" if label != "" else name
                ax.plot(
                    np.arange(1, len(values) + 1), values, style, color=color, lw=0.8, label=text
                )
        ax.set(title=title, xlabel="step")
        ax.set_yscale(scale, **({"linthresh": 1e-3} if scale == "symlog" else {}))  # η < 0 too
        ax.grid(alpha=0.3)
    for ax in axes.flat[[0, 3, 7]]:
        ax.legend(fontsize=6)
    fig.savefig(out, dpi=100)
    print(f"\nplot saved to {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per optimizer")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="/tmp/adamx_monitor.png", help="where to save the plot")
    args = parser.parse_args(argv)

    train_data, _ = load_data()
    runs = {name: train(tx, train_data, args.steps) for name, tx in variants(args.lr).items()}
    for name, (losses, logged) in runs.items():
        report(name, losses, logged, every=max(1, args.steps // 8))
    plot(runs, args.out)


if __name__ == "__main__":
    main()
