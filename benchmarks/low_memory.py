"""Low-memory Adam on two real tasks: quality, state bytes and step time vs fp32 AdamW.

Tasks (no downloads):
  * mlp: a 64-256-256-10 MLP classifying scikit-learn's bundled digits;
  * lm:  a 2-layer decoder-only transformer on generated sequences (a sparse Markov
         chain whose first half is repeated: an induction-head task, floor 0.67 nats).

Options: fp32 AdamW; bf16 moments (round-to-nearest and stochastic); 8-bit blockwise
moments (the default float maps, alternative maps for v, Dettmers' dynamic map); bf16
parameters without an fp32 copy (round-to-nearest, stochastic rounding, Kahan).

Quality is judged on paired seeds: the MLP runs 8 seeds (init and batch order), every
option paired with fp32 on the same seed; the summary gives the mean relative
difference of the final train and test loss and its standard error, and the verdict
"not worse than fp32 by more than tol" is mean + 2 SE <= tol (see CRITERION). The LM
runs one seed. Also: the error of each v map on real Adam moments, state bytes per
parameter, and step times relative to fp32 AdamW on this CPU (interleaved rounds).

Writes benchmarks/results/low_memory.json and benchmarks/results/low_memory.png.
Run: python benchmarks/low_memory.py  (about 6-8 minutes on 2 CPU cores).
"""

import json
import os
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
LOAD_AT_START = os.getloadavg()[0]
M8 = adamx.blockwise_8bit(signed=True)  # default: E4M3, stochastically rounded
V8_DEFAULT = adamx.blockwise_8bit(signed=False)  # default: E4M4, stochastically rounded
M8_DYNAMIC = adamx.blockwise_8bit(signed=True, qmap="dynamic")
# Maps for the second moment v, measured against each other (map_errors; some also trained).
V8 = {
    "e4m4": V8_DEFAULT,
    "e4m4_nearest": adamx.blockwise_8bit(signed=False, stochastic=False),
    "e5m3": adamx.blockwise_8bit(signed=False, qmap="e5m3"),
    "sqrt_e4m4": adamx.blockwise_8bit(signed=False, sqrt=True),
    "dynamic": adamx.blockwise_8bit(signed=False, qmap="dynamic"),
    "linear": adamx.blockwise_8bit(signed=False, qmap="linear"),
    "sqrt_dynamic": adamx.blockwise_8bit(signed=False, qmap="dynamic", sqrt=True),
    "sqrt_linear": adamx.blockwise_8bit(signed=False, qmap="linear", sqrt=True),
}
F32 = dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32)
SR = lambda: adamx.stochastic_rounding(seed=0)  # noqa: E731

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
    # The default: m E4M3 (nearest), v E4M4 (stochastic rounding).
    "8bit": (dict(mu_dtype=M8, nu_dtype=V8_DEFAULT), jnp.float32, None),
    # Alternatives for v (m as in the default).
    **{
        f"8bit_v_{name}": (dict(mu_dtype=M8, nu_dtype=V8[name]), jnp.float32, None)
        for name in ("e4m4_nearest", "e5m3", "sqrt_e4m4")
    },
    # Both moments rounded stochastically.
    "8bit_sr_both": (
        dict(mu_dtype=adamx.blockwise_8bit(signed=True, stochastic=True), nu_dtype=V8_DEFAULT),
        jnp.float32,
        None,
    ),
    # The previous default, Dettmers' dynamic tree map for both moments, and one v variant.
    **{
        f"8bit_dynamic_v_{name}": (dict(mu_dtype=M8_DYNAMIC, nu_dtype=V8[name]), jnp.float32, None)
        for name in ("dynamic", "sqrt_linear")
    },
    "bf16_params_nearest": (F32, jnp.bfloat16, None),
    "bf16_params_sr": (F32, jnp.bfloat16, SR),
    "bf16_params_kahan": (F32, jnp.bfloat16, adamx.kahan_summation),
    # Everything at once: bf16 parameters, 8-bit moments, stochastic rounding (~4 bytes/param).
    "bf16_params_sr_8bit": (dict(mu_dtype=M8, nu_dtype=V8_DEFAULT), jnp.bfloat16, SR),
}
DEFAULT_8BIT = "8bit"

# ---------------------------------------------------------------------------
# Tasks: (init params, loss(params, batch), train batches, eval batch)


