"""A small decoder-only transformer language model (flax linen), trained with adamx.adamw.

The recipe people use for real language models, at toy scale:

- a warmup-cosine learning-rate schedule,
- gradient clipping (``optax.clip_by_global_norm``) chained in front of adamx.adamw,
- weight decay on the weight matrices only, masked off biases and LayerNorm parameters
  (a mask built from the parameters' tree paths, ``adamx.exclude_paths``),
- orbax checkpoints: saved every ``--save-every`` steps; rerunning the script resumes from the
  latest one and continues exactly as if it had never stopped (batches depend only on the
  step).

The text is generated from a tiny English grammar (``_data.py``) with spelling, word order and
number agreement to learn. At the end the model writes a few sentences and we count how many
are grammatical.

Run (about two minutes on 2 CPU cores; the plot goes to ``--plot``):

    python examples/transformer_lm.py --fresh
    python examples/transformer_lm.py --fresh --stop-at 500 && python examples/transformer_lm.py
    python examples/transformer_lm.py --steps 6 --save-every 3 --ckpt-dir /tmp/lm --depth 1  # smoke
"""

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import linen as nn
from flax.training.train_state import TrainState
from tqdm import tqdm

import adamx

try:  # run as a script from anywhere, or imported as examples._data
    import _data
except ImportError:  # pragma: no cover
    from examples import _data

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then an MLP."""

    heads: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x), mask=mask)
        h = nn.Dense(4 * d)(nn.LayerNorm()(x))
        return x + nn.Dense(d)(nn.gelu(h))


class TransformerLM(nn.Module):
    vocab: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    context: int = 64

    @nn.compact
    def __call__(self, tokens):
        positions = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (self.context, self.width)
        )
        x = nn.Embed(self.vocab, self.width)(tokens) + positions[None, : tokens.shape[1]]
        for _ in range(self.depth):
            x = Block(self.heads)(x)
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


# Weight decay on weight matrices and embeddings, not on biases or LayerNorm scales/biases:
# a mask from each parameter's path ("Block_0/LayerNorm_0/scale"). Without adamx's helper:
#   lambda params: jax.tree_util.tree_map_with_path(
#       lambda path, _: path[-1].key not in ("bias", "scale"), params)
decay_mask = adamx.exclude_paths(r"(^|/)(bias|scale)$")


def make_optimizer(args):
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=args.lr,
        warmup_steps=max(1, args.steps // 10),
        decay_steps=args.steps,
        end_value=args.lr / 20,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        adamx.adamw(schedule, b2=0.98, weight_decay=0.1, mask=decay_mask),
    )
    return tx, schedule


@jax.jit
def train_step(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def eval_loss(state, x, y):
    logits = state.apply_fn({"params": state.params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---------------------------------------------------------------------------
# Checkpoints: arrays through orbax (no pickle), the loss history as JSON beside them.


def checkpoint_tree(state):
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def save(manager, state, history, force=False):
    step = int(state.step)
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(checkpoint_tree(state)),
            history=ocp.args.JsonSave(history),
        ),
        force=force,
    )


def restore(manager, state):
    """The latest checkpoint into ``state`` (a freshly initialised one gives the structure)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, checkpoint_tree(state))
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
        ),
    )
    tree = restored["state"]
    state = state.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
    return state, restored["history"]


# ---------------------------------------------------------------------------


