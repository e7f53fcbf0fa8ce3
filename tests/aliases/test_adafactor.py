"""adamx.adafactor against optax.adafactor: bit for bit, parameters and state.

Each run scans a jitted program of ``update`` + apply over an open-loop gradient stream
(``_family_refs.gradient_stack``: random magnitudes over five decades, an all-zero gradient
every 17 steps) on a tree that holds every kind of leaf Adafactor treats differently: factored
matrices (rectangular both ways and square, both axes >= 128), a 3-D leaf (its two largest
axes factored), small matrices that keep a full v, biases and a scalar, in float32 and
bfloat16 side by side (Adafactor works leaf by leaf, so one program checks both dtypes).
adamx runs under strict promotion, optax under the standard rules (``_promotion``), in
separate programs. The updates are applied with ``optax.apply_updates`` under the standard
rules for both: with bfloat16 parameters and float32 momentum (or a scheduled decay)
optax's update is float32, and adamx's is too, so that ``θ + Δθ`` is rounded once, as optax.

The default run keeps 100 steps of a few configurations that between them use every option;
``-m slow`` runs each option alone for 1000 steps.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import gradient_stack
from _promotion import reference, standard

import adamx

F32, BF16 = jnp.float32, jnp.bfloat16
SHAPES = {
    "wide": (128, 144),  # factored: row over axis 1 (the largest), col over axis 0
    "tall": (160, 128),
    "square": (128, 128),  # a tie: optax's argsort order decides which axis is d0
    "cube": (2, 130, 128),  # factors axes 1 and 2, keeps axis 0
    "small": (5, 7),  # full v, unless min_dim_size_to_factor <= 5
    "bias": (9,),
    "scale": (),
}
# bfloat16 leaves of each kind (fewer than float32's, to keep the programs' compile time down).
BF16_SHAPES = ("tall", "cube", "small", "bias")
LR_SCHEDULE = optax.linear_schedule(1e-2, 1e-4, 1000)  # strict-clean (unlike the cosine ones)
DECAY_SCHEDULE = optax.linear_schedule(1e-2, 0.0, 1000)
CHUNK = 100  # steps per jitted scan (a 1000-step run is ten calls of one compiled program)


def matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_params(names_by_dtype: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        jnp.dtype(dtype).name: {
            name: jnp.asarray(rng.normal(size=SHAPES[name]), dtype) for name in names
        }
        for dtype, names in names_by_dtype.items()
    }


PARAMS = make_params({F32: tuple(SHAPES), BF16: BF16_SHAPES})
# For options that factor nothing (min_dim_size_to_factor large, factored=False).
FEW_PARAMS = make_params({F32: ("small", "bias", "scale"), BF16: ("tall", "bias")})


@functools.cache
def stream(layout: str, chunk: int):
    """Steps ``chunk * CHUNK ...`` of an open-loop gradient stream (``gradient_stack``:
    magnitudes over five decades, every 17th step all zero), stacked on axis 0."""
    params = PARAMS if layout == "all" else FEW_PARAMS
    return gradient_stack(params, CHUNK, seed=chunk)


def run(tx, layout: str, steps: int, start_count: int = 0):
    """``steps`` updates in jitted scans of ``CHUNK``: the final params and state."""
    params = PARAMS if layout == "all" else FEW_PARAMS

    @jax.jit
    def scan(params, state, grads):
        def body(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            with standard():
                params = optax.apply_updates(params, updates)
            return (params, state), None

        return jax.lax.scan(body, (params, state), grads)[0]

    state = tx.init(params)
    if start_count:  # a restored step count (fine-tuning with decay_offset)
        state = (state[0]._replace(count=jnp.asarray(start_count, jnp.int32)), *state[1:])
    for chunk in range(steps // CHUNK):
        grads = stream(layout, chunk) if chunk == 0 else stream.__wrapped__(layout, chunk)
        params, state = scan(params, state, grads)
    return params, state


def assert_bits_equal(x, y):
    """Equal bit for bit, dtype included (NaN equals NaN with the same bits: with no learning
    rate, Adafactor's relative step lets a random stream blow the parameters up, in both)."""
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, x.shape, y.dtype, y.shape)
    bits = f"u{x.dtype.itemsize}"
    np.testing.assert_array_equal(x.view(bits), y.view(bits))


