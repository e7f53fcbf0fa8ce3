"""``adamx.monitor``: the wrapped transformation's updates and state bit for bit, and each
statistic against NumPy (float64) on a hand-made step."""

import importlib
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

monitor_module = importlib.import_module("adamx.stages.monitor")  # the name is the function

FIELDS = adamx.MonitorStats._fields


def tree(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shapes = {"dense": {"w": (8, 4), "b": (4,)}, "out": {"w": (4, 3), "b": (3,)}, "scale": (5,)}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def fixed(updates):
    """A transformation that returns ``updates`` whatever it is given (a hand-made step)."""
    return optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda g, s, p=None: (updates, s)
    )


def run(tx, steps=4, jit=True):
    """``steps`` steps on a fixed stream: the updates and states of each step."""
    params = tree(0)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for i in range(steps):
        grads = tree(i + 1)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append((updates, state))
    return out


def assert_bits_equal(a, b):
    def data(x):
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(data(x), data(y)), a, b)


CHAINS = {
    "adamw": lambda: adamx.adamw(1e-2, weight_decay=0.1),
    "adam_8bit_nu": lambda: adamx.adam(1e-2, nu_dtype=adamx.blockwise_8bit(block_size=4)),
    "multi_tensor_adamw": lambda: adamx.multi_tensor(adamx.adamw(1e-2), min_size=16),
    "stable_adamw": lambda: adamx.stable_adamw(1e-2),
    "cautious_adamw": lambda: adamx.cautious_adamw(1e-2, cautious_weight_decay=True),
}


@pytest.mark.parametrize(
    ("name", "jit"), [*((name, True) for name in CHAINS), ("adamw", False)]
)  # eager: op by op, no fusion to differ; under jit XLA fuses the added reductions with tx
def test_zero_effect_bit_for_bit(name, jit):
    plain, monitored = run(CHAINS[name](), jit=jit), run(adamx.monitor(CHAINS[name]()), jit=jit)
    for (u, s), (mu, ms) in zip(plain, monitored, strict=True):
        assert isinstance(ms, adamx.MonitorState)
        assert_bits_equal(mu, u)
        assert_bits_equal(ms.inner, s)


def numpy_stats(g, u, p):
    """The module docstring's formulas, in float64 over flat arrays."""
    g, u, p = (
        np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
        for t in (g, u, p)
    )
    dot = np.dot(u, g)
    return {
        "update_rms": np.sqrt(np.mean(u**2)),
        "update_param_ratio": np.linalg.norm(u) / np.linalg.norm(p),
        "grad_rms": np.sqrt(np.mean(g**2)),
        "effective_lr": -dot / np.dot(g, g),
        "descent_cosine": -dot / (np.linalg.norm(u) * np.linalg.norm(g)),
    }


def test_each_statistic_against_numpy():
    params, grads = tree(0), tree(1)
    updates = jax.tree.map(lambda g, p: -0.1 * g + 0.03 * jnp.sin(7 * p), grads, params)
    tx = adamx.monitor(fixed(updates))
    got, state = tx.update(grads, tx.init(params), params)
    assert got is updates
    stats = state.stats
    for name, want in numpy_stats(grads, updates, params).items():
        np.testing.assert_allclose(getattr(stats, name), want, rtol=2e-6, err_msg=name)
    assert set(stats.group_update_rms) == {"dense", "out", "scale"}
    for label in stats.group_update_rms:
        want = numpy_stats(grads[label], updates[label], params[label])
        np.testing.assert_allclose(stats.group_update_rms[label], want["update_rms"], rtol=2e-6)
        np.testing.assert_allclose(
            stats.group_update_param_ratio[label], want["update_param_ratio"], rtol=2e-6
        )
    assert jax.tree.map(jnp.dtype, stats) == jax.tree.map(
        lambda _: jnp.dtype(jnp.float32), stats._replace(nonfinite_grads=None)
    )._replace(nonfinite_grads=jnp.dtype(jnp.int32))
    assert int(stats.nonfinite_grads) == 0
    assert float(stats.cautious_masked_fraction) == float(stats.clipped_fraction) == 0.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.complex64])
