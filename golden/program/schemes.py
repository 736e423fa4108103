"""The weight schemes of a GEMM layer (docs/program.md §9): how its integer weights are
held, checked, multiplied and made from float weights.

A ``Gemm`` op names its scheme (``Gemm.scheme``, the name the artifact stores and the
compiler reads); ``Gemm.weight_scheme`` is the scheme's class from ``SCHEMES``, chosen once
from that name and bound to the op. Every scheme answers the same questions: which
attributes and tensors it adds to the op (``ATTRIBUTES``, ``tensor_specs``) and their
rules (``check_attributes``, ``check_tensors``), the one ``K×N`` integer weight the
accumulator equals a GEMM with (``matrix``), the accumulation itself (``accumulate``),
and, for the lowering, the op's fields for a float weight (``quantize``).
"""

from abc import ABC, abstractmethod
from types import SimpleNamespace
from typing import ClassVar

import torch

from olmac.spec import CODEBOOK_ENTRY_BITS, CODEBOOK_IDX_BITS, OUTLIER_BITS
from ..fake_quant import to_int_round_half_even
from ..integer import gemm
from ..mmse import EXPONENT_BITS, MAX_PLANES, combine_plane_accumulators, mmse_scale, \
    multi_tensor_quantize
from ..syq import decode_to_int, encode, init_codebook, program_zero_code
from ..value_aware import outlier_threshold, to_value_aware_round_half_even, value_aware_scale
from .types import ProgramError, TensorSpec, check_field

__all__ = ["WeightScheme", "Mmse", "ValueAware", "MultiTensor", "Syq", "SCHEMES"]


class WeightScheme(ABC):
    """How one ``Gemm`` op (``op``) holds its weights; ``K = op.in_features``,
    ``N = op.out_features``."""

    #: The scheme's name: the value of ``Gemm.scheme``.
    NAME: ClassVar[str]
    #: The ``Gemm`` attributes only this scheme sets; every other scheme leaves them None.
    ATTRIBUTES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, op):
        self._op = op

    def check_attributes(self, label: str) -> None:
        """Raise ``ProgramError`` (naming ``label``) unless this scheme's own attributes
        are valid; the op's other attributes are already checked."""

    @abstractmethod
    def tensor_specs(self) -> dict[str, TensorSpec]:
        """The weight tensors the op must carry (§9). Raises ``ProgramError`` (without the
        op's label) where a tensor whose shape decides another's is itself wrong."""

    def check_tensors(self, label: str) -> None:
        """Raise ``ProgramError`` on a rule between weight tensors that their specs (already
        met) do not express."""

    @abstractmethod
    def matrix(self) -> torch.Tensor:
        """The one ``K×N`` integer weight (int64) the accumulator equals a GEMM with."""

    def accumulate(self, acts: torch.Tensor, act_bits: int, act_signed: bool,
                   act_outlier_bits: int | None = None) -> torch.Tensor:
        """``acc`` (``M×N``, int64) of the ``M×K`` activations in
        ``s<act_bits>``/``u<act_bits>`` (§9), with activation outliers up to
        ``act_outlier_bits`` wide (§18): by default the GEMM with ``matrix()``."""
        return gemm(acts, self.matrix(), act_bits=act_bits, act_signed=act_signed,
                    weight_bits=self._op.weight_bits, act_outlier_bits=act_outlier_bits)

    @classmethod
    @abstractmethod
    def quantize(cls, weight: torch.Tensor, bits: int, options: dict) -> dict:
        """The op's weight fields (tensors, this scheme's attributes, ``weight_scale``) for
        the float ``weight`` of a layer (torch layout, ``N×K`` or ``N×C×kh×kw``) at
        ``bits``, tuned by ``options`` (the keyword arguments of ``quantize_model``)."""

    @classmethod
    def real_weight(cls, weight: torch.Tensor, bits: int, options: dict) -> torch.Tensor:
        """The real ``K×N`` weight (float64) that ``quantize``'s integer weights for the
        float ``weight`` stand for, ``matrix()·weight_scale``: what the float view
        multiplies with, for quantization-aware training (docs/program.md §13)."""
        fields = cls.quantize(weight, bits, options)
        n, k = weight.shape[0], weight[0].numel()
        op = SimpleNamespace(**{"weight_outlier_bits": None, "idx_bits": None, **fields},
                             weight_bits=bits, in_features=k, out_features=n,
                             layer="linear" if weight.dim() == 2 else "conv2d",
                             kernel=tuple(weight.shape[2:]) or None)
        return cls(op).matrix().to(torch.float64) * fields["weight_scale"].to(torch.float64)