def sample(state, context, prompt, n_chars, key, temperature=0.7):
    """``prompt`` and ``n_chars`` sampled characters, one jitted loop over a sliding window."""
    prompt_ids = _data.encode(prompt)
    total = len(prompt_ids) + n_chars
    buffer = jnp.zeros(total + context, jnp.int32).at[: len(prompt_ids)].set(prompt_ids)

    def write_next(t, carry):  # position t gets a character drawn from the model
        buffer, key = carry
        start = jnp.maximum(t - context, 0)
        window = jax.lax.dynamic_slice(buffer, (start,), (context,))
        logits = state.apply_fn({"params": state.params}, window[None])[0, t - start - 1]
        key, sub = jax.random.split(key)
        token = jax.random.categorical(sub, logits / temperature)
        return buffer.at[t].set(token.astype(jnp.int32)), key

    loop = jax.jit(lambda b, k: jax.lax.fori_loop(len(prompt_ids), total, write_next, (b, k)))
    buffer, _ = loop(buffer, key)
    return _data.decode(np.asarray(buffer[:total]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="total training steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2, help="transformer blocks")
    parser.add_argument("--sample-chars", type=int, default=300, help="characters to sample")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt-dir", default="checkpoints/transformer_lm")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--fresh", action="store_true", help="delete existing checkpoints first")
    parser.add_argument(
        "--stop-at", type=int, default=None, help="stop after this step, as if interrupted"
    )
    parser.add_argument("--plot", default="transformer_lm.png", help="where to save the plot")
    args = parser.parse_args(argv)

    train_tokens = _data.corpus(200_000, seed=args.seed)
    valid_tokens = _data.corpus(20_000, seed=args.seed + 1)
    valid_x, valid_y = _data.batch(valid_tokens, 0, 128, args.context, seed=args.seed)

    model = TransformerLM(_data.VOCAB, width=args.width, depth=args.depth, context=args.context)
    params = jax.jit(model.init)(jax.random.key(args.seed), valid_x[:1])["params"]
    tx, schedule = make_optimizer(args)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    decayed = jax.tree.map(lambda p, d: p.size * d, params, decay_mask(params))
    n_decayed = sum(jax.tree.leaves(decayed))
    print(f"{n_params:,} parameters, {n_decayed:,} of them with weight decay")

    manager = ocp.CheckpointManager(
        os.path.abspath(args.ckpt_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=args.save_every),
    )
    history = {"loss": [], "valid": []}
    if args.fresh:
        for step in manager.all_steps():
            manager.delete(step)
    if manager.latest_step() is not None:
        state, history = restore(manager, state)
        print(f"resumed from step {int(state.step)} ({os.path.abspath(args.ckpt_dir)})")

    start, stop = int(state.step), min(args.steps, args.stop_at or args.steps)
    eval_every = max(1, args.steps // 30)
    bar = tqdm(range(start, stop), "transformer", initial=start, total=args.steps)
    for step in bar:
        x, y = _data.batch(train_tokens, step, args.batch, args.context, seed=args.seed)
        state, loss = train_step(state, x, y)
        history["loss"].append(float(loss))
        if (step + 1) % eval_every == 0 or step + 1 == args.steps:
            history["valid"].append((step + 1, float(eval_loss(state, valid_x, valid_y))))
            bar.set_postfix(loss=f"{loss:.3f}", valid=f"{history['valid'][-1][1]:.3f}")
        save(manager, state, history)
    save(manager, state, history, force=int(state.step) not in manager.all_steps())
    manager.wait_until_finished()
    manager.close()
    if stop < args.steps:
        print(f"stopped at step {stop}; run again to resume")
        return

    text = sample(state, args.context, "the ", args.sample_chars, jax.random.key(args.seed))
    sentences = [s.strip() for s in text.split(".")[:-1]]
    ok = sum(_data.grammatical(s) for s in sentences)
    print(f"sample: {text!r}")
    print(f"{ok}/{len(sentences)} sampled sentences are grammatical")
    plot(history, schedule, args, f"{ok}/{len(sentences)} sampled sentences grammatical")


def plot(history, schedule, args, note):
    fig, ax = plt.subplots(figsize=(8, 4))
    steps = np.arange(1, len(history["loss"]) + 1)
    ax.plot(steps, history["loss"], alpha=0.35, label="train (batch)")
    if history["valid"]:
        ax.plot(*zip(*history["valid"], strict=True), marker=".", label="validation")
    ax.axhline(np.log(_data.VOCAB), color="grey", ls=":", label="uniform guess")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / char)", title=note)
    ax.legend(loc="center right")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, schedule(jnp.asarray(steps - 1)), color="tab:green", lw=1)
    lr_ax.set_ylabel("learning rate", color="tab:green")
    fig.suptitle("char-level transformer LM: clip + adamx.adamw (masked decay) + warmup-cosine")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
