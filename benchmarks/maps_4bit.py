"""Which 4-bit maps for Adam's m and v? Measured on real moments of the digits MLP.

1. Train the digits MLP of ``low_memory.py`` (64-256-256-10, two weight matrices of
   >= 4096 elements are quantized) with fp32 AdamW for ``--snapshot`` steps; snapshot
   m and v.
2. Quantize the snapshot with each candidate map (blocks of 128, as torchao) and
   measure, on the elements whose Adam step matters (|m / sqrt(v)| >= 1e-3 of its max):
   * m: relative error |m~ - m| / |m| (median, p90, p99) and the error of the whole
     tensor, ||m~ - m|| / ||m||;
   * v: relative error of 1 / sqrt(v), |sqrt(v / v~) - 1| (median, p90, p99, max, and
     the fraction over 10%).
3. Train with each map for ``--steps`` steps on ``--seeds`` paired seeds (init and batch
   order; one moment quantized, the other fp32), then pairs with both moments
   quantized: the final train and test loss relative to fp32 on the same seed,
   d = L / L_fp32 - 1, mean and standard error. Two learning-rate schedules:
   ``cosine`` (warmup and cosine decay to 0, as ``low_memory.py``) and ``constant``
   (1e-3 throughout: the quantization noise of the moments is never annealed away).

Candidates: the library's maps (``adamx.blockwise(4, qmap=..., sqrt=..., stochastic=...)``,
exactly the code the optimizer runs) and two table maps that the library does not
have, quantized here with an absmax scale and nearest rounding (a brute-force argmin):
torchao's 4-bit maps, m on Dettmers' dynamic map built with 3 exponent bits
(interval means, 1.0 and 0; 8 positive and 7 negative values) and v on
{1/16, ..., 16/16} (linear without zero). Training keeps each moment as the value its
codes decode to (``decode(encode(x))`` after every update), which is what the
optimizer's state holds.

Writes benchmarks/results/maps_4bit.json.
Run: python benchmarks/maps_4bit.py  (about 9 minutes on 2 shared CPU cores; --quick: 2).
"""

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from low_memory import mlp_task  # benchmarks/ is the script's directory

import adamx

RESULTS = Path(__file__).parent / "results"
BLOCK = 128
B1, B2, EPS, LR, WD = 0.9, 0.999, 1e-8, 1e-3, 1e-4


def torchao_dynamic_signed() -> np.ndarray:
    """Dettmers' dynamic map at 4 bits with 3 exponent bits (how torchao builds its 4-bit
    m map): for levels 10^-2, 10^-1, 10^0, the means of 1, 2, 4 equal intervals of
    [0.1, 1], both signs, plus 0 and 1.0: 16 values."""
    values = [0.0, 1.0]
    for i, n in enumerate((1, 2, 4)):
        edges = np.linspace(0.1, 1.0, n + 1)
        means = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 2)
        values += [*means, *-means]
    return np.sort(np.array(values, np.float32))


TABLES = {
    "torchao_dynamic": torchao_dynamic_signed(),
    "torchao_linear_nozero": (np.arange(1, 17) / 16).astype(np.float32),
}


def table_round_trip(x: jax.Array, table: np.ndarray) -> jax.Array:
    """Absmax block scale, nearest table value (argmin): torchao's 4-bit quantizer."""
    blocks = x.reshape(*x.shape[:-1], -1, BLOCK)
    scale = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True) / float(np.abs(table).max())
    y = blocks / jnp.where(scale > 0, scale, 1.0)
    t = jnp.asarray(table)
    q = t[jnp.argmin(jnp.abs(y[..., None] - t), axis=-1)] * scale
    return q.reshape(x.shape)


def library(role: str, bits: int = 4, **kwargs: object):
    fmt = adamx.blockwise(bits, min_size=0, **kwargs).bind(role)

    def round_trip(x: jax.Array, key: jax.Array) -> jax.Array:
        return fmt.decode(fmt.encode(x, fmt.init(x), key), x)

    return round_trip


def table(name: str):
    def round_trip(x: jax.Array, key: jax.Array) -> jax.Array:
        del key
        return table_round_trip(x, TABLES[name])

    return round_trip


def exact(x: jax.Array, key: jax.Array) -> jax.Array:
    del key
    return x


