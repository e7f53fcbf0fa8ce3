"""Sharded optimizer state through orbax on an 8-device mesh: save, restore, resume bit for bit.

Regression test for issue 10: the README's restore target,
``jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)`` under
``jax.set_mesh``, carries shardings on an *abstract* mesh on ``Explicit`` axes, which orbax
cannot restore onto (``_device_assignment is not implemented for AbstractMesh``), ZeRO-1
included. ``adamx.sharding.abstract_state(tx, params)`` gives the state's target with
concrete ``NamedSharding``s. Each case here trains 3 steps, saves, restores into a fresh
optimizer against that target (the parameters' target built from shapes and shardings
alone, as a restarted job has them), trains 3 more, and must equal 6 uninterrupted steps
bit for bit, with every restored leaf on the layout it was saved from.

The 8 devices are the test run's own (``conftest.py`` sets ``jax_num_cpu_devices``).
"""

import jax
import numpy as np
import optax
import pytest
from _promotion import reference_schedule
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adamx
import adamx.sharding

ocp = pytest.importorskip("orbax.checkpoint")

N = 8
STEPS_BEFORE, STEPS_AFTER = 3, 3
SHAPES = {"w1": (64, 512), "b1": (512,), "w2": (16, 512), "head": [(16, 2048), (16, 2048)]}
SPECS = {"w1": ("x", None), "b1": ("x",), "w2": (None, "x"), "head": [(None, "x"), ("x", None)]}


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _is_spec(x):
    return isinstance(x, tuple) and all(d is None or isinstance(d, str) for d in x)


def _optimizer(kind):
    schedule = reference_schedule(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10))
    if kind == "adamw":
        return adamx.adamw(schedule, weight_decay=0.1)
    return adamx.adamw(
        schedule,
        weight_decay=0.1,
        mu_dtype=adamx.blockwise_8bit(block_size=64, min_size=1024),
        nu_dtype=adamx.blockwise_8bit(signed=False, block_size=64, min_size=1024),
    )


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), SHAPES, is_leaf=_is_shape
    )


@pytest.mark.parametrize("mode", ["explicit", pytest.param("auto", marks=pytest.mark.slow)])
@pytest.mark.parametrize("layout", ["sharded", pytest.param("zero1", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["adamw", "adamw_8bit"])
def test_save_restore_resume_on_eight_devices(eight_devices, kind, layout, mode, tmp_path):
    """``layout``: "sharded" (params split by SPECS, plain tx) or "zero1" (replicated, zero1)."""
    axis_type = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((N,), ("x",), (axis_type,))
    if layout == "zero1":
        shardings = jax.tree.map(
            lambda _: NamedSharding(mesh, PartitionSpec()), SHAPES, is_leaf=_is_shape
        )

        def make_tx():
            return adamx.sharding.zero1(_optimizer(kind), mesh, axis="x")
    else:
        shardings = jax.tree.map(
            lambda s: NamedSharding(mesh, PartitionSpec(*s)), SPECS, is_leaf=_is_spec
        )

        def make_tx():
            return _optimizer(kind)

    def train(tx, params, state, steps):
        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        for i in steps:
            params, state = step(params, state, jax.device_put(_grads(i), shardings))
        return params, state

    rng = np.random.default_rng(0)
    host = jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), SHAPES, is_leaf=_is_shape
    )
    with jax.set_mesh(mesh):
        tx = make_tx()
        params = jax.device_put(host, shardings)
        if mode == "explicit" or layout == "zero1":
            state = jax.jit(tx.init)(params)
        else:
            state = jax.jit(tx.init, out_shardings=adamx.sharding.state_shardings(tx, params))(
                params
            )
        params, state = train(tx, params, state, range(STEPS_BEFORE))
        saved_layout = jax.tree.map(lambda a: a.sharding, (params, state))
        want = train(tx, params, state, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))

        directory = tmp_path / "step_3"
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(directory, {"params": params, "opt_state": state})

        # A restarted job: a fresh optimizer, the parameters known by shape and layout only.
        tx = make_tx()
        abstract_params = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s, np.float32, sharding=sh),
            SHAPES,
            shardings,
            is_leaf=_is_shape,
        )
        target = {
            "params": abstract_params,
            "opt_state": adamx.sharding.abstract_state(tx, abstract_params),
        }
        for leaf in jax.tree.leaves(target):
            assert isinstance(leaf.sharding.mesh, jax.sharding.Mesh), leaf.sharding
        with ocp.StandardCheckpointer() as ckpt:
            restored = ckpt.restore(directory, target)
        params, state = restored["params"], restored["opt_state"]
        restored_layout = jax.tree.map(lambda a: a.sharding, (params, state))
        for got, saved, a in zip(
            jax.tree.leaves(restored_layout),
            jax.tree.leaves(saved_layout),
            jax.tree.leaves((params, state)),
            strict=True,
        ):
            assert got.is_equivalent_to(saved, a.ndim), (got, saved)
        got = train(tx, params, state, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))

    got, want = jax.device_get(got), jax.device_get(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(flat_want, jax.tree.leaves(got), strict=True):
        assert np.array_equal(np.asarray(g), np.asarray(w)), jax.tree_util.keystr(path)
