"""Recombine adamx's stages into variants, and see what each stage is for.

    python examples/custom_chain.py

Adam is a chain of small transformations:

    scale_by_moments -> bias_correct -> scale_by_rsqrt -> add_decoupled_weight_decay -> scale_by_lr

Dropping, moving or masking one stage gives a variant in one line. Three
experiments show why each stage is where it is.
"""

import jax
import jax.numpy as jnp
import optax

import adamx

B1, B2, LR = 0.9, 0.999, 1e-2


def adam_without_bias_correction():
    """Adam with the bias-correction stage left out."""
    return optax.chain(
        adamx.scale_by_moments(B1, B2), adamx.scale_by_rsqrt(), adamx.scale_by_lr(LR)
    )


def adam_with_l2_in_the_gradient(weight_decay):
    """The "L2 bug": decay added to the gradient, then divided by sqrt(v) like the gradient."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),  # g + λθ, before the moments
        adamx.scale_by_moments(B1, B2),
        adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(),
        adamx.scale_by_lr(LR),
    )


def adamw_decaying_matrices_only(weight_decay):
    """AdamW whose decay skips vectors (biases, norm scales): a mask on one stage."""
    matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return optax.chain(
        adamx.scale_by_moments(B1, B2),
        adamx.bias_correct(B1, B2),
        adamx.scale_by_rsqrt(),
        adamx.add_decoupled_weight_decay(weight_decay, mask=matrices),
        adamx.scale_by_lr(LR),
    )


def first_step(tx, grads, params):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def main():
    # 1. Bias correction. At t = 1, m = (1 - b1)·g is 10x too small but sqrt(v) = sqrt(1 - b2)·|g|
    #    is 31.6x too small, so the uncorrected step is (1 - b1)/sqrt(1 - b2) ≈ 3.2x too LARGE.
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([0.1, 1.0, 10.0])}
    with_bc = first_step(adamx.adam(LR), grads, params)["w"]
    without = first_step(adam_without_bias_correction(), grads, params)["w"]
    print("1. first update with and without bias_correct (gradients 0.1, 1, 10; lr 0.01):")
    print(f"   adam:                 {with_bc}")
    print(f"   no bias correction:   {without}   {float(without[0] / with_bc[0]):.2f}x larger")

    # 2. Decoupled decay vs L2 in the gradient: with L2, weights with large gradients decay least.
    params = {"w": jnp.full(2, 5.0)}
    grads = {"w": jnp.asarray([0.0, 50.0])}  # one idle weight, one very active one
    decay = 0.1

    def shrink(tx, steps=200):
        state, p = tx.init(params), params
        for _ in range(steps):
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p["w"] - params["w"]

    # Remove the gradient's own effect to isolate the decay: compare with decay 0.
    l2 = shrink(adam_with_l2_in_the_gradient(decay)) - shrink(adam_with_l2_in_the_gradient(0.0))
    no_decay = shrink(adamx.adamw(LR, weight_decay=0.0))
    decoupled = shrink(adamx.adamw(LR, weight_decay=decay)) - no_decay
    print("2. movement due to weight decay over 200 steps (idle weight, active weight):")
    print(f"   L2 in the gradient:   {l2}   the active weight barely decays")
    print(f"   decoupled (AdamW):    {decoupled}   both decay alike")

    # 3. Masking one stage: decay the matrix, leave the bias alone.
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates = first_step(adamw_decaying_matrices_only(0.5), zeros, params)
    print("3. AdamW with decay masked to matrices, zero gradient:")
    print(f"   update of w: {updates['w'].ravel()}   update of b: {updates['b']}")


if __name__ == "__main__":
    main()
