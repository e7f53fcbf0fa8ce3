"""Issue 15's Adam variants on two small models: final loss vs AdamW at the same learning rate.

One command::

    python benchmarks/variants.py            # full run (3.5-5 min on 2 shared CPU cores)
    python benchmarks/variants.py --quick    # 120 / 30 steps, 2 seeds: a smoke test (~1 min)
    python benchmarks/variants.py --table --write-readme   # the table into benchmarks/README.md

The tasks, their data, seeds, learning-rate schedules and weight decays are
``benchmarks/low_memory.py``'s (imported, not copied): the digits MLP (train and test loss)
and the induction-head LM (held-out loss). Every variant gets AdamW's schedule (warmup 5%,
cosine to 0) and peak learning rate, the weight decay where its alias takes one (``decay`` in
the JSON), and otherwise its alias's defaults: nothing is tuned per variant.

Paired over seeds: variant and AdamW share the init and the batches on seed s;
d_s = L_variant,s / L_adamw,s - 1 (final loss), reported as mean ± SE = std(d, ddof=1)/√n.
"lower"/"higher": mean ± 2 SE excludes 0; otherwise no difference resolved by these seeds.

Writes benchmarks/results/variants.json and .png (``variants_quick.*`` with --quick).
"""

import argparse
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax
from low_memory import Task, conditions, judge, tasks
from variants_report import plot, tables, write_section

import adamx

RESULTS = Path(__file__).parent / "results"
SEEDS = {"mlp": 8, "lm": 4}  # full run (--lm-seeds); --quick: 2 each
CURVE_EVERY = 5  # loss curves in the JSON: every 5th step, mean over seeds
# --quick compiles without LLVM's optimizations (a third less compile time; slower steps).
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def _decayed(alias: Callable, lr: optax.Schedule, wd: float, **kw) -> tuple:
    """``alias(lr, weight_decay=wd, **kw)`` if the alias takes a weight decay, else without."""
    if "weight_decay" in inspect.signature(alias).parameters:
        return alias(lr, weight_decay=wd, **kw), True
    return alias(lr, **kw), False


def cautious_ademamix_8bit(lr: optax.Schedule, wd: float) -> tuple:
    """Cautious AdEMAMix with 8-bit m, slow m and v, built from stages:

    chain(cautious(chain(scale_by_moments(8-bit m, v), bias_correct, add_slow_ema(8-bit m₂),
    scale_by_rsqrt)), add_decoupled_weight_decay, scale_by_lr): the cautious mask compares the
    AdEMAMix direction (m̂ + α m₂)/(√v̂ + ε) with g; the decay and lr stay outside the mask.
    b1, b2, b3, α, ε: optax.contrib.ademamix's defaults.
    """
    m8, v8 = adamx.blockwise_8bit(signed=True), adamx.blockwise_8bit(signed=False)
    direction = optax.chain(
        adamx.scale_by_moments(0.9, 0.999, m8, nu_dtype=v8),
        adamx.bias_correct(0.9, 0.999),
        adamx.add_slow_ema(0.9999, 5.0, adamx.blockwise_8bit(signed=True)),
        adamx.scale_by_rsqrt(1e-8),
    )
    tail = (adamx.add_decoupled_weight_decay(wd), adamx.scale_by_lr(lr))
    return optax.chain(adamx.cautious(direction), *tail), True


def adamw_cautious_decay(lr: optax.Schedule, wd: float) -> tuple:
    """AdamW whose decoupled decay is cautious (only where it agrees with the Adam step)."""
    direction = (adamx.scale_by_moments(), adamx.bias_correct(), adamx.scale_by_rsqrt())
    decay = adamx.add_decoupled_weight_decay(wd, cautious=True)
    return optax.chain(*direction, decay, adamx.scale_by_lr(lr)), True


class Variant(NamedTuple):
    call: str  # what a user writes (lr: the schedule, wd: the task's weight decay)
    build: Callable  # (schedule, weight decay) -> (transformation, decay applied?)


