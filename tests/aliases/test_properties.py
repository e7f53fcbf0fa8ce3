"""Properties every adamx optimizer keeps, with and without jit, on every execution path."""

import functools

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from _paths import PATHS, assert_path_matches
from _promotion import reference, reference_factory, strict
from _streams import gradient, make_params
from absl.testing import parameterized
from registry import SCHEDULE, Cell, compose, matrices

import adamx

# Registry cells (optimizer, format): plain adam, Nesterov with a bfloat16 m, and adamw with a
# schedule and a callable mask.
PLAIN = {
    "adam": Cell("adam", "default", "per_leaf", "plain"),
    "adam_nesterov_mu_bf16": Cell("adam_nesterov", "mu_bf16", "per_leaf", "plain"),
    "adamw_masked_schedule": Cell("adamw_schedule_mask", "default", "per_leaf", "plain"),
}
OPTIMIZERS = {name: compose(cell) for name, cell in PLAIN.items()}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "c64": jnp.complex64}
# Masks work on every path: inside multi_tensor they are resolved against the original paths.
PAIRS = [(p, o) for p in PATHS for o in OPTIMIZERS]
# A real (bfloat16) m for complex params is refused: it would drop the imaginary part.
REAL_MU = {name for name, cell in PLAIN.items() if cell.format == "mu_bf16"}
CASES = [
    (f"{path}_{opt}_{dt}", path, opt, dt)
    for path, opt in PAIRS
    for dt in DTYPES
    if not (opt in REAL_MU and dt == "c64")
]


def _spec(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


class PropertiesTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        chex.clear_trace_counter()  # the counter is keyed by code, shared across cases

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*CASES)
    def test_dtypes_shapes_and_no_retrace(self, path, opt, dt):
        tx = PATHS[path](OPTIMIZERS[opt]())
        params = make_params(DTYPES[dt])
        state = tx.init(params)
        init_spec = _spec(state)

        @self.variant
        @chex.assert_max_traces(n=1)
        def step(params, state, i):
            updates, state = tx.update(gradient(params, i, jax.random.key(0)), state, params)
            return optax.apply_updates(params, updates), state, updates

        for i in range(3):
            params, state, updates = step(params, state, jnp.int32(i))
            # Updates have the gradients' dtype; the state never changes shape or dtype.
            chex.assert_trees_all_equal_dtypes(updates, params)
            chex.assert_trees_all_equal_shapes(updates, params)
            self.assertEqual(_spec(state), init_spec)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(f"{p}_{o}", p, o) for p, o in PAIRS])
    def test_state_stable_under_cond(self, path, opt):
        tx = PATHS[path](OPTIMIZERS[opt]())
        params = make_params(jnp.float32)

        @self.variant
        def maybe_step(params, state, do_step):
            grads = gradient(params, 0, jax.random.key(1))
            skip = lambda: (jax.tree.map(jnp.zeros_like, grads), state)  # noqa: E731
            return jax.lax.cond(do_step, lambda: tx.update(grads, state, params), skip)

        state = tx.init(params)
        for do_step in (True, False, True):
            _, state = maybe_step(params, state, jnp.bool_(do_step))
        chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(p, p) for p in PATHS])
    def test_accepts_extra_keyword_arguments(self, path):
        tx = PATHS[path](adamx.adamw(1e-3))
        params = make_params(jnp.float32)
        grads = gradient(params, 0, jax.random.key(2))

        @self.variant
        def both(g, s, p):
            return tx.update(g, s, p)[0], tx.update(g, s, p, loss=jnp.float32(1.0), step=3)[0]

        plain, extra = both(grads, tx.init(params), params)
        chex.assert_trees_all_equal(extra, plain)


# Composition with optax wrappers: the same result as the same wrapper around optax's
# optimizer, bit for bit, over a few steps, with and without jit.

WRAPPERS = {
    "inject_hyperparams": lambda f: optax.inject_hyperparams(f)(
        learning_rate=SCHEDULE, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05
    ),
    # MultiSteps is not strict-clean: its own code under the standard rules (_promotion).
    "multi_steps": lambda f: reference(
        optax.MultiSteps(strict(f(1e-2, weight_decay=0.1)), every_k_schedule=3)
    ),
    "masked": lambda f: optax.masked(f(1e-2, weight_decay=0.1), matrices),
    "clip_chain": lambda f: optax.chain(optax.clip_by_global_norm(1.0), f(SCHEDULE)),
}


@pytest.mark.slow  # the matrix's hosts run these wrappers around every optimizer by default
class CompositionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(f"{p}_{w}", p, w) for p in PATHS for w in WRAPPERS])
    def test_composes_with_optax_wrappers(self, path, wrapper):
        @functools.wraps(adamx.adamw)  # keeps the signature inject_hyperparams reads
        def factory(*args, **kwargs):
            return PATHS[path](adamx.adamw(*args, **kwargs))

        ours = WRAPPERS[wrapper](factory)
        theirs = WRAPPERS[wrapper](reference_factory(optax.adamw))
        params = make_params(jnp.float32)
        results = []
        for tx in (ours, theirs):
            step = self.variant(lambda p, s, g, tx=tx: tx.update(g, s, p))
            p, state = params, tx.init(params)
            for i in range(7):
                updates, state = step(p, state, gradient(p, i, jax.random.key(3)))
                p = optax.apply_updates(p, updates)
            results.append(p)
        assert_path_matches(path, *results)


def test_inject_hyperparams_traces_once_and_can_change_rates():
    """Hyperparameters arrive as traced scalars: one compilation serves every value."""
    chex.clear_trace_counter()
    tx = optax.inject_hyperparams(adamx.adamw)(learning_rate=1e-3, b1=0.9, b2=0.999)
    params = make_params(jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, i):
        updates, state = tx.update(gradient(params, i, jax.random.key(4)), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    params, state = step(params, state, 0)
    state.hyperparams["learning_rate"] = jnp.float32(0.0)
    frozen, state = step(params, state, 1)
    # With α = 0 nothing moves, although b1, b2 and the moments are all traced values.
    chex.assert_trees_all_equal(frozen, params)


def test_inject_hyperparams_adam_keeps_optax_state_structure():
    """adam's coupled L2 weight_decay defaults to None, which inject_hyperparams leaves static:
    no extra stage appears, so the state has optax.adam's structure and the same values."""
    ours = optax.inject_hyperparams(adamx.adam)(learning_rate=SCHEDULE, b1=0.8)
    theirs = reference(optax.inject_hyperparams(optax.adam)(learning_rate=SCHEDULE, b1=0.8))
    params = make_params(jnp.float32)
    s1, s2 = ours.init(params), theirs.init(params)
    assert sorted(s1.hyperparams) == sorted(s2.hyperparams)
    for i in range(3):
        grads = gradient(params, i, jax.random.key(5))
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        chex.assert_trees_all_equal(u1, u2)
    chex.assert_trees_all_equal(optax.tree.get(s1, "nu"), optax.tree.get(s2, "nu"))
