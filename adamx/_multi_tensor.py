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
import numpy as np
import optax

from ._types import PyTree
from ._validation import flatten_like_updates

_STAGE = "multi_tensor"


class PackedTree(NamedTuple):
    """The tree the wrapped chain sees: large leaves as they are, small ones in buckets."""

    loose: tuple  # the large leaves, in the flattening order of the params
    buckets: dict  # dtype name -> 1-D array: the small leaves of that dtype, ravelled, concatenated


class MultiTensorState(NamedTuple):
    """State of ``multi_tensor``: the wrapped chain's state, built on the packed tree."""

    inner: PyTree  # e.g. the moments as PackedTree(loose=(...), buckets={"float32": f32[n]})


class _Layout(NamedTuple):
    """Which leaf goes where: static, computed from shapes and dtypes alone."""

    loose: tuple[int, ...]  # indices of the leaves kept as they are
    buckets: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype name, indices packed in order)


def _layout(leaves: list, min_size: int) -> _Layout:
    loose, buckets = [], {}
    for i, leaf in enumerate(leaves):
        if np.size(leaf) >= min_size:
            loose.append(i)
        else:
            buckets.setdefault(jnp.result_type(leaf).name, []).append(i)
    return _Layout(tuple(loose), tuple((k, tuple(v)) for k, v in sorted(buckets.items())))


def _pack(leaves: list, layout: _Layout) -> PackedTree:
    def bucket(indices):
        return jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])

    return PackedTree(
        loose=tuple(leaves[i] for i in layout.loose),
        buckets={name: bucket(indices) for name, indices in layout.buckets},
    )


def _unpack(packed: PackedTree, layout: _Layout, like: list) -> list:
    out = [None] * len(like)
    for i, leaf in zip(layout.loose, packed.loose, strict=True):
        out[i] = leaf
    for name, indices in layout.buckets:
        flat, offset = packed.buckets[name], 0
        for i in indices:
            size = int(np.size(like[i]))
            out[i] = jax.lax.slice(flat, (offset,), (offset + size,)).reshape(np.shape(like[i]))
            offset += size
    return out


def _check_not_sharded(what: str, paths: list, leaves: list, layout: _Layout) -> None:
    """Packing a leaf split over several devices would gather it: refuse, and say what to do."""
    for _, indices in layout.buckets:
        for i in indices:
            sharding = _sharding(leaves[i])
            if sharding is not None and _is_split(sharding):
                raise ValueError(
                    f"{_STAGE}: the {what} at {jax.tree_util.keystr(tuple(paths[i]))} "
                    f"(shape {np.shape(leaves[i])}) is sharded over several devices "
                    f"({sharding}), and packing it into a flat bucket would gather it onto "
                    "every device. Keep it out of the buckets: lower min_size below its size, "
                    "replicate small leaves, or apply the wrapped chain to this leaf without "
                    "multi_tensor (optax.multi_transform with a label per group)."
                )


def _sharding(leaf: Any) -> Any:
    try:
        return leaf.sharding  # concrete arrays
    except Exception:
        aval_sharding = getattr(jax.typeof(leaf), "sharding", None)
        spec = getattr(aval_sharding, "spec", None)
        return aval_sharding if spec is not None and any(s is not None for s in spec) else None


def _is_split(sharding: Any) -> bool:
    try:
        return len(sharding.device_set) > 1 and not sharding.is_fully_replicated
    except Exception:
        return True


def _check_no_mask(state: PyTree) -> None:
    masked = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedState))
        if isinstance(s, optax.MaskedState)
    ]
    if masked:
        raise ValueError(
            f"{_STAGE}: the wrapped chain contains a mask (optax.masked, or adamw(mask=...)). "
            "Inside multi_tensor a mask would be evaluated on the packed buckets, not on your "
            "parameters, and would decay the wrong leaves. Put the mask outside instead: "
            "optax.multi_transform({'decay': adamx.multi_tensor(adamx.adamw(lr)), 'no_decay': "
            "adamx.multi_tensor(adamx.adam(lr))}, labels)."
        )


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

    Not elementwise, so keep them outside the wrapper: masks (``adamw(mask=...)``
    is refused; use ``optax.multi_transform`` over two wrapped chains) and
    global-norm clipping (chain ``optax.clip_by_global_norm`` before it).

    Args:
      tx: an elementwise gradient transformation.
      min_size: leaves with at least this many elements stay unpacked. 0 packs
        nothing (the wrapper is then the identity).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``MultiTensorState``.

    Raises:
      ValueError: at ``init``/``update`` if a leaf that would be packed is sharded
        over several devices (packing would gather it), or if ``tx`` has a mask.

    Example:
      >>> import adamx, jax.numpy as jnp
      >>> params = {f"b{i}": jnp.zeros(64) for i in range(1000)}
      >>> tx = adamx.multi_tensor(adamx.adamw(1e-3))
      >>> state = tx.init(params)
      >>> state.inner[0].mu.buckets["float32"].shape  # one buffer for m
      (64000,)
    """
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(
            f"{_STAGE}: min_size must be an int >= 0 (leaves smaller than it are packed), "
            f"got {min_size!r}."
        )

    def init_fn(params):
        paths_and_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
        paths = [p for p, _ in paths_and_leaves]
        leaves = [leaf for _, leaf in paths_and_leaves]
        layout = _layout(leaves, min_size)
        _check_not_sharded("parameter", paths, leaves, layout)
        state = tx.init(_pack(leaves, layout))
        _check_no_mask(state)
        return MultiTensorState(inner=state)

    def update_fn(updates, state, params=None, **extra_args):
        paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
        paths = [p for p, _ in paths_and_leaves]
        leaves = [leaf for _, leaf in paths_and_leaves]
        layout = _layout(leaves, min_size)
        _check_not_sharded("gradient", paths, leaves, layout)
        packed_params = None
        if params is not None:
            thetas = flatten_like_updates(_STAGE, updates, params, "params")
            _check_same_dtypes(paths, leaves, thetas, layout)
            packed_params = _pack(thetas, layout)
        packed, inner = tx.update(_pack(leaves, layout), state.inner, packed_params, **extra_args)
        return treedef.unflatten(_unpack(packed, layout, leaves)), MultiTensorState(inner=inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_same_dtypes(paths: list, grads: list, params: list, layout: _Layout) -> None:
    for _, indices in layout.buckets:
        for i in indices:
            g, p = jnp.result_type(grads[i]), jnp.result_type(params[i])
            if g != p:
                raise TypeError(
                    f"{_STAGE}: at {jax.tree_util.keystr(tuple(paths[i]))} the gradient is {g} "
                    f"but the parameter is {p}; packed leaves need matching dtypes. Cast the "
                    "gradients to the parameters' dtype before the optimizer."
                )