def _rows(weight: torch.Tensor) -> torch.Tensor:
    """The float weight as ``N×K`` float64 rows."""
    return weight.detach().to(torch.float64).reshape(weight.shape[0], -1)


class Mmse(WeightScheme):
    """``weights`` ``K×N`` in ``s<weight_bits>``, one MMSE scale per output channel."""
    NAME = "mmse"

    def tensor_specs(self):
        op = self._op
        return {"weights": TensorSpec.integer((op.in_features, op.out_features),
                                              op.weight_bits, True)}

    def matrix(self):
        return self._op.weights.to(torch.int64)

    @classmethod
    def quantize(cls, weight, bits, options):
        rows = _rows(weight)
        scale = mmse_scale(rows, bits, per_channel=True)
        q = to_int_round_half_even(rows, scale, bits, signed=True)
        return {"weights": q.T.contiguous(), "weight_scale": scale.reshape(len(rows))}


class ValueAware(WeightScheme):
    """``weights`` (dense, ``s<weight_bits>``) plus ``weight_outliers``
    (``s<weight_outlier_bits>``, 0 where there is none, the dense entry 0 where there is
    one), both ``K×N`` (semantics §6)."""
    NAME = "value_aware"
    ATTRIBUTES = ("weight_outlier_bits",)

    def check_attributes(self, label):
        op = self._op
        check_field(label, "weight_outlier_bits", op.weight_outlier_bits, int, OUTLIER_BITS)
        if op.weight_outlier_bits <= op.weight_bits:
            raise ProgramError(f"{label}: field 'weight_outlier_bits' ({op.weight_outlier_bits})"
                               f" must exceed 'weight_bits' ({op.weight_bits})")

    def tensor_specs(self):
        op = self._op
        shape = (op.in_features, op.out_features)
        return {"weights": TensorSpec.integer(shape, op.weight_bits, True),
                "weight_outliers": TensorSpec.integer(shape, op.weight_outlier_bits, True)}

    def check_tensors(self, label):
        both = (self._op.weights != 0) & (self._op.weight_outliers != 0)
        if both.any():
            position = [int(i) for i in both.nonzero()[0]]
            raise ProgramError(f"{label}: tensor 'weights'{position} is nonzero under an "
                               f"outlier (semantics §6: the dense slot of an outlier is 0)")

    def matrix(self):
        return self._op.weights.to(torch.int64) + self._op.weight_outliers.to(torch.int64)

    def accumulate(self, acts, act_bits, act_signed, act_outlier_bits=None):
        return gemm(acts, self.matrix(), act_bits=act_bits, act_signed=act_signed,
                    weight_bits=self._op.weight_bits, act_outlier_bits=act_outlier_bits,
                    weight_outlier_bits=self._op.weight_outlier_bits)

    @classmethod
    def quantize(cls, weight, bits, options):
        rows = _rows(weight)
        threshold = outlier_threshold(rows, options["outlier_ratio"], channel_dim=0)
        q, _ = to_value_aware_round_half_even(
            rows, threshold, bits, signed=True, channel_dim=0,
            outlier_bits=options["weight_outlier_bits"])
        return {"weights": q.dense.T.contiguous(), "weight_outliers": q.sparse.T.contiguous(),
                "weight_outlier_bits": options["weight_outlier_bits"],
                "weight_scale": value_aware_scale(threshold, bits, signed=True)}


