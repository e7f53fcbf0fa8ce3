"""``blockwise(bits, ...)``, ``blockwise_8bit(...)``, ``blockwise_4bit(...)``: the user's
constructors of the blockwise format, and their checks."""

from .._validation import check_choice, check_flag, check_power_of_two, check_seed, check_size
from .blockwise import Blockwise8bit
from .qmaps import is_float_map, resolve_qmap


def blockwise_8bit(
    signed: bool | None = None,
    *,
    block_size: int = 256,
    min_size: int = 4096,
    qmap: str = "float",
    sqrt: bool = False,
    stochastic: bool | None = None,
    seed: int = 0,
) -> Blockwise8bit:
    r"""A moment format of 8-bit codes with one scale per block (about 1 byte/param).

    .. math::
        \tilde x_i = q_{c_i} \, s_b, \qquad c_i = \operatorname{round}_q(x_i / s_b)

    The default ``qmap="float"`` is a small float: for y = x/s in [-1, 1] the code
    keeps the float32 bits of :math:`|y|` rounded to M fraction bits (E4M3 plus a sign
    for m; E4M4 for v), 1.0 being the top code:

    .. math::
        q = (1 + f / 2^M)\, 2^{-e}, \quad f < 2^M, \qquad
        |\tilde y - y| \le 2^{-M-1} |y| \ \ (y \ge q_{\min}), \qquad
        s_b = 2^{\lfloor \log_2 \max_{i \in b} |x_i| \rfloor + 1}

    so encoding and decoding are a few integer operations (a shift, an add, a bit
    cast), and the power-of-two block scale makes x/s exact. ``"dynamic"``
    (Dettmers' dynamic tree, values down to 1e-7 of the block's absmax) and
    ``"linear"`` keep the absmax scale and nearest rounding; ``"e<E>m<M>"`` picks
    another float split.

    The format follows the moment it stores: passed as ``mu_dtype`` it is signed
    (m), as ``nu_dtype`` unsigned (v, and AMSGrad's maximum); an explicit
    ``signed`` that contradicts the moment is refused. Stochastic rounding
    (``stochastic``; float maps only) rounds to one of the two neighbouring map
    values with probabilities that make it unbiased, E[x̃] = x. It matters for v:
    β2 = 0.999 moves v by 0.1% per step, far below half a code step, so rounded to
    nearest v would freeze (as a bfloat16 v does); and for m: rounded to nearest,
    a steady m sits up to half a step (6%) off its target for good. The default
    (None) rounds both stochastically on float maps. The state keeps one 8-byte key
    per moment, split at every step; every leaf and moment gets its own noise.

    Blocks are ``block_size`` consecutive elements of the last axis (the whole
    axis if shorter; a ragged last block is zero-padded), so the codes have the
    parameter's leading axes and a block never crosses a shard boundary.
    Parameters with fewer than ``min_size`` elements keep a float32 moment, as
    bitsandbytes does. A NaN element decodes as NaN on its own and +inf in v (an
    overflowed g²) as +inf; the rest of the block keeps a scale taken over the
    finite values.

    Args:
      signed: None (default: follow the moment), True (m) or False (v).
      block_size: elements per block, a power of two (default 256).
      min_size: parameters smaller than this stay float32 (default 4096).
      qmap: the 8-bit map: ``"float"`` (E4M3 signed, E4M4 unsigned), a float
        split ``"e<E>m<M>"`` (E + M = 7 signed, 8 unsigned), ``"dynamic"``
        (dynamic tree, Dettmers et al.) or ``"linear"``.
      sqrt: store sqrt(x) instead of x (the second moment only): halves the dynamic
        range the map must cover, and rounding errors land on sqrt(v), which is what
        Adam divides by.
      stochastic: round stochastically (True), to nearest (False), or None:
        stochastically on float maps, to nearest on the others.
      seed: seed of the stochastic-rounding key.

    Returns:
      A ``Blockwise8bit`` format for ``mu_dtype`` / ``nu_dtype``.

    Example:
      >>> import adamx
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.blockwise_8bit(), nu_dtype=adamx.blockwise_8bit())

    References:
      Dettmers et al., "8-bit Optimizers via Block-wise Quantization", arXiv:2110.02861;
      Micikevicius et al., "FP8 Formats for Deep Learning", arXiv:2209.05433;
      Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537.
    """
    check_flag("sqrt", sqrt)  # None is blockwise(4)'s default, not an 8-bit one
    return blockwise(
        8,
        signed,
        block_size=block_size,
        min_size=min_size,
        qmap=qmap,
        sqrt=sqrt,
        stochastic=stochastic,
        seed=seed,
    )


