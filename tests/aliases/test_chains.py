"""Each alias is the chain of stages its docstring names, in that order, for every registry entry.

The parity suites prove the chains compute optax's (or torch's, Keras's) numbers; this suite
states the chains themselves. An alias's init state is a tuple with one state per stage, so
the tuple's element types spell the chain: ``adamw`` is
``(ScaleByMomentsState, BiasCorrectState, EmptyState, EmptyState, EmptyState)``, i.e.
scale_by_moments, bias_correct, scale_by_rsqrt, add_decoupled_weight_decay, scale_by_lr.
"""

import inspect
import warnings

import jax.numpy as jnp
import optax
import pytest
from _streams import make_mixed_params
from registry import OPTIMIZERS

import adamx
import adamx.aliases
from adamx._rates import ScheduleState

PARAMS = make_mixed_params([jnp.float32])


def rate(value):
    """State of a stage that only counts steps when its rate is a schedule (scale_by_lr)."""
    return ScheduleState if callable(value) else optax.EmptyState


def decay(weight_decay, mask):
    """State of a weight-decay stage: optax.MaskedState around the rate's state with a mask."""
    return optax.MaskedState if mask is not None else rate(weight_decay)


def expected_chain(alias: str, kw: dict) -> list[tuple[str, type]]:
    """(stage, state type) of each stage of ``adamx.<alias>(**kw)``, in chain order."""
    lr, wd, mask = kw["learning_rate"], kw.get("weight_decay"), kw.get("mask")
    counted = kw.get("epsilon_hat", False)  # scale_by_rsqrt counts steps for ε̂ (and RAdam)
    l2 = [("add_coupled_weight_decay", decay(wd, mask))] if wd else []
    moments = [("scale_by_moments", adamx.ScaleByMomentsState)]
    correct = [
        ("bias_correct", adamx.MomentumScheduleState if kw.get("momentum_decay") else
         adamx.BiasCorrectState)
    ]  # fmt: skip
    rsqrt = [("scale_by_rsqrt", adamx.ScaleByRsqrtState if counted else optax.EmptyState)]
    decoupled = [("add_decoupled_weight_decay", decay(wd if wd is not None else 1e-4, mask))]
    scale = [("scale_by_lr", rate(lr))]
    if alias in ("adam", "nadam", "adamax"):
        return l2 + moments + correct + rsqrt + scale
    if alias in ("adamw", "nadamw", "adamaxw"):
        return moments + correct + rsqrt + decoupled + scale
    if alias == "amsgrad":
        running_max = [("running_max_nu", adamx.RunningMaxNuState)]
        if kw.get("max_of", "corrected") == "raw":  # torch, Keras: max of v, then corrected
            return l2 + moments + running_max + correct + rsqrt + scale
        return l2 + moments + correct + running_max + rsqrt + scale  # optax: max of v̂
    if alias == "radam":
        rsqrt = [("scale_by_rsqrt", adamx.ScaleByRsqrtState)]  # ρ_t needs the step
        if kw.get("decoupled_weight_decay"):
            return moments + correct + rsqrt + decoupled + scale
        return l2 + moments + correct + rsqrt + scale
    if alias == "adafactor":
        return _adafactor_chain(kw)
    if alias in VARIANT_CHAINS:
        return VARIANT_CHAINS[alias](kw, moments + correct, rsqrt, decoupled, scale)
    raise AssertionError(f"no expected chain for alias {alias!r}: add it here")


def _adafactor_chain(kw: dict) -> list[tuple[str, type]]:
    """optax.adafactor's order: factored RMS, [clip], [ρ], [parameter scale], [momentum],
    [decayed weights], −1."""
    lr, wd = kw.get("learning_rate"), kw.get("weight_decay_rate")
    chain = [("scale_by_factored_rms", adamx.FactoredRmsState)]
    if kw.get("clipping_threshold", 1.0) is not None:
        chain.append(("clip_by_block_rms", adamx.BlockRmsState))
    if lr is not None:
        chain.append(("learning rate", optax.ScaleByScheduleState if callable(lr) else EMPTY))
    if kw.get("multiply_by_parameter_scale", True):
        chain.append(("scale_by_param_block_rms", adamx.BlockRmsState))
    if kw.get("momentum") is not None:
        chain.append(("momentum", optax.EmaState))
    if wd is not None:
        masked = kw.get("weight_decay_mask") is not None
        chain.append(("decayed weights", optax.MaskedState if masked else EMPTY))
    return [*chain, ("scale(-1)", EMPTY)]


EMPTY = optax.EmptyState


def _optional_decay(kw: dict, default=None) -> list[tuple[str, type]]:
    """The decoupled decay of an alias whose ``weight_decay=None`` drops the stage."""
    wd = kw.get("weight_decay", default)
    return [] if wd is None else [("add_decoupled_weight_decay", decay(wd, kw.get("mask")))]


