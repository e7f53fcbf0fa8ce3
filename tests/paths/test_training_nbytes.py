"""``adamx.training_nbytes``: parameters plus optimizer state, per parameter, in closed form.

Every count below is written out by hand from the formats' layouts (``size * itemsize`` of
each array): fp32 AdamW holds 4 + 8 bytes a parameter, bf16 parameters with 8-bit moments
2 + 2 * (1 + 4 / 256), ... . ``min_size`` keeps the large leaves and the state that belongs
to them (the state subtrees shaped like the parameters); counts and keys belong to none.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
import adamx._nbytes
from adamx._nbytes import state_nbytes_by_param

W, B = (256, 1024), (1024,)
NW, NB = 256 * 1024, 1024
F32 = dict(mu_dtype=jnp.float32, nu_dtype=jnp.float32)
EIGHT = dict(mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_8bit())
COUNT = 4  # the int32 step count of bias correction
KEY = 8  # a raw uint32[2] PRNG key
TAG = 1  # the blockwise format's configuration tag, uint8[1]


def shapes(dtype=jnp.float32):
    return {"w": jax.ShapeDtypeStruct(W, dtype), "b": jax.ShapeDtypeStruct(B, dtype)}


def budget(tx, params, **kwargs):
    return adamx.training_nbytes(params, jax.eval_shape(tx.init, params), **kwargs)


def test_fp32_adamw_is_4_plus_8_bytes_per_param():
    got = budget(adamx.adamw(1e-3), shapes())
    assert got == adamx.TrainingBytes(4 * (NW + NB), 8 * (NW + NB) + COUNT, NW + NB)
    assert got.total == 12 * (NW + NB) + COUNT
    assert got.per_param == (12 * (NW + NB) + COUNT) / (NW + NB)
    large = budget(adamx.adamw(1e-3), shapes(), min_size=4096)
    assert large == adamx.TrainingBytes(4 * NW, 8 * NW, NW) and large.per_param == 12.0


def test_optax_adam_counts_like_adamx():
    assert budget(optax.adamw(1e-3), shapes()) == budget(adamx.adamw(1e-3), shapes())


def test_bf16_params_8bit_moments_stochastic_rounding():
    tx = optax.chain(adamx.adamw(1e-3, **EIGHT), adamx.stochastic_rounding(seed=0))
    params = shapes(jnp.bfloat16)
    # w: 1 byte of code + a 4-byte scale per 256-element block, for m and for v; b (under
    # min_size 4096) keeps fp32 m and v; one key and one tag per moment, a count, SR's key.
    w_state = 2 * (NW + 4 * NW // 256)
    b_state = 2 * 4 * NB
    shared = 2 * (KEY + TAG) + COUNT + KEY
    assert budget(tx, params) == adamx.TrainingBytes(2 * (NW + NB), w_state + b_state + shared,
                                                     NW + NB)  # fmt: skip
    large = budget(tx, params, min_size=4096)
    assert large == adamx.TrainingBytes(2 * NW, w_state, NW)
    assert large.per_param == 2 + 2 * (1 + 4 / 256) == 4.03125


def test_kahan_compensation_belongs_to_the_bf16_leaf_only():
    tx = optax.chain(adamx.adamw(1e-3, **F32), adamx.kahan_summation())
    params = {"w": jax.ShapeDtypeStruct(W, jnp.bfloat16), "b": jax.ShapeDtypeStruct(B, jnp.float32)}
    per_leaf, shared = state_nbytes_by_param(params, jax.eval_shape(tx.init, params))
    assert per_leaf == [8 * NB, (8 + 2) * NW] and shared == COUNT  # leaves order: b, w
    assert budget(tx, params, min_size=4096).per_param == 2 + 8 + 2


def test_arrays_and_shapes_count_alike():
    params = {"w": jnp.zeros(W), "b": jnp.zeros(B)}
    tx = adamx.adamw(1e-3, **EIGHT)
    from_arrays = adamx.training_nbytes(params, tx.init(params), min_size=4096)
    assert from_arrays == budget(tx, shapes(), min_size=4096)
    assert adamx.training_nbytes(params, tx.init(params)) == budget(tx, shapes())


def test_min_size_zero_keeps_every_leaf_but_no_shared_state():
    tx = adamx.adamw(1e-3, **EIGHT)
    whole, every = budget(tx, shapes()), budget(tx, shapes(), min_size=0)
    assert every.param_bytes == whole.param_bytes and every.n_params == whole.n_params
    assert whole.state_bytes - every.state_bytes == 2 * (KEY + TAG) + COUNT
    assert budget(tx, shapes(), min_size=10**9) == adamx.TrainingBytes(0, 0, 0)
    assert np.isnan(adamx.TrainingBytes(0, 0, 0).per_param)


def test_a_chain_tuple_is_not_mistaken_for_tuple_params():
    """Params (w, b) and a chain's state (adamw's, SR's) are both pairs: the state's pair
    holds records, not one array per position, so it is searched further down."""
    params = (jax.ShapeDtypeStruct(W, jnp.bfloat16), jax.ShapeDtypeStruct(B, jnp.bfloat16))
    tx = optax.chain(adamx.adamw(1e-3, **F32), adamx.stochastic_rounding(seed=0))
    per_leaf, shared = state_nbytes_by_param(params, jax.eval_shape(tx.init, params))
    assert per_leaf == [8 * NW, 8 * NB] and shared == COUNT + KEY


def test_masked_and_partitioned_states():
    params = shapes()
    tx = optax.multi_transform(
        {"adam": adamx.adamw(1e-3), "sgd": optax.sgd(1e-3, momentum=0.9)},
        {"w": "adam", "b": "sgd"},
    )
    per_leaf, shared = state_nbytes_by_param(params, jax.eval_shape(tx.init, params))
    assert per_leaf == [4 * NB, 8 * NW] and shared == COUNT  # b: momentum; w: m and v


def test_bare_array_params_own_the_whole_state():
    param = jax.ShapeDtypeStruct(W, jnp.float32)
    got = budget(adamx.adamw(1e-3), param, min_size=1)
    assert got == adamx.TrainingBytes(4 * NW, 8 * NW + COUNT, NW)


def test_sizes_are_global_on_a_mesh(eight_devices):
    mesh = jax.make_mesh((8,), ("data",), devices=eight_devices)
    params = {"w": jax.device_put(jnp.zeros(W), NamedSharding(mesh, P("data")))}
    tx = adamx.adamw(1e-3)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    assert state[0].mu["w"].addressable_shards[0].data.shape == (W[0] // 8, W[1])
    got = adamx.training_nbytes(params, state, min_size=1)
    assert got == adamx.TrainingBytes(4 * NW, 8 * NW, NW)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "4096"])
def test_min_size_is_checked(bad):
    with pytest.raises(ValueError, match=r"^min_size must be an int >= 0 .*, got "):
        adamx.training_nbytes(shapes(), {}, min_size=bad)


def test_factored_v_keeps_a_row_and_a_column_per_matrix():
    tx = adamx.adamw(1e-3, mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.factored())
    # w (256 x 1024, both axes >= 128): 8-bit m, v as 256 + 1024 float32 means; b falls back
    # to a full float32 v (and float32 m, under min_size).
    w_state = NW + 4 * NW // 256 + 4 * (256 + 1024)
    large = budget(tx, shapes(), min_size=4096)
    assert large == adamx.TrainingBytes(4 * NW, w_state, NW)
    per_leaf, _ = state_nbytes_by_param(shapes(), jax.eval_shape(tx.init, shapes()))
    assert per_leaf == [2 * 4 * NB, w_state]


def test_optax_adafactor_state_belongs_to_its_parameters():
    """optax's FactoredState keeps v_row, v_col and v for every leaf (placeholders of one
    element where unused): each belongs to its parameter; the count to none."""
    params = shapes()
    per_leaf, shared = state_nbytes_by_param(params, jax.eval_shape(optax.adafactor(1e-2).init,
                                                                    params))  # fmt: skip
    assert per_leaf == [4 * (1 + 1 + NB), 4 * (256 + 1024 + 1)] and shared == COUNT


def test_bf16_params_4bit_m_factored_v_is_about_2_5_bytes():
    tx = optax.chain(
        adamx.adamw(1e-3, mu_dtype=adamx.blockwise_4bit(),
                    nu_dtype=adamx.factored(dtype=jnp.float32)),
        adamx.stochastic_rounding(seed=0),
    )  # fmt: skip
    # w: 2 (bf16) + 4-bit m (two codes a byte, a float32 scale per 128) + float32 factors.
    large = budget(tx, shapes(jnp.bfloat16), min_size=4096)
    assert large == adamx.TrainingBytes(2 * NW, NW // 2 + 4 * NW // 128 + 4 * (256 + 1024), NW)
    assert large.per_param == 2 + 0.5 + 4 / 128 + 4 * (256 + 1024) / NW
