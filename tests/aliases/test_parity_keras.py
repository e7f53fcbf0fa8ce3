"""adamx against Keras 3 (JAX backend): Adam, AdamW, Adam(amsgrad=True), Adamax.

Keras adds ε to the uncorrected root ("epsilon hat": α√(1-β2^t)/(1-β1^t) · m/(√v + ε)),
which is ``epsilon_hat=True`` in adamx; its AMSGrad keeps the maximum of the raw
v (``max_of="raw"``); its Adamax adds ε after the maximum (``eps_in_max=False``).
Same protocol as the torch suite: 500 steps on a gradient stream and on a small
model in float32 within Keras's own float32 drift, and on the stream in float64
to ``F64_ATOL``.
The learning rate is a power of two because Keras stores it as a float32
variable: 2**-8 is the same number in float32 and float64.
"""

import jax
import jax.numpy as jnp
import optax
import pytest
from _family_refs import (
    gradient_stack,
    model_params,
    run_adamx_model,
    run_adamx_stream,
    run_keras,
)
from _family_tolerance import assert_f64_equal, assert_within_rounding
from _streams import make_params
from registry import OPTIMIZERS, Optimizer, with_reference

keras = pytest.importorskip("keras", reason="keras is a test-only reference (pip install keras)")
if keras.backend.backend() != "jax":
    pytest.skip("the Keras reference needs KERAS_BACKEND=jax", allow_module_level=True)
# The cases: every registry optimizer with a Keras reference (its builder, the slots that
# correspond, and the float32 tolerance factor with its reason).
CASES = {name: OPTIMIZERS[name] for name in with_reference("keras")}


def run_both(optimizer: Optimizer, kind: str, dtype, with_adamx: bool = True):
    """(adamx, Keras) trajectories and (adamx, Keras) state pairs; adamx's are None if skipped."""
    ours, state, case = None, None, optimizer.keras
    with jax.enable_x64(dtype == jnp.float64):
        if kind == "stream":
            params = jax.tree.map(lambda x: x.astype(dtype), make_params(jnp.float32))
            grads = gradient_stack(params)
            if with_adamx:
                ours, state = run_adamx_stream(optimizer.make(), params, grads)
            theirs, slots = run_keras(case.make, params, grads)
        else:
            params = model_params(dtype)
            if with_adamx:
                ours, state = run_adamx_model(optimizer.make(), params)
            theirs, slots = run_keras(case.make, params)
    assert jax.tree.leaves(theirs)[0].dtype == dtype
    assert ours is None or jax.tree.leaves(ours)[0].dtype == dtype
    pairs = [
        (None if state is None else optax.tree.get(state, ours_name), slots[k])
        for k, ours_name in case.slots.items()
    ]
    return (ours, theirs), pairs


@pytest.mark.parametrize("kind", ["stream", "model"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras(name, kind):
    (ours32, theirs32), states32 = run_both(CASES[name], kind, jnp.float32)
    (ours64, theirs64), states64 = run_both(
        CASES[name], kind, jnp.float64, with_adamx=kind == "stream"
    )
    case = CASES[name].keras

    if ours64 is not None:  # the formula check; the closed loop would only repeat it
        assert_f64_equal(ours64, theirs64, f"{name} params")
        for (ours_s, theirs_s), key in zip(states64, case.slots, strict=True):
            assert_f64_equal(ours_s, theirs_s, f"{name} slot {key}")
    assert_within_rounding(ours32, theirs32, theirs64, case.factor, f"{name} params ({case.why})")
    for (ours_s, theirs_s), (_, ref64), key in zip(states32, states64, case.slots, strict=True):
        assert_within_rounding(ours_s, theirs_s, ref64, case.factor, f"{name} slot {key}")
