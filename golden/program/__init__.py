"""Whole networks as integer programs (docs/program.md), one module per idea.

``quantize_model`` (``lowering``) traces an ``nn.Module`` with ``torch.fx``, calibrates its
activations on sample images and lowers it to an ``IntegerProgram`` (``integer_program``):
an ordered tuple of typed integer ops (``ops``) over named integer tensors (*values*,
``types``), checked against every rule of the page (``checks``) — the exact program the
hardware sequencer executes. A GEMM's weights follow one of the weight schemes
(``schemes``). ``run_integer`` (``interpreter``) is its bit-exact reference (int64,
vectorized over the batch) on the integer kernels of ``kernels``; ``run_fake_quant``
(``float_view``) is its float view (docs/semantics.md §5). Section numbers ``§n`` are those
of docs/program.md, which continues docs/semantics.md (§1–§8) with §9–§13.
"""

from .checks import check_program, tensor_specs
from .float_view import run_fake_quant
from .integer_program import IntegerProgram
from .interpreter import (act_outlier_counts, quantize_inputs, quantize_real_round_half_up,
                          run_integer, to_pixels)
from .kernels import im2col, pool_windows, requantize_residual_round_half_up
from .lowering import (ACT_CALIBRATIONS, CLIP_FACTORS, MIN_ALIGNED_MULTIPLIER, MMSE_SAMPLES,
                       SEARCH_IMAGES, quantize_model)
from .ops import OPS, TABLE_FUNCTIONS, AvgPool, Concat, Flatten, Gemm, Lookup, MaxPool, \
    QuantizeInput, Requantize, Rotate
from .outliers import OutlierCounts, keep_act_outliers, storage_shape, storage_words
from .schemes import SCHEMES, WeightScheme
from .types import ActOutliers, ProgramError, TensorSpec, Value

__all__ = [
    "SCHEMES", "WeightScheme", "MMSE_SAMPLES", "MIN_ALIGNED_MULTIPLIER",
    "ACT_CALIBRATIONS", "CLIP_FACTORS", "SEARCH_IMAGES",
    "ProgramError", "Value", "ActOutliers", "OutlierCounts", "keep_act_outliers",
    "storage_shape", "storage_words", "act_outlier_counts",
    "TensorSpec", "QuantizeInput", "Gemm", "AvgPool", "MaxPool", "Requantize", "Rotate",
    "Flatten", "Concat", "Lookup", "TABLE_FUNCTIONS",
    "OPS", "IntegerProgram", "tensor_specs", "check_program", "im2col", "pool_windows",
    "requantize_residual_round_half_up", "quantize_model", "run_integer", "run_fake_quant",
    "to_pixels", "quantize_inputs", "quantize_real_round_half_up",
]
