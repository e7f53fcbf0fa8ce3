"""adamx.adopt against optax.contrib.adopt (bit for bit) and pytorch_optimizer.ADOPT (rounding).

optax: 500 steps of an open-loop gradient stream (every 17th gradient exactly zero, scales
from 1e-3 to 1e2) and 500 closed-loop steps of a small model; updates, parameters and the
state's ``mu``, ``nu`` and ``count`` must be equal bit for bit, dtypes included, for every
option (nesterov, clipping off, a custom clip, β1 = 0, mu_dtype, a schedule, injected
hyperparameters) and for float32, bfloat16, float16 and float64 parameters. One difference by
design: a ``clip_value_fn`` that returns a float32 array, with bfloat16 gradients, makes optax's
updates float32 (jnp.clip promotes); adamx casts the bound to the gradient's dtype (optax's
default bound is weakly typed, so it casts too), so that case runs in float32 only.

pytorch_optimizer.ADOPT (4.1.0) clips at (t+1)^(1/4) where optax clips at t^(1/4) (t the
0-based step), so adamx runs with ``clip_value_fn=quarter_power(t + 1)``. Float64 runs
agree to ``F64_ATOL`` (measured 2e-14: the same formula). In float32 adamx keeps optax's bits,
and optax forms 1 - β2 as 1 - float32(0.9999) = 1.0001659e-4 (β' is a float32 array), 1.7e-4
off torch's 1e-4: a bias of v, not rounding noise (16x torch's own float32 drift on the model).
So the float32 reference is given those β (float32(0.9), float32(0.9999), for which torch's
Python 1 - β is exactly optax's), and adamx must stay within ``TORCH_FACTOR`` times that
reference's own float32 drift (measured at most 1.0x, decoupled and coupled decay included).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _family_refs import (
    gradient_stack,
    model_params,
    run_adamx_model,
    run_adamx_stream,
    run_torch,
)
from _family_tolerance import assert_f64_equal, assert_within_rounding
from _promotion import reference, reference_factory
from _streams import make_params

import adamx
from adamx.stages.adopt import quarter_power

LR = 1e-2
TORCH_FACTOR = 10.0  # operation order (torch: lerp, clamp_min); see torch_parity


def _half_root(t):  # a custom clip schedule, strict-clean for adamx and plain for optax
    return jnp.sqrt(t.astype(jnp.float32) + 1.0)


OPTIONS = {
    "default": {},
    "nesterov_noclip": dict(nesterov=True, use_clipping=False),
    "nesterov_clip": dict(nesterov=True),
    "custom_clip": dict(clip_value_fn=_half_root, b1=0.0, b2=0.5, eps=1e-3),
    "mu_bf16": dict(mu_dtype=jnp.bfloat16),
}
DEFAULT_RUN = [
    ("default", jnp.float32),
    ("nesterov_noclip", jnp.float32),
    ("default", jnp.bfloat16),
]
SLOW_RUN = [
    (name, dtype)
    for name in OPTIONS
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16)
    if (name, dtype) not in DEFAULT_RUN
    and (name != "custom_clip" or dtype == jnp.float32)
    and (name != "mu_bf16" or dtype != jnp.float16)  # optax: float32 updates for float16 params
]


def assert_same_run(ours, theirs):
    """Trajectories, updates and the state's count, mu and nu: equal bits and dtypes."""
    (p_ours, s_ours, *u_ours), (p_theirs, s_theirs, *u_theirs) = ours, theirs
    chex.assert_trees_all_equal(u_ours, u_theirs)
    chex.assert_trees_all_equal_dtypes(u_ours, u_theirs)
    chex.assert_trees_all_equal(p_ours, p_theirs)
    for field in ("count", "mu", "nu"):  # the chains' first states: ADOPT's
        chex.assert_trees_all_equal(getattr(s_ours[0], field), getattr(s_theirs[0], field))
        chex.assert_trees_all_equal_dtypes(getattr(s_ours[0], field), getattr(s_theirs[0], field))


