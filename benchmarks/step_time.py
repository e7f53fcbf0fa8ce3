"""Time one AdamW step: adamx vs optax vs torch.optim.AdamW (fused and foreach).

One command::

    python benchmarks/step_time.py            # full run (the four trees of issue 5)
    python benchmarks/step_time.py --quick    # small trees, few reps: a smoke test in seconds
    python benchmarks/step_time.py --trees many   # only the many-leaf tree (2000 leaves x 64)

Measures, for every tree and every contender, with the same hyperparameters:

* per call: a jitted step with donated params and state, called from Python
  and waited on, as a training loop does (torch: ``opt.step()``);
* pure compute: K steps inside one jitted ``lax.fori_loop`` (the gradients go
  through ``lax.optimization_barrier`` each step, so XLA cannot hoist g² out);
* compile time: ``jit(step).lower(...).compile()`` of the per-call step.

Contenders are interleaved (each repetition runs every contender once) and the
median over repetitions is reported, beside the effective bandwidth
(28 bytes per float32 parameter: read θ, g, m, v; write θ, m, v) and a
bandwidth probe (a donated ``x + a*y`` stream kernel) measured in the same run.
Writes ``benchmarks/results/step_time[_quick].json`` and prints a table.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

HYPER = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)
BYTES_PER_PARAM = 28  # float32 AdamW: read θ, g, m, v (16 B), write θ, m, v (12 B)
RESULTS = Path(__file__).parent / "results"


# --------------------------------------------------------------------------- trees


def gpt2_small_shapes(n_layer: int = 12, d: int = 768, vocab: int = 50257, ctx: int = 1024):
    """The 148 parameter shapes of GPT-2 small (124M parameters)."""
    shapes = {"wte": (vocab, d), "wpe": (ctx, d), "ln_f.g": (d,), "ln_f.b": (d,)}
    for i in range(n_layer):
        block = {
            "ln_1.g": (d,), "ln_1.b": (d,), "attn.c_attn.w": (d, 3 * d), "attn.c_attn.b": (3 * d,),
            "attn.c_proj.w": (d, d), "attn.c_proj.b": (d,), "ln_2.g": (d,), "ln_2.b": (d,),
            "mlp.c_fc.w": (d, 4 * d), "mlp.c_fc.b": (4 * d,), "mlp.c_proj.w": (4 * d, d),
            "mlp.c_proj.b": (d,),
        }  # fmt: skip
        shapes.update({f"h{i}.{k}": v for k, v in block.items()})
    return shapes


def tree_shapes(quick: bool) -> dict:
    if quick:
        return {
            "1 leaf x 1M": {"w": (1 << 20,)},
            "32 leaves x 32K": {f"w{i}": (1 << 15,) for i in range(32)},
            "200 leaves x 64": {f"b{i}": (64,) for i in range(200)},
            "GPT-2 shapes, 2 layers d=128": gpt2_small_shapes(2, 128, 2048, 256),
        }
    return {
        "1 leaf x 16M": {"w": (1 << 24,)},
        "128 leaves x 128K": {f"w{i}": (1 << 17,) for i in range(128)},
        "2000 leaves x 64": {f"b{i}": (64,) for i in range(2000)},
        "GPT-2 small (148 leaves, 124M)": gpt2_small_shapes(),
    }


def make_tree(shapes: dict, seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()}


# --------------------------------------------------------------------------- contenders


def jax_contenders() -> dict:
    """name -> (make the optimizer, hold the params and gradients packed)."""
    h = HYPER
    kw = dict(b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["weight_decay"])
    return {
        "optax.adamw": (lambda: optax.adamw(h["lr"], **kw), False),
        "adamx.adamw": (lambda: adamx.adamw(h["lr"], **kw), False),
        "adamx.multi_tensor": (lambda: adamx.multi_tensor(adamx.adamw(h["lr"], **kw)), False),
        # adamx.adamw on adamx.pack(params): the step takes and returns packed params, and the
        # gradients are packed, as jax.grad through PackedTree.unpack() returns them.
        "adamx.pack": (lambda: adamx.adamw(h["lr"], **kw), True),
        # optax's own answer to many small leaves: ravel params and gradients into one vector
        # per call, run the chain on it, split the updates back. Not bit-identical to per-leaf
        # optax.adamw under jit (a different program, fused differently): see the JSON's
        # bit_identical_to_optax.
        "optax.flatten": (lambda: optax.flatten(optax.adamw(h["lr"], **kw)), False),
    }


# A whole training step on the many-leaf tree: the gradient is taken inside the jitted step.
TRAIN_CONTENDERS = {"train: optax.adamw": "optax.adamw", "train: adamx.pack": "adamx.pack"}


def toy_loss(params: dict, targets: dict) -> jax.Array:
    """A model with one small computation per leaf: sum_i <sin(theta_i), t_i>."""
    return sum(jnp.vdot(jnp.sin(params[k]), targets[k]) for k in sorted(params))


def unpacked(params):
    return params.unpack() if isinstance(params, adamx.PackedTree) else params


TORCH_CONTENDERS = {"torch fused": dict(fused=True), "torch foreach": dict(foreach=True)}


class JaxRunner:
    """A donated, jitted step ``(params, state, grads) -> (params, state)``."""

    def __init__(self, tx, params_np, grads_np, packed=False, train=False):
        prepare = adamx.pack if packed else (lambda tree: tree)
        self.params = prepare(jax.tree.map(jnp.array, params_np))
        self.state = tx.init(self.params)
        # A training step gets per-leaf targets and differentiates a loss inside the step.
        self.grads = (
            jax.tree.map(jnp.array, grads_np)
            if train
            else prepare(jax.tree.map(jnp.array, grads_np))
        )
        grads = self.grads

        def step(params, state, grads):
            if train:
                grads = jax.grad(lambda p: toy_loss(unpacked(p), grads))(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self.step_fn = step
        start = time.perf_counter()
        self.compiled = (
            jax.jit(step, donate_argnums=(0, 1)).lower(self.params, self.state, grads).compile()
        )
        self.compile_s = time.perf_counter() - start
        self.loop = None

    def call(self, n: int) -> float:
        """Seconds per call, over ``n`` calls each waited on."""
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.state = self.compiled(self.params, self.state, self.grads)
            jax.block_until_ready(self.params)
        return (time.perf_counter() - start) / n

    def compile_loop(self, k: int) -> None:
        step = self.step_fn

        def many(params, state, grads):
            def body(_, carry):
                params, state = carry
                g, params = jax.lax.optimization_barrier((grads, params))
                return step(params, state, g)

            return jax.lax.fori_loop(0, k, body, (params, state))

        self.k = k
        self.loop = (
            jax.jit(many, donate_argnums=(0, 1))
            .lower(self.params, self.state, self.grads)
            .compile()
        )

    def compute(self) -> float:
        """Seconds per step inside one jitted loop of ``k`` steps."""
        start = time.perf_counter()
        self.params, self.state = self.loop(self.params, self.state, self.grads)
        jax.block_until_ready(self.params)
        return (time.perf_counter() - start) / self.k

    def result(self):
        return unpacked(self.params)


class TorchRunner:
    def __init__(self, params_np, grads_np, **flags):
        import torch

        self.torch = torch
        self.names = list(params_np)
        self.params = [torch.tensor(params_np[k]) for k in sorted(params_np)]
        for p, k in zip(self.params, sorted(params_np), strict=True):
            p.grad = torch.tensor(grads_np[k])
        h = HYPER
        self.opt = torch.optim.AdamW(
            self.params, lr=h["lr"], betas=(h["b1"], h["b2"]), eps=h["eps"],
            weight_decay=h["weight_decay"], **flags,
        )  # fmt: skip
        self.compile_s = None
        self.loop = None

    def call(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.opt.step()
        return (time.perf_counter() - start) / n

    def result(self):
        return {k: p.detach().numpy() for k, p in zip(sorted(self.names), self.params, strict=True)}


# --------------------------------------------------------------------------- probes


def bandwidth_probe(n: int, reps: int) -> float:
    """GB/s of a donated ``x <- x + a*y`` (read 8 B, write 4 B per element)."""
    f = jax.jit(lambda x, y: x + 0.5 * y, donate_argnums=0)
    x, y = jnp.ones(n, jnp.float32), jnp.ones(n, jnp.float32)
    x = f(x, y).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        x = f(x, y).block_until_ready()
        times.append(time.perf_counter() - start)
    return 12 * n / statistics.median(times) / 1e9


def conditions() -> dict:
    import torch

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "adamx": adamx.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


# --------------------------------------------------------------------------- main


def fingerprint(tree) -> str:
    """SHA-256 of the leaves' bytes, in sorted-key order: equal iff bit-identical."""
    digest = hashlib.sha256()
    for key in sorted(tree):
        digest.update(np.ascontiguousarray(np.asarray(tree[key])).tobytes())
    return digest.hexdigest()