# The modern members (issue 15): (kw, Adam's moment stages, rsqrt, decoupled decay, lr) -> chain.
# Wrappers show as their state type, the wrapped chain inside it (test_wrapped_chains).
VARIANT_CHAINS = {
    "cautious_adamw": lambda kw, adam, rsqrt, decoupled, scale: [
        ("cautious(moments, bias_correct, rsqrt)", adamx.CautiousState),
        *decoupled,
        *scale,
    ],
    "stable_adamw": lambda kw, adam, rsqrt, decoupled, scale: [
        ("clip_by_update_rms(moments, ..., lr)", adamx.ClipByUpdateRmsState)
    ],
    "adopt": lambda kw, adam, rsqrt, decoupled, scale: [
        ("scale_by_adopt", adamx.ScaleByAdoptState),
        *_optional_decay(kw),
        *scale,
    ],
    "laprop": lambda kw, adam, rsqrt, decoupled, scale: [
        ("scale_by_laprop", adamx.ScaleByLapropState),
        *_optional_decay(kw),
        *scale,
    ],
    "ademamix": lambda kw, adam, rsqrt, decoupled, scale: [
        *adam,
        ("add_slow_ema", adamx.SlowEmaState),
        *rsqrt,
        *_optional_decay(kw, 0.0),
        *scale,
    ],
    "simplified_ademamix": lambda kw, adam, rsqrt, decoupled, scale: [
        ("scale_by_simplified_ademamix", adamx.ScaleBySimplifiedAdemamixState),
        *_optional_decay(kw, 0.0),
        *scale,
    ],
}
WRAPPED = {
    # alias -> (the wrapper's state, the stage states of the chain it wraps)
    "cautious_adamw": (
        adamx.CautiousState,
        [adamx.ScaleByMomentsState, adamx.BiasCorrectState, optax.EmptyState],
    ),
    "stable_adamw": (
        adamx.ClipByUpdateRmsState,
        [adamx.ScaleByMomentsState, adamx.BiasCorrectState, adamx.UpdateRmsState],
    ),
}


@pytest.mark.parametrize("alias", list(WRAPPED))
def test_wrapped_chains(alias):
    """A wrapper's ``inner`` state spells the chain it wraps (stable_adamw: its first stages,
    then decay and lr)."""
    kind, stages = WRAPPED[alias]
    state = getattr(adamx, alias)(1e-3).init(PARAMS)
    wrapper = state if alias == "stable_adamw" else state[0]
    assert type(wrapper) is kind
    got = [type(s) for s in wrapper.inner][: len(stages)]
    assert got == stages, (alias, got)


ALIASES = [name for name, opt in OPTIMIZERS.items() if opt.chain is None]


@pytest.mark.parametrize("name", ALIASES)
def test_the_init_state_spells_the_chain(name):
    optimizer = OPTIMIZERS[name]
    expected = expected_chain(optimizer.alias, optimizer.kwargs)
    state = optimizer.make(PARAMS).init(PARAMS)
    if hasattr(state, "_fields"):  # a wrapper around the whole chain (stable_adamw)
        state = (state,)
    assert isinstance(state, tuple) and len(state) == len(expected), (
        f"{name}: expected the stages {[stage for stage, _ in expected]}, "
        f"got {len(state)} states: {[type(s).__name__ for s in state]}"
    )
    for i, ((stage, kind), got) in enumerate(zip(expected, state, strict=True)):
        assert type(got) is kind, (
            f"{name}: stage {i} should be {stage} (state {kind.__name__}), "
            f"got a {type(got).__name__}"
        )


def test_every_alias_has_a_registry_entry():
    public = {
        name
        for name, value in vars(adamx.aliases).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    assert public == {OPTIMIZERS[name].alias for name in ALIASES}


@pytest.mark.parametrize(
    ("make", "stages"),
    [
        (lambda: adamx.adam(1e-3, weight_decay=0.0), 4),  # λ = 0: no L2 stage at all
        (lambda: adamx.adam(1e-3, weight_decay=0.1), 5),
        (lambda: adamx.adamw(1e-3, weight_decay=0.0), 5),  # kept, as optax.adamw keeps it
        (lambda: adamx.adamw(1e-3, weight_decay=None), 4),
        (lambda: adamx.radam(1e-3, weight_decay=0.1, decoupled_weight_decay=True), 5),
        (lambda: adamx.radam(1e-3, threshold=None), 4),
    ],
)
def test_options_that_add_or_drop_a_stage(make, stages):
    assert len(make().init(PARAMS)) == stages


@pytest.mark.parametrize("name", ALIASES)
def test_aliases_call_the_stages_by_their_current_names(name):
    # A deprecated stage keyword would warn here (the warning filter makes it an error).
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        OPTIMIZERS[name].make(PARAMS)
