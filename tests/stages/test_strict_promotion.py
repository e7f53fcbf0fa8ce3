"""The stages under strict dtype promotion: every cast written out, optax's bits kept.

Each chain runs two jitted steps on float32, bfloat16 and float16 params with mixed
state dtypes and injected (float32 array) hyperparameters under
``jax.numpy_dtype_promotion("strict")``; the stage chains that are optax's aliases
match optax, run under the standard rules, bit for bit.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import adamx

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-2
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _moments(**kwargs):
    return adamx.scale_by_moments(B1, B2, **kwargs)


CHAINS = {
    "adam": lambda: [_moments(), adamx.bias_correct(B1, B2), adamx.scale_by_rsqrt(EPS)],
    "adam_mu_f32": lambda: [
        _moments(mu_dtype=jnp.float32), adamx.bias_correct(B1, B2), adamx.scale_by_rsqrt(EPS)],
    "adam_mu_bf16": lambda: [
        _moments(mu_dtype=jnp.bfloat16), adamx.bias_correct(B1, B2), adamx.scale_by_rsqrt(EPS)],
    "adam_mu_bf16_nu_f32": lambda: [
        _moments(mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32), adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(EPS, 1e-16)],
    "nadam": lambda: [
        _moments(mu_dtype=jnp.float32), adamx.bias_correct(B1, B2, nesterov=True),
        adamx.scale_by_rsqrt(EPS)],
    "nadam_torch": lambda: [
        _moments(), adamx.bias_correct(B1, B2, nesterov=True, momentum_decay=4e-3),
        adamx.scale_by_rsqrt(EPS)],
    "amsgrad_raw": lambda: [
        _moments(), adamx.running_max_nu(jnp.float32), adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(EPS)],
    "adamax": lambda: [
        _moments(infinity_norm=True, eps=EPS, nu_dtype=jnp.float32), adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(0.0)],
    "radam_eps_hat": lambda: [
        _moments(mu_dtype=jnp.float32), adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(EPS, b2=B2, epsilon_hat=True, threshold=5.0)],
    "factored_rms": lambda: [
        adamx.scale_by_factored_rms(min_dim_size_to_factor=2), adamx.clip_by_block_rms(1.0),
        adamx.scale_by_param_block_rms()],
    "adam_factored_v": lambda: [
        _moments(nu_dtype=adamx.factored(2)), adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(EPS)],
    "low_precision": lambda: [
        _moments(), adamx.bias_correct(B1, B2), adamx.scale_by_rsqrt(EPS),
        adamx.scale_by_lr(optax.linear_schedule(LR, 0.0, 10)), adamx.kahan_summation()],
}  # fmt: skip


def _params(dtype):
    return {"w": jnp.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3), "b": jnp.ones(3, dtype)}


def _run(tx, params, steps=2):
    """``steps`` jitted updates (the gradient is a function of the params); their updates."""
    state, step, out = tx.init(params), jax.jit(tx.update), []
    for _ in range(steps):
        grads = jax.tree.map(lambda p: (0.5 * p + 0.1).astype(p.dtype), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out, params


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", CHAINS)
def test_stages_are_strict_clean(name, dtype):
    tx = optax.chain(*CHAINS[name](), adamx.scale_by_lr(LR))
    with jax.numpy_dtype_promotion("strict"):
        updates, params = _run(tx, _params(dtype))
    assert {x.dtype for x in jax.tree.leaves((updates, params))} == {jnp.dtype(dtype)}


def _injected(b1, b2, eps, learning_rate):
    """Every numeric hyperparameter arrives as a float32 array (optax.inject_hyperparams)."""
    return optax.chain(
        adamx.scale_by_moments(b1, b2, mu_dtype=jnp.float32),
        adamx.bias_correct(b1, b2, nesterov=True),
        adamx.scale_by_rsqrt(eps, b2=b2, epsilon_hat=True, threshold=5.0),
        adamx.scale_by_lr(learning_rate),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_injected_hyperparameters_are_strict_clean_and_keep_the_standard_bits(dtype):
    tx = optax.inject_hyperparams(_injected)(b1=B1, b2=B2, eps=EPS, learning_rate=LR)
    with jax.numpy_dtype_promotion("strict"):
        strict, _ = _run(tx, _params(dtype))
    with jax.numpy_dtype_promotion("standard"):
        standard, _ = _run(tx, _params(dtype))
    chex.assert_trees_all_equal(strict, standard)


# optax's aliases as stage chains, with the params' dtypes where optax is adamx's reference
# (optax hands back float32 updates for bfloat16 params with a float32 m: no parity there).
OPTAX = {
    "adam": (lambda: optax.adam(LR, B1, B2, EPS), DTYPES),
    "adam_mu_bf16": (lambda: optax.adam(LR, B1, B2, EPS, mu_dtype=jnp.bfloat16), DTYPES[:2]),
    "adam_mu_f32": (lambda: optax.adam(LR, B1, B2, EPS, mu_dtype=jnp.float32), DTYPES[:1]),
    "nadam": (lambda: optax.nadam(LR, B1, B2, EPS, mu_dtype=jnp.float32), DTYPES[:1]),
}


@pytest.mark.parametrize(
    ("name", "dtype"),
    [(name, dtype) for name, (_, dtypes) in OPTAX.items() for dtype in dtypes],
    ids=str,
)
def test_strict_stages_match_optax_under_standard_promotion_bit_for_bit(name, dtype):
    ours = optax.chain(*CHAINS[name](), adamx.scale_by_lr(LR))
    with jax.numpy_dtype_promotion("strict"):
        got, _ = _run(ours, _params(dtype), steps=3)
    with jax.numpy_dtype_promotion("standard"):
        expected, _ = _run(OPTAX[name][0](), _params(dtype), steps=3)
    chex.assert_trees_all_equal(got, expected)