def measure(tree: str, contender: str, args) -> dict:
    """Everything about one contender on one tree, in this process (a worker's job)."""
    shapes = tree_shapes(args.quick)[tree]
    params_np, grads_np = make_tree(shapes, 0), make_tree(shapes, 1, 1e-2)
    if contender in TORCH_CONTENDERS:
        runner = TorchRunner(params_np, grads_np, **TORCH_CONTENDERS[contender])
    else:
        train = contender in TRAIN_CONTENDERS
        make, packed = jax_contenders()[TRAIN_CONTENDERS.get(contender, contender)]
        runner = JaxRunner(make(), params_np, grads_np, packed, train)
    runner.call(1)  # one step, then the fingerprint: every contender has taken the same step
    out = {"fingerprint": fingerprint(runner.result()), "compile_s": runner.compile_s}
    calls = max(1, int(args.target_s / max(runner.call(1), 1e-6)))
    out["per_call_s"] = [runner.call(calls) for _ in range(args.reps)]
    out["calls_per_sample"] = calls
    if not args.no_loop and contender in jax_contenders():
        runner.compile_loop(args.k)
        runner.compute()
        out["compute_s"] = [runner.compute() for _ in range(args.loop_reps)]
    return out


def run_worker(tree: str, contender: str, args) -> dict:
    """``measure`` in a fresh process: no executable created before it can slow it down."""
    flags = ["--quick"] * args.quick + ["--no-loop"] * args.no_loop
    command = [sys.executable, __file__, "--worker", tree, contender, "--reps", str(args.reps)]
    command += ["--k", str(args.k), *flags]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {tree} / {contender} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def contenders(args, leaves: int) -> list[str]:
    names = list(jax_contenders()) + ([] if args.no_torch else list(TORCH_CONTENDERS))
    return names + (list(TRAIN_CONTENDERS) if leaves >= 200 and not args.no_train else [])


