"""Low-memory Adam on two real tasks: quality, bytes per parameter and step time vs fp32 AdamW.

One command::

    python benchmarks/low_memory.py            # full run (~15 min on 2 CPU cores)
    python benchmarks/low_memory.py --quick    # few steps, 2 seeds, fewer options (smoke test)
    python benchmarks/low_memory.py --table --write-readme   # tables from the JSON into the docs

Tasks (no downloads):
  * mlp: a 64-256-256-10 MLP classifying scikit-learn's bundled digits (8 seeds);
  * lm:  a 2-layer decoder-only transformer on generated sequences (a sparse Markov chain
         whose first half is repeated: an induction-head task, floor 0.67 nats; 3 seeds, one
         for the 8-bit map study, the fp32 yardstick and the options shown to fail).

Options: fp32 AdamW; bf16 moments (round-to-nearest and stochastic); 8-bit blockwise moments
(the default float maps, alternative maps for v, Dettmers' dynamic map); bf16 parameters
without an fp32 copy (round-to-nearest, stochastic rounding, Kahan); and issue 14's
configurations (``CONFIGS``): 4-bit m and v, 8-bit m with a factored v, both with bf16
parameters and stochastic rounding, and ``adamx.adafactor`` against ``optax.adafactor``.

Quality is judged on paired seeds: every option runs with the same init and data order as
fp32 AdamW on each seed; d_s = L_option,s / L_fp32,s - 1 (final loss), and the verdict "not
worse than fp32 by more than tol" is mean + 2 SE <= tol (``CRITERION``). Bytes per parameter
are parameters plus optimizer state (``adamx.training_nbytes``) for the whole model, for its
large tensors (>= 4,096 elements) and for one 4096 x 4096 tensor. Step times relative to fp32
AdamW on this CPU, the optimizer update alone (4 x 1024^2 parameters) and a whole LM training
step, every option timed in each of 5 interleaved rounds (medians).

Writes benchmarks/results/low_memory.json and .png (``low_memory_quick.*`` with --quick).
"""

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits

import adamx

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
LARGE = 4096  # "large tensors": parameter leaves of at least this many elements
# The models are small (every LM matrix has a 64-long axis): v is factored down to axes of 32
# so that their matrices are factored at all (with optax's 128 the LM would factor nothing).
FACTOR_MIN_DIM = 32
# v maps measured against each other (map_errors; some also trained): blockwise_8bit kwargs.
V8_MAPS = {
    "e4m4": {},
    "e4m4_nearest": {"stochastic": False},
    "e5m3": {"qmap": "e5m3"},
    "sqrt_e4m4": {"sqrt": True},
    "dynamic": {"qmap": "dynamic"},
    "linear": {"qmap": "linear"},
    "sqrt_dynamic": {"qmap": "dynamic", "sqrt": True},
    "sqrt_linear": {"qmap": "linear", "sqrt": True},
}
# Moment formats by name, built when an option is built (not at import).
FORMATS = {
    "fp32": lambda: jnp.float32,
    "bf16": lambda: jnp.bfloat16,
    "bf16_upcast": lambda: adamx.FloatFormat(jnp.bfloat16, upcast=True),
    "sf0": lambda: adamx.stochastic_float(seed=0),
    "sf1": lambda: adamx.stochastic_float(seed=1),
    "m8": lambda: adamx.blockwise_8bit(signed=True),  # E4M3, stochastically rounded
    "m8_sr": lambda: adamx.blockwise_8bit(signed=True, stochastic=True),
    "m8_dynamic": lambda: adamx.blockwise_8bit(signed=True, qmap="dynamic"),
    **{
        f"v8_{name}": (lambda kw=kw: adamx.blockwise_8bit(signed=False, **kw))
        for name, kw in V8_MAPS.items()
    },
    "b4": lambda: adamx.blockwise_4bit(),  # block 128; follows the moment it stores
    # dtype=None: the parameter's dtype widened to float32 (a bf16 factor rounded to nearest
    # cannot decay; the factors are O(n + m), so float32 costs nothing per parameter).
    "factored": lambda: adamx.factored(FACTOR_MIN_DIM),
}


class Option(NamedTuple):
    """One optimizer: adamw(mu_dtype=FORMATS[mu](), nu_dtype=FORMATS[nu]()) chained with a
    final stage (``tail``), on parameters of ``dtype``; or an Adafactor (``alias``)."""

    label: str
    mu: str = "fp32"
    nu: str = "fp32"
    dtype: Any = jnp.float32
    tail: str | None = None  # "sr" (stochastic_rounding) or "kahan"
    alias: str | None = None  # "adafactor" (adamx) or "optax_adafactor"
    init_offset: int = 0  # the fp32 yardstick: another initialization