def mlp_task(steps, seed=0, batch=64):
    """The digits MLP; ``seed`` picks the order of the training batches (the split is fixed)."""
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

    order = np.random.default_rng(100 + seed)
    idx = np.stack([order.choice(train, batch, replace=False) for _ in range(steps)])
    batches = (jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    evals = {"train": (jnp.asarray(x[train]), jnp.asarray(y[train])),
             "test": (jnp.asarray(x[test]), jnp.asarray(y[test]))}  # fmt: skip
    return init, loss, batches, evals


def lm_task(steps, seed=0, batch=16, vocab=64, seq=32, d=64, layers=2, heads=4):
    """The induction-head LM; the data are fixed (``seed`` is unused: one seed is run)."""
    del seed
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
    # name: (task, steps, peak learning rate, weight decay, seeds)
    "mlp": (mlp_task, 1000, 1e-3, 1e-4, 8),
    "lm": (lm_task, 600, 3e-3, 1e-2, 1),
}


# ---------------------------------------------------------------------------
# Training


def make_tx(option, steps, lr, wd):
    formats, _, tail = OPTIONS[option]
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, steps // 20, steps)
    tx = adamx.adamw(schedule, weight_decay=wd, **formats)
    return optax.chain(tx, tail()) if tail else tx


_RUNS = {}  # (task, option) -> jitted training run, compiled once for all seeds


