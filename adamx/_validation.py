"""Eager checks with messages that say what was wrong, what was expected and how to fix it.

Hyperparameter checks run at construction and only on concrete Python numbers:
a traced value (``optax.inject_hyperparams``, ``jax.jit`` arguments) cannot be
inspected without a host sync, so it is accepted as is. Tree checks run while
tracing ``init``/``update``: they read structure, shapes and dtypes, never values.
"""

import math
import numbers
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from ._types import PyTree, is_moments

_PIPELINE = (
    "grads -> scale_by_moments -> bias_correct -> scale_by_rsqrt -> "
    "add_decoupled_weight_decay -> scale_by_lr -> updates"
)


def is_concrete_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_zero(x: Any) -> bool:
    """A concrete Python number equal to 0 (a traced or array value is never "known zero")."""
    return is_concrete_number(x) and x == 0


def check_flag(name: str, value: Any, *, optional: bool = False) -> None:
    """A switch must be a Python bool (``optional``: or None, meaning "the default")."""
    if isinstance(value, (bool, np.bool_)) or (optional and value is None):
        return
    allowed = "True, False or None" if optional else "True or False"
    raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__}).")


def check_seed(name: str, value: Any) -> None:
    """A seed is a Python int (it is folded into a PRNG key at init)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name} must be a Python int (the PRNG seed), got {value!r} ({type(value).__name__})."
        )


def check_size(name: str, value: Any, *, minimum: int = 0, what: str = "") -> None:
    """A count or size is an int >= ``minimum``; ``what`` says what it counts, for the message."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        meaning = f" ({what})" if what else ""
        raise ValueError(f"{name} must be an int >= {minimum}{meaning}, got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple, meaning: str = "") -> None:
    """``value`` must be one of ``choices``; ``meaning`` explains them, for the message."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}. {meaning}".rstrip())


def check_power_of_two(name: str, value: Any, *, examples: str = "", why: str = "") -> None:
    """An int power of two >= 2; ``examples`` and ``why`` complete the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or (value & (value - 1)):
        shown = f" {examples}" if examples else ""
        message = f"{name} must be a power of two >= 2{shown}, got {value!r}. {why}"
        raise ValueError(message.rstrip())


def check_positive_number(name: str, value: Any, why: str = "") -> None:
    """A number (or scalar array) > 0, not a schedule; ``why`` says what it is for."""
    check_scalar_or_schedule(name, value)
    if callable(value) or (is_concrete_number(value) and value <= 0):
        raise ValueError(f"{name} must be a number > 0, got {value!r}: {why}".rstrip(": "))


def check_row_ids(
    name: str, ids: Any, num_rows: int, size: int | None, *, padding: bool = False
) -> None:
    """Concrete row ids (a traced array is accepted as is): each in ``[0, num_rows)`` (or
    ``num_rows``, padding, if ``padding``), and at most ``size`` distinct rows (more would be
    dropped). Under ``jit`` nothing can be checked: the callers document what happens."""
    if isinstance(ids, jax.core.Tracer):
        return
    found = np.asarray(ids)
    top = num_rows + 1 if padding else num_rows
    bad = found[(found < 0) | (found >= top)]
    if bad.size:
        allowed = f"[0, {num_rows}] ({num_rows} marks padding)" if padding else f"[0, {num_rows})"
        raise ValueError(
            f"{name} must be row ids in {allowed}, got {bad[:5].tolist()}. Under jit such ids "
            "cannot be checked: they are ignored, like padding."
        )
    distinct = np.unique(found[found < num_rows]).size
    if size is not None and distinct > size:
        raise ValueError(
            f"size must be >= the {distinct} distinct rows of {name} in this batch, got {size}: "
            "rows would be dropped. Pass size >= the largest number of distinct rows in a batch."
        )


def check_beta(name: str, value: Any) -> None:
    """A decay rate must lie in [0, 1): b = 1 would freeze the moving average."""
    if isinstance(value, bool) or not (is_concrete_number(value) or _is_array_like(value)):
        raise TypeError(
            f"{name} must be a number in [0, 1), got {value!r} ({type(value).__name__})."
        )
    if is_concrete_number(value) and not 0.0 <= value < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1), got {value}. It is the decay of a moving average "
            f"(m_t = {name}*m + (1-{name})*g): {name}=1 never learns from new gradients and "
            f"{name}<0 oscillates. Typical values: b1=0.9, b2=0.999."
        )


