r"""NumPy references of Adam on row-sparse gradients, and the batch streams that feed them.

Written from the maths (not from adamx's code), in float64 unless a ``dtype`` asks for
another. One step ``t`` (the global step, counted by every batch, empty or not) of a table
:math:`\theta` with moments :math:`m, v` and the dense gradient :math:`g` of a batch, whose
touched rows :math:`R` are the distinct indices in range (duplicates summed, padding
dropped):

.. math::
    d &= \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \hat\varepsilon_t}, \qquad
    \hat\varepsilon_t = \begin{cases} \varepsilon & \text{optax (ε outside the root of v̂)} \\
        \varepsilon / \sqrt{1-\beta_2^t} & \text{ε̂ (torch SparseAdam, TF, Keras)}\end{cases}\\
    \theta &\leftarrow \theta - \alpha (d + \lambda\theta) \qquad
    \text{(λ: AdamW's decoupled decay; 0 for Adam)}

with the semantics

* ``lazy`` (torch ``SparseAdam``, TF-Addons ``LazyAdam``): only the rows in R change,
  :math:`m_R \leftarrow \beta_1 m_R + (1-\beta_1) g_R`, :math:`v_R \leftarrow \beta_2 v_R +
  (1-\beta_2) g_R^2`, then :math:`\theta_R` moves (the decay too touches only R);
* ``dense_equivalent`` (TF's non-lazy ``_resource_apply_sparse``: ``m.assign(β1 m)`` then
  ``scatter_add(m, indices, (1-β1) g)``): every row's moments decay, the rows in R add their
  gradient, and every row of :math:`\theta` moves: dense Adam on the densified gradient;
* ``catch_up``: lazy, but a row untouched for k steps first has its moments decayed by
  :math:`\beta_1^k, \beta_2^k` when next touched (so its m, v equal dense Adam's there);
  :math:`\theta` is not caught up.

torch's SparseAdam writes ε after the root of the *uncorrected* v (``step_size =
lr·sqrt(1-β2^t)/(1-β1^t)``, ``θ -= step_size·m/(sqrt(v)+ε)``): that is the ε̂ form above,
``epsilon_hat=True``. TF's sparse apply and LazyAdam do the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SEMANTICS = ("lazy", "dense_equivalent", "catch_up")


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Adam's hyperparameters; ``weight_decay`` is AdamW's decoupled λ (0: Adam)."""

    lr: float = 1e-2
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    epsilon_hat: bool = False