M_CANDIDATES = {
    "e2m1_sr": library("mu", qmap="e2m1"),  # stochastic rounding: the float maps' default
    "e2m1_nearest": library("mu", qmap="e2m1", stochastic=False),
    "e3m0_sr": library("mu", qmap="e3m0"),
    "e3m0_nearest": library("mu", qmap="e3m0", stochastic=False),
    "e1m2_sr": library("mu", qmap="e1m2"),
    "dynamic": library("mu", qmap="dynamic"),
    "linear": library("mu", qmap="linear"),
    "torchao_dynamic": table("torchao_dynamic"),
    "8bit_default": library("mu", bits=8),
    "4bit_default": library("mu"),  # blockwise_4bit(): e3m0, stochastic
}
V_CANDIDATES = {
    "e3m1_sr": library("nu", qmap="e3m1", sqrt=False),
    "e3m1_nearest": library("nu", qmap="e3m1", sqrt=False, stochastic=False),
    "e2m2_sr": library("nu", qmap="e2m2", sqrt=False),
    "e4m0_sr": library("nu", qmap="e4m0", sqrt=False),
    "sqrt_e3m1_sr": library("nu", qmap="e3m1", sqrt=True),
    "sqrt_e3m1_nearest": library("nu", qmap="e3m1", sqrt=True, stochastic=False),
    "sqrt_e2m2_sr": library("nu", qmap="e2m2", sqrt=True),
    # never rounds a positive v to 0 (q_0 instead)
    "linear": library("nu", qmap="linear", sqrt=False),
    "sqrt_linear": library("nu", qmap="linear", sqrt=True),
    "dynamic": library("nu", qmap="dynamic", sqrt=False),
    "sqrt_dynamic": library("nu", qmap="dynamic", sqrt=True),
    "torchao_linear_nozero": table("torchao_linear_nozero"),
    "8bit_default": library("nu", bits=8),
    "4bit_default": library("nu"),  # blockwise_4bit(): sqrt on e3m1, stochastic
}


def make_run(loss, m_rt, v_rt, steps, schedule="cosine"):
    """A jitted AdamW run (optax's op order) whose quantized leaves (>= 4096 elements)
    keep m and v as ``m_rt`` / ``v_rt`` round trips after each update."""
    if schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, LR, steps // 20, steps)
    else:
        schedule = optax.constant_schedule(LR)

    def step(carry, batch):
        params, m, v, t, key = carry
        value, grads = jax.value_and_grad(loss)(params, batch)
        key, sub = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(params)
        keys = list(jax.random.split(sub, 2 * len(leaves)))
        t = t + 1
        new = []
        for i, (p, g, mi, vi) in enumerate(
            zip(leaves, treedef.flatten_up_to(grads), m, v, strict=True)
        ):
            mi = B1 * mi + (1 - B1) * g
            vi = B2 * vi + (1 - B2) * g * g
            if p.size >= 4096:
                mi, vi = m_rt(mi, keys[2 * i]), v_rt(vi, keys[2 * i + 1])
            tf = t.astype(jnp.float32)
            m_hat, v_hat = mi / (1 - B1**tf), vi / (1 - B2**tf)
            p = p - schedule(t - 1) * (m_hat / (jnp.sqrt(v_hat) + EPS) + WD * p)
            new.append((p, mi, vi))
        params = jax.tree.unflatten(treedef, [n[0] for n in new])
        return (params, [n[1] for n in new], [n[2] for n in new], t, key), value

    @jax.jit
    def run(params, batches, evals, seed):
        zeros = [jnp.zeros_like(p) for p in jax.tree.leaves(params)]
        carry = (params, zeros, zeros, jnp.zeros((), jnp.int32), jax.random.key(seed))
        (params, m, v, _, _), _ = jax.lax.scan(step, carry, batches)
        return params, m, v, {k: loss(params, b) for k, b in evals.items()}

    return run


def snapshot(steps: int):
    init, loss, batches, evals = mlp_task(steps, seed=0)
    _, m, v, _ = make_run(loss, exact, exact, steps)(init(jax.random.key(0)), batches, evals, 0)
    big = [i for i, a in enumerate(m) if a.size >= 4096]
    return [m[i] for i in big], [v[i] for i in big]


def _stats(rel: np.ndarray) -> dict:
    return {
        "median": float(np.median(rel)),
        "p90": float(np.quantile(rel, 0.9)),
        "p99": float(np.quantile(rel, 0.99)),
        "max": float(rel.max()),
        "frac_over_10pct": float(np.mean(rel > 0.1)),
    }


def map_errors(ms, vs) -> dict:
    """Errors of each candidate on the snapshot (see the module docstring)."""
    key = jax.random.key(7)
    matters = [np.abs(m / (np.sqrt(v) + EPS)) for m, v in zip(ms, vs, strict=True)]
    matters = [a >= 1e-3 * a.max() for a in matters]
    out = {"m": {}, "v": {}}
    for name, rt in M_CANDIDATES.items():
        got = [np.asarray(rt(m, key)) for m in ms]
        rel = np.concatenate(
            [np.abs(g - m)[w] / np.abs(m)[w] for g, m, w in zip(got, ms, matters, strict=True)]
        )
        norm = np.sqrt(sum(np.sum((g - m) ** 2) for g, m in zip(got, ms, strict=True)))
        total = np.sqrt(sum(np.sum(np.asarray(m) ** 2) for m in ms))
        out["m"][name] = {**_stats(rel), "tensor_rel_err": float(norm / total)}
    for name, rt in V_CANDIDATES.items():
        got = [np.asarray(rt(v, key), np.float64) for v in vs]
        rel = np.concatenate(
            [
                np.abs(np.sqrt(np.asarray(v, np.float64)[w] / np.maximum(g[w], 1e-300)) - 1)
                for g, v, w in zip(got, vs, matters, strict=True)
            ]
        )
        out["v"][name] = _stats(rel)
    return out


