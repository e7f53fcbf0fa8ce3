"""adamx.adam / adamx.adamw against optax.adam / optax.adamw: bit for bit.

The cases are the registry's (``registry.OPTIMIZERS``, the adam table: an adamx
factory, its optax reference and keyword arguments, the dtypes where it is exact),
expanded over parameter dtypes and randomised hyperparameters, each run for
1000 jitted steps. adamx and optax run in separate jitted programs, so equality
is not an artefact of XLA merging two identical computations.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _paths import EXACT_PATHS, PATHS, assert_path_matches
from _promotion import apply_reference_updates, reference
from _streams import gradient_stream, make_mixed_params, run_open_loop
from registry import (
    ADAM_TABLE,
    DECAY_SCHEDULE,
    OPTIMIZERS,
    PARITY_STEPS,
    SCHEDULE,
    in_suite,
    matrices,
    pytree_mask,
)

import adamx

STEPS = PARITY_STEPS
F32, BF16, F16, C64 = jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64
ALL = (F32, BF16, F16, C64)
WARMUP_COSINE = SCHEDULE

# The cases: every registry optimizer of the adam/adamw table (its kwargs, its optax alias,
# and the dtypes where it is bit-identical, with the reasons given in tests/registry/adam.py).
CASES = in_suite(ADAM_TABLE)


def build(case: str, params):
    return OPTIMIZERS[case].make(params), OPTIMIZERS[case].reference(params)


def random_config(seed: int) -> tuple[str, dict, tuple]:
    """Randomised hyperparameters covering every option of adam/adamw, and the exact dtypes."""
    rng = np.random.default_rng(seed)
    kwargs = dict(
        learning_rate=float(10 ** rng.uniform(-4, -1)) if rng.random() < 0.5 else WARMUP_COSINE,
        b1=0.0 if rng.random() < 0.25 else float(rng.uniform(0.5, 0.99)),
        b2=float(1 - 10 ** rng.uniform(-4, -1)),
        eps=float(10 ** rng.uniform(-10, -3)),
        eps_root=0.0 if rng.random() < 0.5 else float(10 ** rng.uniform(-16, -8)),
        mu_dtype=BF16 if rng.random() < 0.25 else None,
        nesterov=bool(rng.random() < 0.5),
    )
    dtypes = (F32, BF16) if kwargs["mu_dtype"] else ALL
    if rng.random() < 0.5:
        return "adam", kwargs, dtypes
    mask = [None, matrices, "pytree"][rng.integers(3)]
    decay = float(10 ** rng.uniform(-4, 0)) if rng.random() < 0.7 else DECAY_SCHEDULE
    if decay is DECAY_SCHEDULE:
        dtypes = tuple(d for d in dtypes if d in (F32, C64))
    return "adamw", dict(kwargs, weight_decay=decay, mask=mask), dtypes


def assert_runs_equal(ours, theirs, params, steps=STEPS, path="per_leaf"):
    """Every step's update, the final params and both moments: bit for bit on exact paths."""
    p1, s1, u1 = run_open_loop(ours, params, steps)
    p2, s2, u2 = run_open_loop(theirs, params, steps)
    for name in ("mu", "nu"):
        assert_path_matches(path, optax.tree.get(s1, name), optax.tree.get(s2, name))
    assert_path_matches(path, (u1, p1), (u2, p2))


@pytest.mark.parametrize(
    ("seed", "path"),
    # Two seeds a path in the default run, eight with -m slow.
    [pytest.param(s, p, marks=() if s < 2 else pytest.mark.slow) for p in PATHS for s in range(8)],
)
def test_random_hyperparameters(seed, path):
    name, kwargs, dtypes = random_config(seed)
    params = make_mixed_params(dtypes)
    if kwargs.get("mask") == "pytree":
        kwargs["mask"] = pytree_mask(params)
    ours = PATHS[path](getattr(adamx, name)(**kwargs))
    assert_runs_equal(ours, reference(getattr(optax, name)(**kwargs)), params, path=path)


@pytest.mark.parametrize(
    ("case", "path"),
    # Every case per leaf; on multi_tensor the one with the most stages (a schedule, a mask),
    # the rest with -m slow (the matrix runs every path too).
    [
        pytest.param(
            c, p, marks=() if p == "per_leaf" or c == "adamw_schedule_mask" else pytest.mark.slow
        )
        for p in PATHS
        for c in CASES
    ],
)
def test_cases(case, path):
    params = make_mixed_params(OPTIMIZERS[case].optax_dtypes)
    ours, theirs = build(case, params)
    assert_runs_equal(PATHS[path](ours), theirs, params, path=path)