BF16 = jnp.bfloat16
OPTIONS = {
    "fp32": Option("fp32 AdamW (reference)"),
    "fp32_seed1": Option("fp32, init seed + 1 (noise yardstick)", init_offset=1),
    "bf16_moments": Option("bf16 moments, round-to-nearest", "bf16_upcast", "bf16"),
    "bf16_moments_sr": Option("bf16 moments, `stochastic_float`", "sf0", "sf1"),
    "8bit": Option("8-bit, default (m E4M3, v E4M4, both stochastic)", "m8", "v8_e4m4"),
    "8bit_v_e4m4_nearest": Option("8-bit, v E4M4 rounded to nearest", "m8", "v8_e4m4_nearest"),
    "8bit_v_e5m3": Option("8-bit, v E5M3", "m8", "v8_e5m3"),
    "8bit_v_sqrt_e4m4": Option("8-bit, v √ + E4M4", "m8", "v8_sqrt_e4m4"),
    "8bit_dynamic_v_dynamic": Option(
        "8-bit, dynamic maps (an earlier default)", "m8_dynamic", "v8_dynamic"
    ),
    "bf16_params_nearest": Option("bf16 params, round-to-nearest", dtype=BF16),
    "bf16_params_sr": Option("bf16 params + `stochastic_rounding`", dtype=BF16, tail="sr"),
    "bf16_params_kahan": Option("bf16 params + `kahan_summation`", dtype=BF16, tail="kahan"),
    "bf16_params_sr_8bit": Option("bf16 params + SR, 8-bit m and v", "m8", "v8_e4m4", BF16, "sr"),
    # Issue 14's configurations.
    "4bit": Option("fp32 params, 4-bit m and v", "b4", "b4"),
    "8bit_m_factored_v": Option("fp32 params, 8-bit m, factored v", "m8", "factored"),
    "bf16_sr_8bit_m_factored_v": Option(
        "bf16 params + SR, 8-bit m, factored v", "m8", "factored", BF16, "sr"
    ),
    "bf16_sr_4bit_m_factored_v": Option(
        "bf16 params + SR, 4-bit m, factored v", "b4", "factored", BF16, "sr"
    ),
    # Beside them: which moment 4 bits cost (8-bit m passes alone, see "8bit").
    "8bit_m_4bit_v": Option("fp32 params, 8-bit m, 4-bit v", "m8", "b4"),
    "adafactor": Option("`adamx.adafactor` (optax defaults)", alias="adafactor"),
    "optax_adafactor": Option("`optax.adafactor` (optax defaults)", alias="optax_adafactor"),
}
CALLS = {  # what a user writes, for the tables
    "fp32": "adamx.adamw(lr)",
    "bf16_moments_sr": "adamw(lr, mu_dtype=stochastic_float(), nu_dtype=stochastic_float())",
    "8bit": "adamw(lr, mu_dtype=blockwise_8bit(), nu_dtype=blockwise_8bit())",
    "bf16_params_sr": "bf16 params; chain(adamw(lr), stochastic_rounding(seed))",
    "bf16_params_kahan": "bf16 params; chain(adamw(lr), kahan_summation())",
    "bf16_params_sr_8bit": "bf16 params; chain(adamw(lr, mu_dtype=blockwise_8bit(), "
    "nu_dtype=blockwise_8bit()), stochastic_rounding(seed))",
    "4bit": "adamw(lr, mu_dtype=blockwise_4bit(), nu_dtype=blockwise_4bit())",
    "8bit_m_factored_v": "adamw(lr, mu_dtype=blockwise_8bit(), nu_dtype=factored())",
    "8bit_m_4bit_v": "adamw(lr, mu_dtype=blockwise_8bit(), nu_dtype=blockwise_4bit())",
    "bf16_sr_8bit_m_factored_v": "bf16 params; chain(adamw(lr, mu_dtype=blockwise_8bit(), "
    "nu_dtype=factored()), stochastic_rounding(seed))",
    "bf16_sr_4bit_m_factored_v": "bf16 params; chain(adamw(lr, mu_dtype=blockwise_4bit(), "
    "nu_dtype=factored()), stochastic_rounding(seed))",
    "adafactor": "adamx.adafactor(lr)",
}


class Config(NamedTuple):
    """An issue-14 configuration: its bytes/param target (large tensors) and loss tolerance."""

    target: float | None  # params + state bytes per parameter, large tensors (None: optax's)
    target_text: str
    tol: float | None  # None: identical to optax (bit for bit)


CONFIGS = {
    "4bit": Config(5.1, "4 + ~1.1 (≤ 5.1)", 0.01),
    "8bit_m_factored_v": Config(5.05, "4 + ~1.0 (≤ 5.05)", 0.01),
    "bf16_sr_8bit_m_factored_v": Config(3.1, "≤ 3.1", 0.01),
    "bf16_sr_4bit_m_factored_v": Config(2.6, "≤ 2.6", 0.02),
    "adafactor": Config(None, "same as optax", None),
}
TOLERANCE = {"bf16_moments": 0.005, "bf16_moments_sr": 0.005}  # others: 0.01 or CONFIGS'
# Why a configuration misses a goal (written after reading the run; shown by the tables).
WHY = {
    "4bit:quality": (
        "on the MLP both means are below fp32's, but the seed-to-seed spread (SE ≈ 2%) is "
        "wider than the 1% tolerance, so 8 seeds cannot show 'not worse by 1%'; the 4-bit m "
        "(E3M0: codes a power of two apart, rounded stochastically) is the noisy part: 8-bit m "
        "with 4-bit v meets 1% on both tasks"
    ),
    "8bit_m_factored_v:quality": (
        "MLP test loss above fp32's by more than its error bar (train: mean below fp32's, "
        "missed by its spread). The rank-1 v r cᵀ/mean(r) misjudges the first layer, 64 pixel "
        "rows of which many are rarely lit (factored here: the run factors axes ≥ 32), and Adam "
        "has no update clipping to bound those steps (Adafactor clips by block RMS); in a pilot "
        "(8 seeds) optax's default threshold, which keeps that layer's full v, removed most of "
        "the gap. The LM, every matrix factored, is within tol"
    ),
    "bf16_sr_8bit_m_factored_v:quality": "the factored v's MLP test-loss cost, as in the row above",
    "bf16_sr_4bit_m_factored_v:quality": (
        "the factored v's MLP test-loss cost (two rows above) plus the 4-bit m's noise"
    ),
    "model_bytes": (
        "✗ beside a model's large tensors: its short axes cost more than the 4096² limit "
        "(4-bit blocks of 64, not 128, on the LM's 64-wide matrices; float32 factors of "
        "64-row matrices); the targets are judged, and met, at 4096²."
    ),
}
QUICK_OPTIONS = ("fp32", "8bit", "bf16_params_sr", *CONFIGS, "optax_adafactor")
# The 8-bit map study (an earlier issue's) and the options shown to fail or kept as yardsticks:
# the LM runs them on one seed (as it ran every option before), to keep the run short.
MAP_STUDY = ("8bit_v_e4m4_nearest", "8bit_v_e5m3", "8bit_v_sqrt_e4m4", "8bit_dynamic_v_dynamic")
ONE_LM_SEED = (*MAP_STUDY, "fp32_seed1", "bf16_moments", "bf16_params_nearest")
# Step times: the references and every configuration (not those).
UNTIMED = ONE_LM_SEED

