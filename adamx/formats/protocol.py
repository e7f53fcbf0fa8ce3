r"""What a moment format is: the ``MomentFormat`` Protocol and the record base of its state.

A stage that keeps a moment (``scale_by_moments``: m and v; ``running_max_nu``:
AMSGrad's maximum) calls its format once per leaf and step:

.. math::
    x = \operatorname{decode}(s_{t-1}), \qquad
    x' = \beta x + (1 - \beta)\, y_t \ \text{(the stage's update, in } x\text{'s dtype)},
    \qquad s_t = \operatorname{encode}(x', s_{t-1}, k_t)

so every stage downstream sees the decoded moment x', never the stored s.

Adding a format (FP8 moments, a rank-1 second moment, ...):

1. copy the closest existing file: ``float.py`` (one array per leaf),
   ``stochastic.py`` (one array in a record, random rounding), ``blockwise.py``
   (several arrays per leaf, bound to the moment it stores) or ``factored.py`` (arrays
   shaped unlike the leaf: row and column means);
2. implement ``MomentFormat`` below (a ``NamedTuple`` of the static options, with
   class attributes ``elementwise``, ``stochastic``, ``fields``, ``record``,
   ``seed``) and, for ``fields``, its state record (a ``MomentRecord`` subclass
   registered with ``jax.tree_util.register_dataclass``) and an int ``version`` of
   the stored layout, recorded after ``describe()`` and bumped whenever an old state
   would decode to other values (``versions.py``; pin it in ``tests/formats/test_versions.py``);
3. write the user's constructor (``stochastic_float(...)``) with its maths in the
   docstring and its checks through ``adamx._validation``;
4. export it from ``formats/__init__.py`` and ``adamx/__init__.py``;
5. add it to ``FORMATS`` in ``tests/registry/formats.py``: the composition matrix then runs
   it through every optimizer, path and host, and ``tests/formats/test_protocol.py``
   checks its code is strict-clean.

``as_format`` (``base.py``) accepts any object that satisfies the Protocol as
``mu_dtype`` / ``nu_dtype``; nothing else needs registering.
"""

from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

import jax
from jax.typing import DTypeLike

Role = Literal["mu", "nu", "nu_max"]
ROLES: dict[Role, int] = {"mu": 0, "nu": 1, "nu_max": 2}  # folded into the rounding key
ARGUMENTS: dict[Role, str] = {"mu": "mu_dtype", "nu": "nu_dtype", "nu_max": "nu_dtype"}
"""The user's argument that sets each moment's format, for messages."""

StoredLeaf = jax.Array | tuple[jax.Array | None, ...]
"""A leaf's stored moment: one array, or one entry per name in ``fields``."""

StoredT = TypeVar("StoredT", bound=StoredLeaf)
"""The stored moment of one format (``Stored8bit``, ...): what its ``init`` and ``encode``
return is what its ``decode`` and ``encode`` are given back."""

BucketMembers = tuple[tuple[str, int], ...]
"""The leaves in a bucket of packed leaves: ``((path, size), ...)``."""

FloatDType = DTypeLike | None
"""A float dtype, or None for the parameter's own dtype."""


class MomentRecord:
    """Base of the state records of formats with ``fields``.

    A record is a frozen dataclass registered as a pytree with data fields
    ``(*fields, "key", "config")``: one parameter-shaped tree per field (so hosts
    that wrap every state leaf at a parameter position, such as ``flax.nnx``, see
    plain arrays), ``key`` (uint32[2] raw PRNG key data, split every step, or None
    when the format is not ``stochastic``) and ``config`` (``{description:
    uint8[1]}``: the format's ``describe()`` and layout ``version``
    (``versions.recorded``) as a dict key, part of the tree structure and of every
    checkpoint path, so a state is never read with another configuration or layout).
    """

    __slots__ = ()
    key: Any  # trees of anything: arrays, ShapeDtypeStructs, shardings (state_shardings)
    config: Any

    if TYPE_CHECKING:  # each subclass is a dataclass: built by keyword, its fields, key, config

        def __init__(self, **fields: Any) -> None: ...

    @property
    def description(self) -> str:
        """What the format that made this state recorded: ``describe()``, then ``v<version>``."""
        return next(iter(self.config))


