"""adamx on a GPU: one AdamW step against the memory-bandwidth floor and against its peers.

One command (issue 11)::

    PYTHONPATH=. python3 benchmarks/gpu.py --out benchmarks/results/gpu    # GPU, under 8 min
    python benchmarks/gpu.py --quick --out /tmp/gpu_smoke    # CPU smoke test, under a minute
    python benchmarks/gpu.py --table --write-readme   # README table from the committed results

Needs only JAX, optax, numpy and adamx (from the checkout); uses PyTorch and matplotlib when
they are importable. An fp32 Adam step is a memory-bound elementwise pass: it reads θ, g, m, v
and writes θ, m, v, 28 bytes per parameter, so its time cannot go below
``28 · n / bandwidth``. Every figure is printed beside that floor, with the bandwidth taken
from an in-run probe (a large donated copy ``dst <- s·src``, read + written bytes).

How a step is timed (per call): ``jax.jit(step, donate_argnums=(0, 1))`` with
``step(params, state, grads) -> (params, state)``, compiled ahead of time
(``lower().compile()``, the compile time is recorded), then called from Python and waited on
(``jax.block_until_ready`` on all outputs; torch: ``opt.step()`` between two
``torch.cuda.synchronize()``). Parameters and gradients are random normals (never zeros),
the moments are non-zero after the warm-up steps, and each call gets the next of two
gradient trees, so no call re-reads the gradient of the previous one. Samples are taken in
interleaved rounds (every contender of a group once per round, the order reversed every
other round) after warm-up; the median is reported, with ``pipelined_ms`` (10 calls
back to back, one wait) beside it. Each group's contenders share one set of initial
parameters and gradients (torch gets them through DLPack), and every contender's
parameters after its first step are compared with the group's reference (bit-identical or
the largest absolute difference).

Sections (each has a share of ``--budget-s``; a case that does not fit is recorded as
skipped with the reason, as is a case that runs out of memory):

* ``fp32``: optax.adamw, adamx.adamw, torch AdamW fused and foreach on 1 × 256M, 128 × 4M,
  GPT-2 small and a 1B-parameter GPT-style transformer's shapes;
* ``many_leaf``: 4000 leaves × 1024: the same four plus adamx.pack, adamx.multi_tensor and
  optax.flatten(optax.adamw), per call and compile time;
* ``low_memory``: adamx.adamw with 8-bit moments, stochastic bf16 moments, bf16 params with
  stochastic rounding (and all of them at once) against fp32 adamx.adamw on the large trees:
  time and bytes of state per parameter (``adamx.state_nbytes``);
* ``train``: a whole training step (forward, backward, update) of a small transformer LM
  with each option, in tokens per second.

The goals of issue 11 are printed as verdicts (met or missed by how much), never asserted.
Writes ``<out>/<date>_<device>.json`` (``_quick`` appended with ``--quick``) and a PNG
beside it, and prints a short table last.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from step_time import gpt2_small_shapes

import adamx

try:
    import torch
except ImportError:  # torch is optional: its contenders are then skipped with the reason
    torch = None

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "gpu"
README = HERE / "README.md"
HYPER = dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)
BYTES_FP32_ADAMW = 28  # read θ, g, m, v (16 B), write θ, m, v (12 B)
# Shares of --budget-s, cumulative: a section may use what the earlier ones left. A case is
# only started before its section's deadline, so the run may overrun by one compile.
SECTIONS = {"fp32": 0.20, "many_leaf": 0.35, "low_memory": 0.20, "train": 0.25}
NOISE = 0.03  # relative tolerance of "no slower than" verdicts (timing noise)
TABLE_BEGIN, TABLE_END = "<!-- gpu-table:begin -->", "<!-- gpu-table:end -->"


# --------------------------------------------------------------------------- trees


def trees(quick: bool) -> dict:
    """key -> (label, {name: shape}); the keys are stable across runs (the README table)."""
    if quick:
        return {
            "one_256M": ("1 leaf x 64K (quick)", {"w": (1 << 16,)}),
            "gpt2_small": ("GPT-2, 1 layer d=64 (quick)", gpt2_small_shapes(1, 64, 512, 64)),
            "leaves_4000": ("30 leaves x 1024 (quick)", {f"b{i}": (1024,) for i in range(30)}),
        }  # fmt: skip
    return {
        "one_256M": ("1 leaf x 256M", {"w": (1 << 28,)}),
        "many_4M": ("128 leaves x 4M", {f"w{i}": (1 << 22,) for i in range(128)}),
        "gpt2_small": ("GPT-2 small (148 leaves, 124M)", gpt2_small_shapes()),
        # GPT-style, d=2048, 18 layers, 50257 x 2048 embedding: 1.01B parameters in 220 leaves.
        "transformer_1B": ("GPT 1B (220 leaves, d=2048)", gpt2_small_shapes(18, 2048, 50257, 2048)),
        "leaves_4000": ("4000 leaves x 1024", {f"b{i}": (1024,) for i in range(4000)}),
    }  # fmt: skip


def random_tree(shapes: dict, seed: int, scale: float = 1.0) -> dict:
    """Random normals on the default device (generated there: no host transfer)."""
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {
        name: scale * jax.random.normal(k, shape, jnp.float32)
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def to_bf16(tree):
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)


# --------------------------------------------------------------------------- contenders


def adamw(**formats):
    return adamx.adamw(**HYPER, **formats)


def eight_bit() -> dict:
    """8-bit moments, each format told which moment it stores (works before and after H1)."""
    return dict(
        mu_dtype=adamx.blockwise_8bit(signed=True), nu_dtype=adamx.blockwise_8bit(signed=False)
    )


def bf16_moments() -> dict:
    return dict(
        mu_dtype=adamx.stochastic_float(jnp.bfloat16, seed=0),
        nu_dtype=adamx.stochastic_float(jnp.bfloat16, seed=1),
    )


FP32_MOMENTS = dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32)


def with_sr(tx):
    return optax.chain(tx, adamx.stochastic_rounding(seed=0))


# name -> (make the optax transformation, how the params are held: "tree" | "pack" | "bf16")
JAX_CONTENDERS = {
    "optax.adamw": (lambda: optax.adamw(**HYPER), "tree"),
    "adamx.adamw": (lambda: adamw(), "tree"),
    "adamx.pack": (lambda: adamw(), "pack"),
    "adamx.multi_tensor": (lambda: adamx.multi_tensor(adamw()), "tree"),
    "optax.flatten": (lambda: optax.flatten(optax.adamw(**HYPER)), "tree"),
    "adamx 8-bit moments": (lambda: adamw(**eight_bit()), "tree"),
    "adamx bf16 moments (SR)": (lambda: adamw(**bf16_moments()), "tree"),
    "adamx bf16 params + SR": (lambda: with_sr(adamw(**FP32_MOMENTS)), "bf16"),
    "adamx bf16 params + SR + 8-bit": (lambda: with_sr(adamw(**eight_bit())), "bf16"),
}
TORCH_CONTENDERS = {"torch fused": dict(fused=True), "torch foreach": dict(foreach=True)}
FP32 = ["optax.adamw", "adamx.adamw", "torch fused", "torch foreach"]
# In order of importance: if compiling 4000 leaves eats the section's time, the last are skipped.
MANY_LEAF = ["optax.adamw", "optax.flatten", "adamx.pack", "adamx.multi_tensor", "torch fused"]
MANY_LEAF += ["torch foreach", "adamx.adamw"]
LOW_MEMORY = ["adamx.adamw", "adamx 8-bit moments", "adamx bf16 moments (SR)"]
LOW_MEMORY += ["adamx bf16 params + SR", "adamx bf16 params + SR + 8-bit"]


def hold(params, how: str):
    if how == "pack":
        return adamx.pack(params)
    if how == "bf16":
        return to_bf16(params)
    return jax.tree.map(jnp.copy, params)  # each contender owns (and donates) its copy


class JaxCase:
    """A donated, jitted optimizer step, compiled ahead of time."""

    def __init__(self, tx, params, grad_sets, how: str):
        self.how = how
        self.params = hold(params, how)
        self.grads = [hold(g, how) if how != "tree" else g for g in grad_sets]
        self.state = tx.init(self.params)
        self.state_bytes = adamx.state_nbytes(self.state)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        start = time.perf_counter()
        jitted = jax.jit(step, donate_argnums=(0, 1))
        self.fn = jitted.lower(self.params, self.state, self.grads[0]).compile()
        self.compile_s = time.perf_counter() - start
        self.calls = 0

    def entry_hlo(self) -> str:
        """The optimized program's entry computation (its kernels, in order)."""
        text = self.fn.as_text()
        return text[text.rfind("\nENTRY") :].split("\n}\n")[0].strip()

    def launch(self) -> None:
        grads = self.grads[self.calls % len(self.grads)]
        self.calls += 1
        self.params, self.state = self.fn(self.params, self.state, grads)

    def wait(self) -> None:
        jax.block_until_ready((self.params, self.state))

    def leaves(self) -> list:
        params = self.params.unpack() if self.how == "pack" else self.params
        return jax.tree.leaves(params)


