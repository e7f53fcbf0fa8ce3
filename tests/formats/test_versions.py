"""The state-format version policy (adamx/formats/versions.py, docs/state_formats.md).

A record format's state records ``describe()`` and its layout ``version``; a state recorded
otherwise is refused by ``update`` (every trace) and by a checkpoint restore (orbax's
structure check, and ``versions.check_checkpoint`` with a message naming both and the fix).
Float moments carry no record: their dtype is checked where the optimizer names one, and a
checkpointer's cast between float dtypes is pinned here as what re-encoding would do. Each
layout is pinned to a digest of its bytes, so a change that forgets to bump ``version``
fails ``test_each_layout_is_pinned_to_its_version``.
"""

import dataclasses
import hashlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.formats import convert, versions

ocp = pytest.importorskip("orbax.checkpoint")

# name: (role, the format a state was made with, another configuration of the same format)
RECORD_FORMATS = {
    "blockwise_8bit": ("nu", adamx.blockwise_8bit(min_size=0), adamx.blockwise_8bit(block_size=32)),
    "blockwise_4bit": (
        "nu",
        adamx.blockwise_4bit(min_size=0),
        adamx.blockwise_4bit(qmap="dynamic"),
    ),
    "stochastic_float": ("mu", adamx.stochastic_float(), adamx.stochastic_float(jnp.float16)),
    "factored": ("nu", adamx.factored(8), adamx.factored(16)),
}
NAMES = list(RECORD_FORMATS)
FIX = r"build the optimizer with the format that made the state.*re-encode.*tx\.init\(params\)"


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((32, 64)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(64), jnp.float32),
    }


def _tx(role, fmt):
    return adamx.scale_by_moments(**{f"{role}_dtype": fmt})


def _forge(record, description):
    """The record with its recorded description replaced (what an edited or old state holds)."""
    (value,) = record.config.values()
    return dataclasses.replace(record, config={description: value})


def _moment(state, role):
    return getattr(state, role)


def _with_moment(state, role, record):
    return state._replace(**{role: record})


@pytest.mark.parametrize("name", NAMES)
def test_the_state_records_the_description_and_the_layout_version(name):
    role, fmt, _ = RECORD_FORMATS[name]
    record = _moment(_tx(role, fmt).init(_params()), role)
    bound = fmt.bind(role)
    assert type(bound).version == 1
    assert record.description == f"{bound.describe()} v1" == versions.recorded(bound)
    assert versions.version_of(record.description) == 1
    assert versions.version_of(bound.describe()) is None
    assert versions.recorded(adamx.FloatFormat(jnp.bfloat16)) is None  # no record, no key


def _forgeries(role, fmt, other):
    """(recorded description of the forged state, regex of the reason) per forgery."""
    now = versions.recorded(fmt.bind(role))
    plain = fmt.bind(role).describe()
    return [
        (now, None),
        (f"{plain} v2", r"The same configuration in another layout version \(v2 vs v1:"),
        (plain, r"The same configuration in another layout version \(none recorded vs v1:"),
        (versions.recorded(other.bind(role)), r"The layouts decode differently"),
        ("blockwise(bits=3, signed=None) v1", r"The layouts decode differently"),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_update_refuses_a_state_recorded_otherwise(name):
    role, fmt, other = RECORD_FORMATS[name]
    params = _params()
    tx = _tx(role, fmt)
    state = tx.init(params)
    want = versions.recorded(fmt.bind(role))
    for got, reason in _forgeries(role, fmt, other):
        forged = _with_moment(state, role, _forge(_moment(state, role), got))
        if reason is None:
            tx.update(params, forged)  # the same description: accepted
            continue
        match = (
            rf"(?s)scale_by_moments: the state's {role} at \['b'\] .*was stored as "
            rf"{re.escape(got)}, but this optimizer stores {role} as {re.escape(want)} "
            rf"\({role}_dtype\)\. {reason}.*{FIX}"
        )
        with pytest.raises(ValueError, match=match):
            tx.update(params, forged)
        with pytest.raises(ValueError, match=match):  # under jit: a trace-time check
            jax.jit(tx.update)(params, forged)


def test_a_jitted_step_checks_every_state_it_is_given():
    """A description is a dict key of the state, so another one is another tree structure: the
    jitted step retraces, and the check runs again; it is never skipped by the cache."""
    role, fmt, _ = RECORD_FORMATS["blockwise_8bit"]
    params, tx = _params(), _tx(role, fmt)
    traces = []

    @jax.jit
    def step(grads, state):
        traces.append(jax.tree.structure(state))
        return tx.update(grads, state)

    state = tx.init(params)
    for _ in range(2):
        _, state = step(params, state)
    old = _forge(_moment(state, role), fmt.bind(role).describe() + " v0")
    assert jax.tree.structure(old) != jax.tree.structure(_moment(state, role))
    with pytest.raises(ValueError, match=r"another layout version \(v0 vs v1:"):
        step(params, _with_moment(state, role, old))
    assert len(traces) == 2  # the forged state was traced (and refused), not served a cache
    _, state = step(params, state)  # the right state still runs from the cache
    assert len(traces) == 2


def _save(path, tree):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)


