"""Bad input fails early, with a message naming the argument or pytree path and the fix."""

import contextlib

import jax
import jax.numpy as jnp
import optax
import pytest

import adamx

PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)


@pytest.mark.parametrize("name", ["b1", "b2"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_betas_outside_unit_interval(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\), got {value}"):
        adamx.adam(1e-3, **{name: value})


@pytest.mark.parametrize("name", ["eps", "eps_root"])
@pytest.mark.parametrize("value", [-1e-8, float("nan"), float("inf")])
def test_negative_or_non_finite_eps(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got {value}"):
        adamx.adam(1e-3, **{name: value})


def test_beta_of_wrong_type():
    with pytest.raises(TypeError, match=r"b1 must be a number in \[0, 1\), got '0.9' \(str\)"):
        adamx.adam(1e-3, b1="0.9")


@pytest.mark.parametrize("lr", ["fast", None, [1e-3]])
def test_learning_rate_neither_number_nor_schedule(lr):
    with pytest.raises(TypeError, match=r"learning_rate must be a number or a schedule"):
        adamx.adam(lr)


def test_negative_learning_rate():
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number >= 0, got -0.1"):
        adamx.adamw(-0.1)


def test_learning_rate_array_must_be_scalar():
    with pytest.raises(ValueError, match=r"learning_rate must be a scalar, got an array of shape"):
        adamx.adam(jnp.ones(2))


def test_weight_decay_checked_too():
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -0.01"):
        adamx.adamw(1e-3, weight_decay=-0.01)


def test_non_float_mu_dtype():
    with pytest.raises(TypeError, match=r"mu_dtype must be a floating-point dtype .*; got int8"):
        adamx.adam(1e-3, mu_dtype=jnp.int8)
    with pytest.raises(TypeError, match=r"mu_dtype must be a floating-point dtype .*; got 'fp8'"):
        adamx.adam(1e-3, mu_dtype="fp8")


def test_traced_hyperparameters_are_accepted():
    @jax.jit
    def step(b1, lr):
        tx = adamx.adamw(lr, b1=b1)
        return tx.update(GRADS, tx.init(PARAMS), PARAMS)[0]

    jax.tree.map(lambda x: x.block_until_ready(), step(jnp.float32(0.9), jnp.float32(1e-3)))


def test_gradients_with_missing_leaf():
    tx = adamx.adam(1e-3)
    with pytest.raises(
        ValueError,
        match=r"gradient tree does not match the state\. Only in the "
        r"state: \['b'\]",
    ):
        tx.update({"w": GRADS["w"]}, tx.init(PARAMS))


def test_gradients_with_extra_leaf():
    tx = adamx.adam(1e-3)
    grads = dict(GRADS, extra=jnp.ones(1))
    with pytest.raises(ValueError, match=r"Only in the gradients: \['extra'\]"):
        tx.update(grads, tx.init(PARAMS))


def test_gradient_of_wrong_shape():
    tx = adamx.adam(1e-3)
    grads = dict(GRADS, b=jnp.ones(1))  # would broadcast silently against a (3,) moment
    with pytest.raises(
        ValueError,
        match=r"the gradient at \['b'\] has shape \(1,\), but the "
        r"optimizer state there has shape \(3,\)",
    ):
        tx.update(grads, tx.init(PARAMS))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_or_boolean_gradients(dtype):
    tx = adamx.adam(1e-3)
    grads = dict(GRADS, w=jnp.ones((2, 3), dtype))
    with pytest.raises(
        TypeError,
        match=rf"the gradient at \['w'\] has dtype {jnp.dtype(dtype)}, "
        r"but Adam needs floating-point",
    ):
        tx.update(grads, tx.init(PARAMS))


def test_integer_parameters_at_init():
    with pytest.raises(TypeError, match=r"the parameter at \['step'\] has dtype int32"):
        adamx.adam(1e-3).init(dict(PARAMS, step=jnp.int32(0)))


@pytest.mark.parametrize("stage", [adamx.bias_correct(), adamx.scale_by_rsqrt()])
def test_plain_gradients_given_to_a_moment_stage(stage):
    with pytest.raises(
        TypeError,
        match=r"takes the moment tree made by scale_by_moments, but "
        r"was given plain gradients.*Put it after scale_by_moments",
    ):
        stage.update(GRADS, stage.init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    "stage",
    [adamx.scale_by_lr(1e-3), adamx.add_decoupled_weight_decay(1e-2), adamx.scale_by_moments()],
    ids=["scale_by_lr", "add_decoupled_weight_decay", "scale_by_moments"],
)
def test_moment_tree_given_to_a_gradient_stage(stage):
    tx = optax.chain(adamx.scale_by_moments(), stage)
    with pytest.raises(
        TypeError,
        match=r"takes gradients/updates, but was given the moment "
        r"tree.*Close the moment segment with scale_by_rsqrt",
    ):
        tx.update(GRADS, tx.init(PARAMS), PARAMS)


def test_weight_decay_without_params():
    tx = adamx.adamw(1e-3)
    with pytest.raises(
        ValueError,
        match=r"add_decoupled_weight_decay needs the current "
        r"parameters: call `tx.update\(grads, opt_state, params\)`",
    ):
        tx.update(GRADS, tx.init(PARAMS))


def test_mask_missing_a_leaf():
    with pytest.raises(
        ValueError,
        match=r"the mask does not match the params\. Only in the "
        r"params: \['b'\]",
    ):
        adamx.adamw(1e-3, mask={"w": True}).init(PARAMS)


def test_callable_mask_with_wrong_structure():
    tx = adamx.adamw(1e-3, mask=lambda p: [True, False])
    with pytest.raises(ValueError, match=r"the mask does not match the params"):
        tx.init(PARAMS)


def test_mask_leaves_must_be_python_bools():
    with pytest.raises(
        TypeError,
        match=r"the mask leaf at \['w'\] is 1 \(int\), but mask leaves "
        r"must be Python bools",
    ):
        adamx.adamw(1e-3, mask={"w": 1, "b": True}).init(PARAMS)


def test_mask_prefix_is_accepted():
    params = {"dense": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "norm": {"scale": jnp.ones(2)}}
    tx = adamx.adamw(1.0, weight_decay=0.5, mask={"dense": True, "norm": False})
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(updates["dense"]["w"][0, 0]) == -0.5 and float(updates["norm"]["scale"][0]) == 0


@pytest.mark.parametrize("argument", ["mu_dtype", "nu_dtype"])
def test_dtype_through_inject_hyperparams_names_static_args(argument):
    """inject_hyperparams calls a dtype (a callable) as a schedule: the array that arrives is
    refused by name, with the static_args fix, not an unhashable-type error at init."""
    tx = optax.inject_hyperparams(adamx.adam)(learning_rate=1e-3, **{argument: jnp.bfloat16})
    with pytest.raises(TypeError, match=rf"{argument} must be .* got an array .*static_args"):
        tx.init({"w": jnp.ones(3)})
    fixed = optax.inject_hyperparams(adamx.adam, static_args=(argument,))
    narrow_v = pytest.warns(UserWarning, match="never decay")  # bf16 v: the usual advice
    with narrow_v if argument == "nu_dtype" else contextlib.nullcontext():
        state = fixed(learning_rate=1e-3, **{argument: jnp.bfloat16}).init({"w": jnp.ones(3)})
    moment = state.inner_state[0].mu if argument == "mu_dtype" else state.inner_state[0].nu
    assert moment["w"].dtype == jnp.bfloat16
