"""Low-memory Adam on two real tasks: quality, state bytes and step time vs fp32 AdamW.

Tasks (no downloads):
  * mlp: a 64-256-256-10 MLP classifying scikit-learn's bundled digits;
  * lm:  a 2-layer decoder-only transformer on generated sequences (a sparse Markov
         chain whose first half is repeated: an induction-head task, floor 0.67 nats).

Options (same seed, data order and steps for all): fp32 AdamW; bf16 moments
(round-to-nearest and stochastic); 8-bit blockwise moments (the default map, and
alternative maps for v); bf16 parameters without an fp32 copy (round-to-nearest,
stochastic rounding, Kahan). Also: the error of each v map on real Adam moments,
state bytes per parameter, and step time relative to fp32 AdamW on this CPU.

Writes benchmarks/results/low_memory.json and benchmarks/results/low_memory.png.
Run: python benchmarks/low_memory.py  (about 3-5 minutes on 2 CPU cores).
"""

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits

import adamx

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).parent / "results"
M8 = adamx.blockwise_8bit(signed=True)
V8 = {
    "dynamic": adamx.blockwise_8bit(signed=False),
    "linear": adamx.blockwise_8bit(signed=False, qmap="linear"),
    "sqrt_dynamic": adamx.blockwise_8bit(signed=False, sqrt=True),
    "sqrt_linear": adamx.blockwise_8bit(signed=False, qmap="linear", sqrt=True),
}
F32 = dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32)

# name -> (moment formats, parameter dtype, final stage or None)
OPTIONS = {
    "fp32": (F32, jnp.float32, None),
    "fp32_seed1": (F32, jnp.float32, None),  # yardstick: fp32 with another initialization
    "bf16_moments": (
        dict(mu_dtype=adamx.FloatFormat(jnp.bfloat16, upcast=True), nu_dtype=jnp.bfloat16),
        jnp.float32,
        None,
    ),
    "bf16_moments_sr": (
        dict(mu_dtype=adamx.stochastic_float(seed=0), nu_dtype=adamx.stochastic_float(seed=1)),
        jnp.float32,
        None,
    ),
    **{
        f"8bit_v_{name}": (dict(mu_dtype=M8, nu_dtype=fmt), jnp.float32, None)
        for name, fmt in V8.items()
    },
    "bf16_params_nearest": (F32, jnp.bfloat16, None),
    "bf16_params_sr": (F32, jnp.bfloat16, lambda: adamx.stochastic_rounding(seed=0)),
    "bf16_params_kahan": (F32, jnp.bfloat16, adamx.kahan_summation),
    # Everything at once: bf16 parameters, 8-bit moments, stochastic rounding (~4 bytes/param).
    "bf16_params_sr_8bit": (
        dict(mu_dtype=M8, nu_dtype=V8["dynamic"]),
        jnp.bfloat16,
        lambda: adamx.stochastic_rounding(seed=0),
    ),
}
DEFAULT_8BIT = "8bit_v_dynamic"


# ---------------------------------------------------------------------------
# Tasks: (init params, loss(params, batch), train batches, eval batch)