def _saved(path):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.metadata(path).item_metadata


def _restore(path, target=None):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, target)


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_of_another_configuration_is_refused(name, tmp_path):
    role, fmt, other = RECORD_FORMATS[name]
    params = _params()
    made, wanted = _tx(role, fmt), _tx(role, other)
    _, state = made.update(params, made.init(params))
    _save(tmp_path / "ckpt", {"opt_state": state})
    target = {"opt_state": jax.eval_shape(wanted.init, params)}
    got, want = versions.recorded(fmt.bind(role)), versions.recorded(other.bind(role))

    # orbax: the description is part of the path, so the target's path is not in the checkpoint
    orbax = rf"(?s){re.escape(want)}.*not found in metadata.*{re.escape(got)}"
    with pytest.raises(ValueError, match=orbax):
        _restore(tmp_path / "ckpt", target)
    # adamx's check before it: the moment, both descriptions, the argument and the fix
    match = (
        rf"(?s)the checkpoint's moment at \['opt_state'\]\.{role} was stored as {re.escape(got)}"
        rf", but this optimizer stores it as {re.escape(want)} \({role}_dtype\).*{FIX}"
    )
    with pytest.raises(ValueError, match=match):
        versions.check_checkpoint(_saved(tmp_path / "ckpt"), target)
    # restored with the optimizer that made it, then fed to the other: update refuses it
    mine = _restore(tmp_path / "ckpt", {"opt_state": jax.eval_shape(made.init, params)})
    versions.check_checkpoint(_saved(tmp_path / "ckpt"), mine)  # the right target passes
    chex.assert_trees_all_equal(mine["opt_state"], state)
    with pytest.raises(ValueError, match=rf"was stored as {re.escape(got)}, but this optimizer"):
        wanted.update(params, mine["opt_state"])


def test_a_checkpoint_of_a_forged_version_is_refused(tmp_path):
    role, fmt, _ = RECORD_FORMATS["blockwise_8bit"]
    params, tx = _params(), _tx(role, fmt)
    state = tx.init(params)
    old = _with_moment(state, role, _forge(_moment(state, role), fmt.bind(role).describe()))
    _save(tmp_path / "ckpt", old)
    target = jax.eval_shape(tx.init, params)
    with pytest.raises(ValueError, match=r"not found in metadata"):
        _restore(tmp_path / "ckpt", target)
    match = r"moment at \.nu was stored as .*\)(?! v), but .* v1 .*none recorded vs v1"
    with pytest.raises(ValueError, match=match):
        versions.check_checkpoint(_saved(tmp_path / "ckpt"), target)


