"""Weight decay options: coupled L2, schedules, fully decoupled decay, and masks (pytree,
callable, path predicate), each against a hand-written NumPy reference or closed form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import run_adamx_stream
from _promotion import reference

import adamx

STEPS = 500
LR_PEAK = 1e-2


# Schedules written with jnp so that under x64 they are float64 (optax's are float32), and the
# NumPy references below evaluate the same formulas.
def SCHEDULE(count):
    """Cosine decay from LR_PEAK after a linear warm-up of 50 steps."""
    count = jnp.asarray(count).astype(float)  # float64 under x64
    warm = jnp.minimum(1.0, (count + 1) / 50)
    return LR_PEAK * warm * (0.55 + 0.45 * jnp.cos(jnp.pi * count / STEPS))


def DECAY(count):
    count = jnp.asarray(count).astype(float)  # a schedule casts its int32 step count itself
    return 0.2 - 0.15 * count / STEPS


def flax_like_params(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    shapes = {"dense": {"kernel": (4, 3), "bias": (3,)}, "layer_norm": {"scale": (3,)}}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def stream(params, steps=STEPS, seed=3):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=(steps, *x.shape)), x.dtype), params)


def numpy_adam(theta, grads, lr, *, coupled=0.0, decoupled=None, b1=0.9, b2=0.999, eps=1e-8):
    """Adam in float64 NumPy, written from the papers; returns θ after each step.

    ``coupled``: λ of an L2 term added to g. ``decoupled``: step -> multiplier of θ
    subtracted after the adaptive step (α_t λ_t for AdamW, α_t λ_t / α̂ fully decoupled).
    """
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out = []
    for t in range(1, len(grads) + 1):
        g = np.asarray(grads[t - 1], np.float64) + coupled * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        step = lr(t - 1) * u
        if decoupled is not None:
            step = step + decoupled(t - 1) * theta
        theta = theta - step
        out.append(theta)
    return np.stack(out)


def run64(tx, params, grads):
    with jax.enable_x64(True):
        trajectory, _ = run_adamx_stream(tx, params, grads)
    return trajectory


def at(schedule, t) -> float:
    """A schedule's value at step t in float64."""
    with jax.enable_x64(True):
        return float(schedule(jnp.asarray(t, jnp.int32)))


def sched(t):
    return at(SCHEDULE, t)


@pytest.fixture(scope="module")
def setup():
    with jax.enable_x64(True):
        params = flax_like_params()
        return params, stream(params)


def assert_matches(trajectory, params, grads, path, **reference):
    leaf = lambda tree: np.asarray(tree[path[0]][path[1]], np.float64)  # noqa: E731
    expected = numpy_adam(leaf(params), leaf(grads), **reference)
    np.testing.assert_allclose(leaf(trajectory), expected, rtol=1e-10, atol=1e-12)


def test_coupled_l2_matches_numpy(setup):
    params, grads = setup
    trajectory = run64(adamx.adam(SCHEDULE, weight_decay=0.3), params, grads)
    assert_matches(trajectory, params, grads, ("dense", "kernel"), lr=sched, coupled=0.3)


def test_decoupled_schedule_matches_numpy(setup):
    params, grads = setup
    trajectory = run64(adamx.adamw(SCHEDULE, weight_decay=DECAY), params, grads)
    decoupled = lambda t: sched(t) * at(DECAY, t)  # noqa: E731
    assert_matches(trajectory, params, grads, ("dense", "kernel"), lr=sched, decoupled=decoupled)


def test_fully_decoupled_matches_numpy(setup):
    params, grads = setup
    tx = adamx.adamw(SCHEDULE, weight_decay=DECAY, fully_decoupled=True, peak_learning_rate=LR_PEAK)
    trajectory = run64(tx, params, grads)
    decoupled = lambda t: sched(t) / LR_PEAK * at(DECAY, t)  # noqa: E731
    assert_matches(trajectory, params, grads, ("dense", "kernel"), lr=sched, decoupled=decoupled)