def train_all(configs: dict, steps: int, seeds: int, schedule: str) -> dict:
    """Final losses of each (m_rt, v_rt) config, paired with fp32 per seed."""
    losses = {}
    for name, (m_rt, v_rt) in {"fp32": (exact, exact), **configs}.items():
        t0 = time.perf_counter()
        runs = []
        run = make_run(mlp_task(steps)[1], m_rt, v_rt, steps, schedule)  # one loss for all
        for seed in range(seeds):
            init, _, batches, evals = mlp_task(steps, seed=seed)
            final = run(init(jax.random.key(seed)), batches, evals, seed)[3]
            runs.append({k: float(x) for k, x in final.items()})
        losses[name] = runs
        print(f"  {name:34s} {time.perf_counter() - t0:5.1f} s  train "
              f"{np.mean([r['train'] for r in runs]):.4f}", flush=True)  # fmt: skip
    out = {}
    for name, runs in losses.items():
        entry = {"final": runs}
        for split in ("train", "test"):
            d = np.array([r[split] / f[split] - 1 for r, f in zip(runs, losses["fp32"], strict=1)])
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
            entry[f"{split}_rel_diff"] = {"mean": float(d.mean()), "se": se}
        out[name] = entry
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=int, default=300)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="100 steps, 2 seeds")
    args = parser.parse_args()
    if args.quick:
        args.snapshot, args.steps, args.seeds = 100, 100, 2
    t0 = time.perf_counter()
    ms, vs = snapshot(args.snapshot)
    errors = map_errors(ms, vs)
    for moment in ("m", "v"):
        for name, e in sorted(errors[moment].items(), key=lambda kv: kv[1]["p90"]):
            print(f"{moment} {name:24s} median {e['median']:.4f} p90 {e['p90']:.4f} "
                  f"p99 {e['p99']:.4f} >10% {e['frac_over_10pct']:.3f}")  # fmt: skip
    one_moment = {
        **{f"m_{k}": (rt, exact) for k, rt in M_CANDIDATES.items()},
        **{f"v_{k}": (exact, rt) for k, rt in V_CANDIDATES.items()},
    }
    pairs = {
        f"both_{m}+{v}": (M_CANDIDATES[m], V_CANDIDATES[v])
        for m, v in (
            ("e3m0_sr", "sqrt_e3m1_sr"),  # the defaults: blockwise_4bit() for m and for v
            ("e2m1_sr", "sqrt_e3m1_sr"),
            ("e2m1_sr", "e3m1_sr"),
            ("e2m1_sr", "sqrt_e2m2_sr"),
            ("e2m1_nearest", "sqrt_e3m1_nearest"),
            ("dynamic", "linear"),
            ("torchao_dynamic", "torchao_linear_nozero"),
            ("8bit_default", "8bit_default"),
        )
    }
    training = {}
    for schedule in ("cosine", "constant"):
        print(f"{schedule} learning rate:")
        training[schedule] = train_all({**one_moment, **pairs}, args.steps, args.seeds, schedule)
    result = {
        "task": "digits MLP 64-256-256-10 (benchmarks/low_memory.py), AdamW lr 1e-3 "
        "(cosine: 5% warmup, cosine decay to 0; constant: 1e-3), wd 1e-4; quantized: "
        "the two weight matrices >= 4096 elements, "
        f"blocks of {BLOCK}",
        "snapshot_steps": args.snapshot,
        "train_steps": args.steps,
        "seeds": args.seeds,
        "map_errors": errors,
        "map_errors_note": "on elements with |m/sqrt(v)| >= 1e-3 of its max; m: |m~-m|/|m|, "
        "tensor_rel_err = ||m~-m||/||m||; v: |sqrt(v/v~) - 1| (the error of 1/sqrt(v))",
        "training": training,
        "training_note": "d = L/L_fp32 - 1 per seed (paired init and batch order), mean and SE",
        "tables": {k: v.tolist() for k, v in TABLES.items()},
        "jax": jax.__version__,
        "machine": platform.platform(),
        "seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("maps_4bit_quick.json" if args.quick else "maps_4bit.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
