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

import math
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._packed import PackedTree, _Layout, _layout, _pack
from .._types import PyTree
from .._validation import flatten_like_updates

_STAGE = "multi_tensor"


class MultiTensorState(NamedTuple):
    """State of ``multi_tensor``: the wrapped chain's state, built on the packed tree."""

    inner: PyTree  # e.g. the moments as PackedTree(loose=(...), buckets={"float32": f32[n]})


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
    """A packed leaf must be whole on every device, in a type a flat bucket can carry.

    Split over several devices, packing would gather it; typed with an Explicit mesh
    axis (even one of size 1), ``jnp.concatenate`` cannot join it with other leaves.
    """
    for _, indices in layout.buckets:
        for i in indices:
            sharding = _sharding(leaves[i])
            if sharding is None:
                continue
            where = f"the {what} at {jax.tree_util.keystr(tuple(paths[i]))}"
            if _is_split(sharding):
                problem = (
                    f"is sharded over several devices ({sharding}), and packing it into a "
                    "flat bucket would gather it onto every device"
                )
            elif _explicit_axes_named(sharding):
                problem = (
                    f"has a sharding over Explicit mesh axes in its type ({sharding}), which "
                    "a flat bucket of several leaves cannot carry"
                )
            else:
                continue
            raise ValueError(
                f"{who}: {where} (shape {np.shape(leaves[i])}) {problem}. Keep it out of the "
                "buckets: lower min_size below its size, replicate small leaves "
                "(PartitionSpec()), or apply the wrapped chain to this leaf without "
                "multi_tensor (optax.multi_transform with a label per group)."
            )


def _sharding(leaf: Any) -> Any:
    """The leaf's sharding, or None for host values (NumPy arrays, Python numbers).

    A concrete array carries its own; a tracer's is in its type (``jax.typeof``), whose
    spec names the mesh axes of an Explicit mesh (all None under Auto axes, where only
    the compiler decides); an abstract ``jax.ShapeDtypeStruct`` may carry one.
    """
    if isinstance(leaf, jax.core.Tracer):
        return jax.typeof(leaf).sharding
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
        return leaf.sharding
    return None


def _is_split(sharding: Any) -> bool:
    """Whether ``sharding`` puts different parts of the leaf on different devices.

    ``NamedSharding`` (concrete or abstract mesh): some dimension is split over mesh
    axes whose sizes multiply to more than 1. Any other ``jax.sharding.Sharding``
    (single device, GSPMD, positional): more than one device and not fully replicated.
    """
    if isinstance(sharding, jax.sharding.NamedSharding):
        sizes = dict(sharding.mesh.shape)
        return any(_split_factor(entry, sizes) > 1 for entry in sharding.spec)
    return len(sharding.device_set) > 1 and not sharding.is_fully_replicated


def _explicit_axes_named(sharding: Any) -> bool:
    """Whether a ``NamedSharding``'s spec names an Explicit mesh axis (part of the array type)."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return False
    mesh = sharding.mesh
    explicit = {
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind == jax.sharding.AxisType.Explicit
    }
    return any(set(_axes(entry)) & explicit for entry in sharding.spec)


def _axes(entry: Any) -> tuple:
    """The mesh axes of a ``PartitionSpec`` entry (none for None and UNCONSTRAINED)."""
    if entry is None or entry is jax.sharding.PartitionSpec.UNCONSTRAINED:
        return ()
    return entry if isinstance(entry, tuple) else (entry,)


def _split_factor(entry: Any, sizes: dict) -> int:
    """Into how many parts a ``PartitionSpec`` entry splits its dimension.

    None: not split. UNCONSTRAINED (the compiler may choose, as for any leaf under Auto
    axes): not known to be split.
    """
    return math.prod(sizes[axis] for axis in _axes(entry))


def _check_no_optax_mask(state: PyTree) -> None:
    """Refuse a user's ``optax.masked``/``multi_transform`` inside the wrapper: it sees buckets."""
    is_masked = lambda x: isinstance(x, optax.MaskedState)  # noqa: E731
    if any(is_masked(s) for s in jax.tree.leaves(state, is_leaf=is_masked)):
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


def _without_variables(tree: PyTree) -> PyTree:
    """``tree`` with flax ``nnx.Variable`` wrappers replaced by their values.

    ``nnx.Optimizer`` calls ``init`` on an ``nnx.State`` of Variables but ``update`` on
    the bare arrays (``nnx.as_pure``): packing the bare structure at init gives the
    state the layout (and pytree structure) that ``update`` packs.
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return tree
    is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    value = lambda v: v.get_value() if hasattr(v, "get_value") else v.value  # noqa: E731
    return jax.tree.map(lambda x: value(x) if is_variable(x) else x, tree, is_leaf=is_variable)


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
      >>> params = {f"b{i}": jnp.zeros(64) for i in range(1000)}
      >>> tx = adamx.multi_tensor(adamx.adamw(1e-3))
      >>> state = tx.init(params)
      >>> state.inner[0].mu.buckets["float32"].shape  # one buffer for m
      (64000,)
    """
    _check_min_size(min_size, _STAGE)

    def init_fn(params):
        params = _without_variables(params)
        _, leaves, treedef, layout = _flatten_for_packing(_STAGE, "parameter", params, min_size)
        state = tx.init(_pack(leaves, treedef, layout))
        _check_no_optax_mask(state)
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