def test_check_checkpoint_compares_records_with_floats_both_ways():
    params = _params()
    eight = adamx.adam(1e-2, nu_dtype=adamx.blockwise_8bit(min_size=0))
    plain = adamx.adam(1e-2)
    s8, s32 = eight.init(params), plain.init(params)
    with pytest.raises(ValueError, match=r"at \[0\]\.nu was stored as a float moment, but .* v1"):
        versions.check_checkpoint(s32, s8)
    with pytest.raises(ValueError, match=r"at 0/nu was stored as blockwise_8bit.* a float moment"):
        versions.check_checkpoint(s8, s32)
    with pytest.raises(ValueError, match=r"was stored as nothing \(no state at this path\)"):
        versions.check_checkpoint({"other": s8}, {"opt": s8})
    # a parameter named "config" is a float moment's key, not a record's
    named = {"config": {"x": jnp.ones(3)}, "w": jnp.ones((4, 4))}
    versions.check_checkpoint(plain.init(named), plain.init(named))
    versions.check_checkpoint(s8, jax.eval_shape(eight.init, params))


# ---------------------------------------------------------------------------
# Float moments: no record. What is refused, and what a checkpointer's cast does.


def test_a_float_moment_is_checked_by_dtype_where_the_optimizer_names_one():
    params = _params()
    bf16 = adamx.scale_by_moments(mu_dtype=jnp.bfloat16)
    state = bf16.update(params, bf16.init(params))[1]
    with pytest.raises(ValueError, match=r"stored as a float moment \(bfloat16\).*\(float32\)"):
        adamx.scale_by_moments(mu_dtype=jnp.float32).update(params, state)
    # mu_dtype=None (the parameter's dtype) takes any float moment and keeps its dtype: a
    # float array has one meaning in every dtype, so this is the bfloat16 run, bit for bit
    free = adamx.scale_by_moments()
    got, want = free.update(params, state), bf16.update(params, state)
    assert got[1].mu["w"].dtype == jnp.bfloat16
    chex.assert_trees_all_equal(got, want)


def test_a_checkpointer_casts_a_float_moment_to_the_targets_dtype(tmp_path):
    """Pinned: orbax restores a float array into the target's float dtype without a word,
    exactly when widening and rounded to nearest when narrowing, which is what re-encoding the
    moment in the target's format does (docs/state_formats.md: allowed, not refused)."""
    params = _params()
    bf16, f32 = adamx.adam(1e-2, mu_dtype=jnp.bfloat16), adamx.adam(1e-2, mu_dtype=jnp.float32)
    s16 = bf16.update(params, bf16.init(params), params)[1]
    s32 = f32.update(params, f32.init(params), params)[1]
    _save(tmp_path / "bf16", s16)
    _save(tmp_path / "f32", s32)
    widened = _restore(tmp_path / "bf16", jax.eval_shape(f32.init, params))
    assert widened[0].mu["w"].dtype == jnp.float32
    chex.assert_trees_all_equal(widened[0].mu, convert.encode_moment(jnp.float32, "mu", s16[0].mu))
    narrowed = _restore(tmp_path / "f32", jax.eval_shape(bf16.init, params))
    chex.assert_trees_all_equal(
        narrowed[0].mu, jax.tree.map(lambda m: m.astype(jnp.bfloat16), s32[0].mu)
    )
    versions.check_checkpoint(_saved(tmp_path / "f32"), jax.eval_shape(bf16.init, params))


# ---------------------------------------------------------------------------
# Re-encoding: the way across a refusal.


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_state_crosses_by_decode_and_encode(name):
    role, fmt, other = RECORD_FORMATS[name]
    params = _params()
    made = _tx(role, fmt)
    _, state = made.update(params, made.init(params))
    floats = convert.decode_moment(fmt, role, _moment(state, role), params)
    moved = _with_moment(state, role, convert.encode_moment(other, role, floats, params))
    assert _moment(moved, role).description == versions.recorded(other.bind(role))
    chex.assert_trees_all_equal_structs(moved, _tx(role, other).init(params))
    _tx(role, other).update(params, moved)  # accepted
    back = convert.decode_moment(other, role, _moment(moved, role), params)
    for leaf, want in zip(jax.tree.leaves(back), jax.tree.leaves(floats), strict=True):
        np.testing.assert_allclose(leaf, want, rtol=0.2, atol=1e-2 * float(jnp.max(abs(want))))
    with pytest.raises(ValueError, match=r"decode_moment: the state's .* was stored as"):
        convert.decode_moment(other, role, _moment(state, role), params)


