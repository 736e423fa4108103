"""Golden model: the bit-exact integer reference of docs/semantics.md, in torch."""

from .formats import int_range, check_in_format
from .integer import accumulator_width, gemm, requantize_round_half_up, split_output_outliers
from .fake_quant import to_int_round_half_even, dequantize, fake_quantize, requant_params

__all__ = [
    "int_range", "check_in_format",
    "accumulator_width", "gemm", "requantize_round_half_up", "split_output_outliers",
    "to_int_round_half_even", "dequantize", "fake_quantize", "requant_params",
]
