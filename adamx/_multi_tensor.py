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

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._types import PyTree
from ._validation import flatten_like_updates

_STAGE = "multi_tensor"


class _Layout(NamedTuple):
    """Which leaf goes where: static, computed from shapes and dtypes alone."""

    loose: tuple[int, ...]  # indices of the leaves kept as they are
    buckets: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype name, indices packed in order)


class _Spec(NamedTuple):
    """How a tree was packed: static (shapes and dtypes only), so it is pytree metadata."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]  # every leaf's shape, in flattening order
    layout: _Layout


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["loose", "buckets"], meta_fields=["spec"]
)
@dataclasses.dataclass(frozen=True)
class PackedTree:
    """A tree with its small leaves packed into flat per-dtype buckets (made by ``pack``).

    A pytree whose leaves are the large leaves, as they are, and one 1-D bucket per
    dtype; any elementwise optax chain runs on it directly. ``unpack()`` gives the
    original tree back, and differentiating through it packs the gradient (its VJP
    is a concatenation), so ``jax.grad(lambda p: loss(p.unpack()))(packed)`` is itself
    a ``PackedTree``.

    Attributes:
      loose: the large leaves, in the flattening order of the tree.
      buckets: dtype name -> 1-D array: that dtype's small leaves, ravelled and concatenated.
      spec: the static layout (tree structure, shapes, which leaf is where).
    """

    loose: tuple
    buckets: dict
    spec: _Spec

    def unpack(self) -> PyTree:
        """The tree that was packed: slices of the buckets, reshaped, in its structure."""
        return self.spec.treedef.unflatten(_unpack_leaves(self.spec, self.loose, self.buckets))


class MultiTensorState(NamedTuple):
    """State of ``multi_tensor``: the wrapped chain's state, built on the packed tree."""

    inner: PyTree  # e.g. the moments as PackedTree(loose=(...), buckets={"float32": f32[n]})


def _layout(leaves: list, min_size: int) -> _Layout:
    loose, buckets = [], {}
    for i, leaf in enumerate(leaves):
        if np.size(leaf) >= min_size:
            loose.append(i)
        else:
            buckets.setdefault(jnp.result_type(leaf).name, []).append(i)
    return _Layout(tuple(loose), tuple((k, tuple(v)) for k, v in sorted(buckets.items())))


def _pack(leaves: list, treedef: Any, layout: _Layout) -> PackedTree:
    def bucket(indices):
        return jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])

    return PackedTree(
        loose=tuple(leaves[i] for i in layout.loose),
        buckets={name: bucket(indices) for name, indices in layout.buckets},
        spec=_Spec(treedef, tuple(tuple(np.shape(x)) for x in leaves), layout),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _unpack_leaves(spec: _Spec, loose: tuple, buckets: dict) -> list:
    out = [None] * len(spec.shapes)
    for i, leaf in zip(spec.layout.loose, loose, strict=True):
        out[i] = leaf
    for name, indices in spec.layout.buckets:
        flat, offset = buckets[name], 0
        for i in indices:
            size = math.prod(spec.shapes[i])
            out[i] = jax.lax.slice(flat, (offset,), (offset + size,)).reshape(spec.shapes[i])
            offset += size
    return out


def _unpack_fwd(spec, loose, buckets):
    return _unpack_leaves(spec, loose, buckets), None


def _unpack_bwd(spec, _, cotangents):
    """The VJP of slicing the buckets is packing the cotangents: one concatenation."""
    packed = _pack(list(cotangents), spec.treedef, spec.layout)
    return packed.loose, packed.buckets


_unpack_leaves.defvjp(_unpack_fwd, _unpack_bwd)


def pack(tree: PyTree, *, min_size: int = 4096) -> PackedTree:
    r"""Pack the leaves of ``tree`` smaller than ``min_size`` into one flat bucket per dtype.

    Hold the parameters packed between steps and unpack them inside the jitted step:
    the step then takes and returns a handful of buffers instead of thousands, and
    the optimizer (any elementwise chain, unwrapped) runs on the packed tree. The
    gradient with respect to the packed tree is packed too:

    .. math::
        \nabla_{\operatorname{pack}(\theta)} L(\operatorname{unpack}(\cdot))
        = \operatorname{pack}(\nabla_\theta L)

    Args:
      tree: a pytree of arrays (concrete or traced).
      min_size: leaves with at least this many elements stay as they are.

    Returns:
      A ``PackedTree``; ``.unpack()`` returns ``tree``.

    Raises:
      ValueError: if ``min_size`` is not an int >= 0, or a leaf that would be packed is
        sharded over several devices (packing would gather it).

    Example:
      >>> import adamx, jax, jax.numpy as jnp, optax
      >>> params = {f"b{i}": jnp.zeros(64) for i in range(1000)}
      >>> packed, tx = adamx.pack(params), adamx.adamw(1e-3)
      >>> state = tx.init(packed)
      >>> loss = lambda p: sum(jnp.sum((x - 1.0) ** 2) for x in jax.tree.leaves(p))
      >>> grads = jax.grad(lambda p: loss(p.unpack()))(packed)
      >>> updates, state = tx.update(grads, state, packed)
      >>> packed = optax.apply_updates(packed, updates)
      >>> packed.buckets["float32"].shape, packed.unpack()["b7"].shape
      ((64000,), (64,))
    """
    _check_min_size(min_size, "pack")
    _, leaves, treedef, layout = _flatten_for_packing("pack", "leaf", tree, min_size)
    return _pack(leaves, treedef, layout)


def _flatten_for_packing(who: str, what: str, tree: PyTree, min_size: int):
    """``(paths, leaves, treedef, layout)`` of ``tree``; refuses to pack sharded leaves."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [p for p, _ in paths_and_leaves]
    leaves = [leaf for _, leaf in paths_and_leaves]
    layout = _layout(leaves, min_size)
    _check_not_sharded(who, what, paths, leaves, layout)
    return paths, leaves, treedef, layout


def _check_min_size(min_size: Any, who: str) -> None:
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(
            f"{who}: min_size must be an int >= 0 (leaves smaller than it are packed), "
            f"got {min_size!r}."
        )


def _check_not_sharded(who: str, what: str, paths: list, leaves: list, layout: _Layout) -> None:
    """Packing a leaf split over several devices would gather it: refuse, and say what to do."""
    for _, indices in layout.buckets:
        for i in indices:
            sharding = _sharding(leaves[i])
            if sharding is not None and _is_split(sharding):
                raise ValueError(
                    f"{who}: the {what} at {jax.tree_util.keystr(tuple(paths[i]))} "
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
    _check_min_size(min_size, _STAGE)

    def init_fn(params):
        _, leaves, treedef, layout = _flatten_for_packing(_STAGE, "parameter", params, min_size)
        state = tx.init(_pack(leaves, treedef, layout))
        _check_no_mask(state)
        return MultiTensorState(inner=state)

    def update_fn(updates, state, params=None, **extra_args):
        paths, leaves, treedef, layout = _flatten_for_packing(_STAGE, "gradient", updates, min_size)
        packed_params = None
        if params is not None:
            thetas = flatten_like_updates(_STAGE, updates, params, "params")
            _check_same_dtypes(paths, leaves, thetas, layout)
            packed_params = _pack(thetas, treedef, layout)
        packed, inner = tx.update(
            _pack(leaves, treedef, layout), state.inner, packed_params, **extra_args
        )
        return packed.unpack(), MultiTensorState(inner=inner)

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
