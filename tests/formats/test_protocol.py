"""The format Protocol: how a format is recognised and bound, what a new one needs, the
renamed records, and strict dtype promotion.

References: the float32 optimizer (a user-defined float32 format must match it bit for
bit), and the same format code traced under the standard promotion rules (strict must
give the same bits).
"""

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import pytest
from registry import FORMATS

import adamx
from adamx.formats.base import as_format, init_moment, read_moment, write_moment
from adamx.formats.protocol import MomentRecord

# ---------------------------------------------------------------------------
# Renamed public records (deprecated for one release).

RENAMED = [("QuantizedArray", "QuantizedMoment"), ("StochasticFloat", "StochasticFloatMoment")]


@pytest.mark.parametrize(("old", "new"), RENAMED)
def test_renamed_records_warn_and_are_the_same_class(old, new):
    with pytest.warns(DeprecationWarning, match=rf"adamx\.{old} is deprecated.*adamx\.{new}"):
        cls = getattr(adamx.formats, old)
    assert cls is getattr(adamx.formats, new) is getattr(adamx, new)
    with pytest.raises(AttributeError, match=r"has no attribute 'QuantizedArrays'"):
        adamx.formats.QuantizedArrays  # noqa: B018


@pytest.mark.parametrize(("old", "new"), RENAMED)
def test_renamed_records_warn_at_the_top_level(old, new):
    with pytest.warns(DeprecationWarning, match=rf"adamx\.{old} is deprecated.*adamx\.{new}"):
        cls = getattr(adamx, old)
    assert cls is getattr(adamx, new)


# ---------------------------------------------------------------------------
# Recognised by the Protocol, bound to a role.


def test_formats_are_recognised_by_the_protocol_not_by_their_names():
    for fmt in (adamx.FloatFormat(), adamx.stochastic_float(), adamx.blockwise_8bit()):
        assert isinstance(fmt, adamx.MomentFormat)
    for spec in (None, jnp.float32, jnp.dtype("bfloat16"), "float16"):
        assert not isinstance(spec, adamx.MomentFormat)


def test_as_format_takes_the_role_and_names_the_users_argument():
    with pytest.raises(ValueError, match=r"role must be one of 'mu', 'nu', 'nu_max', got 'v'"):
        as_format(None, role="v")
    with pytest.raises(TypeError, match=r"^nu_dtype must be a floating-point dtype"):
        as_format(jnp.int8, role="nu_max")
    with pytest.warns(UserWarning, match=r"^nu_dtype=bfloat16: .* never decay"):
        assert as_format(jnp.bfloat16, role="nu_max") == adamx.FloatFormat(jnp.bfloat16, True)
    assert as_format(jnp.bfloat16, role="mu") == adamx.FloatFormat(jnp.bfloat16)
    assert as_format(None, role="nu") == adamx.FloatFormat()
    assert as_format(adamx.blockwise_8bit(), role="nu_max").signed is False


def test_an_incomplete_format_is_told_what_it_lacks():
    class Half(NamedTuple):
        def init(self, param, packed=None):
            return param

        def decode(self, stored, like):
            return stored

        def encode(self, value, stored, key):
            return value

    with pytest.raises(TypeError, match=r"mu_dtype=Half\(\) looks like a moment format but "):
        adamx.adam(1e-3, mu_dtype=Half())
    with pytest.raises(TypeError, match=r"lacks \['elementwise', .*'bind', 'describe'"):
        adamx.adam(1e-3, mu_dtype=Half())


def test_validators_are_the_shared_ones():
    with pytest.raises(TypeError, match=r"sqrt must be True or False, got 1 \(int\)"):
        adamx.blockwise_8bit(sqrt=1)
    with pytest.raises(TypeError, match=r"seed must be a Python int \(the PRNG seed\), got 0.5"):
        adamx.blockwise_8bit(seed=0.5)
    with pytest.raises(ValueError, match=r"min_size must be an int >= 0 \(elements\), got 1.5"):
        adamx.blockwise_8bit(min_size=1.5)