def assert_first_stage_equal(ours, theirs, params):
    """``FactoredRmsState(count, nu)`` holds optax's ``FactoredState`` arrays, less placeholders:
    (row, col) = (v_row, v_col) where a leaf factors, row = v (col None) where it does not."""
    assert_bits_equal(ours.count, theirs.count)
    factored = isinstance(ours.nu, adamx.FactoredMoment)  # else factored=False: a tree of v
    rows = ours.nu.row if factored else ours.nu
    cols = ours.nu.col if factored else jax.tree.map(lambda _: None, params)
    cols = jax.tree.flatten(cols, is_leaf=lambda x: x is None)[0]
    optax_arrays = zip(*(jax.tree.leaves(t) for t in theirs[1:]), strict=True)  # v_row, v_col, v
    for row, col, (v_row, v_col, v) in zip(jax.tree.leaves(rows), cols, optax_arrays, strict=True):
        assert_bits_equal(row, v if col is None else v_row)
        if col is not None:
            assert_bits_equal(col, v_col)


def assert_runs_equal(kwargs: dict, steps: int, start_count: int = 0, layout: str = "all"):
    ours, theirs = adamx.adafactor(**kwargs), reference(optax.adafactor(**kwargs))
    p1, s1 = run(ours, layout, steps, start_count)
    p2, s2 = run(theirs, layout, steps, start_count)
    jax.tree.map(assert_bits_equal, p1, p2)
    if "learning_rate" in kwargs:  # a run that stays finite, so that equality means something
        assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(p1))
    assert_first_stage_equal(s1[0], s2[0], p1)
    # The later stages keep optax's states (EmaState, counts, MaskedState; clipping and
    # parameter scaling hold no arrays): equal leaf for leaf.
    rest1, rest2 = jax.tree.leaves(s1[1:]), jax.tree.leaves(s2[1:])
    assert len(rest1) == len(rest2)
    for x, y in zip(rest1, rest2, strict=True):
        assert_bits_equal(x, y)


# Each option alone, as optax documents it (the slow run: 1000 steps each).
OPTIONS = {
    "defaults": dict(),  # no learning rate: the relative step alone (the stream blows it up)
    "lr_float": dict(learning_rate=1e-2),
    "lr_schedule": dict(learning_rate=LR_SCHEDULE),
    "momentum": dict(learning_rate=1e-2, momentum=0.9),
    "momentum_bf16": dict(learning_rate=1e-2, momentum=0.9, dtype_momentum=BF16),
    "weight_decay": dict(learning_rate=1e-2, weight_decay_rate=1e-3),
    "weight_decay_mask": dict(
        learning_rate=1e-2, weight_decay_rate=1e-3, weight_decay_mask=matrices
    ),
    "weight_decay_schedule": dict(learning_rate=1e-2, weight_decay_rate=DECAY_SCHEDULE),
    "no_clipping": dict(learning_rate=1e-2, clipping_threshold=None),
    "clipping_tight": dict(learning_rate=1e-2, clipping_threshold=0.5),
    "absolute_step": dict(learning_rate=1e-3, multiply_by_parameter_scale=False),
    "not_factored": dict(learning_rate=1e-2, factored=False),
    "decay_rate": dict(learning_rate=1e-2, decay_rate=0.6),
    "eps": dict(learning_rate=1e-2, eps=1e-20),
    "min_dim_small": dict(learning_rate=1e-2, min_dim_size_to_factor=4),
    "min_dim_large": dict(learning_rate=1e-2, min_dim_size_to_factor=1024),
}
# The default run: a few configurations that between them use every option (100 steps).
COMBINED = {
    "defaults": dict(),
    "momentum_decay_mask_offset": dict(
        learning_rate=1e-2,
        momentum=0.9,
        weight_decay_rate=1e-3,
        weight_decay_mask=matrices,
        min_dim_size_to_factor=4,
        decay_rate=0.6,
        decay_offset=300,  # fine-tuning: the state's count is restored to 300 (START_COUNT)
    ),
}
# ... and two that factor nothing, on a smaller tree.
COMBINED_FEW = {
    "schedules_bf16_momentum": dict(
        learning_rate=LR_SCHEDULE,
        momentum=0.8,
        dtype_momentum=BF16,
        weight_decay_rate=DECAY_SCHEDULE,
        clipping_threshold=None,
        min_dim_size_to_factor=1024,
        eps=1e-20,
    ),
    "absolute_step_not_factored": dict(
        learning_rate=1e-3, multiply_by_parameter_scale=False, factored=False
    ),
}


@pytest.mark.parametrize("name", COMBINED)
def test_bit_identical_to_optax(name):
    start_count = COMBINED[name].get("decay_offset", 0)  # optax's use: from a restored count
    assert_runs_equal(COMBINED[name], steps=CHUNK, start_count=start_count)