class MultiTensor(WeightScheme):
    """``weights`` ``P×K×N`` planes in ``s<weight_bits>`` and ``plane_exponents``
    ``(P−1)×N`` in ``u4``; the weight is ``Σ_p Q_p·2^(S_p)`` (semantics §8)."""
    NAME = "multi_tensor"

    def tensor_specs(self):
        op = self._op
        rest = (op.in_features, op.out_features)
        weights = op.weights
        if not isinstance(weights, torch.Tensor):
            raise ProgramError("tensor 'weights' is missing")
        if weights.dim() != 3 or tuple(weights.shape[1:]) != rest \
                or not 1 <= weights.shape[0] <= MAX_PLANES:
            raise ProgramError(f"tensor 'weights' has shape {tuple(weights.shape)}, expected "
                               f"(P, {', '.join(map(str, rest))}) with P in 1..{MAX_PLANES}")
        planes = weights.shape[0]
        return {"weights": TensorSpec.integer((planes,) + rest, op.weight_bits, True),
                "plane_exponents": TensorSpec.integer((planes - 1, op.out_features),
                                                      EXPONENT_BITS, False)}

    def matrix(self):
        planes = self._op.weights.to(torch.int64)
        total = planes[0]
        for p in range(1, planes.shape[0]):
            total = (total << self._op.plane_exponents[p - 1].to(torch.int64)) + planes[p]
        return total

    def accumulate(self, acts, act_bits, act_signed, act_outlier_bits=None):
        accs = torch.stack([gemm(acts, plane, act_bits=act_bits, act_signed=act_signed,
                                 weight_bits=self._op.weight_bits,
                                 act_outlier_bits=act_outlier_bits)
                            for plane in self._op.weights])
        return combine_plane_accumulators(accs, self._op.plane_exponents)

    @classmethod
    def quantize(cls, weight, bits, options):
        mt = multi_tensor_quantize(_rows(weight), bits, options["planes"], per_channel=True)
        return {"weights": mt.planes.transpose(1, 2).contiguous(),
                "plane_exponents": mt.exponents, "weight_scale": mt.scales[-1].clone()}


class Syq(WeightScheme):
    """``codes`` in the torch weight layout (``N×K`` or ``N×C×kh×kw``) in
    ``u<idx_bits+1>`` and ``tables`` ``(*subgroup, 2^idx_bits)`` in ``u<weight_bits−1>``
    (docs/codebooks.md §4); the weight is ``decode(codes).reshape(N, K)ᵀ``."""
    NAME = "syq"
    ATTRIBUTES = ("idx_bits",)

    def check_attributes(self, label):
        check_field(label, "idx_bits", self._op.idx_bits, int, CODEBOOK_IDX_BITS)
        check_field(label, "weight_bits", self._op.weight_bits, int,
                    (CODEBOOK_ENTRY_BITS[0] + 1, CODEBOOK_ENTRY_BITS[1] + 1))

    def tensor_specs(self):
        op = self._op
        n, k = op.out_features, op.in_features
        codes_shape = (n, k) if op.layer == "linear" else \
            (n, k // (op.kernel[0] * op.kernel[1])) + op.kernel
        entries = 1 << op.idx_bits
        tables = op.tables
        if not isinstance(tables, torch.Tensor):
            raise ProgramError("tensor 'tables' is missing")
        if not (tables.dim() == len(codes_shape) + 1 and tables.shape[-1] == entries
                and all(t in (1, c) for t, c in zip(tables.shape[:-1], codes_shape))):
            raise ProgramError(f"tensor 'tables' has shape {tuple(tables.shape)}, expected "
                               f"(*subgroup, {entries}) with each subgroup size 1 or that of "
                               f"the codes {codes_shape}")
        return {"codes": TensorSpec.integer(codes_shape, op.idx_bits + 1, False),
                "tables": TensorSpec.integer(tuple(tables.shape), op.weight_bits - 1, False)}

    def matrix(self):
        op = self._op
        decoded = decode_to_int(op.codes.to(torch.int64), op.tables.to(torch.int64),
                                idx_bits=op.idx_bits, entry_bits=op.weight_bits - 1)
        return decoded.reshape(op.out_features, op.in_features).T

    @classmethod
    def quantize(cls, weight, bits, options):
        weight = weight.detach()
        zero = program_zero_code(options["syq_idx_bits"])
        magnitudes = options.get("syq_magnitudes")  # learned by training, else initialized
        if magnitudes is None:
            magnitudes = init_codebook(weight, granularity=options["syq_granularity"],
                                       idx_bits=options["syq_idx_bits"], zero=zero)
        magnitudes = magnitudes.detach()
        codes = encode(weight, magnitudes, zero=zero, entry_bits=bits - 1)
        return {"codes": codes.codes, "tables": codes.tables, "idx_bits": codes.idx_bits,
                "weight_scale": torch.full((weight.shape[0],), 2.0 ** -codes.frac_bits,
                                           dtype=torch.float64)}


#: The weight schemes of a GEMM layer (§9), by name.
SCHEMES: dict[str, type[WeightScheme]] = {
    scheme.NAME: scheme for scheme in (Mmse, ValueAware, MultiTensor, Syq)}