class TorchCase:
    """torch.optim.AdamW on the same initial parameters and gradients (shared by DLPack)."""

    def __init__(self, params, grad_sets, **flags):
        self.params = [torch.from_dlpack(x).clone() for x in jax.tree.leaves(params)]
        self.grads = [[torch.from_dlpack(g) for g in jax.tree.leaves(gs)] for gs in grad_sets]
        h = HYPER
        self.opt = torch.optim.AdamW(
            self.params, lr=h["learning_rate"], betas=(h["b1"], h["b2"]), eps=h["eps"],
            weight_decay=h["weight_decay"], **flags,
        )  # fmt: skip
        self.state_bytes = 8 * sum(p.numel() for p in self.params)  # exp_avg, exp_avg_sq
        self.compile_s = None
        self.calls = 0

    def launch(self) -> None:  # the gradients are set outside the timed region (see time_call)
        self.opt.step()
        self.calls += 1

    def prepare(self) -> None:
        for p, g in zip(self.params, self.grads[self.calls % len(self.grads)], strict=True):
            p.grad = g

    def wait(self) -> None:
        sync()

    def leaves(self) -> list:
        return [jnp.from_dlpack(p.detach()) for p in self.params]


def sync() -> None:
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(case) -> float:
    """Seconds of one synchronised call (the previous call has been waited on)."""
    if isinstance(case, TorchCase):
        case.prepare()
        sync()
    start = time.perf_counter()
    case.launch()
    case.wait()
    return time.perf_counter() - start