def test_fully_decoupled_constant_lr_decays_by_lambda(setup):
    params, grads = setup
    trajectory = run64(adamx.adamw(3e-3, weight_decay=0.01, fully_decoupled=True), params, grads)
    lr = lambda t: 3e-3  # noqa: E731
    assert_matches(trajectory, params, grads, ("dense", "bias"), lr=lr, decoupled=lambda t: 0.01)


# With zero gradients every alias's adaptive step is exactly 0, so θ_t = Π_s (1 - d_s) θ_0 with
# d_s = α_s λ_s (decoupled) or α_s λ_s / α̂ (fully decoupled): the weight decay alone.
DECOUPLED_ALIASES = {
    "adamw": lambda **kw: adamx.adamw(**kw),
    "nadamw": lambda **kw: adamx.nadamw(momentum_decay=4e-3, **kw),
    "adamaxw": lambda **kw: adamx.adamaxw(**kw),
    "radam": lambda **kw: adamx.radam(decoupled_weight_decay=True, **kw),
}
DECAY_STEPS = 60


def decay_only(tx, params, steps=DECAY_STEPS):
    grads = jax.tree.map(lambda x: jnp.zeros((steps, *x.shape), x.dtype), params)
    return run64(tx, params, grads)


@pytest.mark.parametrize("alias", list(DECOUPLED_ALIASES))
@pytest.mark.parametrize("fully", [False, True], ids=["decoupled", "fully_decoupled"])
def test_weight_decay_schedule_in_every_decoupled_alias(alias, fully):
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    scale = 10.0  # the whole learning-rate schedule, peak included, 10x larger
    lr = lambda t: scale * SCHEDULE(t)  # noqa: E731
    extra = dict(fully_decoupled=True, peak_learning_rate=scale * LR_PEAK) if fully else {}
    tx = DECOUPLED_ALIASES[alias](learning_rate=lr, weight_decay=DECAY, **extra)
    with jax.enable_x64(True):
        trajectory = decay_only(tx, jax.tree.map(lambda x: x.astype(jnp.float64), params))
    d = [sched(t) * at(DECAY, t) * (1 / LR_PEAK if fully else scale) for t in range(DECAY_STEPS)]
    expected = np.cumprod(1 - np.asarray(d))[:, None] * np.asarray([1.0, -2.0, 0.5])
    np.testing.assert_allclose(np.asarray(trajectory["w"]), expected, rtol=1e-12)


def test_fully_decoupled_decay_does_not_depend_on_the_peak_learning_rate():
    params = {"w": jnp.asarray([1.0, -2.0])}
    runs = []
    for peak in (1e-3, 1e-1):
        lr = lambda c, peak=peak: peak * SCHEDULE(c) / LR_PEAK  # noqa: E731
        tx = adamx.adamw(lr, weight_decay=0.1, fully_decoupled=True, peak_learning_rate=peak)
        with jax.enable_x64(True):
            runs.append(
                np.asarray(
                    decay_only(tx, jax.tree.map(lambda x: x.astype(jnp.float64), params))["w"]
                )
            )
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-13)
    assert runs[0][-1, 0] < 0.9  # and it did decay