@runtime_checkable
class MomentFormat(Protocol[StoredT]):
    """How ``scale_by_moments`` / ``running_max_nu`` store a moment between steps.

    The stage decodes the stored moment before the update and encodes the new one
    after it, so stages downstream only ever see the decoded float moment. A leaf's
    stored moment is one array (``fields is None``, e.g. ``FloatFormat``) or a tuple
    of arrays, one per name in ``fields`` (None where a leaf has no such array; e.g.
    ``("codes", "scales")``); the latter are kept in the state transposed, as
    ``record(**{field: tree}, key=..., config=...)`` of parameter-shaped trees.

    Attributes:
      elementwise: each stored element depends only on the same element of the
        moment. Such a format stores a packed bucket (``adamx.pack``,
        ``multi_tensor``) like any leaf; any other format is asked about each
        bucket through ``init(..., packed=...)``.
      stochastic: it rounds with random bits: the state then holds one PRNG key per
        moment, split every step, and ``encode`` gets a distinct key for each leaf
        (a function of the leaf's position in the user's tree, not of packing).
      fields: None (the state is a tree of arrays), or the names of a leaf's arrays.
      record: None, or the ``MomentRecord`` subclass that holds the ``fields``.
      seed: the seed of the rounding key (read only if ``stochastic``).

    Methods must be pure and jit-safe: ``init``, ``decode`` and ``encode`` run under
    trace (no host syncs, no value-dependent Python control flow) and must return
    the same structure, shapes and dtypes at every step, or the update retraces.
    """

    # Read-only members (a format is an immutable NamedTuple; its class attributes narrow
    # these types, e.g. ``fields = None``). ``stochastic`` may be None until ``bind``.
    @property
    def elementwise(self) -> bool: ...
    @property
    def stochastic(self) -> bool | None: ...
    @property
    def fields(self) -> tuple[str, ...] | None: ...
    @property
    def record(self) -> type[MomentRecord] | None: ...
    @property
    def seed(self) -> int: ...

    def bind(self, role: Role) -> "MomentFormat[StoredT]":
        """This format for the moment ``role`` (m: "mu"; v: "nu"; AMSGrad's maximum:
        "nu_max"). Fills in role-dependent defaults (e.g. signed codes for m), and
        raises ValueError for a setting that cannot store that moment, naming the
        user's argument (``protocol.ARGUMENTS[role]``). Called once, at construction."""
        ...

    def init(self, param: jax.Array, packed: BucketMembers | None = None) -> StoredT:
        """The stored zero moment of a parameter leaf.

        ``packed``: for a bucket of packed leaves, ``((path, size), ...)`` of the
        leaves in it; a format that is not elementwise stores it exactly as the
        per-leaf run stores each of those leaves, or raises ValueError saying how to
        keep them out of the buckets. A parameter the format cannot store (complex,
        say) raises TypeError; the stage adds the argument and the leaf's path.
        """
        ...

    def decode(self, stored: StoredT, like: jax.Array) -> jax.Array:
        """The moment as an array shaped like ``like`` (the gradient), to update in."""
        ...

    def encode(self, value: jax.Array, stored: StoredT, key: jax.Array | None) -> StoredT:
        """``value`` in the layout and dtypes of ``stored`` (never changing them);
        ``key``: this leaf's typed PRNG key if ``stochastic``, else None."""
        ...

    def describe(self) -> str:
        """The static configuration as one line (the seed excluded): recorded in the
        state of a record format, followed by the format's ``version`` if it has one (an
        int class attribute, bumped when the stored layout changes: ``versions.py``),
        compared at every update, shown in errors."""
        ...

    def partition_specs(
        self, spec: tuple, shape: tuple[int, ...], axis_sizes: dict[str, int] | None = None
    ) -> tuple:
        """How a leaf's stored arrays shard, given its parameter's ``PartitionSpec``
        entries ``spec`` and ``shape``: one spec tuple (``fields is None``) or a tuple
        with one per field (None: no such array). ``axis_sizes`` (``mesh.shape``), if
        given, lets the format refuse a layout it cannot follow (ValueError)."""
        ...


def format_gaps(obj: object) -> list[str] | None:
    """For messages: None if ``obj`` has none of the ``MomentFormat`` methods (it is no
    attempt at a format), else the members it lacks. A format is identified by
    ``isinstance(obj, MomentFormat)``; this only says what an incomplete one misses."""
    members = {n: v for n, v in vars(MomentFormat).items() if not n.startswith("_")}
    methods = [n for n, v in members.items() if callable(v)]
    if not any(callable(getattr(obj, n, None)) for n in methods):
        return None
    lacking = [n for n in methods if not callable(getattr(obj, n, None))]
    attributes = [n for n, v in members.items() if isinstance(v, property)]
    return [n for n in attributes if not hasattr(obj, n)] + lacking