def test_narrow_and_complex_leaves(dtype):
    params, grads = tree(0, dtype), tree(1, dtype)
    if dtype == jnp.complex64:
        grads = jax.tree.map(lambda g: g * (1 + 2j), grads)
    updates = jax.tree.map(lambda g: (-0.1 * g + 0.05).astype(dtype), grads)
    tx = adamx.monitor(fixed(updates))
    stats = tx.update(grads, tx.init(params), params)[1].stats

    def flat(t):
        return np.concatenate([np.ravel(np.asarray(x, np.complex128)) for x in jax.tree.leaves(t)])

    g, u, p = flat(grads), flat(updates), flat(params)
    dot = np.real(np.vdot(g, u))
    np.testing.assert_allclose(stats.update_rms, np.sqrt(np.mean(np.abs(u) ** 2)), rtol=2e-6)
    np.testing.assert_allclose(
        stats.update_param_ratio, np.linalg.norm(u) / np.linalg.norm(p), rtol=2e-6
    )
    np.testing.assert_allclose(stats.effective_lr, -dot / np.vdot(g, g).real, rtol=2e-6)
    assert stats.update_rms.dtype == jnp.float32


@pytest.mark.parametrize("jit", [False, True])
def test_sgd_effective_lr_is_the_learning_rate(jit):
    """Closed form: u = -η g gives η; bit for bit for a power of two (the scaling is exact)."""
    params, grads = tree(0), tree(1)
    for lr, rtol in ((2.0**-7, 0.0), (1e-3, 1e-6)):
        tx = adamx.monitor(optax.sgd(lr))
        update = jax.jit(tx.update) if jit else tx.update
        stats = update(grads, tx.init(params), params)[1].stats
        np.testing.assert_allclose(stats.effective_lr, np.float32(lr), rtol=rtol)
        np.testing.assert_allclose(stats.descent_cosine, 1.0, rtol=1e-6)
        np.testing.assert_allclose(stats.update_rms, lr * stats.grad_rms, rtol=1e-6)


def test_nonfinite_gradient_elements_are_counted():
    params = tree(0)
    grads = tree(1)
    grads["dense"]["w"] = grads["dense"]["w"].at[0, :3].set(jnp.nan).at[2, 1].set(jnp.inf)
    grads["scale"] = grads["scale"].at[4].set(-jnp.inf)
    tx = adamx.monitor(adamx.adamw(1e-3))
    stats = jax.jit(tx.update)(grads, tx.init(params), params)[1].stats
    assert stats.nonfinite_grads.dtype == jnp.int32
    assert int(stats.nonfinite_grads) == 5


def test_zero_gradient_and_zero_params_give_no_nan():
    params = {"w": jnp.zeros(3), "b": jnp.ones(2)}
    tx = adamx.monitor(optax.sgd(0.1))
    stats = tx.update({"w": jnp.ones(3), "b": jnp.zeros(2)}, tx.init(params), params)[1].stats
    assert float(stats.group_update_param_ratio["w"]) == np.inf  # a step from all-zero params
    assert float(stats.group_update_param_ratio["b"]) == 0.0  # no step
    stats = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[1].stats
    assert float(stats.effective_lr) == float(stats.descent_cosine) == 0.0


def test_initial_stats_are_zeros_of_the_final_structure():
    tx = adamx.monitor(adamx.adamw(1e-3))
    params = tree(0)
    state = tx.init(params)
    assert all(float(x) == 0 for x in jax.tree.leaves(state.stats))
    after = tx.update(tree(1), state, params)[1]
    assert jax.tree.structure(after) == jax.tree.structure(state)
    assert jax.tree.map(jnp.dtype, after.stats) == jax.tree.map(jnp.dtype, state.stats)


def test_groups():
    params = [{"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, {"w": jnp.ones((2, 1))}]
    grads = jax.tree.map(jnp.ones_like, params)
    by_layer = adamx.monitor(optax.sgd(1.0))
    assert set(by_layer.init(params).stats.group_update_rms) == {0, 1}

    def kind(p):
        return jax.tree.map(lambda x: "matrix" if x.ndim > 1 else "vector", p)

    by_kind = adamx.monitor(optax.sgd(1.0), groups=kind)
    params[0]["b"] = jnp.full(2, 2.0)
    stats = by_kind.update(grads, by_kind.init(params), params)[1].stats
    np.testing.assert_allclose(stats.group_update_param_ratio["vector"], 0.5)
    np.testing.assert_allclose(stats.group_update_param_ratio["matrix"], 1.0)

    prefix = adamx.monitor(optax.sgd(1.0), groups=["first", "rest"])  # a prefix of the params
    assert set(prefix.init(params).stats.group_update_rms) == {"first", "rest"}

    single = adamx.monitor(optax.sgd(1.0))
    assert list(single.init(jnp.ones(3)).stats.group_update_rms) == ["params"]


def test_bad_groups_are_explained():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"groups must be a tree of labels shaped like the params"):
        adamx.monitor(optax.sgd(1.0), groups={"w": "a"}).init(params)
    with pytest.raises(TypeError, match=r"group labels must be hashable and of one sortable kind"):
        adamx.monitor(optax.sgd(1.0), groups={"w": "a", "b": 1}).init(params)
    tx = adamx.monitor(optax.sgd(1.0))
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"the groups of the gradients are \['w', 'x'\]"):
        tx.update({"w": jnp.ones(2), "x": jnp.ones(2)}, state, {"w": jnp.ones(2), "x": jnp.ones(2)})
    with pytest.raises(
        ValueError, match=r"monitor \(for update_param_ratio\) needs the current parameters"
    ):
        tx.update(params, state)