@dataclasses.dataclass(frozen=True)
class Batch:
    """One step's lookups: ``ids`` int32 ``(size,)`` (``num_rows`` = padding), ``values``
    ``(size, dim)`` float64 (padding entries carry nonzero values that must not count)."""

    ids: np.ndarray
    values: np.ndarray

    def real(self, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The entries that are not padding, in their order (what torch is given)."""
        keep = (self.ids >= 0) & (self.ids < num_rows)
        return self.ids[keep], self.values[keep]


def zipf_probabilities(num_rows: int, a: float = 1.1, seed: int = 0) -> np.ndarray:
    """Row probabilities :math:`\\propto 1/k^a` by popularity rank k, the ranks scattered over
    the table by a fixed permutation (the popular rows are not all at the top)."""
    p = 1.0 / np.arange(1, num_rows + 1) ** a
    return (p / p.sum())[np.random.default_rng(seed).permutation(num_rows)]


def zipf_stream(
    num_rows: int,
    dim: int,
    steps: int,
    size: int,
    *,
    seed: int = 0,
    a: float = 1.1,
    empty_every: int = 37,
    pad: bool = True,
) -> list[Batch]:
    """``steps`` batches of ``size`` static entries: Zipf ids (so duplicates in a batch), a
    varying number of real entries, the rest padding (index ``num_rows``) at random places,
    every ``empty_every``-th batch all padding (``pad=False``: every entry real, empty
    batches still empty). Values normal, of a scale drawn per step over three decades."""
    rng = np.random.default_rng(seed)
    probs = zipf_probabilities(num_rows, a, seed + 1)
    batches = []
    for step in range(steps):
        n = rng.integers(1, size + 1) if pad else size
        if step % empty_every == empty_every // 2:
            n = 0
        ids = np.full(size, num_rows, np.int32)
        ids[:n] = rng.choice(num_rows, size=n, p=probs)
        ids = ids[rng.permutation(size)]
        scale = 10.0 ** rng.uniform(-2.0, 1.0)
        values = scale * rng.normal(size=(size, dim))
        if n == 0 and not pad:
            ids, values = ids[:0], values[:0]
        batches.append(Batch(ids, values))
    return batches


def full_stream(num_rows: int, dim: int, steps: int, *, seed: int = 0) -> list[Batch]:
    """Batches that touch every row every step (a shuffled permutation plus duplicates)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        ids = np.concatenate([rng.permutation(num_rows), rng.integers(0, num_rows, 7)])
        batches.append(Batch(ids.astype(np.int32), rng.normal(size=(ids.size, dim))))
    return batches


def densify(batch: Batch, num_rows: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The table-sized gradient (duplicates summed, padding dropped) and the touched rows."""
    ids, values = batch.real(num_rows)
    g = np.zeros((num_rows, *batch.values.shape[1:]), dtype)
    np.add.at(g, ids, values.astype(dtype))
    touched = np.zeros(num_rows, bool)
    touched[ids] = True
    return g, touched


@dataclasses.dataclass
class AdamRef:
    """The state of the reference for one leaf: θ, m, v, and the step each row last moved
    (catch-up's k). ``t`` is the global step."""

    theta: np.ndarray
    m: np.ndarray
    v: np.ndarray
    last: np.ndarray
    t: int = 0

    @classmethod
    def start(cls, theta, dtype=np.float64) -> AdamRef:
        theta = np.array(theta, dtype)
        zeros = np.zeros_like(theta)
        return cls(theta, zeros, zeros.copy(), np.zeros(theta.shape[0], np.int64))


def adam_step(ref: AdamRef, g: np.ndarray, touched: np.ndarray, hp: Hyper, semantics: str):
    """One step of the reference, in place: see the module docstring. ``touched`` is a
    boolean per row (a dense leaf: all True)."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}.")
    dt = ref.theta.dtype.type
    ref.t += 1
    t = ref.t
    rows = np.ones_like(touched) if semantics == "dense_equivalent" else touched
    if semantics == "catch_up":
        k = (t - 1 - ref.last)[rows].reshape(-1, *(1,) * (g.ndim - 1))
        ref.m[rows] *= dt(hp.b1) ** k.astype(ref.m.dtype)
        ref.v[rows] *= dt(hp.b2) ** k.astype(ref.v.dtype)
    ref.last[rows] = t
    # In a float32 run, 1 - β is formed from the Python β and then rounded (as optax and
    # torch do), β^t from the rounded β: the EMA and its bias correction then disagree by
    # float32(β2)'s error, ~1e-5 of v̂ (optax's float32 program has the same mismatch).
    b1, b2 = dt(hp.b1), dt(hp.b2)
    ref.m[rows] = b1 * ref.m[rows] + dt(1 - hp.b1) * g[rows]
    ref.v[rows] = b2 * ref.v[rows] + dt(1 - hp.b2) * g[rows] * g[rows]
    c1, c2 = dt(1) - b1 ** dt(t), dt(1) - b2 ** dt(t)
    eps = dt(hp.eps) / np.sqrt(c2) if hp.epsilon_hat else dt(hp.eps)
    direction = (ref.m[rows] / c1) / (np.sqrt(ref.v[rows] / c2) + eps)
    theta = ref.theta[rows]
    ref.theta[rows] = theta - dt(hp.lr) * (direction + dt(hp.weight_decay) * theta)


def torch_sparse_adam_step(ref: AdamRef, g: np.ndarray, touched: np.ndarray, hp: Hyper):
    """One step of ``torch.optim.SparseAdam`` as torch writes it (``torch/optim/_functional.py``,
    torch 2.13), in place: ``m += (1-β1)(g-m)``, ``v += (1-β2)(g²-v)`` at the touched rows,
    ``θ -= lr·sqrt(1-β2^t)/(1-β1^t) · m/(sqrt(v)+ε)``; a batch with no entries only counts."""
    dt = ref.theta.dtype.type
    ref.t += 1
    if not touched.any():
        return
    b1, b2 = dt(hp.b1), dt(hp.b2)
    gr = g[touched]
    ref.m[touched] += (gr - ref.m[touched]) * (dt(1) - b1)
    ref.v[touched] += (gr * gr - ref.v[touched]) * (dt(1) - b2)
    step_size = hp.lr * np.sqrt(1 - hp.b2**ref.t) / (1 - hp.b1**ref.t)  # Python floats
    denom = np.sqrt(ref.v[touched]) + dt(hp.eps)
    ref.theta[touched] += dt(-step_size) * (ref.m[touched] / denom)


def tf_adam_sparse_step(ref: AdamRef, batch: Batch, hp: Hyper, *, lazy: bool) -> None:
    """One step of TensorFlow's Adam on ``IndexedSlices`` as TF writes it, in place:
    duplicates summed first (``_deduplicate_indexed_slices``), ``lr_t = lr·sqrt(1-β2^t)/
    (1-β1^t)`` (Python floats), then

    * ``lazy=False``, ``OptimizerV2.Adam._resource_apply_sparse``: ``m.assign(m·β1)``,
      ``scatter_add(m, i, g·(1-β1))`` (v alike with g²), ``θ -= lr_t·m/(sqrt(v)+ε)`` on
      every row;
    * ``lazy=True``, TF-Addons ``LazyAdam._resource_apply_sparse``: ``m_i = β1·m[i] +
      (1-β1)·g``, ``v_i`` alike, ``θ[i] -= lr_t·m_i/(sqrt(v_i)+ε)`` at the rows i only.

    Adam only (no weight decay): TF's decoupled decays differ from library to library."""
    num_rows = ref.theta.shape[0]
    ids, values = batch.real(num_rows)
    rows, inverse = np.unique(ids, return_inverse=True)
    g = np.zeros((rows.size, *values.shape[1:]), ref.theta.dtype)
    np.add.at(g, inverse, values)
    ref.t += 1
    lr_t = hp.lr * np.sqrt(1 - hp.b2**ref.t) / (1 - hp.b1**ref.t)
    if lazy:
        ref.m[rows] = hp.b1 * ref.m[rows] + (1 - hp.b1) * g
        ref.v[rows] = hp.b2 * ref.v[rows] + (1 - hp.b2) * np.square(g)
        ref.theta[rows] -= lr_t * ref.m[rows] / (np.sqrt(ref.v[rows]) + hp.eps)
        return
    ref.m *= hp.b1
    ref.m[rows] += g * (1 - hp.b1)
    ref.v *= hp.b2
    ref.v[rows] += (g * g) * (1 - hp.b2)
    ref.theta -= lr_t * ref.m / (np.sqrt(ref.v) + hp.eps)


def run_reference(
    theta0: np.ndarray,
    batches: list[Batch],
    hp: Hyper,
    semantics: str = "lazy",
    *,
    dtype=np.float64,
    dense0: np.ndarray | None = None,
    dense_grads: list[np.ndarray] | None = None,
) -> tuple[AdamRef, AdamRef | None]:
    """The table (and, with ``dense0``/``dense_grads``, a dense leaf stepped alongside it
    as plain Adam/AdamW) after every batch of ``batches``."""
    num_rows = theta0.shape[0]
    table = AdamRef.start(theta0, dtype)
    dense = None if dense0 is None else AdamRef.start(dense0, dtype)
    for i, batch in enumerate(batches):
        g, touched = densify(batch, num_rows, dtype)
        adam_step(table, g, touched, hp, semantics)
        if dense is not None:
            gd = np.asarray(dense_grads[i], dtype)
            adam_step(dense, gd, np.ones(gd.shape[0], bool), hp, "lazy")
    return table, dense