# Masks: which leaves decay. Zero gradients, so a leaf moves iff it decays.
MASKS = {
    "pytree": {"dense": {"kernel": True, "bias": False}, "layer_norm": {"scale": False}},
    "callable": lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
    "path_mask": adamx.path_mask(lambda path, x: not path.endswith("bias") and "norm" not in path),
    "exclude_paths": adamx.exclude_paths("bias$", "norm"),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("coupled", [False, True], ids=["adamw", "adam_l2"])
def test_masks(mask, coupled):
    params = flax_like_params(jnp.float32)
    if coupled:
        tx = adamx.adam(1e-2, weight_decay=0.5, mask=MASKS[mask])
    else:
        tx = adamx.adamw(1e-2, weight_decay=0.5, mask=MASKS[mask])
    grads = jax.tree.map(lambda x: jnp.zeros((3, *x.shape), x.dtype), params)
    final = jax.tree.map(lambda x: x[-1], run_adamx_stream(tx, params, grads)[0])
    np.testing.assert_array_equal(final["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_array_equal(final["layer_norm"]["scale"], params["layer_norm"]["scale"])
    kernel, kernel0 = np.asarray(final["dense"]["kernel"]), np.asarray(params["dense"]["kernel"])
    assert np.all(np.abs(kernel) < np.abs(kernel0))  # shrunk toward zero


def test_a_masked_state_maps_with_optax_tree_map_params_like_optaxs():
    # tree_map_params calls init with a placeholder instead of the params: the masked stage
    # must not evaluate its mask on it (optax.masked special-cases it the same way).
    params = flax_like_params(jnp.float32)
    mask = adamx.exclude_paths("bias$")
    mapped = []
    for tx in (adamx.adamw(1e-2, mask=mask), reference(optax.adamw(1e-2, mask=mask))):
        state = tx.init(params)
        mapped.append(optax.tree.get(optax.tree_map_params(tx, lambda x: x + 1, state), "mu"))
    chex.assert_trees_all_equal(mapped[0], mapped[1])
    chex.assert_trees_all_equal(mapped[0], jax.tree.map(jnp.ones_like, params))


def test_path_mask_sees_slash_joined_paths_and_leaves():
    seen = {}

    def predicate(path, leaf):
        seen[path] = leaf.shape
        return True

    params = {"encoder": [{"bias": jnp.zeros(2)}, jnp.zeros((2, 2))], "head": jnp.zeros(())}
    mask = adamx.path_mask(predicate)(params)
    assert seen == {"encoder/0/bias": (2,), "encoder/1": (2, 2), "head": ()}
    assert jax.tree.leaves(mask) == [True, True, True]


def test_mask_predicate_must_return_python_bools():
    tx = adamx.adamw(1e-3, mask=adamx.path_mask(lambda path, x: jnp.asarray(x.ndim > 1)))
    with pytest.raises(TypeError, match=r"mask leaf at .* must be Python bools"):
        tx.init({"w": jnp.zeros((2, 2))})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: adamx.adamw(SCHEDULE, fully_decoupled=True), ValueError,
         r"fully_decoupled=True with a learning-rate schedule needs peak_learning_rate"),
        (lambda: adamx.adamw(1e-3, peak_learning_rate=1e-3), ValueError,
         r"peak_learning_rate is used only by fully decoupled weight decay"),
        (lambda: adamx.radam(1e-3, weight_decay=0.1, fully_decoupled=True), ValueError,
         r"this optimizer's decay is coupled.*decoupled_weight_decay=True"),
        (lambda: adamx.adamw(1e-3, fully_decoupled=True, peak_learning_rate=0.0), ValueError,
         r"peak_learning_rate must be a number > 0, got 0.0"),
        (lambda: adamx.adamw(1e-3, fully_decoupled=1), TypeError,
         r"fully_decoupled must be True, False or None, got 1 \(int\)"),
        # The learning rate stands in for α̂: the message names it, not an unpassed peak.
        (lambda: adamx.adamw(0.0, fully_decoupled=True), ValueError,
         r"^learning_rate must be a number > 0, got 0.0: with fully_decoupled=True and no "
         r"peak_learning_rate, the learning rate is the peak α̂ that the decay divides by\. "
         r"Pass peak_learning_rate=α̂ > 0"),
        (lambda: adamx.nadamw(SCHEDULE, fully_decoupled=True, peak_learning_rate=SCHEDULE),
         ValueError, r"peak_learning_rate must be a number > 0, got <function"),
        (lambda: adamx.adamw(1e-3, weight_decay=None, fully_decoupled=True), ValueError,
         r"weight_decay=None adds none: pass weight_decay=λ, or drop them"),
        (lambda: adamx.radam(1e-3, weight_decay=0.1, peak_learning_rate=1e-3), ValueError,
         r"this optimizer's decay is coupled.*decoupled_weight_decay=True"),
        # The stage on its own: the same checks, the same names.
        (lambda: adamx.add_decoupled_weight_decay(0.1, fully_decoupled=True), ValueError,
         r"fully_decoupled=True needs peak_learning_rate=α̂, the peak of the learning rate "
         r"given to scale_by_lr"),
        (lambda: adamx.add_decoupled_weight_decay(0.1, fully_decoupled=True,
                                                   learning_rate=SCHEDULE), ValueError,
         r"fully_decoupled=True with a learning-rate schedule needs peak_learning_rate"),
        (lambda: adamx.add_decoupled_weight_decay(0.1, fully_decoupled=False,
                                                   peak_learning_rate=1e-3), ValueError,
         r"peak_learning_rate is used only by fully decoupled weight decay"),
        (lambda: adamx.add_decoupled_weight_decay(0.1, fully_decoupled="yes"), TypeError,
         r"fully_decoupled must be True, False or None, got 'yes' \(str\)"),
        (lambda: adamx.add_coupled_weight_decay(-0.1), ValueError,
         r"weight_decay must be a finite number >= 0"),
        (lambda: adamx.path_mask("bias"), TypeError, r"path_mask takes a callable"),
        (lambda: adamx.exclude_paths(), TypeError, r"exclude_paths takes one or more regular"),
    ],
)  # fmt: skip
def test_conflicting_or_invalid_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_coupled_stage_needs_params():
    tx = adamx.adam(1e-3, weight_decay=0.1)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"add_coupled_weight_decay needs the current parameters"):
        tx.update(params, tx.init(params))