# ---------------------------------------------------------------------------
# Tasks: (init params, loss(params, batch), train batches, eval batches)


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
    evals = {
        "train": (jnp.asarray(x[train]), jnp.asarray(y[train])),
        "test": (jnp.asarray(x[test]), jnp.asarray(y[test])),
    }
    return init, loss, batches, evals


def lm_task(steps, seed=0, batch=16, vocab=64, seq=32, d=64, layers=2, heads=4):
    """The induction-head LM. The chain and the test set are fixed; ``seed`` draws the
    training sequences (and, in ``train``, the initialization)."""
    rng = np.random.default_rng(1)
    successors = np.stack([rng.choice(vocab, 4, replace=False) for _ in range(vocab)])

    def sequences(n, rng):
        half = np.empty((n, seq // 2), np.int32)
        half[:, 0] = rng.integers(vocab, size=n)
        for t in range(1, seq // 2):
            half[:, t] = successors[half[:, t - 1], rng.integers(4, size=n)]
        return np.concatenate([half, half], axis=1)  # the second half repeats the first

    def init(key):
        k = iter(jax.random.split(key, 4 + 4 * layers))

        def normal(shape, fan_in):
            return jax.random.normal(next(k), shape) / np.sqrt(fan_in)

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

    def split(a, n, t):
        return a.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3)

    def forward(params, tokens):
        p = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        h = p["embed"][tokens] + p["pos"][None, : tokens.shape[1]]
        n, t, _ = h.shape
        mask = jnp.tril(jnp.ones((t, t), bool))
        for blk in p["blocks"]:
            q, k_, v = jnp.split(layer_norm(h, blk["ln1"]) @ blk["qkv"], 3, axis=-1)
            att = split(q, n, t) @ split(k_, n, t).transpose(0, 1, 3, 2) / np.sqrt(d // heads)
            att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
            h = h + (att @ split(v, n, t)).transpose(0, 2, 1, 3).reshape(n, t, d) @ blk["out"]
            h = h + jax.nn.gelu(layer_norm(h, blk["ln2"]) @ blk["up"]) @ blk["down"]
        return layer_norm(h, p["ln_f"]) @ p["unembed"]

    def loss(params, tokens):
        logits = forward(params, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    evals = {"test": jnp.asarray(sequences(512, np.random.default_rng(2)))}
    data = np.random.default_rng(100 + seed)
    batches = jnp.asarray(sequences(steps * batch, data).reshape(steps, batch, seq))
    return init, loss, batches, evals


class Task(NamedTuple):
    make: Any  # (steps, seed) -> (init, loss, batches, evals)
    steps: int
    lr: float  # AdamW's peak learning rate (warmup 5%, cosine decay)
    wd: float
    seeds: int
    adafactor_lr: float  # Adafactor's peak (relative to the parameter scale)


def tasks(quick: bool) -> dict:
    if quick:
        return {
            "mlp": Task(mlp_task, 120, 1e-3, 1e-4, 2, 1e-2),
            "lm": Task(lm_task, 60, 3e-3, 1e-2, 2, 1e-2),
        }
    return {
        "mlp": Task(mlp_task, 1000, 1e-3, 1e-4, 8, 1e-2),
        "lm": Task(lm_task, 600, 3e-3, 1e-2, 3, 1e-2),
    }


# ---------------------------------------------------------------------------
# Training


def make_tx(name: str, task: Task) -> optax.GradientTransformation:
    o = OPTIONS[name]
    if o.alias:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, task.adafactor_lr, task.steps // 20, task.steps
        )
        alias = adamx.adafactor if o.alias == "adafactor" else optax.adafactor
        return alias(learning_rate=lr)
    lr = optax.warmup_cosine_decay_schedule(0.0, task.lr, task.steps // 20, task.steps)
    tx = adamx.adamw(lr, weight_decay=task.wd, mu_dtype=FORMATS[o.mu](), nu_dtype=FORMATS[o.nu]())
    if o.tail == "sr":
        return optax.chain(tx, adamx.stochastic_rounding(seed=0))
    if o.tail == "kahan":
        return optax.chain(tx, adamx.kahan_summation())
    return tx


def available(names, task: Task) -> tuple[dict, dict]:
    """The options that build (a format still being written raises NotImplementedError)."""
    ok, skipped = {}, {}
    for name in names:
        try:
            make_tx(name, task)
            ok[name] = OPTIONS[name]
        except NotImplementedError as e:
            skipped[name] = str(e)
    return ok, skipped


_RUNS = {}  # (task, option, steps) -> jitted training run, compiled once for all seeds


def train(task_name: str, task: Task, option: str, seed: int = 0) -> dict:
    """Train one option on one seed (the init key and the data order)."""
    init, loss, batches, evals = task.make(task.steps, seed)
    o = OPTIONS[option]
    params = jax.tree.map(lambda a: a.astype(o.dtype), init(jax.random.key(seed + o.init_offset)))
    if (task_name, option, task.steps) not in _RUNS:
        tx = make_tx(option, task)

        def step(carry, batch):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        @jax.jit
        def run(params, batches, evals):
            (params, state), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
            return params, state, losses, {k: loss(params, b) for k, b in evals.items()}

        _RUNS[task_name, option, task.steps] = run

    t0 = time.perf_counter()
    params, state, losses, final = _RUNS[task_name, option, task.steps](params, batches, evals)
    losses.block_until_ready()
    return {
        "losses": np.asarray(losses).tolist(),
        "final": {k: float(v) for k, v in final.items()},
        "seconds": time.perf_counter() - t0,
        "_state": state,
        "_params": params,
    }


def budgets(task_name: str, task: Task, names) -> dict:
    """Params + optimizer state bytes per parameter (``adamx.training_nbytes``) of each
    option: the whole model, its large tensors (>= LARGE elements) and one 4096² tensor."""
    init = task.make(2, 0)[0]
    out = {}
    for name in names:
        dtype = OPTIONS[name].dtype
        params = jax.tree.map(
            lambda a, dtype=dtype: jax.ShapeDtypeStruct(a.shape, dtype),
            jax.eval_shape(init, jax.random.key(0)),
        )
        big = {"w": jax.ShapeDtypeStruct((4096, 4096), dtype)}
        init_state = make_tx(name, task).init
        whole = adamx.training_nbytes(params, jax.eval_shape(init_state, params))
        large = adamx.training_nbytes(params, jax.eval_shape(init_state, params), min_size=LARGE)
        ref = adamx.training_nbytes(big, jax.eval_shape(init_state, big), min_size=LARGE)
        out[name] = {
            "whole": whole.per_param,
            "large": large.per_param,
            "4096x4096": ref.per_param,
            "state_whole": whole.state_bytes / whole.n_params,
            "n_params": whole.n_params,
            "n_params_large": large.n_params,
        }
    return out


# ---------------------------------------------------------------------------
# Step time


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


def step_timer(task: Task, option: str, n: int = 20):
    """Timer of one jitted training step (gradient + update + apply) of a task."""
    init, loss, batches, _ = task.make(n, 0)
    params = jax.tree.map(lambda a: a.astype(OPTIONS[option].dtype), init(jax.random.key(0)))
    tx = make_tx(option, task)

    def one(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    one = jax.jit(one, donate_argnums=(0, 1))
    return _timer(one, (params, tx.init(params)), lambda i: batches[i % n])


def optimizer_timer(task: Task, option: str, shapes=((1024, 1024),) * 4):
    """Timer of one jitted, donated optimizer update + apply on 4.2M parameters (no model)."""
    dtype = OPTIONS[option].dtype
    params = [jnp.ones(s, dtype) * 0.1 for s in shapes]
    grads = [jax.random.normal(jax.random.key(i), s, dtype) for i, s in enumerate(shapes)]
    tx = make_tx(option, task)

    def one(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    one = jax.jit(one, donate_argnums=(0, 1))
    return _timer(one, (params, tx.init(params)), lambda i: grads)


def interleaved_times(timers: dict, rounds: int = 5, n: int = 10) -> dict:
    """Median seconds per call of each timer, measured round-robin (shared-machine noise
    then hits all options alike); the order is reversed every other round."""
    samples = {name: [] for name in timers}
    for r in range(rounds):
        for name in list(timers)[:: -1 if r % 2 else 1]:
            samples[name].append(timers[name](n))
    return {name: float(np.median(v)) for name, v in samples.items()}


# ---------------------------------------------------------------------------
# The second moment's map: error of the Adam direction on real moments


def map_errors(state) -> dict:
    """Quantize a trained fp32 state's v with each map; error of m / (sqrt(v) + eps)."""
    moments = state[0]
    mus = [m for m in jax.tree.leaves(moments.mu) if m.size >= 4096]
    nus = [v for v in jax.tree.leaves(moments.nu) if v.size >= 4096]
    eps = 1e-8
    out = {}
    for name in V8_MAPS:
        fmt = FORMATS[f"v8_{name}"]().bind("nu")  # the map as it stores a second moment
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


# ---------------------------------------------------------------------------
# Verdicts

CRITERION = (
    "Paired over seeds: each option runs with the same init and data order as fp32 AdamW on "
    "that seed; d_s = L_option,s / L_fp32,s - 1 (final loss), mean and SE = std(d, ddof=1) / "
    "sqrt(n). 'not_worse' (the target): mean + 2 SE <= tol, i.e. not worse than fp32 by more "
    "than tol at ~97.5% one-sided confidence. 'within_two_sided': |mean| + 2 SE <= tol (also "
    "not better by more than tol). tol = 0.5% for bf16 moments, 2% for bf16 params + SR with "
    "4-bit m and factored v, 1% otherwise. MLP: 8 seeds; LM: 3 seeds."
)


def tolerance(option: str) -> float:
    config = CONFIGS.get(option)
    if config is not None and config.tol is not None:
        return config.tol
    return TOLERANCE.get(option, 0.01)


def judge(diffs, tol: float) -> dict:
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


def summarize(runs: list, ref: list, option: str) -> dict:
    """Summary of one option's runs (one per seed) against fp32's runs on the same seeds."""
    tol = tolerance(option)
    return {
        **{f"final_{k}": float(np.mean([r["final"][k] for r in runs])) for k in runs[0]["final"]},
        **{
            f"rel_diff_{k}": judge(
                [r["final"][k] / f["final"][k] - 1 for r, f in zip(runs, ref, strict=True)], tol
            )
            for k in runs[0]["final"]
        },
        "train_seconds": float(sum(r["seconds"] for r in runs)),
    }


def identity(runs_a: list, runs_b: list) -> dict:
    """Are two options' final parameters the same bits on every seed?"""
    per_seed = []
    for a, b in zip(runs_a, runs_b, strict=True):
        pa, pb = jax.tree.leaves(a["_params"]), jax.tree.leaves(b["_params"])
        differ = sum(
            int(np.sum(np.asarray(x) != np.asarray(y))) for x, y in zip(pa, pb, strict=True)
        )
        gap = max(
            float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
            for x, y in zip(pa, pb, strict=True)
        )
        per_seed.append({"elements_differing": differ, "max_abs_diff": gap})
    return {"identical": all(s["elements_differing"] == 0 for s in per_seed), "per_seed": per_seed}


def config_verdicts(result: dict) -> dict:
    """Issue 14's table: each configuration's bytes and quality against its goal.

    The bytes goal is judged on one 4096 x 4096 tensor (the large-tensor limit the targets
    are written for); the models' own large tensors (>= LARGE elements) are judged beside it
    (``model_bytes_met``), where short axes (blocks shorter than the block size, factors of
    64-row matrices) cost more per parameter. Quality: mean + 2 SE <= tol on every loss.
    """
    out = {}
    for name, config in CONFIGS.items():
        if name not in result["budgets"]["mlp"]:
            out[name] = {"skipped": result["skipped"].get(name, "not run")}
            continue
        if config.tol is None and "adafactor_identity" not in result:
            out[name] = {"skipped": "compared with optax_adafactor, which was not run"}
            continue
        scopes = {"4096x4096": ("mlp", "4096x4096"), "mlp_large": ("mlp", "large"),
                  "lm_large": ("lm", "large")}  # fmt: skip
        v = {"bytes": {k: result["budgets"][t][name][f] for k, (t, f) in scopes.items()}}
        if config.target is not None:
            v["limit"] = dict.fromkeys(scopes, config.target)
        else:  # Adafactor: no more than optax.adafactor holds
            ref = "optax_adafactor"
            v["limit"] = {k: result["budgets"][t][ref][f] + 1e-9 for k, (t, f) in scopes.items()}
        met = {k: v["bytes"][k] <= v["limit"][k] for k in scopes}
        v["bytes_met"] = met["4096x4096"]
        v["model_bytes_met"] = {k: met[k] for k in ("mlp_large", "lm_large")}
        if config.tol is not None:
            v["quality_met"] = {
                f"{t}_{k[9:]}": s["not_worse"]
                for t in result["summary"]
                for k, s in result["summary"][t][name].items()
                if k.startswith("rel_diff_")
            }
        else:
            same = result["adafactor_identity"]
            v["quality_met"] = {t: same[t]["identical"] for t in same}
        v["quality_all_met"] = all(v["quality_met"].values())
        v["met"] = v["bytes_met"] and v["quality_all_met"]
        out[name] = v
    return out


# ---------------------------------------------------------------------------
# Tables (from a results JSON; no number typed by hand)

MARKERS = {
    "low_memory": ("<!-- low_memory:begin -->", "<!-- low_memory:end -->"),
    "low_memory_budget": ("<!-- low_memory_budget:begin -->", "<!-- low_memory_budget:end -->"),
    "low_memory_options": ("<!-- low_memory_options:begin -->", "<!-- low_memory_options:end -->"),
}


def _delta(s: dict | None) -> str:
    if s is None:
        return "-"
    mark = "✓" if s["not_worse"] else "✗"
    if s["n_seeds"] == 1:
        return f"{s['mean'] * 100:+.2f}% (1 seed) {mark}"
    return f"{s['mean'] * 100:+.2f} ± {s['se'] * 100:.2f}% {mark}"


def _ratio(result: dict, kind: str, name: str) -> str:
    r = result["step_time_relative_to_fp32"].get(kind, {}).get(name)
    return f"{r:.2f}×" if r is not None else "-"


def _head(result: dict) -> str:
    c = result["config"]
    t = c["tasks"]
    return (
        f"Run {c['date_utc']} on {c['cpu_count']} CPU cores ({c['machine']}), jax {c['jax']}, "
        f"optax {c['optax']}, adamx at {c['git_commit']}; load average "
        f"{c['load_average_at_start']:.1f} at the start, {c['load_average_at_end']:.1f} at the "
        f"end; {result['total_seconds'] / 60:.1f} min in all. MLP {t['mlp']['steps']} steps × "
        f"{t['mlp']['seeds']} seeds, LM {t['lm']['steps']} steps × {t['lm']['seeds']} seeds (one "
        "for the 8-bit map study, the yardstick and the options shown to fail), "
        "paired with fp32 AdamW on each seed. Δ = mean ± SE of the final loss's relative "
        "difference to fp32 AdamW; ✓ = mean + 2·SE ≤ tol. Factored v with "
        f"`min_dim_size_to_factor={c['factor_min_dim']}` (the models' matrices have 64-long "
        "axes; the default 128 would factor none of the LM's); large tensors: leaves of "
        f"≥ {c['large_tensor_min_size']:,} elements."
        + (" **Quick run (smoke test).**" if result["quick"] else "")
    )


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def config_table(result: dict) -> str:
    """Issue 14's table: bytes/param, quality and step time of each configuration."""
    lines = [
        _head(result),
        "",
        "| configuration | params + state B/param, 4096² tensor | target | MLP large (whole) "
        "| LM large (whole) | MLP train Δ | MLP test Δ | LM test Δ | tol | verdict | "
        "update × fp32 | LM step × fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = result["config_verdicts"]
    for name in ("fp32", *CONFIGS):
        v = verdicts.get(name, {})
        if "skipped" in v:
            lines.append(f"| {OPTIONS[name].label} | skipped: {v['skipped']} |" + " |" * 10)
            continue
        b = {t: result["budgets"][t][name] for t in ("mlp", "lm")}
        s = {t: result["summary"][t][name] for t in ("mlp", "lm")}
        config = CONFIGS.get(name)
        target, tol, verdict = "-", "-", "reference"
        marks = {"4096x4096": "", "mlp_large": "", "lm_large": ""}
        if config is not None:
            target = config.target_text
            tol = f"{config.tol:.0%}" if config.tol is not None else "identical"
            marks = {"4096x4096": " " + _mark(v["bytes_met"]),
                     **{k: " " + _mark(ok) for k, ok in v["model_bytes_met"].items()}}  # fmt: skip
            missed = ([] if v["bytes_met"] else ["bytes"]) + [
                k for k, ok in v["quality_met"].items() if not ok
            ]
            verdict = "met" if v["met"] else "**missed** (" + ", ".join(missed) + ")"
            why = [WHY[k] for k in (f"{name}:quality", f"{name}:bytes") if k in WHY]
            if not v["met"] and why:
                verdict += ": " + "; ".join(why)
        if name == "adafactor":
            same = result["adafactor_identity"]
            n = sum(len(same[t]["per_seed"]) for t in same)
            k = sum(p["elements_differing"] == 0 for t in same for p in same[t]["per_seed"])
            tol = f"identical: {k}/{n} runs bit for bit"
        lines.append(
            f"| {OPTIONS[name].label} | {b['mlp']['4096x4096']:.3f}{marks['4096x4096']} | "
            f"{target} | {b['mlp']['large']:.2f}{marks['mlp_large']} ({b['mlp']['whole']:.2f}) | "
            f"{b['lm']['large']:.2f}{marks['lm_large']} ({b['lm']['whole']:.2f}) | "
            f"{_delta(s['mlp'].get('rel_diff_train'))} | "
            f"{_delta(s['mlp'].get('rel_diff_test'))} | {_delta(s['lm'].get('rel_diff_test'))} | "
            f"{tol} | {verdict} | {_ratio(result, 'optimizer_4M', name)} | "
            f"{_ratio(result, 'lm_step', name)} |"
        )
    notes = [WHY[k] for k in ("model_bytes",) if k in WHY]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def options_table(result: dict) -> str:
    """Every option: quality, bytes and step time (the docs' results table)."""
    lines = [
        "| option | MLP train Δ | MLP test Δ | LM test Δ | tol | params + state B/param "
        "(MLP / LM, whole) | 4096² | update × fp32 | LM step × fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in result["summary"]["mlp"]:
        s = {t: result["summary"][t][name] for t in ("mlp", "lm")}
        b = {t: result["budgets"][t][name] for t in ("mlp", "lm")}
        lines.append(
            f"| {OPTIONS[name].label} | {_delta(s['mlp']['rel_diff_train'])} | "
            f"{_delta(s['mlp']['rel_diff_test'])} | {_delta(s['lm']['rel_diff_test'])} | "
            f"{tolerance(name):.1%} | {b['mlp']['whole']:.2f} / {b['lm']['whole']:.2f} | "
            f"{b['mlp']['4096x4096']:.3f} | {_ratio(result, 'optimizer_4M', name)} | "
            f"{_ratio(result, 'lm_step', name)} |"
        )
    ref = {t: result["summary"][t]["fp32"] for t in ("mlp", "lm")}
    times = result["seconds_per_step"]
    lines += [
        "",
        f"fp32 AdamW's final losses: MLP train {ref['mlp']['final_train']:.5f}, test "
        f"{ref['mlp']['final_test']:.4f}; LM test {ref['lm']['final_test']:.4f} (means over "
        f"seeds). fp32 AdamW's times: update alone {times['optimizer_4M']['fp32'] * 1e3:.2f} ms "
        f"(4 × 1024² parameters, jitted, donated), LM training step "
        f"{times['lm_step']['fp32'] * 1e3:.2f} ms.",
    ]
    if result.get("v_map_errors_on_lm_fp32_state"):
        lines += [
            "",
            "| v map (8-bit) | median rel. error | p99 | max | steps off by >10% |",
            "|---|---|---|---|---|",
        ]
        for name, e in result["v_map_errors_on_lm_fp32_state"].items():
            lines.append(
                f"| `{name}` | {e['median_rel_err']:.2%} | {e['p99_rel_err']:.2%} | "
                f"{e['max_rel_err']:.1%} | {e['frac_over_10pct']:.3%} |"
            )
    return "\n".join(lines)


BUDGET_OPTIONS = (
    "fp32",
    "bf16_params_kahan",
    "bf16_params_sr",
    "bf16_moments_sr",
    "8bit",
    "8bit_m_4bit_v",
    "4bit",
    "8bit_m_factored_v",
    "bf16_params_sr_8bit",
    "bf16_sr_8bit_m_factored_v",
    "bf16_sr_4bit_m_factored_v",
)


def budget_table(result: dict) -> str:
    """The configurations by bytes per parameter, with their measured quality cost."""
    rows = [n for n in BUDGET_OPTIONS if n in result["budgets"]["mlp"]]
    rows.sort(key=lambda n: -result["budgets"]["mlp"][n]["4096x4096"])
    lines = [
        "| params + state B/param, 4096² tensor (LM, whole model) | configuration | MLP train Δ "
        "| MLP test Δ | LM test Δ | tol | verdict | update × fp32 | LM step × fp32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in rows:
        s = {t: result["summary"][t][name] for t in ("mlp", "lm")}
        ok = all(v["not_worse"] for t in s for k, v in s[t].items() if k.startswith("rel_diff_"))
        b = {t: result["budgets"][t][name] for t in ("mlp", "lm")}
        lines.append(
            f"| {b['mlp']['4096x4096']:.2f} ({b['lm']['whole']:.2f}) | `{CALLS[name]}` | "
            f"{_delta(s['mlp']['rel_diff_train'])} | {_delta(s['mlp']['rel_diff_test'])} | "
            f"{_delta(s['lm']['rel_diff_test'])} | {tolerance(name):.1%} | "
            f"{'met' if ok else '**missed**'} | {_ratio(result, 'optimizer_4M', name)} | "
            f"{_ratio(result, 'lm_step', name)} |"
        )
    return "\n".join(lines)


def tables(result: dict) -> dict:
    result = {**result, "config_verdicts": config_verdicts(result)}  # derived: recomputed
    return {
        "low_memory": config_table(result),
        "low_memory_budget": budget_table(result),
        "low_memory_options": options_table(result),
    }


def write_markers(texts: dict, paths: list) -> list:
    """Replace the region between each pair of MARKERS in every file that has them."""
    written = []
    for path in paths:
        text = original = path.read_text()
        for key, (begin, end) in MARKERS.items():
            if begin in text and end in text:
                head, rest = text.split(begin, 1)
                text = f"{head}{begin}\n{texts[key]}\n{end}{rest.split(end, 1)[1]}"
        if text != original:
            path.write_text(text)
            written.append(path)
    return written


# ---------------------------------------------------------------------------
# Plot


def smooth(x, k=25):
    return np.convolve(np.asarray(x), np.ones(k) / k, mode="valid")


def plot(result: dict, curves: dict, path: Path) -> None:
    """Loss curves (mean over seeds), the bf16-parameter stall, and bytes vs quality."""
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    k = 25 if not result["quick"] else 5
    for ax, task in zip(axes[:2], ("mlp", "lm"), strict=True):
        for option, losses in curves[task].items():
            style = "--" if OPTIONS[option].dtype == BF16 else "-"
            width = 2.2 if option == "fp32" else 1.1
            ax.plot(smooth(losses, k), style, lw=width, label=option)
        seeds = result["config"]["tasks"][task]["seeds"]
        ax.set(
            title=f"{task}: training loss (mean of {seeds} seeds, moving avg. {k} steps)",
            xlabel="step",
            yscale="log",
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    ax = axes[2]
    for option in ("fp32", "bf16_params_nearest", "bf16_params_sr", "bf16_params_kahan"):
        if option in curves["lm"]:
            losses = smooth(curves["lm"][option], 2 * k)
            half = len(losses) // 2
            ax.plot(np.arange(len(losses))[half:], losses[half:], label=option)
    ax.set(title="lm, second half: bf16 params without an fp32 copy", xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[3]
    shown = [n for n in BUDGET_OPTIONS if n in result["summary"]["lm"]]
    for task, marker, color in (("mlp", "s", "C0"), ("lm", "o", "C3")):
        xs = [result["budgets"]["mlp"][n]["4096x4096"] for n in shown]
        diffs = [result["summary"][task][n]["rel_diff_test"] for n in shown]
        ax.errorbar(xs, [d["mean"] * 100 for d in diffs], [2 * d["se"] * 100 for d in diffs],
                    fmt=marker, color=color, capsize=3, label=f"{task} test loss")  # fmt: skip
    for n in shown:
        x = result["budgets"]["mlp"][n]["4096x4096"]
        y = result["summary"]["mlp"][n]["rel_diff_test"]["mean"] * 100
        ax.annotate(n, (x, y), fontsize=6, rotation=30, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(title="final test loss Δ vs fp32 AdamW (± 2 SE) against memory",
           xlabel="params + state bytes/param (4096² tensor)", ylabel="Δ (%)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Main


def conditions(task_specs: dict) -> dict:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "tasks": {
            k: {
                "steps": v.steps,
                "peak_lr": v.lr,
                "weight_decay": v.wd,
                "seeds": v.seeds,
                "adafactor_peak_lr": v.adafactor_lr,
            }
            for k, v in task_specs.items()
        },
        "factor_min_dim": FACTOR_MIN_DIM,
        "large_tensor_min_size": LARGE,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M UTC"),
        "machine": f"{platform.system()}-{platform.release()} {platform.machine()}",
        "git_commit": commit or "unknown",
        "jax": jax.__version__,
        "optax": optax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "note": (
            "CPU cores shared with other jobs: step times are the median of the interleaved "
            "rounds (every option measured in each round, the order reversed every other "
            "round). No GPU was used."
        ),
    }


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and options (smoke)")
    parser.add_argument(
        "--out", default=None, help="results JSON (default results/low_memory[_quick].json)"
    )
    parser.add_argument(
        "--options",
        default=None,
        help="comma-separated option names or 'all' (default: all; "
        "with --quick, the configurations); fp32 AdamW is always run",
    )
    parser.add_argument("--table", action="store_true", help="print the tables of --out")
    parser.add_argument("--write-readme", action="store_true", help="with --table: into the docs")
    parser.add_argument("--readme", action="append", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stem = "low_memory" + ("_quick" if args.quick else "")
    args.out = Path(args.out) if args.out else RESULTS / f"{stem}.json"
    return args


def run_all(args) -> dict:
    """Train every option on every seed, measure bytes and step times; the results dict."""
    task_specs = tasks(args.quick)
    t_start = time.perf_counter()
    result = {"quick": args.quick, "config": conditions(task_specs)}
    names = QUICK_OPTIONS if args.quick else tuple(OPTIONS)
    if args.options:
        chosen = tuple(OPTIONS) if args.options == "all" else args.options.split(",")
        unknown = sorted(set(chosen) - set(OPTIONS))
        if unknown:
            raise SystemExit(f"unknown options {unknown}; known: {', '.join(OPTIONS)}")
        names = ("fp32", *(n for n in chosen if n != "fp32"))
    options, result["skipped"] = available(names, task_specs["mlp"])
    runs, summary = {}, {}
    for task_name, task in task_specs.items():
        runs[task_name] = {}
        for option in options:
            seeds = 1 if task_name == "lm" and option in ONE_LM_SEED else task.seeds
            runs[task_name][option] = [train(task_name, task, option, s) for s in range(seeds)]
            first = runs[task_name][option][0]["final"]
            secs = sum(r["seconds"] for r in runs[task_name][option])
            print(f"{task_name:4s} {option:26s} seed 0 {first}  ({secs:.1f}s)", flush=True)
        ref = runs[task_name]["fp32"]
        summary[task_name] = {
            o: summarize(rs, ref[: len(rs)], o) for o, rs in runs[task_name].items()
        }
    result["summary"] = summary
    result["budgets"] = {t: budgets(t, task_specs[t], options) for t in task_specs}
    if "adafactor" in options and "optax_adafactor" in options:
        result["adafactor_identity"] = {
            t: identity(runs[t]["adafactor"], runs[t]["optax_adafactor"]) for t in runs
        }
    result["v_map_errors_on_lm_fp32_state"] = map_errors(runs["lm"]["fp32"][0]["_state"])
    rounds, n = (2, 3) if args.quick else (5, 10)
    timed = [o for o in options if o not in UNTIMED]
    timers = {
        "lm_step": {o: step_timer(task_specs["lm"], o) for o in timed},
        "optimizer_4M": {o: optimizer_timer(task_specs["mlp"], o) for o in timed},
    }
    result["seconds_per_step"] = {k: interleaved_times(t, rounds, n) for k, t in timers.items()}
    result["step_time_relative_to_fp32"] = {
        k: {o: t / times["fp32"] for o, t in times.items()}
        for k, times in result["seconds_per_step"].items()
    }
    result["config_verdicts"] = config_verdicts(result)
    curves = {
        t: {o: np.mean([r["losses"] for r in rs], axis=0).tolist() for o, rs in v.items()}
        for t, v in runs.items()
    }
    result["curves_every_5_steps_mean_over_seeds"] = {
        t: {o: [round(x, 5) for x in c[::5]] for o, c in cs.items()} for t, cs in curves.items()
    }
    result["criterion"] = CRITERION
    result["config"]["load_average_at_end"] = os.getloadavg()[0]
    result["total_seconds"] = time.perf_counter() - t_start
    return result, curves


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        result = json.loads(args.out.read_text())
        texts = tables(result)
        if args.write_readme:
            # The results tables live in benchmarks/README.md (docs/low_memory.md includes
            # them); docs/low_memory.md holds the budget table.
            default = (RESULTS.parent / "README.md", ROOT / "docs" / "low_memory.md")
            paths = [Path(p) for p in args.readme or default]
            written = write_markers(texts, paths)
            print(f"wrote the tables into {[str(p) for p in written] or 'no file (no markers)'}")
        print("\n\n".join(texts.values()))
        return 0
    result, curves = run_all(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, curves, args.out.with_suffix(".png"))
    print(
        f"\nwrote {args.out} and {args.out.with_suffix('.png')} ({result['total_seconds']:.0f} s)\n"
    )
    print(config_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