def time_pipelined(case, n: int) -> float:
    """Seconds per call of ``n`` calls launched back to back and waited on once.

    JAX calls rotate the gradients as in ``time_call``; torch keeps the ones last set (setting
    ``.grad`` on thousands of leaves in Python would be timed too).
    """
    start = time.perf_counter()
    for _ in range(n):
        case.launch()
    case.wait()
    return (time.perf_counter() - start) / n


def make_case(name: str, params, grad_sets):
    if name in TORCH_CONTENDERS:
        if torch is None:
            raise Skip("torch is not installed")
        return TorchCase(params, grad_sets, **TORCH_CONTENDERS[name])
    make, how = JAX_CONTENDERS[name]
    return JaxCase(make(), params, grad_sets, how)


class Skip(Exception):
    """A case that cannot run here (not an error): recorded with its reason."""


# --------------------------------------------------------------------------- probes


def copy_probe(n: int, reps: int) -> dict:
    """GB/s of a donated copy ``dst <- s * src`` (8 B per element: read 4, write 4)."""
    f = jax.jit(lambda dst, src, s: src * s, donate_argnums=0)
    src = jax.random.normal(jax.random.key(7), (n,), jnp.float32)
    dst = jax.random.normal(jax.random.key(8), (n,), jnp.float32)
    s = jnp.float32(1.0)
    times = []
    for i in range(reps + 3):
        jax.block_until_ready(dst)
        start = time.perf_counter()
        dst = f(dst, src, s).block_until_ready()
        if i >= 3:
            times.append(time.perf_counter() - start)
    out = {"jax_GBps": 8 * n / statistics.median(times) / 1e9, "elements": n}
    del src, dst
    if torch is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        a = torch.randn(n, device=device)
        b = torch.randn(n, device=device)
        times = []
        for i in range(reps + 3):
            sync()
            start = time.perf_counter()
            b.copy_(a)
            sync()
            if i >= 3:
                times.append(time.perf_counter() - start)
        out["torch_GBps"] = 8 * n / statistics.median(times) / 1e9
        del a, b
    return out


# --------------------------------------------------------------------------- groups


def moved_bytes(name: str, case, n: int) -> int:
    """Bytes one step must move: read θ, g and the state, write θ and the state."""
    param_bytes = 2 if JAX_CONTENDERS.get(name, (None, ""))[1] == "bf16" else 4
    return 2 * param_bytes * n + param_bytes * n + 2 * case.state_bytes


def failure(exc: BaseException) -> tuple[str, str]:
    """("skipped", reason) for out-of-memory and Skip, else ("error", traceback)."""
    text = str(exc)
    if isinstance(exc, Skip):
        return "skipped", text
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return "skipped", "out of memory: " + text.strip().splitlines()[0][:300]
    return "error", "".join(traceback.format_exception(exc))[-2000:]


TRIVIAL_OPS = ("parameter(", "tuple(", "get-tuple-element(", "constant(", "bitcast(")


def kernel_count(entry: str) -> int:
    """Instructions of the entry computation that launch work (fusions, copies, custom calls)."""
    lines = [line for line in entry.splitlines()[1:] if " = " in line]
    return sum(1 for line in lines if not any(op in line for op in TRIVIAL_OPS))


@jax.jit
def max_abs_diff(xs: list, ys: list) -> jax.Array:
    """max |x - y| over all leaves, in float32: one program (not thousands of eager ops)."""
    flat = lambda zs: jnp.concatenate([z.astype(jnp.float32).ravel() for z in zs])  # noqa: E731
    return jnp.max(jnp.abs(flat(xs) - flat(ys)))