def test_zero_coupled_decay_adds_no_stage():
    # weight_decay=0 (the default) leaves adam's chain, and so its state, exactly optax's shape.
    params = {"w": jnp.ones(2)}
    ours = jax.tree.structure(adamx.adam(1e-3, weight_decay=0.0).init(params))
    assert ours == jax.tree.structure(adamx.adam(1e-3).init(params))
    assert (
        len(adamx.adam(1e-3, weight_decay=0.1).init(params))
        == len(adamx.adam(1e-3).init(params)) + 1
    )


def test_the_stage_takes_its_peak_from_either_argument():
    # fully_decoupled=None (the stage's default) means "fully decoupled iff peak_learning_rate";
    # a constant learning_rate stands in for the peak. All three are the same transformation.
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    zeros = jax.tree.map(jnp.zeros_like, params)
    stages = [
        adamx.add_decoupled_weight_decay(0.1, peak_learning_rate=3e-3),
        adamx.add_decoupled_weight_decay(0.1, fully_decoupled=True, peak_learning_rate=3e-3),
        adamx.add_decoupled_weight_decay(0.1, fully_decoupled=True, learning_rate=3e-3),
        adamx.add_decoupled_weight_decay(0.1 / 3e-3),
    ]
    updates = [tx.update(zeros, tx.init(params), params)[0] for tx in stages]
    for other in updates[1:]:
        chex.assert_trees_all_equal(updates[0], other)
    # Not fully decoupled: the learning rate is not used at all.
    plain = adamx.add_decoupled_weight_decay(0.1, learning_rate=SCHEDULE)
    chex.assert_trees_all_equal(
        plain.update(zeros, plain.init(params), params)[0],
        jax.tree.map(lambda x: 0.1 * x, params),
    )


@pytest.mark.parametrize("alias", list(DECOUPLED_ALIASES))
def test_a_constant_learning_rate_is_the_default_peak(alias):
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    runs = [
        decay_only(DECOUPLED_ALIASES[alias](learning_rate=3e-3, weight_decay=0.01, **extra), params)
        for extra in (
            dict(fully_decoupled=True),
            dict(fully_decoupled=True, peak_learning_rate=3e-3),
        )
    ]
    chex.assert_trees_all_equal(runs[0], runs[1])