def _check_options(
    bits: int,
    signed: bool | None,
    block_size: object,
    min_size: object,
    qmap: object,
    sqrt: object,
    stochastic: object,
    seed: object,
) -> None:
    """Each argument of ``blockwise`` alone, then the pairs that contradict each other."""
    check_flag("signed", signed, optional=True)
    check_power_of_two(
        "block_size",
        block_size,
        examples="(such as 64, 256 or 2048)",
        why="Blocks are cut along the last axis; a power of two divides the per-device length "
        "of a sharded axis, so blocks never straddle devices.",
    )
    check_size("min_size", min_size, minimum=0, what="elements")
    _check_qmap(qmap, signed, bits)
    check_flag("sqrt", sqrt, optional=True)
    if sqrt and signed:
        raise ValueError(
            "sqrt=True stores the root of a non-negative moment and needs signed=False "
            "(the second moment v); the first moment m is signed."
        )
    check_flag("stochastic", stochastic, optional=True)
    if stochastic and not is_float_map(qmap):
        raise ValueError(
            f'stochastic=True rounds on a float map\'s bit pattern and needs qmap="float" '
            f'(or "e<E>m<M>"), got qmap={qmap!r}.'
        )
    check_seed("seed", seed)


def _check_qmap(qmap: object, signed: bool | None, bits: int) -> None:
    """``qmap`` must name a map for ``signed``; unbound (None), for one of the two moments
    (it is checked again when bound)."""
    if signed is not None:
        resolve_qmap(qmap, signed, bits)
        return
    try:
        resolve_qmap(qmap, True, bits)
    except ValueError:
        resolve_qmap(qmap, False, bits)