# ---------------------------------------------------------------------------
# Each layout, pinned to its version: bump the format's `version` (and CHANGELOG.md) if this
# fails because a state's bytes, or what they decode to, changed.

LAYOUTS = {
    "8bit_m": ("mu", adamx.blockwise_8bit(min_size=0, block_size=64, stochastic=False)),
    "8bit_v": ("nu", adamx.blockwise_8bit(min_size=0, block_size=64, stochastic=False)),
    "8bit_v_sqrt_dynamic": ("nu", adamx.blockwise_8bit(min_size=0, sqrt=True, qmap="dynamic")),
    "8bit_m_linear": ("mu", adamx.blockwise_8bit(min_size=0, qmap="linear")),
    "8bit_v_small_leaf": ("nu", adamx.blockwise_8bit(stochastic=False)),  # float32 below min_size
    "4bit_m": ("mu", adamx.blockwise_4bit(min_size=0, block_size=64, stochastic=False)),
    "4bit_v": ("nu", adamx.blockwise_4bit(min_size=0, block_size=64, stochastic=False)),
    "stochastic_bf16": ("mu", adamx.stochastic_float(jnp.bfloat16)),
    "stochastic_f16": ("mu", adamx.stochastic_float(jnp.float16)),
    "factored": ("nu", adamx.factored(8)),
}
DIGESTS = {  # name: the recorded version, and sha256 of the stored arrays and their decoding
    "8bit_m": "v1 7453da42f4e724bc",
    "8bit_v": "v1 de61fe70807fb819",
    "8bit_v_sqrt_dynamic": "v1 371ea082daf7297d",
    "8bit_m_linear": "v1 f793f523af7853dc",
    "8bit_v_small_leaf": "v1 c9b12ea6311894a9",
    "4bit_m": "v1 fa90a45aa0bee96d",
    "4bit_v": "v1 258328a37e32d5c6",
    "stochastic_bf16": "v1 99a4e312a88f4ef1",
    "stochastic_f16": "v1 ecd3f6fec789ac18",
    "factored": "v1 93f633946476d1ca",
}


