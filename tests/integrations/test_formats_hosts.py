"""State formats inside hosts: flax nnx.Optimizer, orbax checkpoints, and a refused mismatch.

References: the same chain run on the plain parameter pytree (bit for bit), and the
checkpointer's own structure check.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import FORMATS

import adamx

nnx = pytest.importorskip("flax.nnx")
ocp = pytest.importorskip("orbax.checkpoint")

STEPS = 4
# The registry's formats whose moments are records rather than arrays: 8-bit codes and scales,
# stochastic bfloat16 values and their key.
RECORD_FORMATS = ["blockwise_8bit", "stochastic_bf16"]


class Model(nnx.Module):
    def __init__(self, rngs):
        self.big = nnx.Linear(128, 64, rngs=rngs)  # 8192-element kernel: quantized
        self.small = nnx.Linear(64, 4, rngs=rngs)  # stays float32 under 8-bit

    def __call__(self, x):
        return self.small(jnp.tanh(self.big(x)))


def _loss(model, x):
    return jnp.mean((model(x) - 0.5) ** 2)


def _x(i):
    return jax.random.normal(jax.random.key(10 + i), (8, 128))


def _train_nnx(tx):
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    structure = jax.tree.structure(optimizer.opt_state)

    @nnx.jit
    def step(model, optimizer, x):
        optimizer.update(model, nnx.grad(_loss)(model, x))

    for i in range(STEPS):
        step(model, optimizer, _x(i))
    assert jax.tree.structure(optimizer.opt_state) == structure
    return nnx.state(model, nnx.Param), optimizer


def _train_plain(tx):
    """The same steps with the optimizer on a plain dict of arrays (nnx only computes grads)."""
    graphdef, template = nnx.split(Model(nnx.Rngs(0)))
    params = nnx.to_pure_dict(template)

    def loss(p, x):
        state = jax.tree.map(lambda v: v, template)
        nnx.replace_by_pure_dict(state, p)
        return _loss(nnx.merge(graphdef, state), x)

    @jax.jit
    def step(p, s, x):
        u, s = tx.update(jax.grad(loss)(p, x), s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for i in range(STEPS):
        params, state = step(params, state, _x(i))
    return params, state


@pytest.mark.parametrize("fmt", RECORD_FORMATS)
def test_nnx_optimizer_trains_with_the_format_like_the_plain_pytree(fmt):
    got, optimizer = _train_nnx(adamx.adam(1e-2, **FORMATS[fmt].kwargs))
    want, want_state = _train_plain(adamx.adam(1e-2, **FORMATS[fmt].kwargs))
    chex.assert_trees_all_equal(nnx.to_pure_dict(got), want)
    record = optimizer.opt_state[0].mu
    assert isinstance(record, (adamx.QuantizedMoment, adamx.StochasticFloatMoment))
    # Every state leaf at a parameter position is one array (nnx wraps it in a Variable).
    quantized = isinstance(record, adamx.QuantizedMoment)
    for field in ("codes", "scales") if quantized else ("value",):
        for leaf in jax.tree.leaves(getattr(record, field)):
            assert isinstance(leaf, jax.Array), (field, type(leaf))
    chex.assert_trees_all_equal(jax.tree.leaves(optimizer.opt_state), jax.tree.leaves(want_state))
    assert not np.allclose(want["big"]["kernel"], nnx.to_pure_dict(_fresh())["big"]["kernel"])


def _fresh():
    return nnx.state(Model(nnx.Rngs(0)), nnx.Param)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (16, 512)), "b": jax.random.normal(k2, (16,))}


def _grads(i):
    return jax.tree.map(lambda p: jnp.sin(p * (i + 1)), _params())


def _run(tx, params, state, steps):
    for i in steps:
        updates, state = tx.update(_grads(i), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _8bit(**kwargs):
    return adamx.adam(
        1e-2, mu_dtype=adamx.blockwise_8bit(**kwargs), nu_dtype=adamx.blockwise_8bit(**kwargs)
    )


def test_orbax_resumes_an_8bit_state_bit_exactly_and_refuses_another_config(tmp_path):
    tx, params = _8bit(), _params()
    want = _run(tx, params, tx.init(params), range(6))
    p3, s3 = _run(tx, params, tx.init(params), range(3))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", {"params": p3, "opt_state": s3})

    def restore(tx):
        target = jax.eval_shape(lambda p: {"params": p, "opt_state": tx.init(p)}, params)
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(tmp_path / "ckpt", target)

    restored = restore(_8bit())
    chex.assert_trees_all_equal(restored, {"params": p3, "opt_state": s3})
    got = _run(_8bit(), restored["params"], restored["opt_state"], range(3, 6))
    chex.assert_trees_all_equal(got, want)
    # The configuration is a key of the state's tree: another map, block size or storage
    # is a different checkpoint path, and the checkpointer names both.
    for other in (_8bit(qmap="dynamic"), _8bit(block_size=128), adamx.adam(1e-2)):
        with pytest.raises(ValueError, match=r"(?s)not found in metadata.*blockwise_8bit\(signed"):
            restore(other)


@pytest.mark.parametrize(
    ("made_by", "used_by", "stored", "wanted"),
    [
        ("8bit", "8bit_dynamic", r"qmap='e4m4'", r"qmap='dynamic'"),
        ("8bit", "8bit_sqrt", r"sqrt=False", r"sqrt=True"),
        ("8bit", "8bit_nearest", r"stochastic=True", r"stochastic=False"),
        ("8bit", "8bit_min_size", r"min_size=4096", r"min_size=0"),
        ("fp32", "8bit", r"a float moment \(float32\)", r"blockwise_8bit\(signed="),
        ("8bit", "fp32", r"blockwise_8bit\(signed=", r"a float moment \(float32\)"),
        ("bf16_sr", "8bit", r"stochastic_float\(bfloat16\)", r"blockwise_8bit"),
        ("bf16", "fp32", r"a float moment \(bfloat16\)", r"a float moment \(float32\)"),
    ],
)
def test_update_refuses_a_state_made_by_another_format(made_by, used_by, stored, wanted):
    nu = {
        "8bit": adamx.blockwise_8bit(),
        "8bit_dynamic": adamx.blockwise_8bit(qmap="dynamic"),
        "8bit_sqrt": adamx.blockwise_8bit(sqrt=True),
        "8bit_nearest": adamx.blockwise_8bit(stochastic=False),
        "8bit_min_size": adamx.blockwise_8bit(min_size=0),
        "fp32": jnp.float32,
        "bf16_sr": adamx.stochastic_float(),
        "bf16": adamx.FloatFormat(jnp.bfloat16, upcast=True),
    }
    params = _params()
    state = adamx.scale_by_moments(nu_dtype=nu[made_by]).init(params)
    tx = adamx.scale_by_moments(nu_dtype=nu[used_by])
    match = rf"scale_by_moments: the state's nu at \['b'\] .*stored as .*{stored}"
    match += rf".*stores nu as .*{wanted}"
    with pytest.raises(ValueError, match=match):
        tx.update(_grads(0), state)
    with pytest.raises(ValueError, match=match):  # the same under jit (a trace-time check)
        jax.jit(tx.update)(_grads(0), state)


def test_running_max_refuses_another_format_too():
    params, v8 = _params(), adamx.blockwise_8bit()
    tx = adamx.amsgrad(1e-2, nu_dtype=v8)
    with pytest.raises(ValueError, match=r"scale_by_moments: the state's nu at \['b'\]"):
        tx.update(_grads(0), adamx.amsgrad(1e-2).init(params), params)

    def chain(max_format):
        return optax.chain(adamx.scale_by_moments(nu_dtype=v8), adamx.running_max_nu(max_format))

    state = chain(None).init(params)
    match = r"running_max_nu: the state's nu_max at \['b'\] .*float moment.*blockwise_8bit"
    with pytest.raises(ValueError, match=match):
        chain(v8).update(_grads(0), state)


def test_partition_specs_shard_codes_and_scales_like_the_parameter():
    from jax.sharding import NamedSharding, PartitionSpec

    fmt = adamx.blockwise_8bit().bind("nu")
    assert fmt.partition_specs(("x", None), (64, 2048)) == (("x", None, None), ("x", None))
    assert fmt.partition_specs((None, "x"), (16, 4096)) == ((None, "x", None), (None, "x"))
    assert fmt.partition_specs(("x",), (2048,)) == (("x",), None)  # float32 below min_size
    assert adamx.stochastic_float().partition_specs(("x",), (8,)) == (("x",),)
    assert adamx.FloatFormat().partition_specs(("x", None), (8, 2)) == ("x", None)
    # The specs lay each device's blocks next to its slice of the parameter.
    mesh = jax.make_mesh((8,), ("x",))
    x = jax.random.normal(jax.random.key(0), (16, 4096))
    codes, scales = fmt.encode(x, fmt.init(x), jax.random.key(1))
    specs = fmt.partition_specs((None, "x"), x.shape)
    sharded = [
        jax.device_put(a, NamedSharding(mesh, PartitionSpec(*s)))
        for a, s in zip((codes, scales), specs, strict=True)
    ]
    assert sharded[0].addressable_shards[0].data.shape == (16, 2, 256)  # 512 columns each
    assert sharded[1].addressable_shards[0].data.shape == (16, 2)
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "x")))
    back = jax.jit(fmt.decode)(tuple(sharded), xs)
    chex.assert_trees_all_equal(back, fmt.decode((codes, scales), x))


def test_blocks_straddling_devices_are_refused():
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    fmt = adamx.blockwise_8bit(block_size=4, min_size=1).bind("mu")
    match = r"\(4, 8\) split along its last axis over \('x',\) \(8 pieces of 1 elements\).*"
    match += r"cannot be laid out like the parameter in blocks of 4: a block must lie on one device"
    with pytest.raises(ValueError, match=match):
        fmt.partition_specs((None, "x"), (4, 8), {"x": 8})
    assert fmt.partition_specs((None, "x"), (4, 64), {"x": 8}) == ((None, "x", None), (None, "x"))
    mesh = jax.make_mesh((8,), ("x",), (AxisType.Explicit,))
    params = {"w": jax.device_put(jnp.ones((4, 8)), NamedSharding(mesh, PartitionSpec(None, "x")))}
    tx = adamx.adam(1e-2, mu_dtype=fmt)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=match):
        jax.jit(tx.init)(params)