def compare(case, ref_leaves) -> dict:
    """The case's parameters after its first step against the reference's, on device."""
    worst = float(max_abs_diff(case.leaves(), ref_leaves))
    return {"bit_identical": worst == 0.0, "max_abs_diff": worst}


def run_group(section: str, tree_key: str, names: list, ctx) -> dict:
    """Every contender of ``names`` on one tree, timed in interleaved rounds."""
    label, shapes = ctx.trees[tree_key]
    out = {"section": section, "tree": tree_key, "label": label, "skipped": {}, "cases": {}}
    if time.monotonic() > ctx.deadline:
        out["skipped"] = {c: "time budget of the section spent" for c in names}
        return out
    print(f"\n== {section}: {label}", flush=True)
    params = random_tree(shapes, 0)
    grad_sets = [random_tree(shapes, 1 + i, 1e-2) for i in range(2)]
    n = n_params(params)
    out["params"], out["leaves"] = n, len(shapes)
    cases = {}
    for name in names:
        if time.monotonic() > ctx.deadline:
            out["skipped"][name] = "time budget of the section spent"
            continue
        try:
            cases[name] = make_case(name, params, grad_sets)
            time_call(cases[name])  # the first step: compared with the reference below
        except Exception as exc:  # recorded, the run goes on
            cases.pop(name, None)
            ctx.record(out, name, exc)
    ref = names[0] if names[0] in cases else None
    ref_leaves = cases[ref].leaves() if ref else None
    for name, case in cases.items():
        out["cases"][name] = {"compile_s": case.compile_s, "state_bytes": case.state_bytes}
        out["cases"][name]["bytes_per_param_moved"] = moved_bytes(name, case, n) / n
        if isinstance(case, JaxCase):  # what XLA made of it: the evidence for a missed goal
            entry = case.entry_hlo()
            out["cases"][name]["kernels"] = kernel_count(entry)
            if len(shapes) == 1:  # small enough to keep whole
                out["cases"][name]["entry_hlo"] = entry
        if ref_leaves is not None and name != ref:
            try:
                out["cases"][name][f"first_step_vs_{ref}"] = compare(case, ref_leaves)
            except Exception as exc:  # recorded; the timing still runs
                ctx.errors.append({"where": f"{section} / {tree_key} / {name}: compare",
                                   "text": failure(exc)[1]})  # fmt: skip
    del ref_leaves, params
    timings = measure(cases, ctx, out)
    for name, (samples, pipelined) in timings.items():
        record = out["cases"][name]
        record["per_call_ms"] = 1e3 * statistics.median(samples)
        record["per_call_samples_ms"] = [1e3 * t for t in samples]
        record["pipelined_ms"] = 1e3 * statistics.median(pipelined)
        record["achieved_GBps"] = (
            record["bytes_per_param_moved"] * n / statistics.median(samples) / 1e9
        )
        print(f"   {name:34s} {record['per_call_ms']:9.3f} ms per call", flush=True)
    cases.clear()
    free()
    return out


def measure(cases: dict, ctx, out: dict) -> dict:
    """{name: (per-call samples, pipelined samples)} over interleaved rounds, after warm-up."""
    per_round = {}
    for name, case in list(cases.items()):
        try:
            for _ in range(ctx.warmup):
                time_call(case)
            estimate = statistics.median(time_call(case) for _ in range(3))
            per_round[name] = int(np.clip(ctx.target_s / max(estimate, 1e-6), *ctx.samples))
        except Exception as exc:
            cases.pop(name)
            ctx.record(out, name, exc)
    timings = {name: ([], []) for name in cases}
    for round_ in range(ctx.rounds):
        order = list(cases) if round_ % 2 == 0 else list(cases)[::-1]
        for name in order:
            if name not in timings:
                continue
            try:
                timings[name][0].extend(time_call(cases[name]) for _ in range(per_round[name]))
                timings[name][1].append(time_pipelined(cases[name], ctx.pipeline))
            except Exception as exc:
                del timings[name]
                ctx.record(out, name, exc)
    return timings


def free() -> None:
    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- training step


def lm_config(quick: bool) -> dict:
    if quick:
        return dict(vocab=64, d=32, layers=1, heads=2, seq=16, batch=4)
    return dict(vocab=8192, d=512, layers=8, heads=8, seq=512, batch=16)