def test_refused_on_packed_buckets_and_inside_sparse_rows():
    params = tree(0)
    message = r"monitor computes one statistic per parameter leaf.*buckets"
    with pytest.raises(ValueError, match=message):
        adamx.multi_tensor(adamx.monitor(adamx.adamw(1e-3)), min_size=16).init(params)
    with pytest.raises(ValueError, match=message):
        adamx.monitor(adamx.adamw(1e-3)).init(adamx.pack(params, min_size=16))
    adamx.monitor(adamx.multi_tensor(adamx.adamw(1e-3), min_size=16)).init(params)  # outside: fine

    table = jnp.ones((10, 4))
    grads = {"emb": adamx.row_sparse(jnp.array([1, 3]), jnp.ones((2, 4)), 10)}
    inside = adamx.sparse_rows(adamx.monitor(adamx.adam(0.1)))
    with pytest.raises(ValueError, match=r"per-tensor stage.*monitor"):
        inside.update(grads, inside.init({"emb": table}), {"emb": table})
    outside = adamx.monitor(adamx.sparse_rows(adamx.adam(0.1)))
    with pytest.raises(ValueError, match=r"RowSparse.*not supported"):
        outside.update(grads, outside.init({"emb": table}), {"emb": table})


def test_jit_does_not_retrace():
    tx = adamx.monitor(adamx.adamw(1e-3))
    params = tree(0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for i in range(3):
        params, state = step(params, state, tree(i + 1))
    assert float(state.stats.update_rms) > 0


def test_optax_tree_get_reads_each_field_once():
    state = adamx.monitor(adamx.adamw(1e-3)).init(tree(0))
    for name in FIELDS:
        found = optax.tree_utils.tree_get_all_with_path(state, name)
        assert len(found) == 1, name
    for name in ("mu", "nu", "count", "inner"):
        assert len(optax.tree_utils.tree_get_all_with_path(state, name)) == 1, name


def test_field_names_are_not_those_of_any_adamx_state():
    """No state of adamx (any exported NamedTuple) has a field a monitor statistic is named."""
    others = {
        field
        for name in adamx.__all__
        if isinstance(obj := getattr(adamx, name), type)
        and issubclass(obj, tuple)
        and obj is not adamx.MonitorStats
        for field in getattr(obj, "_fields", ())
    }
    assert not others & set(FIELDS), others & set(FIELDS)
    assert {"masked_fraction", "rms"} & set(FIELDS) == set()


class FakeCautious(NamedTuple):
    inner: optax.OptState
    masked_fraction: jax.Array


class FakeClip(NamedTuple):
    inner: optax.OptState


class FakeUpdateRms(NamedTuple):
    rms: dict


def test_fractions_read_from_the_inner_states(monkeypatch):
    """Read by the names the cautious and update-clipping stages agreed on (stand-in types):
    the clipped fraction weighs each leaf whose RMS > 1 by its size, and counts only the
    ``update_rms`` inside a clipping wrapper."""
    monkeypatch.setattr(monitor_module, "CautiousState", FakeCautious)
    monkeypatch.setattr(monitor_module, "ClipByUpdateRmsState", FakeClip)
    monkeypatch.setattr(monitor_module, "UpdateRmsState", FakeUpdateRms)
    params = {"a": jnp.ones(6), "b": jnp.ones((2, 2)), "c": jnp.ones(10)}
    rms = {"a": jnp.float32(1.5), "b": jnp.float32(0.5), "c": jnp.float32(1.0)}  # c: not > 1
    unclipped = FakeUpdateRms({k: jnp.float32(9.0) for k in rms})  # records, clips nothing
    inner = (FakeCautious(FakeClip(FakeUpdateRms(rms)), jnp.float32(0.25)), unclipped)
    stand_in = optax.GradientTransformation(lambda p: inner, lambda g, s, p=None: (g, s))
    tx = adamx.monitor(stand_in)
    stats = tx.update(params, tx.init(params), params)[1].stats
    np.testing.assert_allclose(stats.cautious_masked_fraction, 0.25)
    np.testing.assert_allclose(stats.clipped_fraction, 6 / 20)


def test_cautious_masked_fraction():
    """With the real stage: the fraction its state records for this step."""
    params = tree(0)
    tx = adamx.monitor(adamx.cautious_adamw(1e-2))
    state = tx.init(params)
    for i in range(3):  # step 1: Adam's step is sign(g), nothing masked; then some are
        state = jax.jit(tx.update)(tree(i + 1), state, params)[1]
        want = optax.tree.get(state.inner, "masked_fraction")
        assert float(state.stats.cautious_masked_fraction) == float(want)
    assert 0.0 < float(want) < 1.0


def test_stable_adamw_clipped_fraction():
    """With the real stage: a gradient spike on one leaf (v̂ lags behind) clips that leaf."""
    params = tree(0)
    tx = adamx.monitor(adamx.stable_adamw(1e-2))
    plain = adamx.stable_adamw(1e-2)
    state, reference = tx.init(params), plain.init(params)
    for i in range(4):
        grads = tree(i + 1)
        if i == 3:
            grads["out"] = jax.tree.map(lambda g: 100 * g, grads["out"])
        updates, state = jax.jit(tx.update)(grads, state, params)
        want, reference = jax.jit(plain.update)(grads, reference, params)
        assert_bits_equal(updates, want)
        assert_bits_equal(state.inner, reference)
        params = optax.apply_updates(params, updates)
    rms = optax.tree.get(state, "rms")
    flat_rms = dict(jax.tree_util.tree_leaves_with_path(rms))
    flat_params = dict(jax.tree_util.tree_leaves_with_path(params))
    want = sum(flat_params[k].size for k, r in flat_rms.items() if float(r) > 1)
    total = sum(x.size for x in flat_params.values())
    assert 0 < want < total
    np.testing.assert_allclose(state.stats.clipped_fraction, want / total, rtol=1e-6)


NNX = {"adamw": adamx.adamw, "stable": adamx.stable_adamw}  # stable: its per-leaf rms by path


@pytest.mark.parametrize("name", NNX)
def test_runs_in_flax_nnx_optimizer(name):
    from _flax_models import NnxMLP, batch, loss, nnx

    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, adamx.monitor(NNX[name](1e-2)), wrt=nnx.Param)
    x, y = batch()

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model, x, y)
        optimizer.update(model, grads)
        return value

    for _ in range(3):
        step(model, optimizer)
    stats = optax.tree.get(optimizer.opt_state, "stats")
    assert set(stats.group_update_param_ratio) == {"hidden", "norm", "out"}
    assert float(stats.update_rms[...]) > 0
    assert 0.0 <= float(stats.clipped_fraction[...]) <= 1.0