@pytest.mark.parametrize("name", COMBINED_FEW)
def test_bit_identical_to_optax_nothing_factored(name):
    assert_runs_equal(COMBINED_FEW[name], steps=CHUNK, layout="few")


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIONS)
def test_bit_identical_to_optax_1000_steps(name):
    assert_runs_equal(OPTIONS[name], steps=1000)


@pytest.mark.slow
def test_decay_offset_1000_steps():
    assert_runs_equal(dict(learning_rate=1e-2, decay_offset=1000), steps=1000, start_count=1000)


@pytest.mark.slow
def test_every_option_at_once_1000_steps():
    kwargs = dict(COMBINED["momentum_decay_mask_offset"], learning_rate=LR_SCHEDULE)
    assert_runs_equal(kwargs, steps=1000, start_count=300)


@pytest.mark.slow
def test_bit_identical_op_by_op():
    """Without jit, step by step (no fusion in either program)."""
    params = {"w": PARAMS["float32"]["tall"], "b": PARAMS["bfloat16"]["bias"]}
    kwargs = dict(learning_rate=1e-2, momentum=0.9, weight_decay_rate=1e-3)
    ours, theirs = adamx.adafactor(**kwargs), reference(optax.adafactor(**kwargs))
    s1, s2, p1, p2 = ours.init(params), theirs.init(params), params, params
    grads = gradient_stack(params, 3)
    for t in range(3):
        g = jax.tree.map(lambda x, t=t: x[t], grads)
        (u1, s1), (u2, s2) = ours.update(g, s1, p1), theirs.update(g, s2, p2)
        with standard():
            p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(assert_bits_equal, p1, p2)
    assert_first_stage_equal(s1[0], s2[0], params)


def test_no_retrace_on_step_two():
    tx = adamx.adafactor(learning_rate=LR_SCHEDULE, momentum=0.9, weight_decay_rate=1e-3)
    params = PARAMS["bfloat16"]
    step = jax.jit(tx.update)
    state = tx.init(params)
    for t in range(3):
        grads = jax.tree.map(lambda x, t=t: jnp.full_like(x, t + 1), params)
        _, state = step(grads, state, params)
    assert step._cache_size() == 1


def test_state_holds_optaxs_arrays_without_placeholders():
    """The same memory as optax's state: optax's arrays, less its (1,)-shaped placeholders
    (one per factored leaf, two per full one), plus the format's one-byte config key."""
    for factored in (True, False):
        ours = adamx.adafactor(factored=factored).init(PARAMS)
        with standard():
            theirs = optax.adafactor(factored=factored).init(PARAMS)
        placeholders = sum(
            leaf.dtype.itemsize
            for tree in (theirs[0].v_row, theirs[0].v_col, theirs[0].v)
            for leaf in jax.tree.leaves(tree)
            if leaf.shape == (1,)
        )
        config = 1 if factored else 0  # a plain float tree (factored=False) has no config key
        assert adamx.state_nbytes(ours) == adamx.state_nbytes(theirs) - placeholders + config


def test_signature_is_optaxs():
    ours = inspect.signature(adamx.adafactor).parameters
    theirs = inspect.signature(optax.adafactor).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [
        (p.name, p.default, p.kind) for p in theirs.values()
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(learning_rate="fast"), TypeError, "learning_rate must be a number or a schedule"),
        (dict(learning_rate=-1.0), ValueError, "learning_rate must be a finite number >= 0"),
        (dict(min_dim_size_to_factor=-1), ValueError, "min_dim_size_to_factor must be an int"),
        (dict(min_dim_size_to_factor=2.5), ValueError, "min_dim_size_to_factor must be an int"),
        (dict(decay_rate=-0.8), ValueError, "decay_rate must be a finite number >= 0"),
        (dict(decay_offset=1.5), TypeError, "decay_offset must be an int"),
        (dict(multiply_by_parameter_scale=1), TypeError, "multiply_by_parameter_scale must be"),
        (dict(clipping_threshold=0.0), ValueError, "clipping_threshold must be a number > 0"),
        (dict(momentum=1.0), ValueError, "momentum must be in"),
        (dict(dtype_momentum=jnp.int8), TypeError, "dtype_momentum must be a floating-point"),
        (dict(weight_decay_rate=-1e-3), ValueError, "weight_decay_rate must be a finite"),
        (dict(eps=-1.0), ValueError, "eps must be a finite number >= 0"),
        (dict(factored="yes"), TypeError, "factored must be True or False"),
    ],
)
def test_arguments_are_checked_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        adamx.adafactor(**kwargs)
