"""adamx on a jax.sharding.Mesh of 8 CPU devices: layouts kept, no collectives, ZeRO-1.

The 8 devices are the test run's own (``conftest.py`` sets ``jax_num_cpu_devices``): each
check of ``CHECKS`` is one test, in this process.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import reference_schedule
from _streams import jitted_step, run_steps
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from registry import matrices

import adamx
import adamx.sharding
from adamx.sharding import state_bytes_per_device

N_DEVICES = 8
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")

# Parameter layouts: (mesh shape, mesh axis names, PartitionSpec entries per leaf).
SHAPES = {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "scale": (8,)}
LAYOUTS = {
    # Parameters split along the data axis (FSDP-style), one leaf left replicated.
    "data": ((8,), ("data",), {"w1": ("data", None), "b1": ("data",), "w2": (None, "data"),
                               "scale": ()}),
    # A 2-D data x model layout (tensor parallel on "model").
    "data_model": ((4, 2), ("data", "model"), {"w1": ("data", "model"), "b1": ("model",),
                                               "w2": ("model", "data"), "scale": ()}),
}  # fmt: skip


# ---------------------------------------------------------------------------
# The checks (each builds its own 8-device mesh).


def _mesh(layout, mode):

    shape, names, _ = LAYOUTS[layout]
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    return jax.make_mesh(shape, names, (kind,) * len(shape))


def _shardings(mesh, layout):

    specs = LAYOUTS[layout][2]
    return {k: NamedSharding(mesh, PartitionSpec(*specs[k])) for k in SHAPES}


def _trees(seed, n_grads):
    rng = np.random.default_rng(seed)
    draw = lambda: {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}  # noqa: E731
    return draw(), [draw() for _ in range(n_grads)]


def _optimizers():

    schedule = reference_schedule(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10))
    # name: (optimizer, how close to one device). XLA:CPU fuses each layout's program on its
    # own: it may contract a*b + c into an FMA in one and not the other (a float32 rounding of
    # the update), and round bfloat16 moments at different points (optax.adam(mu_dtype=bfloat16)
    # alike). Where it does neither, the results are bit-identical.
    return {
        "adamw": (adamx.adamw(schedule, weight_decay=0.1, mask=matrices), "exact"),
        "adam_nesterov": (adamx.adam(1e-2, nesterov=True), "float32"),
        "adam_bf16_mu": (adamx.adam(1e-2, mu_dtype=jnp.bfloat16), "bfloat16"),
    }


def _assert_equivalent(tree, expected_shardings):

    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(expected_shardings), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)


def _check_layout(layout, mode):
    """init shards the state like params, a step keeps it with no collectives, results exact."""

    mesh = _mesh(layout, mode)
    shardings = _shardings(mesh, layout)
    params0, grads_list = _trees(0, 3)
    for name, (tx, agreement) in _optimizers().items():
        with jax.set_mesh(mesh):
            params = jax.device_put(params0, shardings)
            grads_list_sharded = [jax.device_put(g, shardings) for g in grads_list]
            if mode == "explicit":
                state = jax.jit(tx.init)(params)
            else:
                state_shardings = adamx.sharding.state_shardings(tx, params)
                state = jax.jit(tx.init, out_shardings=state_shardings)(params)
            mu, nu = state[0].mu, state[0].nu
            _assert_equivalent(mu, shardings)
            _assert_equivalent(nu, shardings)
            for count in (s for s in jax.tree.leaves(state) if s.ndim == 0):
                assert count.sharding.is_fully_replicated, (name, count.sharding)

            step = jitted_step(tx)
            compiled = step.lower(params, state, grads_list_sharded[0]).compile()
            hlo = compiled.as_text()
            found = [c for c in COLLECTIVES if c in hlo]
            assert not found, f"{name}: the step communicates ({found}) in layout {layout}"
            out_params, out_state = compiled.output_shardings
            _assert_equivalent(params, out_params)
            _assert_equivalent(state, out_state)

            got = run_steps(step, params, state, grads_list_sharded)
            _assert_equivalent(got[0], shardings)
            _assert_equivalent(got[1], jax.tree.map(lambda x: x.sharding, state))

        one = jax.devices()[0]
        reference_step = jitted_step(tx)
        params1 = jax.device_put(params0, one)
        want = run_steps(reference_step, params1, tx.init(params1), jax.device_put(grads_list, one))
        got, want = jax.device_get(got), jax.device_get(want)
        if agreement == "exact":
            chex.assert_trees_all_equal(got, want)
        elif agreement == "float32":  # steps are ~1e-2: a float32 rounding of one is ~1e-9
            chex.assert_trees_all_close(got, want, atol=1e-7, rtol=1e-6)
        else:  # a bfloat16 rounding of m (2**-8 relative) changes a step by ~4e-5
            chex.assert_trees_all_close(got[0], want[0], atol=3e-4, rtol=0)


def _mlp_loss(params, x, y):

    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    out = (h @ params["w2"]) * params["scale"][None, :]
    return jnp.mean((out - y) ** 2)


def _data_parallel(tx_for_mesh, mode, steps=3):
    """Replicated params, batch split over "data": params and state after ``steps`` steps."""

    mesh = _mesh("data", mode)
    tx = tx_for_mesh(mesh)
    params0, _ = _trees(1, 0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((steps, 64, 16)).astype(np.float32)
    y = rng.standard_normal((steps, 64, 8)).astype(np.float32)

    def step(params, state, x, y):
        grads = jax.grad(_mlp_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))
    with jax.set_mesh(mesh):
        params = jax.device_put(params0, replicated)
        state = jax.jit(tx.init)(params)
        state_layout = jax.tree.map(lambda a: a.sharding, state)
        bytes_ = state_bytes_per_device(state)
        step = jax.jit(step)
        for i in range(steps):
            params, state = step(params, state, jax.device_put(x[i], batch), y[i])
        _assert_equivalent(params, jax.tree.map(lambda _: replicated, params))
        _assert_equivalent(state, state_layout)
    return jax.device_get((params, state)), state_layout, bytes_


def _adamw():

    return adamx.adamw(optax.linear_schedule(1e-2, 1e-3, 3), weight_decay=0.1)


def _check_zero1(mode):
    """ZeRO-1: per-device state bytes drop 8x, the moments split over "data", same results."""

    plain, plain_layout, plain_bytes = _data_parallel(lambda mesh: _adamw(), mode)
    zero, zero_layout, zero_bytes = _data_parallel(
        lambda mesh: adamx.sharding.zero1(_adamw(), mesh, "data"), mode
    )
    # The same maths on a different layout: equal up to a float32 rounding of a step (see
    # _optimizers on XLA:CPU's per-layout fusion).
    chex.assert_trees_all_close(zero, plain, atol=1e-7, rtol=1e-6)

    # State bytes from the shapes alone: m and v in float32 for each parameter, plus two int32
    # step counts (bias correction, learning-rate schedule).
    moments = sum(2 * 4 * int(np.prod(s)) for s in SHAPES.values())
    counts = 2 * 4
    assert set(plain_bytes.values()) == {moments + counts}, plain_bytes
    assert set(zero_bytes.values()) == {moments // N_DEVICES + counts}, zero_bytes
    assert len(zero_bytes) == N_DEVICES

    for leaf in jax.tree.leaves(plain_layout):
        assert leaf.is_fully_replicated
    for tree in (zero_layout[0].mu, zero_layout[0].nu):
        for k, s in tree.items():
            assert s.spec[0] == "data" or SHAPES[k][0] % N_DEVICES, (k, s.spec)

    # And the data-parallel run equals one device running the whole batch (up to the
    # order of the gradient all-reduce).

    tx = _adamw()
    params, _ = _trees(1, 0)
    state = tx.init(params)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 64, 16)).astype(np.float32)
    y = rng.standard_normal((3, 64, 8)).astype(np.float32)
    for i in range(3):
        grads = jax.grad(_mlp_loss)(params, x[i], y[i])
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(zero[0], params, rtol=1e-5, atol=1e-6)


CHECKS = {
    f"{layout}-{mode}": (lambda layout=layout, mode=mode: _check_layout(layout, mode))
    for layout in LAYOUTS
    for mode in ("explicit", "auto")
}
CHECKS["zero1-explicit"] = lambda: _check_zero1("explicit")
CHECKS["zero1-auto"] = lambda: _check_zero1("auto")


# ---------------------------------------------------------------------------
# The tests.


@pytest.mark.parametrize("check", list(CHECKS))
def test_on_eight_devices(eight_devices, check):
    CHECKS[check]()


def test_zero1_rejects_unknown_axis():

    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match=r"axis 'data' is not an axis of the mesh.*\('batch',\)"):
        adamx.sharding.zero1(adamx.adam(1e-3), mesh, axis="data")


def test_zero1_rejects_non_mesh():

    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh, got list"):
        adamx.sharding.zero1(adamx.adam(1e-3), jax.devices(), axis="data")


def test_state_bytes_per_device_rejects_shapes():

    shapes = jax.eval_shape(adamx.adam(1e-3).init, {"w": jnp.ones(4)})
    with pytest.raises(TypeError, match=r"expected a pytree of jax\.Array.*ShapeDtypeStruct"):
        adamx.sharding.state_bytes_per_device(shapes)


def test_state_bytes_per_device_counts_one_device():

    got = adamx.sharding.state_bytes_per_device({"a": jnp.zeros((3, 4)), "b": jnp.zeros(2, "int8")})
    assert list(got.values()) == [3 * 4 * 4 + 2]


def test_state_shardings_follow_params_and_replicate_the_rest():

    mesh = jax.make_mesh((1,), ("data",))
    layout = NamedSharding(mesh, PartitionSpec("data"))
    params = {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32, sharding=layout)}
    tx = adamx.adamw(1e-3)
    got = adamx.sharding.state_shardings(tx, params)
    assert jax.tree.structure(got) == jax.tree.structure(jax.eval_shape(tx.init, params))
    moments, count = got[0], got[1].count
    assert moments.mu["w"] == layout and moments.nu["w"] == layout
    assert count.spec == PartitionSpec() and count.mesh == mesh


def test_abstract_state_is_a_concrete_restore_target():

    mesh = jax.make_mesh((1,), ("data",))
    params = {"w": jax.device_put(jnp.ones((4, 3)), NamedSharding(mesh, PartitionSpec("data")))}
    tx = adamx.adamw(1e-3)
    got = adamx.sharding.abstract_state(tx, params)
    want = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert (g.shape, g.dtype) == (w.shape, w.dtype)
        assert isinstance(g.sharding, NamedSharding) and g.sharding.mesh == mesh


def test_state_shardings_lets_errors_unrelated_to_layout_through():

    mesh = jax.make_mesh((1,), ("data",))
    layout = NamedSharding(mesh, PartitionSpec("data"))
    params = {"z": jax.ShapeDtypeStruct((8, 512), jnp.complex64, sharding=layout)}
    tx = adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(min_size=0))
    with pytest.raises(TypeError, match=r"blockwise_8bit stores real moments"):
        adamx.sharding.state_shardings(tx, params)


def test_zero1_update_without_params_lays_out_the_state_from_the_updates():

    mesh = jax.make_mesh((1,), ("data",))
    tx = adamx.sharding.zero1(adamx.adam(1e-2), mesh, axis="data")
    params = [jnp.ones((8, 4)), jnp.arange(3.0)]
    grads = [jnp.full((8, 4), 0.5), jnp.array([1.0, -2.0, 3.0])]
    state = jax.jit(tx.init)(params)
    with_params = jax.jit(tx.update)(grads, state, params)
    without = jax.jit(lambda g, s: tx.update(g, s))(grads, state)
    chex.assert_trees_all_equal(with_params, without)
    chex.assert_trees_all_equal(with_params, jax.jit(adamx.adam(1e-2).update)(grads, state, params))