@pytest.mark.parametrize("case", [c for c in in_suite("x64") if c in CASES])
def test_cases_double_precision(case):
    with jax.enable_x64(True):
        params = make_mixed_params((jnp.float64, jnp.complex128))
        ours, theirs = build(case, params)
        assert_runs_equal(ours, theirs, params)


def ulp_distance(a, b) -> int:
    """Largest distance in units in the last place between two float trees of one dtype."""

    def one(x, y):
        bits = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
        # Reinterpret the bits as integers ordered like the floats they encode.
        x, y = (np.asarray(v).view(bits).astype(np.int64) for v in (x, y))
        x, y = (np.where(v < 0, np.iinfo(bits).min - v, v) for v in (x, y))
        return int(np.max(np.abs(x - y)))

    return max(jax.tree.leaves(jax.tree.map(one, a, b)))


def test_scheduled_decay_low_precision_is_within_two_roundings_per_step():
    """adamx rounds u + λ_t·θ to the gradients' dtype where optax keeps float32.

    Both start each step from the same parameters (teacher forcing on optax's
    trajectory), so the updates can differ only by adamx's extra roundings: the
    sum u + λ_t·θ (formed in float32, rounded once) and the product with -α_t,
    each at most half an ulp of the result: at most 2 ulp in all.
    """
    params = make_mixed_params((BF16, F16))
    ours, theirs = build("adamw_decay_schedule", params)

    @jax.jit
    def run(params, grads):
        def body(carry, g):
            params, s1, s2 = carry
            u1, s1 = ours.update(g, s1, params)
            u2, s2 = theirs.update(g, s2, params)
            return (apply_reference_updates(params, u2), s1, s2), (u1, u2)

        init = (params, ours.init(params), theirs.init(params))
        return jax.lax.scan(body, init, grads)[1]

    u1, u2 = run(params, gradient_stream(params, STEPS))
    chex.assert_trees_all_equal_dtypes(u1, params)
    assert all(x.dtype == F32 for x in jax.tree.leaves(u2))  # optax promotes
    for group in params:
        assert ulp_distance(u1[group], optax.tree.cast(u2[group], params[group]["w"].dtype)) <= 2


# A real training loop: a small MLP classifier trained on a fixed, generated dataset
# (gradients depend on the parameters, so any difference would compound).


def _spirals(n=256, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.5, 3.0, n)
    label = rng.integers(0, 2, n)
    angle = 2.5 * t + np.pi * label
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + 0.1 * rng.normal(size=(n, 2))
    return jnp.asarray(x, jnp.float32), jnp.asarray(label)


def _mlp_init(dtype, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "l1": {"w": jax.random.normal(k1, (2, 32)) / np.sqrt(2), "b": jnp.zeros(32)},
        "l2": {"w": jax.random.normal(k2, (32, 32)) / np.sqrt(32), "b": jnp.zeros(32)},
        "out": {"w": jax.random.normal(k3, (32, 2)) / np.sqrt(32), "b": jnp.zeros(2)},
    }
    return jax.tree.map(lambda x: x.astype(dtype), params)


def _loss(params, x, y):
    h = x.astype(params["l1"]["w"].dtype)
    for layer in ("l1", "l2"):
        h = jnp.tanh(h @ params[layer]["w"] + params[layer]["b"][None])
    logits = (h @ params["out"]["w"] + params["out"]["b"][None]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, params, steps=STEPS, batch=32):
    x, y = _spirals()

    @jax.jit
    def run(params):
        def body(carry, step):
            params, state = carry
            idx = jax.random.choice(jax.random.fold_in(jax.random.key(1), step), len(x), (batch,))
            loss, grads = jax.value_and_grad(_loss)(params, x[idx], y[idx])
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
        return params, losses

    return run(params)


# Closed loops feed every rounding back into the gradients, so only exact paths stay bit-equal.
@pytest.mark.parametrize("path", EXACT_PATHS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("case", [c for c in in_suite("model") if c in CASES])
def test_training_loop(case, dtype, path):
    params = _mlp_init(dtype)
    ours, theirs = build(case, params)
    (p1, losses1), (p2, losses2) = train(PATHS[path](ours), params), train(theirs, params)
    chex.assert_trees_all_equal(p1, p2)
    chex.assert_trees_all_equal(losses1, losses2)
    assert losses1[-100:].mean() < 0.5 * losses1[:10].mean()  # it really trained