def bench_tree(name: str, shapes: dict, args) -> dict:
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    print(f"\n== {name}: {len(shapes)} leaves, {n_params / 1e6:.2f}M params", flush=True)
    names = contenders(args, len(shapes))
    runs = {c: [] for c in names}
    for round_ in range(args.rounds):  # alternate the order so that drift hits everyone alike
        for c in names if round_ % 2 == 0 else names[::-1]:
            runs[c].append(run_worker(name, c, args))
            print(f"   round {round_ + 1}: {c} done", flush=True)

    samples = {c: [t for r in runs[c] for t in r["per_call_s"]] for c in names}
    compute = {
        c: statistics.median([t for r in runs[c] for t in r["compute_s"]])
        for c in names
        if "compute_s" in runs[c][0]
    }
    compile_s = {
        c: statistics.median([r["compile_s"] for r in runs[c]])
        for c in names
        if runs[c][0]["compile_s"] is not None
    }

    def reference(c: str) -> str:  # the optax run that took the same step as c
        return "train: optax.adamw" if c in TRAIN_CONTENDERS else "optax.adamw"

    identical = {
        c: runs[c][0]["fingerprint"] == runs[reference(c)][0]["fingerprint"]
        for c in names
        if c != reference(c)
    }
    median = {c: statistics.median(v) for c, v in samples.items()}
    gbs = {c: BYTES_PER_PARAM * n_params / t / 1e9 for c, t in median.items()}
    ratios = {
        "adamx/optax": median["adamx.adamw"] / median["optax.adamw"],
        "compile adamx/optax": compile_s["adamx.adamw"] / compile_s["optax.adamw"],
    }
    for c in ("multi_tensor", "pack"):
        ratios[f"{c}/optax"] = median[f"adamx.{c}"] / median["optax.adamw"]
        ratios[f"{c}/adamx"] = median[f"adamx.{c}"] / median["adamx.adamw"]
        ratios[f"compile {c}/optax"] = compile_s[f"adamx.{c}"] / compile_s["optax.adamw"]
    if "optax.flatten" in median:  # the fair yardstick of the packed paths
        for c in ("multi_tensor", "pack"):
            ratios[f"{c}/flatten"] = median[f"adamx.{c}"] / median["optax.flatten"]
            ratios[f"compile {c}/flatten"] = compile_s[f"adamx.{c}"] / compile_s["optax.flatten"]
        ratios["flatten/optax"] = median["optax.flatten"] / median["optax.adamw"]
        ratios["compile flatten/optax"] = compile_s["optax.flatten"] / compile_s["optax.adamw"]
        if compute:
            for c in ("multi_tensor", "pack"):
                ratios[f"compute {c}/flatten"] = compute[f"adamx.{c}"] / compute["optax.flatten"]
    if "torch fused" in median:
        for c in ("adamw", "multi_tensor", "pack"):
            ratios[f"{c}/torch_fused"] = median[f"adamx.{c}"] / median["torch fused"]
    if "train: adamx.pack" in median:
        ratios["train pack/optax"] = median["train: adamx.pack"] / median["train: optax.adamw"]
        ratios["compile train pack/optax"] = (
            compile_s["train: adamx.pack"] / compile_s["train: optax.adamw"]
        )
    if compute:
        ratios["compute adamx/optax"] = compute["adamx.adamw"] / compute["optax.adamw"]
    return {
        "leaves": len(shapes),
        "params": n_params,
        "calls_per_sample": {c: runs[c][0]["calls_per_sample"] for c in names},
        "per_call_ms": {c: 1e3 * t for c, t in median.items()},
        "per_call_samples_ms": {c: [1e3 * t for t in v] for c, v in samples.items()},
        "compute_ms": {c: 1e3 * t for c, t in compute.items()},
        "compile_s": compile_s,
        "effective_GBps": gbs,
        "ratios": ratios,
        "bit_identical_to_optax": identical,
    }


