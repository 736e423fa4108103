"""Symmetric codebook weights (SYQ, Faraone et al., CVPR 2018) and their integer decoder.

The torch reading of docs/codebooks.md §3–§5; section numbers (§) below are that page's.
A weight is an ``nn.Linear`` (``out×in``) or ``nn.Conv2d`` (``out×in×kh×kw``) weight. Each
subgroup (§3) owns a symmetric codebook ``{±c_1, ..., ±c_m}`` (plus 0 with a zero code),
held in training as float *magnitudes* of shape ``(*subgroup_shape, m)`` and in hardware
as a fixed-point table (§4). Codes, tables and decoded weights are int64.
"""

import copy
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from olmac.spec import ACT_BITS, CODEBOOK_ENTRY_BITS, CODEBOOK_IDX_BITS, check_int
from .fake_quant import dequantize, fake_quantize, to_int_round_half_even
from .formats import check_in_format
from .integer import gemm
from .mmse import max_abs_scale

__all__ = [
    "GRANULARITIES", "DEFAULT_ETA", "FRAC_BITS",
    "KMEANS_ITERATIONS", "subgroup_shape", "ternary_threshold", "codebook_size",
    "init_codebook", "program_zero_code", "syq_quantize", "pack_codes", "unpack_codes", "SyqCodes", "encode",
    "decode_to_int", "syq_gemm", "ActivationQuantizer", "SyqLinear", "syq_model",
    "freeze",
]

#: Subgroups sharing one codebook (§3).
GRANULARITIES = ("layer", "row", "pixel")
#: The ternary threshold factor η of ``Δ = η·max|W|`` (SYQ's default).
DEFAULT_ETA = 0.05
#: Allowed fraction widths of the table entries (§4).
FRAC_BITS = (0, 31)
#: Lloyd iterations of the k-means codebook initialization (§5).
KMEANS_ITERATIONS = 20