def blockwise(
    bits: int = 8,
    signed: bool | None = None,
    *,
    block_size: int | None = None,
    min_size: int = 4096,
    qmap: str = "float",
    sqrt: bool | None = None,
    stochastic: bool | None = None,
    seed: int = 0,
) -> Blockwise8bit:
    r"""A moment format of ``bits``-bit codes (8 or 4) with one float32 scale per block.

    ``bits=8`` is :func:`blockwise_8bit` (block 256 by default, about 1 byte/param);
    ``bits=4`` stores two codes a byte (block 128 by default, as torchao's 4-bit
    AdamW: 0.5 + 4/128 = 0.53 bytes/param). A 4-bit map has 16 codes: signed, 0, ±7
    values and NaN; unsigned, 0, 13 values, +inf and NaN (the 8-bit maps' NaN/+inf
    isolation holds). On float maps the 4-bit block scale is the block's largest
    finite :math:`|x|` (8 bits: the power of two above it), so 1.0 is used; from the
    smallest value q_min up, the error is at most half a step, :math:`2^{-(M+1)} |x|`.

    The defaults were measured (``benchmarks/maps_4bit.py``, results in
    ``benchmarks/results/maps_4bit.json``: Adam's moments of the digits MLP, and its
    final train loss vs fp32 on 4 paired seeds, cosine / constant learning rate):

    - m: ``"e3m0"``, the powers of two ±2^-k s, k = 0..6, rounded stochastically.
      With 7 magnitudes, range beats resolution: a real m block spans decades, and
      E3M0 keeps elements down to s/64, where E2M1 (s/8 and up) sets over 10% of the
      elements whose step matters to 0 or q_min (p90 relative error 51% vs 100%).
      Trained: +1.4% / +6.4% (E2M1 +6.8% / +14%; Dettmers' dynamic map, torchao's
      m map, +22-38%; linear +38%; any float map rounded to nearest +21-35%: m
      freezes).
    - v: sqrt(v) on ``"e3m1"`` (``sqrt=None`` means True for v at 4 bits), rounded
      stochastically: 13 values (1 and 1.5) 2^-k, k = 0..6, of the block's
      sqrt(v), so v keeps 12 binades and the error lands on sqrt(v), which Adam
      divides by. Trained: -4.8% / -5.1% (E3M1 on v itself +11% / +4.5%; linear,
      torchao's v map, +5-10%; E2M2 +57%). Maps that round v down (nearest, the
      dynamic map) train to a lower loss than fp32 (-13% to -43%): a larger
      effective step, not a faithful one.
    - Stochastic rounding is unbiased at 4 bits below q_min too (x rounds to q_min
      with probability x / q_min, else to 0).

    Both moments in 4 bits: -3.0% / +2.6% of fp32's loss (torchao's pair: +26% /
    +28%; 8 bits: +0.7% / +1.0%).

    Everything else is as for :func:`blockwise_8bit` (the formula, the float maps'
    integer encoding, stochastic rounding, NaN/+inf isolation, blocks along the last
    axis, ``min_size``, ``sqrt``, sharding, checkpoints). ``describe()`` of a 4-bit
    format, ``blockwise(bits=4, signed=..., ...)``, is a different checkpoint key from
    any 8-bit one, so a state saved with one is refused by the other.

    Args:
      bits: 8 or 4 (bits per code).
      signed: None (default: follow the moment), True (m) or False (v).
      block_size: elements per block, a power of two; None: 256 (8 bits), 128 (4 bits).
      min_size: parameters smaller than this stay float32 (default 4096).
      qmap: ``"float"`` (8 bits: E4M3 / E4M4; 4 bits: E3M0 / E3M1), a float split
        ``"e<E>m<M>"`` (E + M = bits - 1 signed, bits unsigned), ``"dynamic"`` or
        ``"linear"``.
      sqrt: store sqrt(x) instead of x (the second moment only); None (default):
        True for the second moment at 4 bits, False otherwise.
      stochastic: round stochastically (True), to nearest (False), or None:
        stochastically on float maps, to nearest on the others.
      seed: seed of the stochastic-rounding key.

    Returns:
      A ``Blockwise8bit`` format (its ``bits`` field says which) for ``mu_dtype`` /
      ``nu_dtype``.

    Example:
      >>> import adamx
      >>> tx = adamx.adam(1e-3, mu_dtype=adamx.blockwise(4), nu_dtype=adamx.blockwise(4))
    """
    check_choice("bits", bits, (8, 4), "Codes are 8 bits (a byte) or 4 bits (two a byte).")
    bits = int(bits)
    block_size = (256 if bits == 8 else 128) if block_size is None else block_size
    sqrt = False if bits == 8 and sqrt is None else sqrt
    _check_options(bits, signed, block_size, min_size, qmap, sqrt, stochastic, seed)
    fmt = Blockwise8bit(signed, block_size, min_size, qmap, sqrt, stochastic, seed, bits)
    return fmt if signed is None else fmt.bind("mu" if signed else "nu")


def blockwise_4bit(
    signed: bool | None = None,
    *,
    block_size: int = 128,
    min_size: int = 4096,
    qmap: str = "float",
    sqrt: bool | None = None,
    stochastic: bool | None = None,
    seed: int = 0,
) -> Blockwise8bit:
    """``blockwise(bits=4, ...)``: 4-bit codes, two a byte, block 128 (about 0.53 byte/param);
    m on E3M0, v as sqrt(v) on E3M1, both rounded stochastically (see :func:`blockwise`).

    Example:
      >>> import adamx
      >>> tx = adamx.adamw(1e-3, mu_dtype=adamx.blockwise_4bit(), nu_dtype=adamx.blockwise_4bit())
    """
    return blockwise(
        4,
        signed,
        block_size=block_size,
        min_size=min_size,
        qmap=qmap,
        sqrt=sqrt,
        stochastic=stochastic,
        seed=seed,
    )