def _alias(name: str) -> Variant:
    """``adamx.<name>`` with the task's weight decay where it takes one (see ``_decayed``)."""
    return Variant(f"adamx.{name}(lr, weight_decay=wd)",
                   lambda lr, wd: _decayed(getattr(adamx, name), lr, wd))  # fmt: skip


VARIANTS = {
    **{name: _alias(name) for name in ("adamw", "cautious_adamw")},
    "adamw_cautious_decay": Variant("chain(scale_by_moments(), bias_correct(), scale_by_rsqrt(), "
                                    "add_decoupled_weight_decay(wd, cautious=True), "
                                    "scale_by_lr(lr))", adamw_cautious_decay),
    **{name: _alias(name) for name in ("stable_adamw", "adopt", "ademamix",
                                       "simplified_ademamix", "laprop")},
    "cautious_ademamix_8bit": Variant(
        "chain(cautious(chain(scale_by_moments(0.9, 0.999, blockwise_8bit(signed=True), "
        "nu_dtype=blockwise_8bit(signed=False)), bias_correct(), add_slow_ema(0.9999, 5.0, "
        "blockwise_8bit(signed=True)), scale_by_rsqrt())), add_decoupled_weight_decay(wd), "
        "scale_by_lr(lr))", cautious_ademamix_8bit),
}  # fmt: skip


def schedule(task: Task) -> optax.Schedule:
    """AdamW's schedule in low_memory.py: warmup over 5% of the steps, cosine decay to 0."""
    return optax.warmup_cosine_decay_schedule(0.0, task.lr, task.steps // 20, task.steps)


def seeded_runs(
    task: Task, tx: optax.GradientTransformation, seeds: int, compiler_options: dict | None = None
) -> list[dict]:
    """Train ``tx`` on seeds 0..seeds-1 (init key and batch order as in low_memory.train),
    one compiled program for all seeds; each run's per-step training loss and final losses."""
    loss = task.make(1, 0)[1]  # the same loss for every seed (seeds draw init and batches)

    def update(carry, batch):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), value

    def scan_and_evaluate(params, batches, evals):
        (params, _), losses = jax.lax.scan(update, (params, tx.init(params)), batches)
        return losses, {split: loss(params, data) for split, data in evals.items()}

    runs, compiled = [], None
    for seed in range(seeds):
        init, _, batches, evals = task.make(task.steps, seed)
        params = init(jax.random.key(seed))
        t0 = time.perf_counter()
        if compiled is None:  # compiled once, ahead of time, for every seed
            compiled = jax.jit(scan_and_evaluate).lower(params, batches, evals)
            compiled = compiled.compile(compiler_options)
        t1 = time.perf_counter()
        losses, final = jax.block_until_ready(compiled(params, batches, evals))
        finals = {split: float(v) for split, v in final.items()}
        runs.append({"losses": np.asarray(losses), "final": finals, "compile": t1 - t0,
                     "seconds": time.perf_counter() - t1})  # fmt: skip
    return runs


def summarize(runs: list[dict], ref: list[dict]) -> dict:
    """Per split: the final loss's mean ± SE over seeds and the paired relative difference
    to AdamW (``judge`` with tol 0: ``not_worse`` then means lower at mean + 2 SE)."""
    out = {}
    for split in runs[0]["final"]:
        x = np.array([r["final"][split] for r in runs])
        diffs = [r["final"][split] / f["final"][split] - 1 for r, f in zip(runs, ref, strict=True)]
        d = judge(diffs, 0.0)
        resolved = np.isfinite(d["mean"]) and abs(d["mean"]) > 2 * d["se"]
        verdict = ("lower" if d["mean"] < 0 else "higher") if resolved else "not resolved"
        out[split] = {"mean": float(x.mean()), "se": float(x.std(ddof=1) / np.sqrt(len(x))),
                      "per_seed": x.tolist(), "non_finite": int((~np.isfinite(x)).sum()),
                      "rel_diff": {k: d[k] for k in ("mean", "se", "n_seeds", "per_seed")},
                      "vs_adamw": verdict}  # fmt: skip
    return out