def subgroup_shape(weight_shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """The shape of one scalar per subgroup, broadcastable against the weight (§3).

    ``layer``: all ones; ``row``: ``(out, 1, ...)``; ``pixel``: ``(1, 1, kh, kw)`` for a
    convolution weight, and ``row`` for a 2-D (``nn.Linear``) weight, whose only "pixel"
    is its single tap.

    >>> subgroup_shape((8, 3, 3, 3), "pixel"), subgroup_shape((8, 16), "pixel")
    ((1, 1, 3, 3), (8, 1))

    Raises
    ------
    ValueError
        If ``granularity`` is not one of ``GRANULARITIES`` or the weight is not 2-D or 4-D.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of 'layer', 'row', 'pixel', not "
                         f"{granularity!r}")
    if len(weight_shape) not in (2, 4):
        raise ValueError(f"weight must be 2-D (out×in) or 4-D (out×in×kh×kw), not "
                         f"{len(weight_shape)}-D")
    if granularity == "layer":
        return (1,) * len(weight_shape)
    if granularity == "pixel" and len(weight_shape) == 4:
        return (1, 1) + tuple(weight_shape[2:])
    return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)


def _by_subgroup(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``x`` as rows ``(G, n)``, one row per subgroup, in the row-major order of ``shape``."""
    grouped = [d for d, size in enumerate(shape) if size != 1]
    shared = [d for d, size in enumerate(shape) if size == 1]
    return x.permute(grouped + shared).reshape(prod(shape), -1)


def ternary_threshold(weight: torch.Tensor, eta: float = DEFAULT_ETA) -> torch.Tensor:
    """``Δ = η·max|W|`` over the whole layer (§3); a weight with ``|w| ≤ Δ`` codes as 0.

    >>> ternary_threshold(torch.tensor([[0.4, -2.0]]))
    tensor(0.1000)

    Raises
    ------
    TypeError
        If ``eta`` is not a real number.
    ValueError
        If ``eta`` is outside ``[0, 1)``.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"eta must be a real number in [0, 1), not {eta!r}")
    if not 0 <= eta < 1:  # NaN fails this too
        raise ValueError(f"eta must be in [0, 1), not {eta!r}")
    return eta * weight.detach().abs().max()


def codebook_size(idx_bits: int, zero: bool) -> int:
    """``m``, the magnitudes per subgroup: ``2^idx_bits``, less the index 0 a zero code takes.

    Binary is ``codebook_size(0, False) == 1``, ternary ``codebook_size(1, True) == 1``.

    >>> codebook_size(0, False), codebook_size(1, True), codebook_size(2, True)
    (1, 1, 3)

    Raises
    ------
    TypeError
        If ``idx_bits`` is not an integer in 0..4.
    ValueError
        If a zero code is asked for with ``idx_bits = 0`` (it would leave no magnitude).
    """
    check_int("idx_bits", idx_bits, CODEBOOK_IDX_BITS)
    if zero and idx_bits == 0:
        raise ValueError("A zero code needs idx_bits >= 1, not 0")
    return (1 << idx_bits) - int(zero)


def program_zero_code(idx_bits: int) -> bool:
    """Whether an integer program's SYQ codebook of ``idx_bits`` has a zero code: binary
    codebooks (``idx_bits = 0``, ``{±c}``) have none, wider ones keep one (ternary
    ``{0, ±c}`` at ``idx_bits = 1``), as the SYQ paper's binary and ternary weights do
    (docs/program.md §9).

    >>> program_zero_code(0), program_zero_code(1)
    (False, True)
    """
    return idx_bits > 0


def _check_magnitudes(weight: torch.Tensor, magnitudes: torch.Tensor, zero: bool) -> int:
    """The ``idx_bits`` that ``magnitudes`` implies; raises if it fits no codebook."""
    shape = tuple(magnitudes.shape[:-1])
    if len(shape) != weight.dim() or any(g not in (1, w) for g, w in zip(shape, weight.shape)):
        raise ValueError(f"magnitudes must have shape (*subgroup_shape, m) for a weight of "
                         f"shape {tuple(weight.shape)}, not {tuple(magnitudes.shape)}")
    slots = magnitudes.shape[-1] + int(zero)
    idx_bits = slots.bit_length() - 1
    if magnitudes.shape[-1] < 1 or slots != 1 << idx_bits \
            or idx_bits > CODEBOOK_IDX_BITS[1]:
        entries = "2^idx_bits - 1" if zero else "2^idx_bits"
        raise ValueError(f"magnitudes has {magnitudes.shape[-1]} entries per subgroup; with "
                         f"zero={zero} it must have {entries} for idx_bits in "
                         f"{int(zero)}..{CODEBOOK_IDX_BITS[1]}")
    return idx_bits


def _nonzero(size: torch.Tensor, delta: torch.Tensor, zero: bool) -> torch.Tensor:
    """Which weights of magnitude ``size`` code nonzero (§3): all, or ``|w| > Δ``."""
    return size > delta if zero else torch.ones_like(size, dtype=torch.bool)


def _select(weight: torch.Tensor, magnitudes: torch.Tensor, zero: bool,
            eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sign, j, nonzero)`` of §3: ``j`` indexes ``magnitudes``, ties to the lower index."""
    delta = ternary_threshold(weight, eta)
    size = weight.detach().abs()
    j = (size[..., None] - magnitudes.detach().abs()).abs().argmin(dim=-1)
    nonzero = _nonzero(size, delta, zero)
    sign = ((weight.detach() < 0) & nonzero).to(torch.int64)
    return sign, j, nonzero


def init_codebook(weight: torch.Tensor, *, granularity: str, idx_bits: int, zero: bool,
                  eta: float = DEFAULT_ETA) -> torch.Tensor:
    """Magnitudes ``(*subgroup_shape, m)`` by 1-D k-means on ``|W|`` per subgroup (§5).

    Only weights that code nonzero (all, or ``|w| > Δ`` with a zero code) take part.
    Centres start evenly spaced, ``lo + (j + 1/2)·(hi - lo)/m`` between the least and
    greatest such ``|w|``, then ``KMEANS_ITERATIONS`` Lloyd steps move each centre to
    the mean of its nearest weights (a centre with none stays). With ``m = 1`` this is
    ``mean |w|``, the least-squares ``α`` of binary and ternary weights.

    >>> init_codebook(torch.tensor([[0.5, -0.1, 0.002], [0.2, 0.2, -0.6]]),
    ...               granularity="row", idx_bits=1, zero=True)
    tensor([[[0.3000]],
    <BLANKLINE>
            [[0.3333]]])

    Raises
    ------
    TypeError, ValueError
        As ``subgroup_shape``, ``codebook_size`` and ``ternary_threshold``.
    """
    shape = subgroup_shape(tuple(weight.shape), granularity)
    size = codebook_size(idx_bits, zero)
    delta = ternary_threshold(weight, eta)
    rows = _by_subgroup(weight.detach().abs(), shape)
    used = _nonzero(rows, delta, zero)
    any_used = used.any(dim=1, keepdim=True)
    low = torch.where(any_used, torch.where(used, rows, torch.inf).amin(1, keepdim=True), 0)
    high = torch.where(used, rows, 0).amax(1, keepdim=True)
    centres = low + (torch.arange(size) + 0.5) / size * (high - low)
    for _ in range(KMEANS_ITERATIONS):
        nearest = (rows[..., None] - centres[:, None, :]).abs().argmin(dim=-1)
        members = (nearest[..., None] == torch.arange(size)) & used[..., None]
        count = members.sum(dim=1)
        total = (members * rows[..., None]).sum(dim=1)
        centres = torch.where(count > 0, total / count.clamp(min=1), centres)
    return centres.reshape(shape + (size,))


def syq_quantize(weight: torch.Tensor, magnitudes: torch.Tensor, *, zero: bool,
                 eta: float = DEFAULT_ETA) -> torch.Tensor:
    """SYQ's quantized weight, with straight-through gradients (§3, §5).

    ``Q(w) = (-1)^[w<0] · |c_g[j]|`` with ``j = argmin_j ||w| - |c_g[j]||`` in the
    codebook of ``w``'s subgroup ``g``, and ``Q(w) = 0`` where a zero code exists and
    ``|w| ≤ Δ = η·max|W|``. Backward: ``∂Q/∂w = 1`` (straight through) and
    ``∂Q/∂c_g[j] = ±1`` for every weight coded ``±c_g[j]``, so each magnitude learns
    from the weights it stands for.

    >>> w = torch.tensor([[0.5, -0.01, -0.3, 0.2]], requires_grad=True)
    >>> alpha = torch.tensor([[[0.4]]], requires_grad=True)
    >>> q = syq_quantize(w, alpha, zero=True)
    >>> q.sum().backward()
    >>> q.detach()
    tensor([[ 0.4000,  0.0000, -0.4000,  0.4000]])
    >>> w.grad, alpha.grad
    (tensor([[1., 1., 1., 1.]]), tensor([[[1.]]]))

    Raises
    ------
    ValueError
        If ``magnitudes`` fits no codebook for ``weight`` and ``zero``, or as
        ``ternary_threshold``.
    """
    _check_magnitudes(weight, magnitudes, zero)
    sign, j, nonzero = _select(weight, magnitudes, zero, eta)
    table = magnitudes.abs().expand(*weight.shape, magnitudes.shape[-1])
    size = table.gather(-1, j[..., None]).squeeze(-1)
    value = torch.where(nonzero, (1 - 2 * sign) * size, 0)
    return value + (weight - weight.detach())


def pack_codes(sign: torch.Tensor, index: torch.Tensor, idx_bits: int) -> torch.Tensor:
    """``code = (sign << idx_bits) | index`` (§4).

    >>> pack_codes(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]), 1)
    tensor([1, 3, 2])

    Raises
    ------
    TypeError
        If ``idx_bits`` is not an integer in 0..4 or a tensor is not integer.
    ValueError
        If a sign is not 0 or 1, or an index is outside ``u<idx_bits>``.
    """
    check_int("idx_bits", idx_bits, CODEBOOK_IDX_BITS)
    check_in_format("sign", sign, 1, signed=False)
    check_in_format("index", index, idx_bits, signed=False)
    return (sign.to(torch.int64) << idx_bits) | index.to(torch.int64)


def unpack_codes(codes: torch.Tensor, idx_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sign, index) = (code >> idx_bits, code & (2^idx_bits - 1))`` (§4).

    >>> unpack_codes(torch.tensor([1, 3, 2]), 1)
    (tensor([0, 1, 1]), tensor([1, 1, 0]))

    Raises
    ------
    TypeError
        If ``idx_bits`` is not an integer in 0..4 or ``codes`` is not integer.
    ValueError
        If a code is outside ``u<idx_bits + 1>``.
    """
    check_int("idx_bits", idx_bits, CODEBOOK_IDX_BITS)
    codes = check_in_format("codes", codes, idx_bits + 1, signed=False).to(torch.int64)
    return codes >> idx_bits, codes & ((1 << idx_bits) - 1)


@dataclass(frozen=True, eq=False)
class SyqCodes:
    """A layer's SYQ weights as hardware holds them (§4).

    ``codes`` (the weight's shape) in ``u<idx_bits + 1>``; ``tables``
    (``*subgroup_shape × 2^idx_bits``) in ``u<entry_bits>``, entry ``k`` of a subgroup
    being ``round_half_even(c·2^frac_bits)`` and entry 0 being 0 when there is a zero code.
    The weight a code stands for is ``decode_to_int(...) · 2^(-frac_bits)``.
    """
    codes: torch.Tensor
    tables: torch.Tensor
    idx_bits: int
    entry_bits: int
    frac_bits: int


def _fit_frac_bits(magnitudes: torch.Tensor, entry_bits: int) -> int:
    """The largest ``f`` in 0..31 with ``round_half_even(max c·2^f) ≤ 2^entry_bits - 1``."""
    peak = magnitudes.abs().max().to(torch.float64)
    top = (1 << entry_bits) - 1
    for frac_bits in range(FRAC_BITS[1], FRAC_BITS[0] - 1, -1):
        if torch.round(torch.ldexp(peak, torch.tensor(frac_bits))) <= top:
            return frac_bits
    raise ValueError(f"A codebook entry {peak.item()} does not fit u{entry_bits} with "
                     f"frac_bits >= 0")


def encode(weight: torch.Tensor, magnitudes: torch.Tensor, *, zero: bool,
           eta: float = DEFAULT_ETA, entry_bits: int,
           frac_bits: int | None = None) -> SyqCodes:
    """Codes and fixed-point tables of a learned codebook (§4).

    Each weight takes the sign and index ``syq_quantize`` gives it (index ``j + 1`` with a
    zero code, whose own code is 0); each magnitude becomes the table entry
    ``clamp(round_half_even(|c|·2^frac_bits), 0, 2^entry_bits - 1)``. Without
    ``frac_bits``, the largest in 0..31 that fits the largest magnitude is used.

    >>> e = encode(torch.tensor([[0.5, -0.01, -0.3]]), torch.tensor([[[0.4]]]), zero=True,
    ...            entry_bits=4)
    >>> e.codes, e.tables, e.frac_bits
    (tensor([[1, 0, 3]]), tensor([[[ 0, 13]]]), 5)

    Raises
    ------
    TypeError
        If ``entry_bits`` or ``frac_bits`` is not an integer in its range (1..7, 0..31).
    ValueError
        If ``magnitudes`` fits no codebook, or the largest magnitude does not fit at
        ``frac_bits = 0``; or as ``ternary_threshold``.
    """
    idx_bits = _check_magnitudes(weight, magnitudes, zero)
    check_int("entry_bits", entry_bits, CODEBOOK_ENTRY_BITS)
    if frac_bits is None:
        frac_bits = _fit_frac_bits(magnitudes, entry_bits)
    check_int("frac_bits", frac_bits, FRAC_BITS)
    sizes = magnitudes.detach().abs().to(torch.float64)
    entries = to_int_round_half_even(sizes, 2.0 ** -frac_bits, entry_bits, signed=False)
    if zero:
        entries = torch.cat([torch.zeros_like(entries[..., :1]), entries], dim=-1)
    sign, j, nonzero = _select(weight, magnitudes, zero, eta)
    index = torch.where(nonzero, j + int(zero), 0)
    return SyqCodes(pack_codes(sign, index, idx_bits), entries, idx_bits, entry_bits,
                    frac_bits)


def decode_to_int(codes: torch.Tensor, tables: torch.Tensor, *, idx_bits: int,
                  entry_bits: int) -> torch.Tensor:
    """The integer weights ``(-1)^sign · tables[g][index]`` (§4), in ``s<entry_bits + 1>``.

    ``g`` is the subgroup of each code: ``tables`` (``*subgroup_shape × 2^idx_bits``)
    broadcasts against ``codes``. The zero code decodes to ``tables[g][0] = 0`` whatever
    its sign.

    >>> decode_to_int(torch.tensor([[1, 3, 0, 2]]), torch.tensor([[[0, 13]]]), idx_bits=1,
    ...               entry_bits=4)
    tensor([[ 13, -13,   0,   0]])

    Raises
    ------
    TypeError
        If a width is out of range or a tensor is not integer.
    ValueError
        If a code or table entry is outside its format, or ``tables`` does not fit the
        codes' shape.
    """
    check_int("entry_bits", entry_bits, CODEBOOK_ENTRY_BITS)
    sign, index = unpack_codes(codes, idx_bits)
    check_in_format("tables", tables, entry_bits, signed=False)
    slots = 1 << idx_bits
    shape = tuple(tables.shape[:-1])
    if (tables.shape[-1] != slots or len(shape) != codes.dim()
            or any(t not in (1, c) for t, c in zip(shape, codes.shape))):
        raise ValueError(f"tables must have shape (*subgroup_shape, {slots}) for codes of "
                         f"shape {tuple(codes.shape)}, not {tuple(tables.shape)}")
    table = tables.to(torch.int64).expand(*codes.shape, slots)
    size = table.gather(-1, index[..., None]).squeeze(-1)
    return torch.where(sign == 1, -size, size)


def syq_gemm(acts: torch.Tensor, codes: torch.Tensor, tables: torch.Tensor, *,
             idx_bits: int, entry_bits: int, act_bits: int, act_signed: bool) -> torch.Tensor:
    """``acc = A · decode_to_int(codes)ᵀ`` exactly (§4 and docs/semantics.md §2), as int64.

    ``codes`` is a linear layer's ``N×K`` (``out×in``) code matrix; the decoded weights
    lie in ``s<entry_bits + 1>``, a §1 weight format, so this is ``golden.gemm``.

    >>> syq_gemm(torch.tensor([[2, 1]]), torch.tensor([[1, 3], [0, 1]]),
    ...          torch.tensor([[[0, 13]]]), idx_bits=1, entry_bits=4, act_bits=4,
    ...          act_signed=False)
    tensor([[13, 13]])

    Raises
    ------
    TypeError, ValueError
        As ``decode_to_int`` and ``golden.gemm``.
    """
    weights = decode_to_int(codes, tables, idx_bits=idx_bits, entry_bits=entry_bits)
    return gemm(acts, weights.T, act_bits=act_bits, act_signed=act_signed,
                weight_bits=entry_bits + 1)


class ActivationQuantizer(nn.Module):
    """Per-tensor ``s<bits>``/``u<bits>`` fake quantization with a straight-through round.

    In training the scale is ``max_abs_scale`` of the batch (with full-batch training,
    the training set) and is kept; in evaluation the kept scale is used.

    Raises
    ------
    TypeError
        If ``bits`` is not an integer in 2..8.
    """

    def __init__(self, bits: int = 8, signed: bool = False):
        super().__init__()
        self.bits = check_int("bits", bits, ACT_BITS)
        self.signed = signed
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.scale.copy_(max_abs_scale(x, self.bits, signed=self.signed))
        return x + (fake_quantize(x, self.scale, self.bits, self.signed) - x).detach()


class SyqLinear(nn.Module):
    """A linear layer whose weight is SYQ-quantized with a learned codebook (§3, §5).

    ``weight`` and ``bias`` start from ``linear``; ``magnitudes`` from ``init_codebook``.
    """

    def __init__(self, linear: nn.Linear, *, granularity: str, idx_bits: int, zero: bool,
                 eta: float = DEFAULT_ETA):
        super().__init__()
        self.zero, self.eta = zero, eta
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.magnitudes = nn.Parameter(init_codebook(
            self.weight, granularity=granularity, idx_bits=idx_bits, zero=zero, eta=eta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = syq_quantize(self.weight, self.magnitudes, zero=self.zero, eta=self.eta)
        return nn.functional.linear(x, weight, self.bias)

    def encode(self, entry_bits: int) -> SyqCodes:
        """``encode`` of this layer's weight and learned codebook."""
        return encode(self.weight, self.magnitudes, zero=self.zero, eta=self.eta,
                      entry_bits=entry_bits)


def syq_model(layers: nn.Sequential, *, idx_bits: int, zero: bool, granularity: str = "row",
              eta: float = DEFAULT_ETA, keep_first_last: bool = True,
              act_bits: int = 8) -> nn.Sequential:
    """A QAT copy of a sequence of ``nn.Linear`` layers and activations (§5).

    Every ``nn.Linear`` gets an ``ActivationQuantizer(act_bits)`` (unsigned: the inputs of
    these MLPs are pixels in [0, 1] and ReLU outputs) in front of it and becomes a
    ``SyqLinear``, except the first and the last with ``keep_first_last``, which stay
    full precision as in SYQ. Other modules are copied.

    Raises
    ------
    TypeError, ValueError
        As ``ActivationQuantizer`` and ``SyqLinear``.
    """
    linears = [i for i, module in enumerate(layers) if isinstance(module, nn.Linear)]
    kept = {linears[0], linears[-1]} if keep_first_last else set()
    modules = []
    for i, module in enumerate(layers):
        if isinstance(module, nn.Linear):
            modules.append(ActivationQuantizer(act_bits))
            modules.append(copy.deepcopy(module) if i in kept else SyqLinear(
                module, granularity=granularity, idx_bits=idx_bits, zero=zero, eta=eta))
        else:
            modules.append(copy.deepcopy(module))
    return nn.Sequential(*modules)


@torch.no_grad()
def freeze(model: nn.Sequential, *, entry_bits: int) -> nn.Sequential:
    """A copy whose ``SyqLinear`` layers are plain ``nn.Linear`` holding the hardware's
    weights, ``decode_to_int(encode(...)) · 2^(-frac_bits)`` (§4), in eval mode.

    Raises
    ------
    TypeError, ValueError
        As ``encode``.
    """
    frozen = copy.deepcopy(model).eval()
    for i, module in enumerate(frozen):
        if isinstance(module, SyqLinear):
            codes = module.encode(entry_bits)
            weights = decode_to_int(codes.codes, codes.tables, idx_bits=codes.idx_bits,
                                    entry_bits=entry_bits)
            linear = nn.Linear(module.weight.shape[1], module.weight.shape[0])
            linear.weight.copy_(dequantize(weights, 2.0 ** -codes.frac_bits))
            linear.bias.copy_(module.bias)
            frozen[i] = linear
    return frozen