# ---------------------------------------------------------------------------
# A new format needs the Protocol only: no registration, no name checks.


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["value", "key", "config"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class MirrorMoment(MomentRecord):
    value: Any
    key: Any
    config: Any


class Float32Mirror(NamedTuple):
    """A user's record format: the moment as float32, one field, no rounding."""

    tag: str = "a"

    elementwise = False
    stochastic = False
    fields = ("value",)
    record = MirrorMoment
    seed = 0

    def bind(self, role):
        return self

    def init(self, param, packed=None):
        return (jnp.zeros_like(param, dtype=jnp.float32),)

    def decode(self, stored, like):
        return stored[0]

    def encode(self, value, stored, key):
        return (value.astype(jnp.float32),)

    def describe(self):
        return f"float32_mirror({self.tag})"

    def partition_specs(self, spec, shape, axis_sizes=None):
        return (tuple(spec),)


def test_a_user_defined_format_trains_like_its_float_twin_and_guards_its_state():
    params = {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(64, 64), "b": jnp.ones(3)}
    grads = jax.tree.map(jnp.cos, params)
    mine = adamx.adam(1e-2, mu_dtype=Float32Mirror(), nu_dtype=Float32Mirror())
    twin = adamx.adam(1e-2, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    s, t = mine.init(params), twin.init(params)
    assert isinstance(s[0].mu, MirrorMoment) and s[0].mu.description == "float32_mirror(a)"
    for _ in range(3):
        u, s = jax.jit(mine.update)(grads, s, params)
        v, t = jax.jit(twin.update)(grads, t, params)
        chex.assert_trees_all_equal(u, v)
    other = adamx.adam(1e-2, mu_dtype=Float32Mirror("b"), nu_dtype=Float32Mirror())
    with pytest.raises(ValueError, match=r"stored as float32_mirror\(a\), but this optimizer"):
        other.update(grads, s, params)
    with pytest.raises(ValueError, match=r"stored as a float moment \(float32\), but this"):
        mine.update(grads, t, params)


# ---------------------------------------------------------------------------
# Strict dtype promotion: the format code casts explicitly, with the same bits.

EXTRA = {
    "dynamic_sqrt": dict(
        mu_dtype=adamx.blockwise_8bit(qmap="dynamic"),
        nu_dtype=adamx.blockwise_8bit(qmap="dynamic", sqrt=True),
    ),
    "linear_nearest": dict(
        mu_dtype=adamx.blockwise_8bit(qmap="linear"), nu_dtype=adamx.blockwise_8bit(qmap="linear")
    ),
    "e2m5_small_blocks": dict(
        mu_dtype=adamx.blockwise_8bit(qmap="e2m5", block_size=8, min_size=1),
        nu_dtype=adamx.blockwise_8bit(qmap="e3m5", block_size=8, min_size=1),
    ),
    "narrow_floats": dict(mu_dtype=jnp.float16, nu_dtype=jnp.bfloat16),
    "stochastic_f16": dict(mu_dtype=adamx.stochastic_float(jnp.float16)),
}
CASES = {name: (f.kwargs, f.param_dtype) for name, f in FORMATS.items()}
CASES.update({name: (kwargs, jnp.float32) for name, kwargs in EXTRA.items()})
CASES["stochastic_bf16_params"] = (EXTRA["narrow_floats"], jnp.bfloat16)


def _three_steps(formats, params):
    """Three moving-average steps of each moment, through the stages' four calls."""
    grads = jax.tree.map(lambda p: jnp.sin(p * 3), params)
    leaves, treedef = jax.tree.flatten(grads)
    states = {role: init_moment("t", fmt, role, params) for role, fmt in formats.items()}
    for _ in range(3):
        for role, fmt in formats.items():
            rows, keys, next_key = read_moment("t", fmt, role, grads, states[role])
            new = []
            for g, row, key in zip(leaves, rows, keys, strict=True):
                x = fmt.decode(row, g)
                y = jnp.asarray(0.9, x.dtype) * x + jnp.asarray(0.1, x.dtype) * jnp.abs(g).astype(
                    x.dtype
                )
                new.append(fmt.encode(y, row, key))
            states[role] = write_moment(fmt, treedef, new, next_key, states[role])
    return states


# Each kind of format code in the default run (float, narrow floats, stochastic, 8-bit, 4-bit,
# factored); the other variants (maps, block sizes, parameter dtypes) with -m slow.
DEFAULT_CASES = {
    "default",
    "narrow_floats",
    "stochastic_bf16",
    "blockwise_8bit",
    "blockwise_4bit",
    "factored_v",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in DEFAULT_CASES else pytest.mark.slow) for n in CASES],
)
def test_format_code_is_strict_clean_with_the_same_bits(name):
    kwargs, param_dtype = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # narrow v: tested in test_low_memory
        formats = {
            role: as_format(kwargs.get(argument), role)
            for role, argument in (("mu", "mu_dtype"), ("nu", "nu_dtype"), ("nu_max", "nu_dtype"))
        }
    params = {
        "w": jnp.linspace(-2.0, 2.0, 64 * 128).reshape(64, 128).astype(param_dtype),
        "b": jnp.arange(5.0).astype(param_dtype),
        "s": jnp.asarray(0.5, param_dtype),
    }
    run = jax.jit(lambda p: _three_steps(formats, p))
    with jax.numpy_dtype_promotion("strict"):
        strict = run(params)
    with jax.numpy_dtype_promotion("standard"):
        standard = run(params)
    chex.assert_trees_all_equal(strict, standard)