def train(task_name, option, seed=0):
    """Train one option on one seed (init key and, for the MLP, batch order)."""
    task, steps, lr, wd, _ = TASKS[task_name]
    init, loss, batches, evals = task(steps, seed)
    dtype = OPTIONS[option][1]
    init_seed = seed + 1 if option == "fp32_seed1" else seed
    params = jax.tree.map(lambda a: a.astype(dtype), init(jax.random.key(init_seed)))
    if (task_name, option) not in _RUNS:
        tx = make_tx(option, steps, lr, wd)

        def step(carry, batch):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        @jax.jit
        def run(params, batches, evals):
            (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
            return params, state, losses, {k: loss(params, b) for k, b in evals.items()}

        _RUNS[task_name, option] = run

    t0 = time.perf_counter()
    params, state, losses, final = _RUNS[task_name, option](params, batches, evals)
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


def _timer(one, carry, inputs):
    """A function ``sample(n)``: seconds per call of ``one`` over n calls (state carried on)."""
    carry = one(*carry, inputs(0))
    jax.block_until_ready(carry)

    def sample(n):
        nonlocal carry
        t0 = time.perf_counter()
        for i in range(n):
            carry = one(*carry, inputs(i))
        jax.block_until_ready(carry)
        return (time.perf_counter() - t0) / n

    return sample


def step_timer(task_name, option, n=20):
    """Timer of one jitted training step (gradient + update + apply) of a task."""
    task, steps, lr, wd, _ = TASKS[task_name]
    init, loss, batches, _ = task(n)
    dtype = OPTIONS[option][1]
    params = jax.tree.map(lambda a: a.astype(dtype), init(jax.random.key(0)))
    tx = make_tx(option, steps, lr, wd)

    def one(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    one = jax.jit(one, donate_argnums=(0, 1))
    return _timer(one, (params, tx.init(params)), lambda i: batches[i % n])


def optimizer_timer(option, shapes=((1024, 1024),) * 4):
    """Timer of one jitted, donated optimizer update + apply on 4.2M parameters (no model)."""
    dtype = OPTIONS[option][1]
    params = [jnp.ones(s, dtype) * 0.1 for s in shapes]
    grads = [jax.random.normal(jax.random.key(i), s, dtype) for i, s in enumerate(shapes)]
    tx = make_tx(option, 1000, 1e-3, 1e-4)

    def one(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    one = jax.jit(one, donate_argnums=(0, 1))
    return _timer(one, (params, tx.init(params)), lambda i: grads)


def interleaved_times(timers, rounds=5, n=10):
    """Median seconds per call of each timer, measured round-robin (shared-machine noise
    then hits all options alike)."""
    samples = {name: [] for name in timers}
    for _ in range(rounds):
        for name, sample in timers.items():
            samples[name].append(sample(n))
    return {name: float(np.median(v)) for name, v in samples.items()}


def optimizer_time(option, repeats=3, n=5):
    """Median seconds per optimizer update + apply on 4.2M parameters (one option alone)."""
    return interleaved_times({option: optimizer_timer(option)}, repeats, n)[option]


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
        fmt = fmt.bind("nu")  # the map as it stores a second moment
        rel = []
        for m, v in zip(mus, nus, strict=True):
            exact = m / (jnp.sqrt(v) + eps)
            stored = fmt.encode(v, fmt.init(v), jax.random.key(0))
            approx = m / (jnp.sqrt(fmt.decode(stored, v)) + eps)
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


def plot(curves, path):
    """Loss curves (mean over seeds) of every option, and the bf16-parameter stall."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, task in zip(axes[:2], ("mlp", "lm"), strict=True):
        for option, losses in curves[task].items():
            style = "--" if option.startswith("bf16_params") else "-"
            width = 2.2 if option == "fp32" else 1.1
            ax.plot(smooth(losses), style, lw=width, label=option)
        seeds = TASKS[task][4]
        runs = f"mean of {seeds} seeds" if seeds > 1 else "one seed"
        ax.set(
            title=f"{task}: training loss ({runs}, moving avg. 25 steps)",
            xlabel="step",
            yscale="log",
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    ax = axes[2]
    for option in ("fp32", "bf16_params_nearest", "bf16_params_sr", "bf16_params_kahan"):
        losses = smooth(curves["lm"][option], 50)
        ax.plot(np.arange(len(losses))[250:], losses[250:], label=option)
    ax.set(title="lm, second half: bf16 params without an fp32 copy", xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


TOLERANCE = {"bf16_moments": 0.005, "bf16_moments_sr": 0.005}  # others: 0.01 (the bars)
CRITERION = (
    "Paired over seeds: each option runs with the same init and batch order as fp32 on that "
    "seed; d_s = L_option,s / L_fp32,s - 1 (final loss), mean and SE = std(d, ddof=1) / "
    "sqrt(n). 'not_worse' (the target): mean + 2 SE <= tol, i.e. not worse than fp32 by more "
    "than tol at ~97.5% one-sided confidence. 'within_two_sided': |mean| + 2 SE <= tol (also "
    "not better by more than tol). tol = 0.5% for bf16 moments, 1% otherwise. The LM runs one "
    "seed (SE = 0): a single paired difference."
)
TIMED = ("fp32", "bf16_moments", "bf16_moments_sr", DEFAULT_8BIT, "8bit_v_e4m4_nearest",
         "8bit_sr_both", "8bit_v_sqrt_e4m4", "8bit_dynamic_v_dynamic", "bf16_params_nearest",
         "bf16_params_sr", "bf16_params_kahan", "bf16_params_sr_8bit")  # fmt: skip


def judge(diffs, tol):
    """Mean paired relative difference, its standard error and the two verdicts."""
    d = np.asarray(diffs)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    mean = float(d.mean())
    return {
        "mean": mean,
        "se": se,
        "n_seeds": len(d),
        "per_seed": d.tolist(),
        "tol": tol,
        "not_worse": bool(mean + 2 * se <= tol),
        "within_two_sided": bool(abs(mean) + 2 * se <= tol),
    }


def summarize(runs, ref, option):
    """Summary of one option's runs (one per seed) against fp32's runs on the same seeds."""
    tol = TOLERANCE.get(option, 0.01)
    keys = runs[0]["final"]
    r0 = runs[0]
    return {
        **{f"final_{k}": float(np.mean([r["final"][k] for r in runs])) for k in keys},
        **{
            f"rel_diff_{k}": judge(
                [r["final"][k] / f["final"][k] - 1 for r, f in zip(runs, ref, strict=True)], tol
            )
            for k in keys
        },
        "state_bytes_per_param": r0["state_bytes"] / r0["n_params"],
        "param_plus_state_bytes_per_param": r0["state_bytes"] / r0["n_params"]
        + jnp.dtype(r0["param_dtype"]).itemsize,
    }


def print_summary(summary):
    print("\nFinal-loss difference to fp32 (mean ± SE over seeds; * = not worse than fp32 by "
          "more than tol: mean + 2 SE <= tol)")  # fmt: skip
    for task, options in summary.items():
        for option, s in options.items():
            cells = [
                f"{k[9:]} {v['mean'] * 100:+6.2f} ± {v['se'] * 100:4.2f}%"
                + ("*" if v["not_worse"] else " ")
                for k, v in s.items()
                if k.startswith("rel_diff_")
            ]
            print(f"{task:4s} {option:24s} " + "   ".join(cells))


def main():
    RESULTS.mkdir(exist_ok=True)
    t_start = time.perf_counter()
    runs, summary = {}, {}
    for task, (*_, seeds) in TASKS.items():
        runs[task] = {}
        for option in OPTIONS:
            runs[task][option] = [train(task, option, seed) for seed in range(seeds)]
            finals = [r["final"] for r in runs[task][option]]
            seconds = sum(r["seconds"] for r in runs[task][option])
            print(f"{task:4s} {option:24s} seed 0 {finals[0]}  ({seconds:.1f}s)", flush=True)
    for task in TASKS:
        ref = runs[task]["fp32"]
        summary[task] = {option: summarize(rs, ref, option) for option, rs in runs[task].items()}
    print_summary(summary)
    v_map_errors = map_errors(runs["lm"]["fp32"][0]["_state"])
    timers = {"lm_step": {o: step_timer("lm", o) for o in TIMED},
              "optimizer_4M": {o: optimizer_timer(o) for o in TIMED}}  # fmt: skip
    timing = {kind: interleaved_times(t) for kind, t in timers.items()}
    relative = {
        kind: {o: t / times["fp32"] for o, t in times.items()} for kind, times in timing.items()
    }
    for o in TIMED:
        print(f"time {o:24s} lm step {relative['lm_step'][o]:5.2f}x fp32, "
              f"optimizer alone {relative['optimizer_4M'][o]:5.2f}x fp32", flush=True)  # fmt: skip
    bpp = bytes_per_param_large()
    verdict = {
        task: {k: v["not_worse"] for k, v in summary[task][option].items() if k.startswith("rel_")}
        for task in TASKS
        for option in (DEFAULT_8BIT,)
    }
    targets = {
        "criterion": CRITERION,
        "8bit_default_not_worse_than_fp32_by_1pct": verdict,
        "8bit_bytes_per_param_le_2.1": bpp[DEFAULT_8BIT] <= 2.1,
        "bf16_moments_sr_not_worse_by_0.5pct": {
            t: {
                k: v["not_worse"]
                for k, v in summary[t]["bf16_moments_sr"].items()
                if k.startswith("rel_")
            }
            for t in TASKS
        },
        "8bit_optimizer_step_le_1.5x": relative["optimizer_4M"][DEFAULT_8BIT] <= 1.5,
        "8bit_lm_step_le_1.5x": relative["lm_step"][DEFAULT_8BIT] <= 1.5,
    }
    curves = {
        task: {o: np.mean([r["losses"] for r in rs], axis=0).tolist() for o, rs in t.items()}
        for task, t in runs.items()
    }
    out = {
        "config": {
            "tasks": {
                k: {"steps": v[1], "peak_lr": v[2], "weight_decay": v[3], "seeds": v[4]}
                for k, v in TASKS.items()
            },
            "default_8bit": DEFAULT_8BIT,
            "jax": jax.__version__,
            "optax": optax.__version__,
            "backend": jax.default_backend(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": LOAD_AT_START,
            "note": (
                "2 CPU cores shared with other jobs: step times are the median of 5 interleaved "
                "rounds (every option measured in each round). No GPU was available."
            ),
        },
        "summary": summary,
        "v_map_errors_on_lm_fp32_state": v_map_errors,
        "state_bytes_per_param_4096x4096": bpp,
        "targets": targets,
        "seconds_per_step": timing,
        "step_time_relative_to_fp32": relative,
        "curves_every_5_steps_mean_over_seeds": {
            t: {o: [round(x, 5) for x in c[::5]] for o, c in cs.items()} for t, cs in curves.items()
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    (RESULTS / "low_memory.json").write_text(json.dumps(out, indent=1))
    plot(curves, RESULTS / "low_memory.png")
    print(json.dumps({k: out[k] for k in ("v_map_errors_on_lm_fp32_state",
                                          "state_bytes_per_param_4096x4096", "targets",
                                          "step_time_relative_to_fp32")}, indent=1))  # fmt: skip
    print(f"total {out['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
