"""The family's new stage options against closed forms, their conflicts, and the properties
every alias keeps (no retracing, dtypes, nu_dtype, inject_hyperparams, MultiSteps, extra args)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _promotion import reference, reference_factory, strict
from registry import OPTIMIZERS, aliases

import adamx

B1, B2 = 0.9, 0.999
G = np.asarray([[3.0, -1.0], [0.1, 0.2], [0.0, 0.0], [-0.05, 2.0]], np.float32)  # 4 steps


def run_stages(tx, grads=G):
    """The moment tree (or updates) a partial chain hands on after each gradient row.

    Runs in float64 (x64), so the closed forms below hold to float64 rounding.
    """
    with jax.enable_x64(True):
        zeros = {"w": jnp.zeros(2, jnp.float64)}
        state = tx.init(zeros)
        out = []
        for g in grads:
            result, state = tx.update({"w": jnp.asarray(g, jnp.float64)}, state, zeros)
            out.append(jax.tree.map(np.asarray, result["w"]))
    return out


def numpy_moments(grads=G):
    m, v, out = np.zeros(2), np.zeros(2), []
    for g in grads.astype(np.float64):
        m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g
        out.append((m.copy(), v.copy()))
    return out


def test_amsgrad_placement_gives_torch_or_optax_flavour():
    moments = adamx.scale_by_moments(B1, B2)
    raw = optax.chain(moments, adamx.running_max_nu(), adamx.bias_correct(B1, B2))
    corrected = optax.chain(moments, adamx.bias_correct(B1, B2), adamx.running_max_nu())
    v_max, v_hat_max = np.zeros(2), np.zeros(2)
    for t, ((_, v), r, c) in enumerate(
        zip(numpy_moments(), run_stages(raw), run_stages(corrected), strict=True), start=1
    ):
        v_max = np.maximum(v_max, v)  # torch: max of raw v, then corrected
        v_hat_max = np.maximum(v_hat_max, v / (1 - B2**t))  # optax: max of v̂
        np.testing.assert_allclose(r.nu, v_max / (1 - B2**t), rtol=1e-12)
        np.testing.assert_allclose(c.nu, v_hat_max, rtol=1e-12)
    assert not np.allclose(v_max / (1 - B2**4), v_hat_max, rtol=1e-3)  # the flavours differ


def test_infinity_norm_and_where_eps_enters():
    eps = 1e-3
    inside = optax.chain(
        adamx.scale_by_moments(B1, B2, infinity_norm=True, eps=eps),
        adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(0.0),
    )
    after = optax.chain(
        adamx.scale_by_moments(B1, B2, infinity_norm=True),
        adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(eps),
    )
    m, u_in, u_after = np.zeros(2), np.zeros(2), np.zeros(2)
    for t, (g, a, b) in enumerate(zip(G, run_stages(inside), run_stages(after), strict=True), 1):
        g = g.astype(np.float64)
        m = B1 * m + (1 - B1) * g
        u_in = np.maximum(np.abs(g) + eps, B2 * u_in)  # optax / torch
        u_after = np.maximum(np.abs(g), B2 * u_after)  # Keras
        m_hat = m / (1 - B1**t)  # u is never bias-corrected
        np.testing.assert_allclose(a, m_hat / u_in, rtol=1e-12)
        np.testing.assert_allclose(b, m_hat / (u_after + eps), rtol=1e-12)


def test_epsilon_hat_adds_eps_to_the_uncorrected_root():
    eps = 1e-2
    tx = optax.chain(
        adamx.scale_by_moments(B1, B2),
        adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(eps, b2=B2, epsilon_hat=True),
    )
    for t, ((m, v), u) in enumerate(zip(numpy_moments(), run_stages(tx), strict=True), start=1):
        keras = np.sqrt(1 - B2**t) / (1 - B1**t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(u, keras, rtol=1e-12)


def test_rectification_switches_on_at_the_threshold():
    tx = optax.chain(
        adamx.scale_by_moments(B1, B2),
        adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(1e-8, b2=B2, threshold=5.0),
    )
    grads = np.tile(G, (2, 1))  # 8 steps: rho_t < 5 for t <= 5
    rho_inf = 2 / (1 - B2) - 1
    rows = zip(numpy_moments(grads), run_stages(tx, grads), strict=True)
    for t, ((m, v), u) in enumerate(rows, start=1):
        rho = rho_inf - 2 * t * B2**t / (1 - B2**t)
        m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
        if rho < 5:
            np.testing.assert_allclose(u, m_hat, rtol=1e-12)
        else:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            np.testing.assert_allclose(u, r * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-10)
    assert t == 8 and rho > 5


def test_torch_nadam_momentum_schedule():
    psi = 4e-3
    tx = optax.chain(
        adamx.scale_by_moments(B1, B2),
        adamx.bias_correct(B1, B2, nesterov=True, momentum_decay=psi),
    )
    product = 1.0
    for t, ((m, _), (g, out)) in enumerate(
        zip(numpy_moments(), zip(G, run_stages(tx), strict=True), strict=True), start=1
    ):
        mu = B1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = B1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        product *= mu
        g = g.astype(np.float64)
        expected = mu_next * m / (1 - product * mu_next) + (1 - mu) * g / (1 - product)
        np.testing.assert_allclose(out.mu, expected, rtol=1e-12)


# Conflicting or invalid options: error texts are API.
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: adamx.bias_correct(momentum_decay=4e-3), ValueError,
         r"momentum_decay .* needs nesterov=True"),
        (lambda: adamx.bias_correct(nesterov=True, bias_correction_mu=False), ValueError,
         r"nesterov=True corrects the first moment .* bias_correction_mu=False"),
        (lambda: adamx.scale_by_rsqrt(epsilon_hat=True), ValueError,
         r"epsilon_hat and threshold depend on the step .* pass b2"),
        (lambda: adamx.scale_by_rsqrt(threshold=5.0), ValueError, r"pass b2"),
        (lambda: adamx.scale_by_rsqrt(b2=0.999), ValueError,
         r"uses b2 only for epsilon_hat=True or threshold"),
        (lambda: adamx.scale_by_moments(eps=1e-8), ValueError,
         r"eps=1e-08 is the epsilon of AdaMax's infinity norm and needs infinity_norm=True"),
        (lambda: adamx.amsgrad(1e-3, max_of="max"), ValueError,
         r"max_of must be one of 'corrected', 'raw', got 'max'\. 'corrected' keeps the max of "
         r"v̂_t \(optax.amsgrad\), 'raw' the max of v_t"),
        (lambda: adamx.adamax(1e-3, eps_in_max="yes"), TypeError, r"eps_in_max must be True"),
        (lambda: adamx.radam(1e-3, decoupled_weight_decay=1), TypeError,
         r"decoupled_weight_decay must be True or False"),
        (lambda: adamx.nadam(1e-3, momentum_decay=-1.0), ValueError,
         r"momentum_decay must be a finite number >= 0"),
        (lambda: adamx.radam(1e-3, threshold=-5.0), ValueError,
         r"^threshold must be a finite number >= 0"),
    ],
)  # fmt: skip
def test_conflicting_options_fail_early(make, error, match):
    with pytest.raises(error, match=match):
        make()


INF_NORM = adamx.scale_by_moments(infinity_norm=True, eps=1e-8)


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ([INF_NORM, adamx.running_max_nu()], r"running_max_nu: .* infinity norm .* already a "
         r"running maximum; AMSGrad has nothing to add"),
        ([INF_NORM, adamx.bias_correct(), adamx.scale_by_rsqrt(0.0, b2=0.999, epsilon_hat=True)],
         r"epsilon_hat and threshold assume a mean-square second moment"),
        ([INF_NORM, adamx.scale_by_rsqrt(0.0, eps_root=1e-8)],
         r"eps_root=1e-08 goes under a root, but an infinity-norm"),
        ([adamx.running_max_nu()], r"running_max_nu takes the moment tree"),
    ],
)  # fmt: skip
def test_stages_that_cannot_support_the_moment_they_get(stages, match):
    tx = optax.chain(*stages)
    params = {"w": jnp.ones(2)}
    with pytest.raises((TypeError, ValueError), match=match):
        tx.update(params, tx.init(params), params)


# Properties every alias keeps.
ALIASES = {
    "nadam": lambda **kw: adamx.nadam(1e-3, **kw),
    "nadam_torch": lambda **kw: adamx.nadam(1e-3, momentum_decay=4e-3, weight_decay=0.1, **kw),
    "nadamw": lambda **kw: adamx.nadamw(1e-3, **kw),
    "amsgrad": lambda **kw: adamx.amsgrad(1e-3, **kw),
    "amsgrad_raw": lambda **kw: adamx.amsgrad(1e-3, max_of="raw", epsilon_hat=True, **kw),
    "adamax": lambda **kw: adamx.adamax(1e-3, **kw),
    "adamaxw": lambda **kw: adamx.adamaxw(1e-3, eps_in_max=False, **kw),
    "radam": lambda **kw: adamx.radam(1e-3, **kw),
    "radam_torch": lambda **kw: adamx.radam(
        1e-3, epsilon_hat=True, weight_decay=0.1, decoupled_weight_decay=True, **kw
    ),
    "adam_l2": lambda **kw: adamx.adam(1e-3, weight_decay=0.1, epsilon_hat=True, **kw),
    "adamw_fully": lambda **kw: adamx.adamw(1e-3, fully_decoupled=True, **kw),
}


def tree(dtype):
    return {"w": jnp.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3), "b": jnp.ones(3, dtype)}


@pytest.mark.parametrize("alias", list(ALIASES))
def test_alias_properties(alias):
    chex.clear_trace_counter()
    tx = ALIASES[alias]()
    params = tree(jnp.bfloat16)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        updates, state = tx.update(params, state, params, unused_extra_arg=1.0)
        return optax.apply_updates(params, updates), updates, state

    for _ in range(3):  # the second and third steps reuse the first compilation
        new_params, updates, new_state = step(params, state)
        chex.assert_trees_all_equal_dtypes(updates, params)  # updates keep the gradients' dtype
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)  # state never changes
        params, state = new_params, new_state
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("alias", list(ALIASES))
def test_nu_dtype_reaches_every_second_moment(alias):
    # A bfloat16 v rounded to nearest cannot decay: honoured, with a warning that names the fix.
    with pytest.warns(UserWarning, match="never decay"):
        state = ALIASES[alias](nu_dtype=jnp.bfloat16).init(tree(jnp.float32))
    for field in ("nu", "nu_max"):
        stored = optax.tree.get(state, field)
        if field == "nu_max" and "amsgrad" not in alias:
            assert stored is None
            continue
        assert {x.dtype for x in jax.tree.leaves(stored)} == {jnp.dtype(jnp.bfloat16)}, field
    assert {x.dtype for x in jax.tree.leaves(optax.tree.get(state, "mu"))} == {
        jnp.dtype(jnp.float32)
    }


# Every alias with an optax reference (optax.contrib's by its dotted name in the registry).
WITH_OPTAX = [n for n in aliases() if n not in ("adam", "adamw") and OPTIMIZERS[n].optax]
STATIC = {"adafactor": ("min_dim_size_to_factor", "dtype_momentum"), "adopt": ("clip_value_fn",)}


@pytest.mark.parametrize("name", WITH_OPTAX)
def test_inject_hyperparams_and_multisteps_match_optax(name):
    # Injected hyperparameters are float32 arrays (β2 = 0.999 is then 0.99900001), so compare
    # with optax's alias injected the same way: bit for bit.
    params = tree(jnp.float32)
    runs = []
    for lib in (adamx, optax):
        # optax's alias and MultiSteps's own code under the standard promotion rules (_promotion).
        optax_alias = functools.reduce(getattr, OPTIMIZERS[name].optax.split("."), optax)
        make = getattr(adamx, name) if lib is adamx else reference_factory(optax_alias)
        # A dtype or function argument is callable: inject_hyperparams would take it for a
        # schedule.
        static = STATIC.get(name, ())
        injected = optax.inject_hyperparams(make, static_args=static)(learning_rate=1e-2)
        multi = reference(optax.MultiSteps(strict(make(learning_rate=1e-2)), every_k_schedule=2))
        s_inj, s_multi, updates = injected.init(params), multi.init(params), []
        for _ in range(4):
            u_inj, s_inj = injected.update(params, s_inj, params)
            u_multi, s_multi = multi.update(params, s_multi, params)
            updates.append((u_inj, u_multi))
        runs.append(updates)
    chex.assert_trees_all_equal(runs[0], runs[1])
    assert float(jnp.abs(runs[0][-1][1]["b"]).max()) > 0  # MultiSteps applied an update