def test_outside_zero1_keeps_its_sharded_state(eight_devices):
    """monitor(zero1(tx)) on 8 devices: the updates and the state of zero1(tx), bit for bit, its
    moments still split over "data"; the statistics are replicated scalars."""
    mesh = jax.make_mesh((8,), ("data",))
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)}
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 2)), params) for i in range(3)]

    def run(tx):
        with jax.set_mesh(mesh):
            state = jax.jit(tx.init)(params)
            out = []
            for g in grads:
                updates, state = jax.jit(tx.update)(g, state, params)
                out.append(updates)
            return out, state

    plain = run(adamx.sharding.zero1(adamx.adamw(1e-2), mesh))
    monitored = run(adamx.monitor(adamx.sharding.zero1(adamx.adamw(1e-2), mesh)))
    assert_bits_equal(monitored[0], plain[0])
    assert_bits_equal(monitored[1].inner, plain[1])
    assert monitored[1].inner[0].mu["w"].sharding.spec[0] == "data"
    assert monitored[1].stats.update_rms.sharding.is_fully_replicated
    assert float(monitored[1].stats.update_rms) > 0


def test_extra_args_reach_the_inner_transformation():
    def update(updates, state, params=None, *, scale):
        return jax.tree.map(lambda g: -scale * g, updates), state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    tx = adamx.monitor(inner)
    params = {"w": jnp.ones(3)}
    stats = tx.update(params, tx.init(params), params, scale=0.25)[1].stats
    assert float(stats.effective_lr) == 0.25


def test_no_nan_is_computed_for_zero_steps():
    """Zero gradients and zero updates: every ratio is defined without a 0/0 (jax_debug_nans)."""
    params = {"w": jnp.zeros(3)}
    tx = adamx.monitor(optax.sgd(0.1))
    with jax.debug_nans(True):
        stats = jax.jit(tx.update)({"w": jnp.zeros(3)}, tx.init(params), params)[1].stats
    assert all(float(x) == 0 for x in jax.tree.leaves(stats))