def stream_parity(kwargs, dtype, learning_rate=LR, steps=500):
    params = make_params(dtype)
    grads = gradient_stack(params, steps)
    ours = run_adamx_stream(adamx.adopt(learning_rate, **kwargs), params, grads, True)
    optax_tx = reference(optax.contrib.adopt(learning_rate, **kwargs))
    assert_same_run(ours, run_adamx_stream(optax_tx, params, grads, True))


@pytest.mark.parametrize(("name", "dtype"), DEFAULT_RUN, ids=str)
def test_stream_bit_identical_to_optax(name, dtype):
    stream_parity(OPTIONS[name], dtype)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dtype"), SLOW_RUN, ids=str)
def test_stream_bit_identical_to_optax_every_option(name, dtype):
    stream_parity(OPTIONS[name], dtype)


@pytest.mark.slow
def test_stream_bit_identical_to_optax_float64_and_schedule():
    schedule = optax.linear_schedule(1e-2, 1e-4, 1000)
    stream_parity({}, jnp.float32, learning_rate=schedule, steps=1000)
    with jax.enable_x64(True):
        stream_parity(dict(nesterov=True), jnp.float64)


@pytest.mark.slow
def test_injected_hyperparameters_bit_identical_to_optax():
    """b1, b2, eps and the learning rate as float32 arrays (optax.inject_hyperparams)."""
    params = make_params(jnp.float32)
    grads = gradient_stack(params)
    hyper = dict(learning_rate=LR, b1=0.8, b2=0.99, eps=1e-5)
    static = ("clip_value_fn",)  # a callable: inject_hyperparams would take it for a schedule
    ours = optax.inject_hyperparams(adamx.adopt, static_args=static)(**hyper)
    make = reference_factory(optax.contrib.adopt)
    theirs = optax.inject_hyperparams(make, static_args=static)(**hyper)
    got = run_adamx_stream(ours, params, grads, True)
    want = run_adamx_stream(theirs, params, grads, True)
    chex.assert_trees_all_equal(got[0], want[0])
    chex.assert_trees_all_equal(got[2], want[2])


def test_model_bit_identical_to_optax():
    params = model_params(jnp.float32)
    ours, s_ours = run_adamx_model(adamx.adopt(LR, nesterov=True), params)
    theirs, s_theirs = run_adamx_model(reference(optax.contrib.adopt(LR, nesterov=True)), params)
    chex.assert_trees_all_equal(ours, theirs)
    for field in ("mu", "nu"):
        chex.assert_trees_all_equal(optax.tree.get(s_ours, field), optax.tree.get(s_theirs, field))


def torch_clip(t):
    """pytorch_optimizer's (and the authors') clip: the 1-based step to the 1/4."""
    return quarter_power(t + 1)


# optax forms 1 - β as 1 - float32(β): in float32, adamx steps with these β (bit for bit).
F32_BETAS = (float(np.float32(0.9)), float(np.float32(0.9999)))


def run_pair(kind, dtype, weight_decay, coupled=False, torch_betas=(0.9, 0.9999)):
    """(adamx, pytorch_optimizer) trajectories and their v, in ``dtype``. ``coupled``:
    pytorch_optimizer's default ``weight_decouple=False`` (λθ added to the gradient), as the
    chain add_coupled_weight_decay -> scale_by_adopt -> scale_by_lr. ``torch_betas``: the
    reference's β (adamx's are always 0.9, 0.9999)."""
    torch = pytest.importorskip("torch")
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

    def make_torch(tensors):
        return pytorch_optimizer.ADOPT(
            tensors,
            lr=LR,
            betas=torch_betas,
            weight_decay=weight_decay or 0.0,
            weight_decouple=not coupled,
        )

    tx = adamx.adopt(LR, clip_value_fn=torch_clip, weight_decay=weight_decay)
    if coupled:
        tx = optax.chain(
            adamx.add_coupled_weight_decay(weight_decay),
            adamx.scale_by_adopt(clip_value_fn=torch_clip),
            adamx.scale_by_lr(LR),
        )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == jnp.float64 else torch.float32)
    try:
        with jax.enable_x64(dtype == jnp.float64):
            if kind == "stream":
                params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
                grads = gradient_stack(params)
                ours, state = run_adamx_stream(tx, params, grads)
                theirs, slots = run_torch(make_torch, params, grads)
            else:
                ours, state = run_adamx_model(tx, model_params(dtype))
                theirs, slots = run_torch(make_torch, model_params(dtype))
    finally:
        torch.set_default_dtype(previous)
    return (ours, optax.tree.get(state, "nu")), (theirs, slots["exp_avg_sq"])