STEP_COLUMNS = [
    "optax.adamw", "adamx.adamw", "adamx.multi_tensor", "adamx.pack", "optax.flatten",
    "torch fused", "torch foreach",
]  # fmt: skip
COLUMNS = STEP_COLUMNS + list(TRAIN_CONTENDERS)


def table(results: dict, probe: float) -> str:
    lines = [
        f"bandwidth probe (donated x + a*y): {probe:.1f} GB/s",
        "",
        "| tree | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name, r in results.items():
        cells = []
        for c in COLUMNS:
            if c not in r["per_call_ms"]:
                cells.append("-")
                continue
            cell = f"{r['per_call_ms'][c]:.2f} ms ({r['effective_GBps'][c]:.0f} GB/s)"
            if c in r["compute_ms"]:
                cell += f"; loop {r['compute_ms'][c]:.2f} ms"
            if c in r["compile_s"]:
                cell += f"; compile {r['compile_s'][c]:.2f} s"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    keys = sorted({k for r in results.values() for k in r["ratios"]})
    lines += ["", "| tree | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in results.items():
        cells = [f"{r['ratios'][k]:.2f}" if k in r["ratios"] else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = STEP_COLUMNS
    names = list(results)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        ys = [
            results[n]["per_call_ms"].get(c, np.nan) / results[n]["per_call_ms"]["optax.adamw"]
            for n in names
        ]
        ax.bar(np.arange(len(names)) + (j - len(cols) / 2 + 0.5) * width, ys, width, label=c)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel("time per call / optax.adamw (lower is faster)")
    ax.set_title("AdamW step, per call (jitted, donated), median")
    ax.legend(fontsize=8, ncol=3, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def select_trees(trees: dict, spec: str | None) -> dict:
    """The trees named by ``spec``: indices, fragments of names, or ``many`` (≥ 200 leaves)."""
    if not spec:
        return trees
    names = list(trees)
    keep = set()
    for item in (part.strip() for part in spec.split(",")):
        if item.isdigit() and int(item) < len(names):
            hits = [names[int(item)]]
        elif item.lower() == "many":
            hits = [n for n in names if len(trees[n]) >= 200]
        else:
            hits = [n for n in names if item.lower() in n.lower()]
        if not hits:
            raise SystemExit(f"--trees: {item!r} matches none of {names} (or use an index, 'many')")
        keep.update(hits)
    return {n: trees[n] for n in names if n in keep}


def default_out(args) -> Path:
    """step_time[_quick].json for the whole run; a tree selection gets its own file."""
    stem = "step_time" + ("_quick" if args.quick else "")
    if args.trees:
        stem += "_trees_" + "".join(c if c.isalnum() else "_" for c in args.trees.lower())
    return RESULTS / f"{stem}.json"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trees, few reps (seconds)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--k", type=int, default=None, help="steps in the jitted loop")
    parser.add_argument("--no-torch", action="store_true", help="skip torch.optim.AdamW")
    parser.add_argument("--no-loop", action="store_true", help="skip the pure-compute loop")
    parser.add_argument(
        "--no-train", action="store_true", help="skip the training step on many-leaf trees"
    )
    parser.add_argument(
        "--trees",
        default=None,
        help="comma-separated tree indices (0-3), name fragments, or 'many' (the trees of "
        "200 leaves or more); a selection writes step_time_<selection>.json unless --out is given",
    )
    parser.add_argument("--out", default=None, help="results JSON path")
    parser.add_argument("--rounds", type=int, default=None, help="processes per contender")
    parser.add_argument("--worker", nargs=2, metavar=("TREE", "CONTENDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.reps = args.reps or (3 if args.quick else 6)
    args.k = args.k or (5 if args.quick else 20)
    args.loop_reps = 3
    args.target_s = 0.01 if args.quick else 0.2  # time per sample, at least one call
    if args.worker:
        print(json.dumps(measure(*args.worker, args)))
        return

    trees = select_trees(tree_shapes(args.quick), args.trees)

    info = conditions()
    probe_n = (1 << 20) if args.quick else (1 << 24)
    probe_before = bandwidth_probe(probe_n, 5 if args.quick else 21)
    results = {}
    for name, shapes in trees.items():
        results[name] = bench_tree(name, shapes, args)
    probe_after = bandwidth_probe(probe_n, 5 if args.quick else 21)
    probe = statistics.median([probe_before, probe_after])
    info["load_average_after"] = os.getloadavg()

    print()
    print(table(results, probe))
    out = Path(args.out) if args.out else default_out(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "conditions": info,
        "hyperparameters": HYPER,
        "args": {k: v for k, v in vars(args).items()},
        "bandwidth_probe_GBps": {"before": probe_before, "after": probe_after},
        "trees": results,
    }
    out.write_text(json.dumps(payload, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
