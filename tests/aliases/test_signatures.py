"""The aliases take optax's arguments: the same positional parameters, in the same order, with
the same defaults (so ``adamx.X(*args)`` means what ``optax.X(*args)`` means), and optax's
keyword-only ones; adamx's own options come after them, keyword-only."""

import inspect

import optax
import pytest

import adamx

ALIASES = ["adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adamaxw", "radam", "adafactor"]
# optax.contrib's: the same rule (adopt's clip_value_fn default is a lambda there: compared by
# value in test_parity_adopt.py).
CONTRIB = ["adopt", "ademamix", "simplified_ademamix"]
CONTRIB_FUNCTIONS = {("adopt", "clip_value_fn")}
# optax's keyword-only parameters that adamx fixes: nadam and nadamw are always Nesterov.
FIXED = {("nadam", "nesterov"), ("nadamw", "nesterov")}


def parameters(fn, kinds):
    return [
        (p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.kind in kinds
    ]


def optax_alias(name):
    return getattr(optax.contrib, name) if name in CONTRIB else getattr(optax, name)


@pytest.mark.parametrize("name", ALIASES + CONTRIB)
def test_positional_parameters_are_optaxs(name):
    positional = (inspect.Parameter.POSITIONAL_OR_KEYWORD,)
    assert parameters(getattr(adamx, name), positional) == parameters(optax_alias(name), positional)


@pytest.mark.parametrize("name", ALIASES + CONTRIB)
def test_optaxs_keyword_only_parameters_are_there(name):
    keyword = (inspect.Parameter.KEYWORD_ONLY,)
    ours = dict(parameters(getattr(adamx, name), keyword))
    for key, default in parameters(optax_alias(name), keyword):
        if (name, key) in CONTRIB_FUNCTIONS:
            assert callable(ours.get(key)), key
        elif (name, key) not in FIXED:
            assert ours.get(key, "missing") == default, key