def torch_parity(kind, weight_decay, coupled=False):
    """float64: adamx and the reference with β = 0.9, 0.9999 agree to F64_ATOL (the formula).
    float32: adamx against the reference given float32(β) (optax's arithmetic, above), within
    TORCH_FACTOR x that reference's own float32 drift (from its float64 run, same β)."""
    (ours64, nu64), (theirs64, v64) = run_pair(kind, jnp.float64, weight_decay, coupled)
    assert_f64_equal(ours64, theirs64, f"ADOPT {kind} params")
    assert_f64_equal(nu64, v64, f"ADOPT {kind} nu")
    (ours32, nu32), (theirs32, v32) = run_pair(kind, jnp.float32, weight_decay, coupled, F32_BETAS)
    (_, _), (ref64, ref_v64) = run_pair(kind, jnp.float64, weight_decay, coupled, F32_BETAS)
    why = "operation order"
    assert_within_rounding(ours32, theirs32, ref64, TORCH_FACTOR, f"ADOPT {kind} ({why})")
    assert_within_rounding(nu32, v32, ref_v64, TORCH_FACTOR, f"ADOPT {kind} nu ({why})")


@pytest.mark.parametrize("kind", ["stream", "model"])
def test_matches_pytorch_optimizer(kind):
    torch_parity(kind, None)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stream", "model"])
def test_matches_pytorch_optimizer_decoupled_decay(kind):
    """weight_decay=λ is pytorch_optimizer's ``weight_decouple=True``: θ ← θ(1 - αλ) first."""
    torch_parity(kind, 0.1)


@pytest.mark.slow
def test_matches_pytorch_optimizer_coupled_decay_as_a_chain():
    """pytorch_optimizer.ADOPT's default decay (``weight_decouple=False``): λθ joins g."""
    torch_parity("stream", 0.1, coupled=True)


def test_weight_decay_none_is_optaxs_chain_and_zero_keeps_a_stage():
    params = make_params(jnp.float32)
    ours, theirs = adamx.adopt(LR).init(params), reference(optax.contrib.adopt(LR)).init(params)
    assert [type(s).__name__ for s in ours] == ["ScaleByAdoptState", "EmptyState"]
    assert ours[0]._fields == theirs[0]._fields == ("count", "mu", "nu")
    chex.assert_trees_all_equal_shapes_and_dtypes(tuple(ours[0]), tuple(theirs[0]))
    assert len(adamx.adopt(LR, weight_decay=0.0).init(params)) == 3


def test_signature_is_optaxs():
    """optax.contrib.adopt's positional parameters in its order with its defaults, and its
    keyword-only ones (clip_value_fn's default is optax's lambda written as a named function:
    the same bound, bit for bit, above); adamx's options after them."""
    import inspect

    def parameters(fn, kind):
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()
                if p.kind == kind]  # fmt: skip

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters(adamx.adopt, positional) == parameters(optax.contrib.adopt, positional)
    ours = dict(parameters(adamx.adopt, inspect.Parameter.KEYWORD_ONLY))
    for name, default in parameters(optax.contrib.adopt, inspect.Parameter.KEYWORD_ONLY):
        assert name in ours
        assert name == "clip_value_fn" or ours[name] == default, name