def lm_init(cfg: dict, seed: int = 0) -> dict:
    d, v = cfg["d"], cfg["vocab"]
    keys = iter(jax.random.split(jax.random.key(seed), 3 + 4 * cfg["layers"]))

    def normal(shape, fan_in):
        return jax.random.normal(next(keys), shape, jnp.float32) / np.sqrt(fan_in)

    blocks = [
        {"ln1": jnp.ones(d), "qkv": normal((d, 3 * d), d), "out": normal((d, d), d),
         "ln2": jnp.ones(d), "up": normal((d, 4 * d), d), "down": normal((4 * d, d), 4 * d)}
        for _ in range(cfg["layers"])
    ]  # fmt: skip
    return {"embed": normal((v, d), 1.0) * 0.5, "pos": normal((cfg["seq"], d), 1.0) * 0.5,
            "blocks": blocks, "ln_f": jnp.ones(d), "unembed": normal((d, v), d)}  # fmt: skip


def lm_loss(params: dict, tokens: jax.Array, heads: int) -> jax.Array:
    """Next-token cross-entropy of a pre-norm causal transformer (computed in float32)."""
    p = jax.tree.map(lambda a: a.astype(jnp.float32), params)

    def norm(h, gain):
        h = h - h.mean(-1, keepdims=True)
        return h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-5) * gain

    x, y = tokens[:, :-1], tokens[:, 1:]
    h = p["embed"][x] + p["pos"][None, : x.shape[1]]
    b, t, d = h.shape
    mask = jnp.tril(jnp.ones((t, t), bool))
    for blk in p["blocks"]:
        q, k, v = jnp.split(norm(h, blk["ln1"]) @ blk["qkv"], 3, axis=-1)
        split = lambda a: a.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
        att = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
        h = h + (att @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, d) @ blk["out"]
        h = h + jax.nn.gelu(norm(h, blk["ln2"]) @ blk["up"]) @ blk["down"]
    logits = norm(h, p["ln_f"]) @ p["unembed"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


TRAIN = ["optax.adamw", "adamx.adamw", "adamx.pack", "adamx 8-bit moments"]  # by importance
TRAIN += ["adamx bf16 params + SR", "adamx.multi_tensor", "optax.flatten"]
TRAIN += ["adamx bf16 moments (SR)", "adamx bf16 params + SR + 8-bit"]
TRAIN_QUICK = ["optax.adamw", "adamx.pack", "adamx bf16 params + SR"]  # one per way to hold θ


class TrainCase(JaxCase):
    """A whole jitted training step: loss, gradient, update; donated params and state."""

    def __init__(self, name: str, cfg: dict, batches: list):
        make, how = JAX_CONTENDERS[name]
        tx, self.how = make(), how
        self.params = hold(lm_init(cfg), how)
        self.state = tx.init(self.params)
        self.state_bytes = adamx.state_nbytes(self.state)
        self.grads = batches  # the batches rotate as the gradients do in JaxCase
        heads = cfg["heads"]

        def step(params, state, tokens):
            unpacked = (lambda q: q.unpack()) if how == "pack" else (lambda q: q)
            loss, grads = jax.value_and_grad(lambda q: lm_loss(unpacked(q), tokens, heads))(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        start = time.perf_counter()
        jitted = jax.jit(step, donate_argnums=(0, 1))
        self.fn = jitted.lower(self.params, self.state, batches[0]).compile()
        self.compile_s = time.perf_counter() - start
        self.calls = 0
        self.loss = None

    def launch(self) -> None:
        tokens = self.grads[self.calls % len(self.grads)]
        self.calls += 1
        self.params, self.state, self.loss = self.fn(self.params, self.state, tokens)

    def wait(self) -> None:
        jax.block_until_ready((self.params, self.state, self.loss))


def run_train(ctx) -> dict:
    cfg = lm_config(ctx.quick)
    out = {"section": "train", "config": cfg, "skipped": {}, "cases": {}}
    options = TRAIN_QUICK if ctx.quick else TRAIN
    if time.monotonic() > ctx.deadline:
        out["skipped"] = {c: "time budget of the section spent" for c in options}
        return out
    print(f"\n== train: LM {cfg}", flush=True)
    shape = (cfg["batch"], cfg["seq"] + 1)
    batches = [
        jax.random.randint(jax.random.key(100 + i), shape, 0, cfg["vocab"]) for i in range(4)
    ]
    cases = {}
    for name in options:
        if time.monotonic() > ctx.deadline:
            out["skipped"][name] = "time budget of the section spent"
            continue
        try:
            cases[name] = TrainCase(name, cfg, batches)
        except Exception as exc:
            ctx.record(out, name, exc)
    out["params"] = n_params(jax.eval_shape(lambda: lm_init(cfg)))
    timings = measure(cases, ctx, out)
    tokens = cfg["batch"] * cfg["seq"]
    for name, (samples, pipelined) in timings.items():
        case = cases[name]
        out["cases"][name] = {
            "compile_s": case.compile_s,
            "state_bytes": case.state_bytes,
            "per_call_ms": 1e3 * statistics.median(samples),
            "pipelined_ms": 1e3 * statistics.median(pipelined),
            "tokens_per_s": tokens / statistics.median(samples),
            "loss_after": float(case.loss),
        }
        print(f"   {name:34s} {out['cases'][name]['tokens_per_s']:12.0f} tokens/s", flush=True)
    cases.clear()
    free()
    return out


# --------------------------------------------------------------------------- verdicts


def verdicts(results: dict) -> list:
    """The goals of issue 11, each met or missed by how much (printed, never asserted)."""
    groups = {(g["section"], g.get("tree")): g for g in results["groups"]}
    probe = results["probe_GBps"]
    out = []

    def case(section, tree, name):
        return groups.get((section, tree), {}).get("cases", {}).get(name, {})

    def goal(text, value, target, met, unit=""):
        out.append({"goal": text, "value": value, "target": target, "met": met, "unit": unit})

    for tree in ("one_256M", "many_4M", "gpt2_small", "transformer_1B"):
        got = case("fp32", tree, "adamx.adamw").get("achieved_GBps")
        if got is not None:
            frac = got / probe
            goal(f"{tree}: adamx.adamw bandwidth / copy probe", frac, 0.85, frac >= 0.85)
    for tree in ("one_256M", "many_4M", "gpt2_small", "transformer_1B", "leaves_4000"):
        section = "many_leaf" if tree == "leaves_4000" else "fp32"
        mine = case(section, tree, "adamx.adamw").get("per_call_ms")
        for peer in ("optax.adamw", "torch fused"):
            theirs = case(section, tree, peer).get("per_call_ms")
            if mine and theirs:
                ratio = mine / theirs
                goal(f"{tree}: adamx.adamw / {peer} time", ratio, 1.0, ratio <= 1 + NOISE)
    for tree in ("one_256M", "gpt2_small", "transformer_1B"):
        fp32 = case("low_memory", tree, "adamx.adamw").get("per_call_ms")
        for name, limit in (("adamx 8-bit moments", 1.0), ("adamx bf16 params + SR", 1.10)):
            t = case("low_memory", tree, name).get("per_call_ms")
            if fp32 and t:
                tol = NOISE if limit == 1.0 else 0.0
                goal(f"{tree}: {name} / fp32 time", t / fp32, limit, t / fp32 <= limit + tol)
    many = {c: case("many_leaf", "leaves_4000", c).get("per_call_ms") for c in MANY_LEAF}
    if many["adamx.pack"] and many["optax.adamw"]:
        speedup = many["optax.adamw"] / many["adamx.pack"]
        goal("leaves_4000: per-leaf optax / adamx.pack (speed-up)", speedup, 5.0, speedup >= 5.0)
    for c in ("adamx.pack", "adamx.multi_tensor"):
        if many[c] and many["optax.flatten"]:
            ratio = many[c] / many["optax.flatten"]
            goal(f"leaves_4000: {c} / optax.flatten time", ratio, 1.0, ratio < 1.0)
    return out


# --------------------------------------------------------------------------- report


def short_table(results: dict) -> str:
    """The table printed last (and, from committed files, written to the README)."""
    probe = results["probe_GBps"]
    cond = results["conditions"]
    lines = [
        f"{cond['device_kind']} ({cond['backend']}), jax {cond['jax']}, torch {cond['torch']}, "
        f"{cond['date_utc']}; copy probe {probe:.0f} GB/s (read + written)",
        "",
        "| tree | floor (28 B/param) | optax.adamw | adamx.adamw | torch fused | torch foreach "
        "| adamx.pack | adamx.multi_tensor | optax.flatten |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cols = [*FP32, "adamx.pack", "adamx.multi_tensor", "optax.flatten"]
    for g in results["groups"]:
        if g["section"] not in ("fp32", "many_leaf") or "params" not in g:
            continue
        floor = BYTES_FP32_ADAMW * g["params"] / probe / 1e6
        cells = []
        for c in cols:
            r = g["cases"].get(c, {})
            if "per_call_ms" not in r:
                cells.append("skipped" if c in g["skipped"] else "-")
                continue
            cell = f"{r['per_call_ms']:.3f} ms ({r['achieved_GBps'] / probe:.0%})"
            if r["compile_s"] is not None and g["section"] == "many_leaf":
                cell += f", compile {r['compile_s']:.1f} s"
            cells.append(cell)
        lines.append(f"| {g['label']} | {floor:.3f} ms | " + " | ".join(cells) + " |")
    lines += ["", "| low memory | " + " | ".join(LOW_MEMORY) + " |"]
    lines.append("|---" * (len(LOW_MEMORY) + 1) + "|")
    for g in results["groups"]:
        if g["section"] != "low_memory" or "params" not in g:
            continue
        cells = []
        for c in LOW_MEMORY:
            r = g["cases"].get(c, {})
            if "per_call_ms" not in r:
                cells.append("skipped" if c in g["skipped"] else "-")
                continue
            per_param = r["state_bytes"] / g["params"]
            share = r["achieved_GBps"] / probe
            cells.append(f"{r['per_call_ms']:.3f} ms ({share:.0%}), state {per_param:.2f} B/param")
        lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")
    train = next((g for g in results["groups"] if g["section"] == "train"), None)
    if train and train["cases"]:
        lines += ["", f"Training step, LM {train['config']}: tokens/s (compile s)", ""]
        lines += ["| option | tokens/s | per step | compile |", "|---|---|---|---|"]
        for c, r in train["cases"].items():
            lines.append(
                f"| {c} | {r['tokens_per_s']:.0f} | {r['per_call_ms']:.2f} ms "
                f"| {r['compile_s']:.1f} s |"
            )
    lines += ["", "| goal | value | target | verdict |", "|---|---|---|---|"]
    for v in results["verdicts"]:
        verdict = "met" if v["met"] else f"MISSED ({v['value'] / v['target'] - 1:+.0%})"
        lines.append(f"| {v['goal']} | {v['value']:.3f} | {v['target']} | {verdict} |")
    skipped = [(g, c, why) for g in results["groups"] for c, why in g["skipped"].items()]
    if skipped:
        lines += ["", "Skipped:"]
        lines += [
            f"* {g['section']} / {g.get('label', '')} / {c}: {why[:120]}" for g, c, why in skipped
        ]
    if results["errors"]:
        lines += ["", f"ERRORS: {len(results['errors'])} (see the JSON)"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    probe = results["probe_GBps"]
    groups = [g for g in results["groups"] if g["section"] in ("fp32", "many_leaf", "low_memory")]
    groups = [g for g in groups if g["cases"]]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    names = sorted({c for g in groups for c in g["cases"] if "achieved_GBps" in g["cases"][c]})
    width = 0.8 / max(len(names), 1)
    for j, c in enumerate(names):
        xs = [i for i, g in enumerate(groups) if "achieved_GBps" in g["cases"].get(c, {})]
        ys = [groups[i]["cases"][c]["achieved_GBps"] / probe for i in xs]
        axes[0].bar(np.array(xs) + (j - len(names) / 2) * width, ys, width, label=c)
    labels = [f"{g['section']}\n{g['label']}" for g in groups]
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_xticks(range(len(labels)), labels, fontsize=6, rotation=30, ha="right")
    axes[0].set_ylabel("bytes moved per step / time, as a fraction of the copy probe")
    axes[0].legend(fontsize=6)
    train = next((g for g in results["groups"] if g["section"] == "train"), None)
    if train and train["cases"]:
        cs = list(train["cases"])
        axes[1].barh(cs, [train["cases"][c]["tokens_per_s"] for c in cs])
        axes[1].set_xlabel("training step, tokens/s (higher is better)")
        axes[1].tick_params(axis="y", labelsize=7)
    fig.suptitle(
        f"adamx on {results['conditions']['device_kind']}, {results['conditions']['date_utc']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def conditions() -> dict:
    dev = jax.devices()[0]
    info = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device_kind": dev.device_kind,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "optax": optax.__version__,
        "adamx": adamx.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_cuda": torch.version.cuda if torch is not None else None,
        "torch_device": (
            torch.cuda.get_device_name()
            if torch is not None and torch.cuda.is_available()
            else None
        ),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        info["memory_bytes_limit"] = dev.memory_stats().get("bytes_limit")
    except Exception:  # CPU: no memory stats
        info["memory_bytes_limit"] = None
    try:  # jax, jaxlib, numpy, python and (on a GPU) nvidia-smi's output
        info["environment"] = jax.print_environment_info(return_string=True)
    except Exception as exc:
        info["environment"] = f"unavailable: {exc}"
    return info


class Context:
    """Run settings and the shared error list."""

    def __init__(self, args):
        self.quick = args.quick
        self.trees = trees(args.quick)
        self.rounds = 2 if args.quick else 3
        self.warmup = 2 if args.quick else 5
        self.samples = (3, 5) if args.quick else (10, 60)  # per contender per round
        self.target_s = 0.01 if args.quick else 0.1
        self.pipeline = 3 if args.quick else 10
        self.deadline = float("inf")
        self.errors = []

    def record(self, out: dict, name: str, exc: BaseException) -> None:
        kind, text = failure(exc)
        out["skipped"][name] = text if kind == "skipped" else "error (see errors)"
        if kind == "error":
            self.errors.append(
                {"where": f"{out['section']} / {out.get('tree')} / {name}", "text": text}
            )
        print(f"   {name}: {kind}: {text.splitlines()[-1] if text else ''}", flush=True)
        free()


def run(args) -> dict:
    ctx = Context(args)
    start = time.monotonic()
    probe_n = (1 << 20) if args.quick else (1 << 28)  # 1 GiB on a GPU
    results = {"conditions": conditions(), "hyperparameters": HYPER, "quick": args.quick}
    results["probe_before"] = copy_probe(probe_n, 5 if args.quick else 30)
    print(f"copy probe: {results['probe_before']}", flush=True)
    plan = {  # --quick: the same code paths on fewer (and tiny) trees
        "fp32": [(t, FP32) for t in ("one_256M", "many_4M", "gpt2_small", "transformer_1B")],
        "many_leaf": [("leaves_4000", MANY_LEAF)],
        "low_memory": [(t, LOW_MEMORY) for t in ("one_256M", "gpt2_small", "transformer_1B")],
    }
    plan = {k: [(t, names) for t, names in v if t in ctx.trees] for k, v in plan.items()}
    if args.quick:
        plan["low_memory"] = [("gpt2_small", LOW_MEMORY)]
    share = 0.0
    groups = []
    for section in args.sections:
        share += SECTIONS[section]
        ctx.deadline = start + share * args.budget_s
        jobs = [(run_train, (ctx,))] if section == "train" else []
        jobs += [(run_group, (section, tree, names, ctx)) for tree, names in plan.get(section, [])]
        for job, job_args in jobs:
            try:
                groups.append(job(*job_args))
            except Exception as exc:  # a bug in one group must not lose the others' results
                ctx.errors.append({"where": f"{section} / {job_args[1]}", "text": failure(exc)[1]})
                free()
    results["probe_after"] = copy_probe(probe_n, 5 if args.quick else 30)
    results["probe_GBps"] = max(
        results["probe_before"]["jax_GBps"], results["probe_after"]["jax_GBps"]
    )
    results["groups"] = groups
    results["errors"] = ctx.errors
    results["verdicts"] = verdicts(results)
    results["wall_s"] = time.monotonic() - start
    return results


def out_path(out_dir: Path, results: dict) -> Path:
    cond = results["conditions"]
    device = "".join(c if c.isalnum() else "_" for c in cond["device_kind"]).strip("_")
    stem = f"{cond['date_utc'][:10]}_{device}" + ("_quick" if results["quick"] else "")
    path, i = out_dir / f"{stem}.json", 2
    while path.exists():  # never overwrite an earlier run
        path, i = out_dir / f"{stem}_{i}.json", i + 1
    return path


def readme_table(results_dir: Path, include_quick: bool = False) -> str:
    """The short table of every committed results file (not ``--quick`` ones), newest first."""
    files = sorted(results_dir.glob("*.json"), reverse=True)
    files = [p for p in files if include_quick or not json.loads(p.read_text()).get("quick")]
    if not files:
        return "No GPU results yet: the table appears here after the first GPU run."
    parts = []
    for p in files:
        results = json.loads(p.read_text())
        parts.append(f"**`results/gpu/{p.name}`**\n\n" + short_table(results))
    return "\n\n".join(parts)


def write_readme(table: str) -> None:
    """Replace the README's generated region (between the two markers) with ``table``."""
    text = README.read_text()
    head, rest = text.split(TABLE_BEGIN)
    _, tail = rest.split(TABLE_END)
    README.write_text(f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, same code (CPU smoke)")
    parser.add_argument("--out", default=str(RESULTS), help="directory of the JSON and PNG")
    parser.add_argument("--budget-s", type=float, default=None, help="measuring time (default 360)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="subset of " + ",".join(SECTIONS)
    )
    parser.add_argument("--table", action="store_true", help="print the table of committed results")
    parser.add_argument("--write-readme", action="store_true", help="with --table: into README.md")
    parser.add_argument("--results", default=str(RESULTS), help="with --table: the results folder")
    parser.add_argument("--include-quick", action="store_true", help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    if args.table:
        table = readme_table(Path(args.results), args.include_quick)
        if args.write_readme:
            write_readme(table)
        print(table)
        return 0
    args.sections = [s.strip() for s in args.sections.split(",")]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {list(SECTIONS)}")
    args.budget_s = args.budget_s or (600.0 if args.quick else 360.0)
    results = run(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_path(out_dir, results)
    path.write_text(json.dumps(results, indent=1))
    png = path.with_suffix(".png") if plot(results, path.with_suffix(".png")) else None
    print(f"\nwrote {path}" + (f" and {png}" if png else "") + f" ({results['wall_s']:.0f} s)\n")
    print(short_table(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
