"""``multi_tensor``: run an elementwise chain on flat per-dtype buckets of the small leaves.

A model with thousands of small leaves (biases, norms, embeddings of small
tables) pays per leaf: every leaf is a separate buffer handed to the compiled
step (params, grads, m and v: 7 buffers in and out per leaf for Adam), a
separate fused loop, and more HLO to compile. ``multi_tensor`` packs the small
leaves of each dtype into one flat bucket, runs the wrapped chain on the packed
tree and unpacks the updates. The optimizer state stays packed between steps,
so only the gradients and parameters are packed each call. Large leaves are
handed to the chain as they are: packing them would only add copies.

Every stage of an elementwise chain computes each element from the same
element of its inputs (and scalars such as the step count), so the packed chain
runs exactly the same operations as the per-leaf chain; run op by op
(``jax.disable_jit``) the results are bit-identical. Under ``jit``, XLA:CPU's
algebraic simplifier reassociates ``(m / c1) / (sqrt(v̂) + eps)`` into
``m / (c1 * (sqrt(v̂) + eps))`` in some fusions and not others, so the compiled
bucket and the compiled leaves can differ by one or two roundings per step in
bias-corrected chains (chains without bias correction stay bit-identical).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._packed import Layout, pack_leaves
from .._types import PyTree, without_variables
from .._validation import flatten_like_updates
from .pack import check_min_size, flatten_for_packing

_STAGE = "multi_tensor"


class MultiTensorState(NamedTuple):
    """State of ``multi_tensor``: the wrapped chain's state, built on the packed tree."""

    inner: PyTree  # e.g. the moments as PackedTree(loose=(...), buckets={"float32": f32[n]})


def multi_tensor(
    tx: optax.GradientTransformation, *, min_size: int = 4096
) -> optax.GradientTransformationExtraArgs:
    r"""Run an elementwise chain with the small leaves packed into flat per-dtype buckets.

    For every dtype, the leaves with fewer than ``min_size`` elements are
    ravelled and concatenated into one bucket; larger leaves are passed through
    unchanged. ``tx`` runs on that packed tree and its updates are unpacked to
    the parameters' structure, so for an elementwise chain (one whose update of
    each element depends only on that element and on scalars: ``adam``,
    ``adamw``, ``scale_by_moments`` → ``bias_correct`` → ``scale_by_rsqrt`` …)

    .. math::
        \operatorname{unpack}(tx(\operatorname{pack}(g), \operatorname{pack}(\theta)))
        = tx(g, \theta)

    with the same operations on every element (bit for bit op by op; under ``jit``
    XLA may reassociate a division differently, see the module docstring).

    The state is ``tx``'s state on the packed tree: a pytree of arrays, so it
    checkpoints like any other, and it stays packed between steps.

    Masks given to adamx's stages (``adamw(mask=...)``, ``exclude_paths``, a
    callable or a bool tree) work inside: they are resolved against the
    parameters' own paths and applied per element of each bucket. A user's
    ``optax.masked``/``optax.multi_transform`` would see the buckets instead, so it
    is refused inside; put it outside the wrapper. Global-norm clipping is not
    elementwise: chain ``optax.clip_by_global_norm`` before the wrapper.

    Under ``flax.nnx.Optimizer`` (which calls ``init`` on ``nnx.Variable`` wrappers and
    ``update`` on bare arrays) the Variables are unwrapped at ``init``, so the
    packed state has the same structure at every step.

    Args:
      tx: an elementwise gradient transformation.
      min_size: leaves with at least this many elements stay unpacked. 0 packs
        nothing (the wrapper is then the identity).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``MultiTensorState``.

    Raises:
      ValueError: at ``init``/``update`` if a leaf that would be packed is sharded
        over several devices (packing would gather it), or if ``tx`` contains
        ``optax.masked``/``optax.multi_transform`` (their masks would see buckets).

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> params = {f"b{i}": jnp.zeros(64) for i in range(100)}
      >>> tx = adamx.multi_tensor(adamx.adamw(1e-3))
      >>> state = tx.init(params)
      >>> state.inner[0].mu.buckets["float32"].shape  # one buffer for m
      (6400,)
    """
    check_min_size(_STAGE, min_size)
    # optax types params and updates as ArrayTree (arrays, sequences, mappings), which leaves
    # out registered pytree nodes such as the PackedTree tx runs on: tx is called untyped.
    packed_tx: Any = tx

    def init_fn(params):
        flat = flatten_for_packing(_STAGE, "parameter", without_variables(params), min_size)
        state = packed_tx.init(pack_leaves(flat.leaves, flat.treedef, flat.layout))
        _check_no_optax_mask(state)
        return MultiTensorState(inner=state)

    def update_fn(updates, state, params=None, **extra_args):
        flat = flatten_for_packing(_STAGE, "gradient", updates, min_size)
        packed_params = None
        if params is not None:
            thetas = flatten_like_updates(_STAGE, updates, params, "params")
            _check_same_dtypes(flat.paths, flat.leaves, thetas, flat.layout)
            packed_params = pack_leaves(thetas, flat.treedef, flat.layout)
        packed_updates = pack_leaves(flat.leaves, flat.treedef, flat.layout)
        packed, inner = packed_tx.update(packed_updates, state.inner, packed_params, **extra_args)
        return packed.unpack(), MultiTensorState(inner=inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_no_optax_mask(state: PyTree) -> None:
    """Refuse a user's ``optax.masked``/``multi_transform`` inside the wrapper: it sees buckets."""
    if any(_is_masked(s) for s in jax.tree.leaves(state, is_leaf=_is_masked)):
        raise ValueError(
            f"{_STAGE}: the wrapped chain contains optax.masked (or optax.multi_transform). "
            "Inside multi_tensor its mask or labels would be evaluated on the packed buckets, "
            "not on your parameters, and would select the wrong leaves. Either give the mask "
            "to adamx, which resolves it against your parameters' paths "
            "(multi_tensor(adamx.adamw(lr, mask=adamx.exclude_paths('bias', 'norm'))) or "
            "add_decoupled_weight_decay(..., mask=...)), or put the optax wrapper outside: "
            "optax.multi_transform({'a': adamx.multi_tensor(tx_a), 'b': "
            "adamx.multi_tensor(tx_b)}, labels)."
        )


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedState)


def _check_same_dtypes(paths: list, grads: list, params: list, layout: Layout) -> None:
    """Packed gradients and parameters share buckets, so their dtypes must agree leaf by leaf."""
    for _, indices in layout.buckets:
        for i in indices:
            g, p = jnp.result_type(grads[i]), jnp.result_type(params[i])
            if g != p:
                raise TypeError(
                    f"{_STAGE}: at {jax.tree_util.keystr(tuple(paths[i]))} the gradient is {g} "
                    f"but the parameter is {p}; packed leaves need matching dtypes. Cast the "
                    "gradients to the parameters' dtype before the optimizer."
                )
