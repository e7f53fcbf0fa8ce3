"""The path a mask sees: ``jax.tree_util.keystr(path, simple=True, separator="/")``.

``path_mask`` and ``exclude_paths`` match against these strings, so their spelling is
API: dict keys, sequence indices, attribute names (NamedTuple, dataclass, flax nnx
Variables' ``value``) and the positional keys of pytrees registered without keys.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import adamx
from adamx._masks import path_to_str


class Pair(NamedTuple):
    a: jax.Array
    b: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w"], meta_fields=[])
@dataclasses.dataclass
class Holder:
    w: jax.Array


class Positional:
    """A pytree registered without keys: its children get ``FlattenedIndexKey``."""

    def __init__(self, x, y):
        self.x, self.y = x, y


jax.tree_util.register_pytree_node(
    Positional, lambda p: ((p.x, p.y), None), lambda _, c: Positional(*c)
)


def _paths(tree) -> list[str]:
    return [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.mark.parametrize(
    "tree, expected",
    [
        (
            {"enc": {"layers": [{"bias": 1}, (2, 3)]}},
            ["enc/layers/0/bias", "enc/layers/1/0", "enc/layers/1/1"],
        ),
        ({0: {1: 2}}, ["0/1"]),
        (Pair(1, 2), ["a", "b"]),
        (Holder(1), ["w"]),
        (Positional(1, 2), ["0", "1"]),
        ({"p": [Pair(1, 2)]}, ["p/0/a", "p/0/b"]),
    ],
    ids=["dict-list-tuple", "int-keys", "namedtuple", "dataclass", "flattened-index", "nested"],
)
def test_path_strings(tree, expected):
    assert _paths(tree) == expected


def test_flax_nnx_paths():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs), nnx.LayerNorm(3, rngs=rngs)])

    state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
    assert _paths(state) == [
        "layers/0/bias/value",
        "layers/0/kernel/value",
        "layers/1/bias/value",
        "layers/1/scale/value",
    ]
    mask = adamx.exclude_paths(r"bias", r"^layers/1/")(state)
    assert jax.tree.leaves(mask) == [False, True, False, False]


def test_a_predicate_reads_the_path_and_the_leaf():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    mask = adamx.path_mask(lambda path, x: path.startswith("dense/") and x.ndim > 1)(params)
    assert mask == {"dense": {"kernel": True, "bias": False}}