def check_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not (is_concrete_number(value) or _is_array_like(value)):
        raise TypeError(
            f"{name} must be a non-negative number, got {value!r} ({type(value).__name__})."
        )
    if is_concrete_number(value) and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}.")


def check_beta_or_schedule(name: str, value: Any) -> None:
    """A decay rate in [0, 1) (``check_beta``), or a schedule ``count -> rate``."""
    if not callable(value):
        check_beta(name, value)


def check_non_negative_or_schedule(name: str, value: Any) -> None:
    """A number >= 0 (``check_non_negative``), or a schedule ``count -> value``."""
    if not callable(value):
        check_non_negative(name, value)


def check_callable(name: str, value: Any, what: str, hint: str = "") -> None:
    """``value`` must be callable (``what`` says which function); ``hint`` ends the message."""
    if not callable(value):
        message = f"{name} must be {what}, got {value!r} ({type(value).__name__}). {hint}"
        raise TypeError(message.rstrip())


def check_transformation(name: str, value: Any, what: str) -> None:
    """A wrapper's argument must be an optax transformation (``what``: which chain)."""
    if not isinstance(value, optax.GradientTransformation):
        raise TypeError(
            f"{name} must be an optax.GradientTransformation ({what}), got {value!r} "
            f"({type(value).__name__})."
        )


def check_scalar_or_schedule(name: str, value: Any) -> None:
    """A rate is a non-negative number, a scalar array, or a schedule ``count -> rate``."""
    if callable(value):
        return
    if isinstance(value, bool) or not (is_concrete_number(value) or _is_array_like(value)):
        raise TypeError(
            f"{name} must be a number or a schedule (a callable step -> value, such as "
            f"optax.cosine_decay_schedule(...)), got {value!r} ({type(value).__name__})."
        )
    if _is_array_like(value) and np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}.")
    if is_concrete_number(value) and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} must be a finite number >= 0, got {value}. "
            "To maximise an objective, minimise its negation instead."
        )


def check_float_dtype(name: str, dtype: Any) -> None:
    if isinstance(dtype, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(
            f"{name} must be a floating-point dtype, a moment format, or None; got an array "
            f"(dtype {dtype.dtype}). A dtype passed through optax.inject_hyperparams is called "
            "as if it were a schedule: list it in static_args, e.g. optax.inject_hyperparams("
            f"adamx.adam, static_args=({name!r},))."
        )
    try:
        ok = dtype is None or jnp.issubdtype(dtype, jnp.inexact)
        shown = dtype if dtype is None else jnp.dtype(dtype)
    except TypeError:
        ok, shown = False, repr(dtype)
    if not ok:
        raise TypeError(
            f"{name} must be a floating-point dtype (e.g. jnp.bfloat16), a moment format, "
            f"or None for the params' dtype; got {shown}."
        )


def check_real_float_dtype(name: str, dtype: Any) -> None:
    """A real float dtype or None (``check_float_dtype`` also accepts complex dtypes)."""
    check_float_dtype(name, dtype)
    if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"{name} must be a real floating-point dtype (e.g. jnp.float32) or None, "
            f"got {jnp.dtype(dtype).name}."
        )


def check_integer(name: str, value: Any) -> None:
    """An int of any sign, or an integer scalar array (a number of steps)."""
    array = _is_array_like(value) and jnp.issubdtype(value.dtype, jnp.integer)
    number = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not (number or (array and np.ndim(value) == 0)):
        raise TypeError(f"{name} must be an int (a number of steps), got {value!r}.")