def mlp_task(steps, batch=64):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    train, test = perm[:1257], perm[1257:]
    sizes = [64, 256, 256, 10]

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return {
            f"l{i}": {
                "w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a),
                "b": jnp.zeros(b),
            }
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
        }

    def loss(params, batch):
        h, labels = batch
        for i in range(len(sizes) - 1):
            layer = jax.tree.map(lambda a: a.astype(jnp.float32), params[f"l{i}"])
            h = h @ layer["w"] + layer["b"]
            h = jax.nn.relu(h) if i < len(sizes) - 2 else h
        return optax.softmax_cross_entropy_with_integer_labels(h, labels).mean()

    idx = np.stack([rng.choice(train, batch, replace=False) for _ in range(steps)])
    batches = (jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    evals = {"train": (jnp.asarray(x[train]), jnp.asarray(y[train])),
             "test": (jnp.asarray(x[test]), jnp.asarray(y[test]))}  # fmt: skip
    return init, loss, batches, evals


def lm_task(steps, batch=16, vocab=64, seq=32, d=64, layers=2, heads=4):
    rng = np.random.default_rng(1)
    successors = np.stack([rng.choice(vocab, 4, replace=False) for _ in range(vocab)])

    def sequences(n):
        half = np.empty((n, seq // 2), np.int32)
        half[:, 0] = rng.integers(vocab, size=n)
        for t in range(1, seq // 2):
            half[:, t] = successors[half[:, t - 1], rng.integers(4, size=n)]
        return np.concatenate([half, half], axis=1)  # the second half repeats the first

    def init(key):
        k = iter(jax.random.split(key, 4 + 4 * layers))
        normal = lambda shape, fan_in: jax.random.normal(next(k), shape) / np.sqrt(fan_in)  # noqa: E731
        blocks = [
            {
                "ln1": jnp.ones(d),
                "qkv": normal((d, 3 * d), d),
                "out": normal((d, d), d),
                "ln2": jnp.ones(d),
                "up": normal((d, 4 * d), d),
                "down": normal((4 * d, d), 4 * d),
            }
            for _ in range(layers)
        ]
        return {
            "embed": normal((vocab, d), 1.0) * 0.5,
            "pos": normal((seq, d), 1.0) * 0.5,
            "blocks": blocks,
            "ln_f": jnp.ones(d),
            "unembed": normal((d, vocab), d),
        }

    def layer_norm(h, gain):
        h = h - h.mean(-1, keepdims=True)
        return h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-5) * gain

    def forward(params, tokens):
        p = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        h = p["embed"][tokens] + p["pos"][None, : tokens.shape[1]]
        n, t, _ = h.shape
        mask = jnp.tril(jnp.ones((t, t), bool))
        for blk in p["blocks"]:
            q, k_, v = jnp.split(layer_norm(h, blk["ln1"]) @ blk["qkv"], 3, axis=-1)
            split = lambda a: a.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
            att = split(q) @ split(k_).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
            att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
            h = h + (att @ split(v)).transpose(0, 2, 1, 3).reshape(n, t, d) @ blk["out"]
            h = h + jax.nn.gelu(layer_norm(h, blk["ln2"]) @ blk["up"]) @ blk["down"]
        return layer_norm(h, p["ln_f"]) @ p["unembed"]

    def loss(params, tokens):
        logits = forward(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    batches = jnp.asarray(sequences(steps * batch).reshape(steps, batch, seq))
    evals = {"test": jnp.asarray(sequences(512))}
    return init, loss, batches, evals


TASKS = {
    # name: (task, steps, peak learning rate, weight decay)
    "mlp": (mlp_task, 1000, 1e-3, 1e-4),
    "lm": (lm_task, 600, 3e-3, 1e-2),
}


# ---------------------------------------------------------------------------
# Training


def make_tx(option, steps, lr, wd):
    formats, _, tail = OPTIONS[option]
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, steps // 20, steps)
    tx = adamx.adamw(schedule, weight_decay=wd, **formats)
    return optax.chain(tx, tail()) if tail else tx


def train(task_name, option):
    task, steps, lr, wd = TASKS[task_name]
    init, loss, batches, evals = task(steps)
    dtype = OPTIONS[option][1]
    seed = 1 if option == "fp32_seed1" else 0
    params = jax.tree.map(lambda a: a.astype(dtype), init(jax.random.key(seed)))
    tx = make_tx(option, steps, lr, wd)

    def step(carry, batch):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), value

    @jax.jit
    def run(params):
        (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
        return params, state, losses, {k: loss(params, b) for k, b in evals.items()}

    t0 = time.perf_counter()
    params, state, losses, final = run(params)
    losses.block_until_ready()
    return {
        "losses": np.asarray(losses).tolist(),
        "final": {k: float(v) for k, v in final.items()},
        "state_bytes": adamx.state_nbytes(state),
        "n_params": sum(p.size for p in jax.tree.leaves(params)),
        "param_dtype": str(jnp.dtype(dtype)),
        "seconds": time.perf_counter() - t0,
        "_state": state,
    }


def step_time(task_name, option, repeats=3, n=20):
    """Median seconds per jitted training step (update + apply), one step per call."""
    task, steps, lr, wd = TASKS[task_name]
    init, loss, batches, _ = task(n)
    dtype = OPTIONS[option][1]
    params = jax.tree.map(lambda a: a.astype(dtype), init(jax.random.key(0)))
    tx = make_tx(option, steps, lr, wd)

    @jax.jit
    def one(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    params, state = one(params, state, batches[0])
    jax.block_until_ready(params)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            params, state = one(params, state, batches[i])
        jax.block_until_ready(params)
        samples.append((time.perf_counter() - t0) / n)
    return float(np.median(samples))


def optimizer_time(option, shapes=((1024, 1024),) * 4, repeats=3, n=5):
    """Median seconds per optimizer update + apply on 4.2M parameters (no model)."""
    dtype = OPTIONS[option][1]
    params = [jnp.ones(s, dtype) * 0.1 for s in shapes]
    grads = [jax.random.normal(jax.random.key(i), s, dtype) for i, s in enumerate(shapes)]
    tx = make_tx(option, 1000, 1e-3, 1e-4)

    def one(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    one = jax.jit(one, donate_argnums=(0, 1))
    state = tx.init(params)
    params, state = one(params, state, grads)
    jax.block_until_ready(params)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            params, state = one(params, state, grads)
        jax.block_until_ready(params)
        samples.append((time.perf_counter() - t0) / n)
    return float(np.median(samples))


# ---------------------------------------------------------------------------
# The second moment's map: error of the Adam direction on real moments


def map_errors(state):
    """Quantize a trained fp32 state's v with each map; error of m / (sqrt(v) + eps)."""
    moments = state[0]
    mus = [m for m in jax.tree.leaves(moments.mu) if m.size >= 4096]
    nus = [v for v in jax.tree.leaves(moments.nu) if v.size >= 4096]
    eps = 1e-8
    out = {}
    for name, fmt in V8.items():
        rel = []
        for m, v in zip(mus, nus, strict=True):
            exact = m / (jnp.sqrt(v) + eps)
            approx = m / (jnp.sqrt(fmt.decode(fmt.encode(v, fmt.init(v)))) + eps)
            big = jnp.abs(exact) > 1e-3 * jnp.max(jnp.abs(exact))  # steps that matter
            rel.append(np.asarray(jnp.abs(approx - exact) / jnp.abs(exact))[np.asarray(big)])
        rel = np.concatenate(rel)
        out[name] = {
            "median_rel_err": float(np.median(rel)),
            "p99_rel_err": float(np.quantile(rel, 0.99)),
            "max_rel_err": float(rel.max()),
            "frac_over_10pct": float(np.mean(rel > 0.1)),
        }
    return out


def bytes_per_param_large():
    """State bytes per parameter for one 4096 x 4096 tensor (the large-tensor limit)."""
    params = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32)}
    n = 4096 * 4096
    out = {}
    options = ("fp32", "bf16_moments", DEFAULT_8BIT, "bf16_params_kahan", "bf16_params_sr_8bit")
    for option in options:
        state = jax.eval_shape(make_tx(option, 1000, 1e-3, 1e-4).init, params)
        out[option] = adamx.state_nbytes(state) / n
    return out


def smooth(x, k=25):
    x = np.asarray(x)
    return np.convolve(x, np.ones(k) / k, mode="valid")


def plot(results, path):
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, task in zip(axes[:2], ("mlp", "lm"), strict=True):
        for option, r in results[task].items():
            style = "--" if option.startswith("bf16_params") else "-"
            width = 2.2 if option == "fp32" else 1.1
            ax.plot(smooth(r["losses"]), style, lw=width, label=option)
        ax.set(title=f"{task}: training loss (moving avg. 25 steps)", xlabel="step", yscale="log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    ax = axes[2]
    for option in ("fp32", "bf16_params_nearest", "bf16_params_sr", "bf16_params_kahan"):
        losses = smooth(results["lm"][option]["losses"], 50)
        ax.plot(np.arange(len(losses))[250:], losses[250:], label=option)
    ax.set(title="lm, second half: bf16 params without an fp32 copy", xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    RESULTS.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    results, summary = {}, {}
    for task in TASKS:
        results[task] = {}
        for option in OPTIONS:
            r = train(task, option)
            results[task][option] = r
            print(f"{task:4s} {option:22s} final {r['final']}  ({r['seconds']:.1f}s)", flush=True)
    for task in TASKS:
        ref = results[task]["fp32"]["final"]
        summary[task] = {
            option: {
                **{f"final_{k}": v for k, v in r["final"].items()},
                **{f"rel_diff_{k}": v / ref[k] - 1 for k, v in r["final"].items()},
                "state_bytes_per_param": r["state_bytes"] / r["n_params"],
                "param_plus_state_bytes_per_param": r["state_bytes"] / r["n_params"]
                + jnp.dtype(r["param_dtype"]).itemsize,
            }
            for option, r in results[task].items()
        }
    v_map_errors = map_errors(results["lm"]["fp32"]["_state"])
    timing = {"lm_step": {}, "optimizer_4M": {}}
    for option in ("fp32", "bf16_moments", "bf16_moments_sr", DEFAULT_8BIT, "8bit_v_sqrt_dynamic",
                   "bf16_params_nearest", "bf16_params_sr", "bf16_params_kahan",
                   "bf16_params_sr_8bit"):  # fmt: skip
        timing["lm_step"][option] = step_time("lm", option)
        timing["optimizer_4M"][option] = optimizer_time(option)
        lm_ms, opt_ms = timing["lm_step"][option] * 1e3, timing["optimizer_4M"][option] * 1e3
        print(f"time {option:22s} {lm_ms:.2f} ms/step, {opt_ms:.1f} ms/update", flush=True)
    relative = {
        kind: {o: t / times["fp32"] for o, t in times.items()} for kind, times in timing.items()
    }
    bpp = bytes_per_param_large()
    targets = {
        "8bit_within_1pct": {t: summary[t][DEFAULT_8BIT] for t in TASKS},
        "8bit_bytes_per_param_le_2.1": bpp[DEFAULT_8BIT] <= 2.1,
        "bf16_moments_within_0.5pct": {t: summary[t]["bf16_moments"] for t in TASKS},
        "fp32_seed_to_seed_spread": {t: summary[t]["fp32_seed1"] for t in TASKS},
        "8bit_lm_step_time_le_1.5x": relative["lm_step"][DEFAULT_8BIT] <= 1.5,
    }
    for task in results.values():
        for r in task.values():
            del r["_state"]
    out = {
        "config": {
            "tasks": {
                k: {"steps": v[1], "peak_lr": v[2], "weight_decay": v[3]} for k, v in TASKS.items()
            },
            "default_8bit": DEFAULT_8BIT,
            "jax": jax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "cpu": platform.processor() or platform.machine(),
            "note": (
                "2 CPU cores shared with other jobs (load average ~8-10 during the run): step "
                "times are noisy (median of 3 repeats). No GPU was available."
            ),
        },
        "summary": summary,
        "v_map_errors_on_lm_fp32_state": v_map_errors,
        "state_bytes_per_param_4096x4096": bpp,
        "targets": targets,
        "seconds_per_step": timing,
        "step_time_relative_to_fp32": relative,
        "curves_every_5_steps": {
            t: {o: [round(x, 5) for x in r["losses"][::5]] for o, r in rs.items()}
            for t, rs in results.items()
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    (RESULTS / "low_memory.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / "low_memory.png")
    print(json.dumps({k: out[k] for k in ("summary", "v_map_errors_on_lm_fp32_state",
                                          "state_bytes_per_param_4096x4096",
                                          "step_time_relative_to_fp32")}, indent=1))  # fmt: skip
    print(f"total {out['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