def run_all(args: argparse.Namespace) -> tuple[dict, dict]:
    """Every variant on every task and seed; the results dict and the mean loss curves."""
    t_start = time.perf_counter()
    specs = tasks(args.quick)
    if args.quick:  # low_memory's quick tasks, the LM shorter (its steps cost most unoptimized)
        specs = {
            "mlp": specs["mlp"]._replace(seeds=2),
            "lm": specs["lm"]._replace(seeds=2, steps=30),
        }
    else:
        specs = {"mlp": specs["mlp"]._replace(seeds=SEEDS["mlp"]),
                 "lm": specs["lm"]._replace(seeds=args.lm_seeds)}  # fmt: skip
    result = {"quick": args.quick, "config": conditions(specs), "skipped": {}, "decay": {}}
    result["config"]["compiler_options"] = QUICK_COMPILE if args.quick else {}
    for key in ("factor_min_dim", "large_tensor_min_size", "note"):
        result["config"].pop(key, None)
    for spec in result["config"]["tasks"].values():
        spec.pop("adafactor_peak_lr", None)
    chosen = args.variants.split(",") if args.variants else list(VARIANTS)
    names = ["adamw", *(n for n in chosen if n != "adamw")]
    runs = {task: {} for task in specs}
    for name in names:
        try:
            txs = {task: VARIANTS[name].build(schedule(t), t.wd) for task, t in specs.items()}
        except (NotImplementedError, TypeError) as e:  # a variant (or option) not yet written
            result["skipped"][name] = f"{type(e).__name__}: {e}"
            continue
        result["decay"][name] = txs["mlp"][1]
        for task, t in specs.items():
            runs[task][name] = seeded_runs(
                t, txs[task][0], t.seeds, QUICK_COMPILE if args.quick else None
            )
            secs = sum(r["seconds"] for r in runs[task][name])
            print(f"{task:4s} {name:24s} {runs[task][name][0]['final']} ({secs:.1f} s)", flush=True)
    result["summary"] = {
        task: {n: summarize(rs, by_name["adamw"]) for n, rs in by_name.items()}
        for task, by_name in runs.items()
    }
    for key, field, stat in (("seconds_per_run", "seconds", np.mean),
                             ("compile_seconds", "compile", np.sum)):  # fmt: skip
        result[key] = {
            task: {n: float(stat([r[field] for r in rs])) for n, rs in by_name.items()}
            for task, by_name in runs.items()
        }
    curves = {task: {n: np.mean([r["losses"] for r in rs], axis=0) for n, rs in by_name.items()}
              for task, by_name in runs.items()}  # fmt: skip
    result["curves_every_5_steps_mean_over_seeds"] = {
        task: {n: np.round(c[::CURVE_EVERY], 5).tolist() for n, c in cs.items()}
        for task, cs in curves.items()
    }
    result["calls"] = {
        n: VARIANTS[n].call if applied else VARIANTS[n].call.replace(", weight_decay=wd", "")
        for n, applied in result["decay"].items()
    }
    result["config"]["load_average_at_end"] = os.getloadavg()[0]
    result["total_seconds"] = time.perf_counter() - t_start
    return result, curves


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, 2 seeds (smoke test)")
    parser.add_argument("--lm-seeds", type=int, default=SEEDS["lm"], help="LM seeds (full run)")
    parser.add_argument("--out", default=None, help="results JSON (default results/variants.json)")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, of {', '.join(VARIANTS)} (adamw always runs)",
    )
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    parser.add_argument("--write-readme", action="store_true", help="with --table: into README")
    parser.add_argument("--readme", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS)) if args.variants else []
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    stem = "variants" + ("_quick" if args.quick else "")
    args.out = Path(args.out) if args.out else RESULTS / f"{stem}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.table:
        text = tables(json.loads(args.out.read_text()))
        if args.write_readme:
            readme = Path(args.readme) if args.readme else RESULTS.parent / "README.md"
            print(f"wrote {readme}" if write_section(readme, text) else f"no markers in {readme}")
        print(text)
        return 0
    result, curves = run_all(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, curves, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and its .png ({result['total_seconds']:.0f} s)\n\n{tables(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