def _is_array_like(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


# ---------------------------------------------------------------------------
# Tree checks (run at trace time; read only structure, shapes and dtypes).


def check_float_leaves(stage: str, what: str, tree: PyTree) -> None:
    """Every leaf must be a floating-point or complex array."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{stage}: the {what} at {_keystr(path)} has dtype {dtype}, but Adam needs "
                f"floating-point (or complex) {what}s. Cast it to a float dtype, or keep the leaf "
                "out of the optimizer (optax.masked / optax.set_to_zero for non-trainable leaves)."
            )


def flatten_like_updates(stage: str, updates: PyTree, tree: PyTree, name: str) -> list:
    """The entries of ``tree`` at the leaves of ``updates``; a clear error if the trees differ.

    ``name`` is "state" (the optimizer state, shaped like the params given to
    init) or "params".
    """
    try:
        return jax.tree.structure(updates).flatten_up_to(tree)
    except (ValueError, TypeError):
        difference = _describe_difference(updates, tree, "gradients", name)
        raise ValueError(
            f"{stage}: the gradient tree does not match the {name}. {difference} "
            "Gradients must have exactly the structure of the params given to init."
        ) from None


def check_mask(stage: str, mask: PyTree, params: PyTree) -> None:
    """``mask`` must be a prefix of ``params`` with a Python bool at each of its leaves."""
    try:
        jax.tree.structure(mask).flatten_up_to(params)
    except (ValueError, TypeError):
        difference = _describe_difference(mask, params, "mask", "params")
        raise ValueError(
            f"{stage}: the mask does not match the params. {difference} A mask has the params' "
            "structure (or a prefix of it) with True where the transformation applies; "
            "build it from the params, e.g. mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)."
        ) from None
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if not isinstance(leaf, (bool, np.bool_)):
            raise TypeError(
                f"{stage}: the mask leaf at {_keystr(path)} is {leaf!r} ({type(leaf).__name__}), "
                "but mask leaves must be Python bools (True: apply here). A mask is static: "
                "compute it from shapes, dtypes or paths, not from array values."
            )


def check_same_shape(stage: str, path: Any, got: Any, expected: Any, what: str) -> None:
    if jnp.shape(got) != jnp.shape(expected):
        raise ValueError(
            f"{stage}: the {what} at {_keystr(path)} has shape {jnp.shape(got)}, but the "
            f"optimizer state there has shape {jnp.shape(expected)}."
        )


def _describe_difference(prefix: PyTree, full: PyTree, prefix_name: str, full_name: str) -> str:
    """Leaf paths only one tree has (a ``prefix`` leaf may stand for a ``full`` subtree)."""
    short = [tuple(p) for p, _ in jax.tree_util.tree_flatten_with_path(prefix)[0]]
    long = [tuple(p) for p, _ in jax.tree_util.tree_flatten_with_path(full)[0]]
    only_short = [_keystr(s) for s in short if not any(q[: len(s)] == s for q in long)]
    only_long = [_keystr(q) for q in long if not any(q[: len(s)] == s for s in short)]
    parts = []
    if only_short:
        parts.append(f"Only in the {prefix_name}: {_first(only_short)}.")
    if only_long:
        parts.append(f"Only in the {full_name}: {_first(only_long)}.")
    if not parts:
        parts.append(
            f"The leaf paths agree but the containers differ: the {prefix_name} are "
            f"{jax.tree.structure(prefix)}."
        )
    return " ".join(parts)


def _first(items: list, n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def require_params(stage: str, params: Any) -> None:
    if params is None:
        raise ValueError(
            f"{stage} needs the current parameters: call "
            "`tx.update(grads, opt_state, params)` (params as the third argument)."
        )


def require_moment_tree(stage: str, tree: PyTree) -> None:
    """``tree`` must be a moment tree (every leaf a ``Moments`` record)."""
    leaves = jax.tree.leaves(tree, is_leaf=is_moments)
    if leaves and not all(is_moments(leaf) for leaf in leaves):
        raise TypeError(
            f"{stage} takes the moment tree made by scale_by_moments, but was given plain "
            f"gradients/updates. Put it after scale_by_moments in the chain: {_PIPELINE}."
        )


def require_update_tree(stage: str, tree: PyTree) -> None:
    """``tree`` must be plain gradients/updates, not a moment tree."""
    if any(is_moments(leaf) for leaf in jax.tree.leaves(tree, is_leaf=is_moments)):
        raise TypeError(
            f"{stage} takes gradients/updates, but was given the moment tree of "
            "scale_by_moments. Close the moment segment with scale_by_rsqrt before it: "
            f"{_PIPELINE}."
        )


def _keystr(path: Any) -> str:
    return jax.tree_util.keystr(tuple(path)) or "<root>"