def _layout_input(role, dtype):
    """Values every layout stores exactly or by a deterministic rule (integers over powers
    of two: representable in bfloat16, and sums and means of them exact in float32)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, size=(16, 128)).astype(np.float32) / 32
    x = np.abs(x) if role != "mu" else x
    return {"w": jnp.asarray(x, dtype), "b": jnp.asarray(x[0, :32], dtype)}


def _digest(fmt, role):
    bound = fmt.bind(role)
    moment = _layout_input(role, jnp.float32)
    stored = convert.encode_moment(bound, role, moment)
    decoded = convert.decode_moment(bound, role, stored, moment)
    h = hashlib.sha256()
    fields = [getattr(stored, field) for field in bound.fields]  # not the key: not layout
    for leaf in jax.tree.leaves((fields, decoded)):
        leaf = np.asarray(leaf)
        h.update(f"{leaf.dtype}{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return versions.recorded(bound), h.hexdigest()[:16]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_is_pinned_to_its_version(name):
    role, fmt = LAYOUTS[name]
    description, digest = _digest(fmt, role)
    got = f"v{versions.version_of(description)} {digest}"
    assert got == DIGESTS[name], (
        f"the stored layout of {description} changed ({got}, pinned {DIGESTS[name]}): states "
        "saved before would decode to other values. Bump the format's `version`, add a "
        "CHANGELOG.md 'State formats' entry (old states are refused), then re-pin the digest."
    )


def test_every_record_format_has_a_version_and_a_pinned_layout():
    record_formats = {
        cls
        for cls in vars(adamx.formats).values()
        if isinstance(cls, type) and isinstance(getattr(cls, "fields", None), tuple)
    }
    assert record_formats == {adamx.Blockwise8bit, adamx.StochasticFloatFormat, adamx.Factored}
    pinned = {type(fmt) for _, fmt in LAYOUTS.values()}
    assert pinned == record_formats
    for cls in record_formats:
        assert isinstance(cls.version, int) and cls.version >= 1


def test_a_state_saved_before_versions_is_read_as_the_changelog_says(tmp_path):
    """CHANGELOG (issue 16): a state that recorded no version does not restore into a target;
    restored without one, each leaf's arrays decode with the format's ``decode`` (version 1's
    layout), and ``encode_moment`` stores the floats for the optimizer of today."""
    fmt = adamx.blockwise_8bit(min_size=1024)  # "w" quantized, "b" kept as float32
    params, tx = _params(), adamx.adam(1e-2, nu_dtype=fmt)
    _, state = tx.update(jax.tree.map(jnp.cos, params), tx.init(params), params)
    old = state[0]._replace(nu=_forge(state[0].nu, fmt.bind("nu").describe()))
    _save(tmp_path / "ckpt", {"params": params, "opt_state": (old, *state[1:])})
    with pytest.raises(ValueError, match=r"not found in metadata"):
        _restore(
            tmp_path / "ckpt", {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
        )

    raw = _restore(tmp_path / "ckpt")  # no target: plain dicts and lists
    nu_raw, bound = raw["opt_state"][0]["nu"], fmt.bind("nu")
    floats = {
        name: bound.decode((nu_raw["codes"][name], (nu_raw["scales"] or {}).get(name)), like)
        for name, like in params.items()
    }
    chex.assert_trees_all_equal(floats, convert.decode_moment(fmt, "nu", state[0].nu, params))
    moved = state[0]._replace(nu=convert.encode_moment(fmt, "nu", floats, params))
    tx.update(params, (moved, *state[1:]), params)  # accepted


def _is_record(node):
    return isinstance(node, adamx.formats.MomentRecord)


B8 = adamx.blockwise_8bit(min_size=0)
STAGES = {  # every stage that keeps a moment reads it through base.read_moment
    "amsgrad": lambda: adamx.amsgrad(1e-2, mu_dtype=B8, nu_dtype=B8),  # m, v and max v
    "adafactor": lambda: adamx.adafactor(1e-2, min_dim_size_to_factor=8),
    "ademamix": lambda: adamx.ademamix(1e-2, mu_dtype=adamx.stochastic_float(), nu_dtype=B8),
    "adopt": lambda: adamx.adopt(1e-2, nu_dtype=B8),
    "laprop": lambda: adamx.laprop(1e-2, nu_dtype=B8),
    "simplified_ademamix": lambda: adamx.simplified_ademamix(1e-2, mu_dtype=B8),
    "multi_tensor": lambda: adamx.multi_tensor(adamx.adam(1e-2, mu_dtype=adamx.blockwise_8bit())),
}


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_refuses_each_of_its_moments_in_another_version(name):
    params = {"w": jnp.ones((64, 64)), "b": jnp.ones(64)}
    tx = STAGES[name]()
    state = tx.init(params)
    records, treedef = jax.tree_util.tree_flatten(state, is_leaf=_is_record)
    indices = [i for i, node in enumerate(records) if _is_record(node)]
    assert indices, f"{name} keeps no moment record"
    tx.update(params, state, params)
    for i in indices:
        forged = list(records)
        forged[i] = _forge(records[i], records[i].description.replace(" v1", " v2"))
        with pytest.raises(ValueError, match=r"another layout version \(v2 vs v1:"):
            tx.update(params, treedef.unflatten(forged), params)
