"""Lowering a PyTorch model to an integer program (docs/program.md §9–§13).

``quantize_model`` traces an ``nn.Module`` with ``torch.fx``, calibrates its activations on
sample images and lowers it to an ``IntegerProgram``: an ordered tuple of typed integer ops
over named integer tensors (*values*), the exact program the hardware sequencer executes.
Every choice made per layer lives here: the weight scheme (``scheme``), the widths, the
fusion of ReLU and residual adds (``_plan``), and the activation scales (``_Lowering.scale``
and the ``"output"`` calibration, ``_search_clipping``).

Supported layers: ``nn.Linear``; ``nn.Conv2d`` (lowered onto the GEMM by ``im2col``, §10);
ReLU, with a cap for ReLU6/Hardtanh/``clamp`` (fused into the requantization of the layer
or add before it); the residual add (fused into the requantization of one of its operands,
§11, with the *precision highway*: the skip tensor at 16 bits); ``nn.AvgPool2d`` (§12) and
``nn.MaxPool2d``; flatten. ``normalize`` first rewrites the other forms people write onto
these (§17); ``supported_layers`` is the table of all of them.
"""

import copy
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch
from torch import fx, nn
from torch.nn import functional as F

from olmac.spec import (ACT_BITS, ACT_OUTLIER_RATIO, BIAS_BITS, HIGHWAY_BITS,
                        RESIDUAL_SHIFT_RANGE)
from ..fake_quant import requant_params, to_int_round_half_even
from ..formats import int_range
from ..mmse import max_abs_scale, mmse_scale
from .float_view import run_fake_quant
from .integer_program import IntegerProgram
from .kernels import im2col, walsh_hadamard
from .normalize import located, normalize, supported_layers
from .ops import (TABLE_FUNCTIONS, AvgPool, Concat, Flatten, Gemm, Lookup, MaxPool, QuantizeInput,
                  Requantize, Rotate)
from .schemes import SCHEMES
from .types import ActOutliers, ProgramError, Value

__all__ = ["MMSE_SAMPLES", "ACT_CALIBRATIONS", "CLIP_FACTORS", "SEARCH_IMAGES",
           "MIN_ALIGNED_MULTIPLIER", "MAX_ACT_OUTLIER_RATIO", "Trained", "quantize_model",
           "lowering_notes", "supported_layers"]

#: Most values of one activation tensor the MMSE calibration searches over (§13).
MMSE_SAMPLES = 1 << 14
#: Ways ``quantize_model`` sets the scale of a low-width activation (§13).
ACT_CALIBRATIONS = ("output", "max", "mmse")
#: Fractions of the max-abs scale the ``"output"`` calibration tries per tensor (§13).
CLIP_FACTORS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
#: Most calibration images the ``"output"`` calibration scores a candidate on (§13).
SEARCH_IMAGES = 512
#: Least residual multiplier the shift alignment of a highway add may leave (§11).
MIN_ALIGNED_MULTIPLIER = 1 << 8
#: Largest fraction of a tensor's calibration values that may lie beyond its activation
#: outlier threshold (§18).
MAX_ACT_OUTLIER_RATIO = ACT_OUTLIER_RATIO[1]

def _type_name(target) -> str:
    cls = target if isinstance(target, type) else type(target)
    module = cls.__module__
    if module.startswith("torch.nn"):
        return f"nn.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"


def _function_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = (getattr(target, "__module__", None) or "operator").lstrip("_")  # _operator
    if module.startswith("torch"):
        module = "torch" if not module.startswith("torch.nn.functional") else "F"
    return f"{module}.{getattr(target, '__name__', str(target))}"


def _unsupported(name: str, kind: str, why: str = "") -> ProgramError:
    return ProgramError(f"unsupported layer '{name}' ({kind}{' ' + why if why else ''})")


#: Activations without a form here: refused, naming the supported ones.
_OTHER_ACTIVATIONS = {"hardsigmoid", "mish", "leakyrelu", "leaky_relu", "elu", "selu", "celu",
                      "softplus", "prelu", "softsign", "logsigmoid", "relu6"}
#: Activations the lowering makes tables (``Lookup``, §12), by module, function or method.
_TABLE_MODULES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish",
                  nn.SiLU: "silu"}
_TABLE_CALLS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
                F.tanh: "tanh", F.hardswish: "hardswish", F.silu: "silu", "sigmoid": "sigmoid",
                "tanh": "tanh"}


def _table_function(node: fx.Node, modules: dict) -> str | None:
    """The ``TABLE_FUNCTIONS`` name of an activation the lowering tabulates, else None."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, nn.GELU):
            return "gelu" if module.approximate == "none" else "gelu_tanh"
        return _TABLE_MODULES.get(type(module))
    if node.op not in ("call_function", "call_method") or len(node.args) != 1:
        return None
    if node.target is F.gelu:
        return "gelu" if node.kwargs.get("approximate", "none") == "none" else "gelu_tanh"
    # fx records F.silu(x) and F.hardswish(x) with their default inplace=False: in place
    # or not, the function's value is the same
    return None if set(node.kwargs) - {"inplace"} else _TABLE_CALLS.get(node.target)


def _refused(name: str, kind: str) -> ProgramError:
    """``_unsupported`` for a layer outside every supported form, saying what is supported
    instead."""
    short = kind.rsplit(".", 1)[-1].lower()
    if short in _OTHER_ACTIVATIONS:
        instead = ("supported activations: ReLU; ReLU6, Hardtanh(0, m), clamp(0, m); Sigmoid, "
                   "Tanh, Hardswish, SiLU, GELU as tables")
    elif short.startswith("conv"):  # Conv3d, ConvTranspose*, F.conv2d
        instead = "supported convolutions: nn.Conv2d and nn.Conv1d (any groups)"
    elif short in ("cat", "concat", "stack"):
        instead = "supported: torch.cat along dim 1 (channels or features)"
    else:
        instead = "supported layers: olmac layers lists them"
    return ProgramError(f"unsupported layer '{name}' ({kind}; {instead})")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(int(v) for v in value)


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The explicit symmetric padding of ``module``: ``'same'`` (odd kernels, stride 1,
    which ``_classify`` checks) is ``k // 2`` on each side."""
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        return tuple(k // 2 for k in _pair(module.kernel_size))
    return _pair(module.padding)


_ADD = {operator.add, operator.iadd, torch.add}
_RELU = {torch.relu, F.relu}
_FLATTEN = {torch.flatten}


def _input_order(node: fx.Node) -> tuple[int, ...] | None:
    """The per-sample permutation of ``x.permute(0, ...)`` (or ``torch.permute``) applied to
    the model's input and to nothing else, as an NHWC model starts; else None."""
    if node.target not in ("permute", torch.permute) or node.kwargs or not node.args \
            or getattr(node.args[0], "op", None) != "placeholder" \
            or len(node.args[0].users) != 1:
        return None
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) \
        else node.args[1:]
    if not dims or dims[0] != 0 or sorted(dims) != list(range(len(dims))):
        return None
    return tuple(d - 1 for d in dims[1:])


def _classify(node: fx.Node, modules: dict) -> str:
    """``input``/``output``/``linear``/``conv2d``/``relu``/``add``/``avgpool``/``maxpool``/
    ``flatten`` for a node the lowering supports; raise naming anything else."""
    if node.op == "placeholder":
        return "input"
    if _input_order(node) is not None:
        return "input_order"
    if node.op == "output":
        return "output"
    if _table_function(node, modules) is not None:
        return "lookup"
    if node.op == "call_module":
        module = modules[node.target]
        name, kind = node.target, _type_name(module)
        if isinstance(module, nn.Linear):
            return "linear"
        if isinstance(module, nn.Conv2d):
            if module.padding == "same" and any(k % 2 == 0 for k in _pair(module.kernel_size)):
                raise _unsupported(name, kind, "with padding='same' and an even kernel; only "
                                   "odd kernels, whose padding is symmetric")
            if _pair(module.dilation) != (1, 1) or module.padding_mode != "zeros":
                raise _unsupported(name, kind, f"with dilation={module.dilation}, "
                                   f"padding_mode={module.padding_mode!r}; only dilation=1, "
                                   f"zeros padding")
            return "conv2d"
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            _check_pool(module, name, kind)
            return "avgpool" if isinstance(module, nn.AvgPool2d) else "maxpool"
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise _unsupported(name, kind, "with start_dim != 1 or end_dim != -1")
            return "flatten"
        raise _refused(name, kind)
    if node.op in ("call_function", "call_method"):
        target = node.target
        kind = _function_name(node)
        if target in _ADD or target in ("add", "add_"):
            if len(node.args) != 2 or node.kwargs or not all(
                    isinstance(a, fx.Node) for a in node.args):
                raise _unsupported(node.name, kind, "other than a sum of two tensors")
            return "add"
        if target in _RELU or target in ("relu", "relu_"):
            if len(node.args) != 1:
                raise _unsupported(node.name, kind, "other than relu(x)")
            return "relu"
        if target in _CATS:
            return _check_cat(node, kind)
        if target in _FLATTEN or target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if (start, end) != (1, -1):
                raise _unsupported(node.name, kind, "other than flatten(x, 1)")
            return "flatten"
        raise _refused(node.name, kind)
    raise _refused(node.name, f"fx {node.op} {node.target}")


_CATS = {torch.cat, torch.concat, torch.concatenate}


def _check_cat(node: fx.Node, kind: str) -> str:
    """``"cat"`` for a concatenation of tensors along the channels (dim 1) of ``(N, C, H,
    W)`` or ``(N, F)``; raise naming any other."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    meta = node.meta.get("tensor_meta")
    ndim = len(meta.shape) if meta is not None and hasattr(meta, "shape") else 0
    if not (isinstance(tensors, (list, tuple)) and tensors
            and all(isinstance(t, fx.Node) for t in tensors)) or ndim not in (2, 4) \
            or not isinstance(dim, int) or dim % ndim != 1:
        raise _unsupported(node.name, kind, "other than of tensors along dim 1, the channels "
                           "of (N, C, H, W) or the features of (N, F)")
    return "cat"


def _check_pool(module: nn.Module, name: str, kind: str) -> None:
    """Raise naming a pooling module outside §12: ceil_mode, a dilation, a divisor
    override, or an average that leaves the padding out of its count."""
    if isinstance(module, nn.MaxPool2d):
        extra = _pair(module.dilation) != (1, 1) or module.return_indices
    else:
        extra = module.divisor_override is not None or (
            not module.count_include_pad and _pair(module.padding) != (0, 0))
    if module.ceil_mode or extra:
        raise _unsupported(name, kind, "with ceil_mode, dilation, return_indices, a divisor "
                           "override or count_include_pad=False; only ceil_mode=False and "
                           "averages over the whole (zero-padded) window")


@dataclass
class _Step:
    """One op of the plan: its kind, fx nodes (first = the layer), input, residual."""
    kind: str
    nodes: list
    input: fx.Node | None
    residual: fx.Node | None = None
    relu: bool = False
    cap: float | None = None
    name: str = ""
    operands: tuple = ()

    @property
    def last(self) -> fx.Node:
        return self.nodes[-1]


def _plan(graph: fx.Graph, kinds: dict, errors: list[str]) -> list[_Step]:
    """Group the nodes into ops: GEMM [+ add] [+ ReLU] fused, pools and flatten alone; a
    ReLU or add that fuses into nothing is refused into ``errors``."""
    member: dict[fx.Node, _Step] = {}
    steps: list[_Step] = []
    for node in graph.nodes:
        kind = kinds[node]
        if kind == "input":
            step = _Step("input", [node], None)
            step.nodes += [user for user in node.users if kinds[user] == "input_order"]
        elif kind == "input_order":
            continue  # part of the input step
        elif kind in ("linear", "conv2d"):
            step = _Step("gemm", [node], node.args[0])
            users = list(node.users)
            if len(users) == 1 and kinds[users[0]] == "add" and _branch(users[0], kinds) is node:
                add = users[0]
                step.nodes.append(add)
                step.residual = add.args[1] if add.args[0] is node else add.args[0]
                users = list(add.users)
            if len(users) == 1 and kinds[users[0]] == "relu":
                step.nodes.append(users[0])
                step.relu = True
                step.cap = users[0].meta.get("olmac_cap")
        elif kind in ("relu", "add"):
            if node not in member:
                why = ("a ReLU must directly follow a Linear, Conv2d or residual add that has "
                       "no other user" if kind == "relu" else
                       "a residual add needs one operand that is a Linear or Conv2d with no "
                       "other user, into whose requantization it is fused")
                errors.append(located(node, str(_unsupported(
                    node.name, _function_name(node) if node.op != "call_module" else "nn.ReLU",
                    "— " + why))))
            continue
        elif kind == "output":
            continue
        elif kind == "cat":
            step = _Step("cat", [node], None, operands=tuple(node.args[0] if node.args
                                                            else node.kwargs["tensors"]))
        else:
            step = _Step(kind, [node], node.args[0])
        for member_node in step.nodes:
            member[member_node] = step
        steps.append(step)
    # Emit each op where its last node stands: by then every operand is computed.
    position = {node: i for i, node in enumerate(graph.nodes)}
    steps.sort(key=lambda step: position[step.last])
    return steps


def _branch(add: fx.Node, kinds: dict) -> fx.Node | None:
    """The operand of an add whose requantization takes the add: the first that is a GEMM
    with the add as its only user (None if neither is, or both operands are one node)."""
    left, right = add.args
    if left is right:
        return None
    for operand in (left, right):
        if kinds.get(operand) in ("linear", "conv2d") and list(operand.users) == [add]:
            return operand
    return None


def _cat_members(steps: list, result: fx.Node, highway: bool, rotate: bool) -> dict:
    """The operands that their concatenation's producer-side layout takes (§17), each to
    its ``cat`` step: the output of a GEMM that is not capped, not the model's result and
    not a 16-bit tensor (skip tensor or residual sum of the highway, rotation), appearing
    once in one concatenation. Its GEMM writes it in the concatenation's format and scale."""
    if rotate:
        return {}
    producer = {step.last: step for step in steps}
    residuals = {step.residual for step in steps if step.residual is not None}
    members = {}
    for step in steps:
        if step.kind != "cat":
            continue
        for operand in step.operands:
            source = producer[operand]
            if (source.kind == "gemm" and source.cap is None and operand is not result
                    and operand not in members and step.operands.count(operand) == 1
                    and not (highway and (operand in residuals
                                          or source.residual is not None))):
                members[operand] = step
    return members


class _Recorder(fx.Interpreter):
    """Runs the traced float model, keeping every node's output."""

    def __init__(self, module):
        super().__init__(module)
        self.seen = {}

    def run_node(self, node):
        result = super().run_node(node)
        self.seen[node] = result
        return result


def _requant(label: str, ratio) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return requant_params(torch.as_tensor(ratio, dtype=torch.float64))
    except ValueError as error:
        raise ProgramError(f"{label}: {error}") from None


def _align_shifts(label, residual_multiplier, residual_shift, shift):
    """Fit the residual's ``(M_r, s_r)`` to the GEMM's shift ``s`` (§11):
    ``t = s − s_r`` where ``s_r ≤ s``; else ``t = 0`` and ``M_r ← (M_r + 2^(d−1)) >> d``
    with ``d = s_r − s``."""
    excess = (residual_shift - shift).clamp(min=0)
    left = (shift - residual_shift).clamp(min=0)
    residual_multiplier = torch.where(
        excess > 0, (residual_multiplier + (1 << (excess - 1).clamp(min=0))) >> excess,
        residual_multiplier)
    if (left > RESIDUAL_SHIFT_RANGE[1]).any() or \
            (residual_multiplier < MIN_ALIGNED_MULTIPLIER).any():
        raise ProgramError(f"{label}: the GEMM and residual scales are too far apart for one "
                           f"shift (t would exceed {RESIDUAL_SHIFT_RANGE[1]} or M_r keep fewer "
                           f"than 9 bits)")
    return residual_multiplier, left


@dataclass(frozen=True)
class Trained:
    """What quantization-aware training (``quantize_model``'s ``fine_tune``) hands back
    besides the trained layers: the activation ``scales`` it learned, by value name, and
    per-layer scheme options (``{"syq_magnitudes": ...}``), by layer name."""
    scales: Mapping[str, float]
    layer_options: Mapping[str, dict] = field(default_factory=dict)


@torch.no_grad()
def quantize_model(model: nn.Module, calibration: torch.Tensor, *, act_bits: int = 4,
                   weight_bits: int = 4, scheme: str | Mapping[str, str] = "mmse",
                   input_bits: int | None = None, highway: bool = True,
                   act_calibration: str = "output",
                   bias_correction: bool = True, pixel_max: int = 16,
                   pixel_scale: float = 1 / 16, real_inputs: bool = False,
                   outlier_ratio: float = 1 / 64, weight_outlier_bits: int | None = None,
                   planes: int = 2, syq_idx_bits: int = 1, syq_granularity: str = "row",
                   rotate: bool = False,
                   layer_bits: Mapping[str, tuple[int, int]] | None = None,
                   layer_schemes: Mapping[str, str] | None = None,
                   layer_outlier_ratios: Mapping[str, float] | None = None,
                   fine_tune: Callable[[IntegerProgram, dict[str, nn.Module], dict], Trained]
                   | None = None, act_outlier_ratio: float = 0.0,
                   act_outliers: ActOutliers | None = None) -> IntegerProgram:
    """Lower ``model`` to an ``IntegerProgram`` (§9–§13), calibrated on ``calibration``.

    ``calibration``: real images ``N×input_shape`` (typically the training images); the
    float model's activations on them set every activation scale (§13). The inputs are
    integer pixels ``0..pixel_max`` standing for ``p·pixel_scale``, or, with
    ``real_inputs``, real values (negative too) that the host quantizes to the input
    format, whose scale is calibrated like an activation's (§13). Widths:
    ``act_bits`` for the activations a GEMM reads and ``weight_bits`` for its weights
    (2..8); ``input_bits`` for the quantized pixels (``act_bits`` unless given); the skip
    tensors and residual sums (with ``highway``) and the output are 16-bit. ``scheme``:
    one of ``SCHEMES`` for every layer, or a mapping from layer name (``"layers.0"``,
    ``"conv1"``) to scheme, ``"mmse"`` for the layers it does not name;
    ``outlier_ratio``/``weight_outlier_bits`` (value-aware; the outlier width defaults to
    ``min(2·weight_bits, 16)``), ``planes`` (multi-tensor) and
    ``syq_idx_bits``/``syq_granularity`` (SYQ: ternary, per row; ``syq_idx_bits = 0``
    is binary, ``{±c}``) tune them.
    ``layer_schemes`` (layer name → scheme) overrides ``scheme`` layer by layer and
    ``layer_bits`` (layer name → ``(weight_bits, act_bits)``) the widths (§10, per-layer
    precision): the layer's weights and the value it reads take them (the value's producer
    writes it at the widest width its GEMM readers ask for). In both, ``"first"`` and
    ``"last"`` name the first and last GEMM layer. ``layer_outlier_ratios`` (layer name →
    ratio in ``[0, 1)``) overrides ``outlier_ratio`` for single value-aware layers (the
    per-layer choice of ``olmac quantize --budget-bits``, §20).
    ``act_calibration`` sets the scales of the low-width activations: ``"output"`` (the
    default) starts from max-abs and picks, tensor by tensor, the clipping factor of
    ``CLIP_FACTORS`` whose program's float view (``run_fake_quant``) has the least KL
    divergence from the float model's logits on (at most ``SEARCH_IMAGES`` of) the
    calibration images, in two passes of coordinate descent; ``"max"`` is max-abs and
    ``"mmse"`` the per-tensor MMSE scale. ``bias_correction`` adds the mean output error
    of the quantized weights on the calibration batch back into the bias (§13). ``highway=False`` is the ablation
    of §11: the skip tensor is requantized to ``act_bits`` before the add and sums are
    low-width.

    ``rotate`` (§19) rotates the input space of every GEMM whose input is not the pixels
    and has a power-of-two first axis (features, or channels) by the Walsh–Hadamard
    transform: the weights offline, the activations online (a ``Rotate`` op on the
    producer's output, which is then 16-bit, as every GEMM output is under ``rotate``).

    ``fine_tune`` (quantization-aware training, §13) is called with the post-training
    program, the normalized float layers by GEMM name (BatchNorm folded; copies: the
    model is not changed) and the scheme options; it trains the layers' weights and biases
    in place and returns a ``Trained``. The model is then lowered again from the trained
    layers with the learned activation scales (16-bit values by max-abs on the trained
    float model), without clipping search or bias correction.

    ``act_outlier_ratio`` R (0..``MAX_ACT_OUTLIER_RATIO``; 0 = none) gives run-time
    activation outliers (§18) to every low-width value that an op requantizes and only GEMMs
    read (through flattens): its scale puts the largest fraction R of its calibration
    values beyond the dense format, and they are stored as ``act_outliers`` says (by
    default s16/u15 outliers, one slot per block of 8 words of 8 values, the storage of an
    8-wide core).

    The model is first rewritten by ``normalize`` (§17): BatchNorm folded, Dropout/Identity
    and a trailing softmax dropped (``lowering_notes`` lists what was), reshapes, functional
    and adaptive pooling and capped ReLUs in the forms above.

    Raises
    ------
    ProgramError
        For layers the lowering does not support (``"unsupported layer 'layers.3'
        (nn.GELU)"``): every one of the model, one line each, with ``at file.py:line`` of the
        user's ``forward`` where fx recorded it; a model torch.fx cannot trace, or a bias or
        scale that does not fit.
        A name of ``layer_bits``, ``layer_schemes`` or ``layer_outlier_ratios`` that is no
        GEMM layer of the model.
    TypeError
        If a width is out of range.
    ValueError
        If ``act_calibration`` is not one of ``ACT_CALIBRATIONS``, or
        ``act_outlier_ratio`` is outside 0..``MAX_ACT_OUTLIER_RATIO``.
    """
    if isinstance(act_outlier_ratio, bool) or not isinstance(act_outlier_ratio, (int, float)) \
            or not 0 <= act_outlier_ratio <= MAX_ACT_OUTLIER_RATIO:
        raise ValueError(f"act_outlier_ratio must be a number in 0..{MAX_ACT_OUTLIER_RATIO}, "
                         f"not {act_outlier_ratio!r}")
    if act_calibration not in ACT_CALIBRATIONS:
        raise ValueError(f"act_calibration must be one of {', '.join(map(repr, ACT_CALIBRATIONS))}"
                         f", not {act_calibration!r}")
    for name, bits in (("act_bits", act_bits), ("weight_bits", weight_bits),
                       ("input_bits", act_bits if input_bits is None else input_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or \
                not ACT_BITS[0] <= bits <= ACT_BITS[1]:
            raise TypeError(f"{name} must be an integer in {ACT_BITS[0]}..{ACT_BITS[1]}, "
                            f"not {bits!r}")
    calibration = calibration.to(torch.float32)
    if fine_tune is not None:
        model = copy.deepcopy(model)  # training changes the normalized layers in place
    normalized = normalize(model, calibration[:2])
    # a model on (C, L) sequences runs as one on (C, 1, L) maps (§17)
    calibration = calibration.reshape(len(calibration), *normalized.input_shape)
    traced = normalized.module
    modules = dict(traced.named_modules())
    errors, kinds = [], {}
    for node in traced.graph.nodes:
        kinds[node] = "refused"
        if node in normalized.errors:
            errors.append(normalized.errors[node])
            continue
        try:
            kinds[node] = _classify(node, modules)
        except ProgramError as error:
            errors.append(located(node, str(error)))
    inputs = [node for node, kind in kinds.items() if kind == "input"]
    if len(inputs) != 1:
        raise ProgramError(f"the model must take one input tensor, not {len(inputs)}")
    steps = _plan(traced.graph, kinds, errors)
    if errors:
        raise ProgramError("\n".join(errors))
    result = next(node for node, kind in kinds.items() if kind == "output").args[0]
    if not isinstance(result, fx.Node):
        raise ProgramError("the model must return one tensor")
    produced = {step.last for step in steps}
    for step in steps:
        for node in (step.input, step.residual, *step.operands):
            if node is not None and node not in produced:
                raise ProgramError(f"'{node.name}' is read by '{step.nodes[0].name}' but is "
                                   f"not the output of a supported op")
    gemms = [step for step in steps if step.kind == "gemm"]
    widths = _per_layer("layer_bits", layer_bits, gemms, _check_widths)
    schemes = _per_layer("layer_schemes", layer_schemes, gemms, lambda label, value: value)
    ratios = _per_layer("layer_outlier_ratios", layer_outlier_ratios, gemms,
                        lambda label, value: value)  # checked by the value-aware scheme
    traced.eval()
    recorder = _Recorder(traced)
    recorder.run(calibration)
    cache = {}  # what does not depend on the activation scales, shared by every lowering
    options = {"outlier_ratio": outlier_ratio,
               "weight_outlier_bits": weight_outlier_bits
               if weight_outlier_bits is not None else min(2 * weight_bits, HIGHWAY_BITS),
               "planes": planes, "syq_idx_bits": syq_idx_bits,
               "syq_granularity": syq_granularity}

    outliers: dict[str, ActOutliers] = {}  # filled once the program's readers are known

    def lower(clip: dict[str, float], trained: Trained | None = None) -> IntegerProgram:
        lowering = _Lowering(
            modules=modules, floats=recorder.seen, result=result, act_bits=act_bits,
            input_bits=act_bits if input_bits is None else input_bits,
            weight_bits=weight_bits, highway=highway,
            act_calibration="mmse" if act_calibration == "mmse" else "max",
            bias_correction=bias_correction and trained is None,
            scheme_of=lambda name: schemes.get(name, scheme if isinstance(scheme, str)
                                               else scheme.get(name, "mmse")),
            layer_bits=widths, outlier_ratios=ratios, act_demand=_act_demand(steps, widths, act_bits, input_bits),
            options=options, clip=clip, cache=cache, trained=trained,
            act_outliers=outliers, act_outlier_ratio=act_outlier_ratio, rotate=rotate)
        lowering.residuals = {step.residual for step in steps if step.residual is not None}
        lowering.cat_of = _cat_members(steps, result, highway, rotate)
        lowering.producers = {step.last: step for step in steps}
        for step in steps:
            lowering.lower(step, pixel_max, pixel_scale, real_inputs)
        if real_inputs:  # the host quantizes straight to the input format (§13)
            first = lowering.values["input"]
            low, high = int_range(first.bits, first.signed)
            return IntegerProgram(tuple(calibration.shape[1:]), high, first.scale,
                                  lowering.values, tuple(lowering.ops),
                                  lowering.value_of[result], pixel_min=low, real_inputs=True,
                                  input_order=lowering.input_order)
        return IntegerProgram(tuple(calibration.shape[1:]), pixel_max, float(pixel_scale),
                              lowering.values, tuple(lowering.ops), lowering.value_of[result],
                              input_order=lowering.input_order)

    program = lower({})
    if act_outlier_ratio > 0:
        outliers.update(_outlier_values(program, act_outliers))
        program = lower({})
    if act_calibration == "output":
        program = _search_clipping(program, lower, calibration, recorder.seen[result])
    if fine_tune is not None:
        layers = {step.nodes[0].target: modules[step.nodes[0].target]
                  for step in steps if step.kind == "gemm"}
        with torch.enable_grad():
            trained = fine_tune(program, layers, dict(options))
        recorder = _Recorder(traced)
        recorder.run(calibration)  # the trained float model's activations
        cache.clear()
        program = lower({}, trained)
    return program


def _outlier_values(program: IntegerProgram,
                    storage: ActOutliers | None) -> dict[str, ActOutliers]:
    """The values that take activation outliers (§18) and how each stores them: every
    low-width output of a GEMM, requantize or average pool that only GEMM inputs read
    (through flattens, which then keep the same outliers). The outliers are s16 for a
    signed value and u15 for an unsigned one, so that each is a 16-bit signed number."""
    readers: dict[str, list] = {}
    for op in program.ops:
        for name in op.inputs:
            readers.setdefault(name, []).append(op)

    def flattened(name: str) -> list[str] | None:
        """``name`` and the flatten outputs of it, or None if anything else reads them."""
        names = [name]
        for op in readers.get(name, []):
            if isinstance(op, Flatten):
                more = flattened(op.output)
                if more is None:
                    return None
                names += more
            elif not isinstance(op, Gemm) or op.input != name or op.residual == name:
                return None
        return names

    chosen = {}
    for op in program.ops:
        value = program.values[op.output]
        if not isinstance(op, (Gemm, Requantize, AvgPool)) or value.bits > ACT_BITS[1] \
                or not readers.get(op.output):
            continue
        names = flattened(op.output)
        if names is not None:
            bits = HIGHWAY_BITS - (0 if value.signed else 1)
            given = storage or ActOutliers(bits=bits, word_values=8, block_words=8, slots=1)
            for name in names:
                chosen[name] = replace(given, bits=bits)
    return chosen


def _check_widths(label: str, value) -> tuple[int, int]:
    """``value`` if it is a pair ``(weight_bits, act_bits)`` of widths in 2..8."""
    if not (isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(b, int) and not isinstance(b, bool) and ACT_BITS[0] <= b <= ACT_BITS[1]
            for b in value)):
        raise TypeError(f"{label} must be a pair (weight bits, activation bits) of integers "
                        f"in {ACT_BITS[0]}..{ACT_BITS[1]}, not {value!r}")
    return value


def _per_layer(option: str, given, gemms: list, check) -> dict:
    """``given`` (layer name or ``first``/``last`` → value) by the GEMM layers' names, each
    value checked by ``check(label, value)``."""
    names = [step.nodes[0].target for step in gemms]
    resolved = {}
    for name, value in (given or {}).items():
        target = {"first": names[0], "last": names[-1]}.get(name, name) if names else name
        if target not in names:
            raise ProgramError(f"{option}: no GEMM layer {name!r}; the layers are "
                               f"{', '.join(names)} (or first, last)")
        resolved[target] = check(f"{option}[{name!r}]", value)
    return resolved


def _act_demand(steps: list, widths: dict, act_bits: int, input_bits: int | None) -> dict:
    """The width each fx node's value takes where a GEMM reads it: the widest its readers
    ask for (their ``widths`` entry, else ``act_bits``; the input: ``input_bits`` if given),
    carried back through flatten and pooling, which keep their input's width."""
    demand = {}
    for step in steps:
        if step.kind == "gemm":
            bits = widths.get(step.nodes[0].target, (None, act_bits))[1]
            demand[step.input] = max(demand.get(step.input, 0), bits)
    for step in reversed(steps):
        if step.kind in ("flatten", "maxpool", "avgpool") and step.last in demand:
            demand[step.input] = max(demand.get(step.input, 0), demand[step.last])
    inputs = [step.nodes[0] for step in steps if step.kind == "input"]
    overridden = {step.input for step in steps if step.kind == "gemm"
                  and step.nodes[0].target in widths}
    for node in inputs:
        if input_bits is not None and node not in overridden:
            demand[node] = input_bits
    return demand


@torch.no_grad()
def lowering_notes(model: nn.Module, calibration: torch.Tensor) -> list[str]:
    """What ``quantize_model`` folds or drops from ``model`` (§17), one line each: the
    BatchNorms folded and a trailing softmax dropped (the program's logits are its input)."""
    return normalize(model, calibration[:2].to(torch.float32)).notes


def _search_clipping(program: IntegerProgram, lower, calibration: torch.Tensor,
                     logits: torch.Tensor) -> IntegerProgram:
    """The ``"output"`` calibration (§13): per low-width activation a factor of
    ``CLIP_FACTORS`` on its max-abs scale, by coordinate descent (two passes, in program
    order) on the KL divergence of the float view's logits from the float ``logits``.

    Pixel inputs keep their declared range (real inputs are clipped like activations);
    flatten and max-pool outputs inherit their input's scale. A candidate replaces the
    current factor only if strictly better.
    """
    inherited = {op.output for op in program.ops
                 if isinstance(op, (Flatten, MaxPool))
                 or isinstance(op, QuantizeInput) and not program.real_inputs}
    # a value with activation outliers has the scale its outlier ratio sets (§18)
    inherited |= {name for name, value in program.values.items() if value.outliers}
    # a concatenation's parts have its scale (§17)
    inherited |= {part for op in program.ops if isinstance(op, Concat) for part in op.parts}
    names = [op.output for op in program.ops
             if program.values[op.output].bits <= ACT_BITS[1] and op.output not in inherited]
    stride = -(-len(calibration) // SEARCH_IMAGES)
    images, target = calibration[::stride], logits[::stride].detach().to(torch.float64)
    target = target.log_softmax(1)

    def loss(candidate: IntegerProgram) -> float:
        out = run_fake_quant(candidate, images).log_softmax(1)
        return float((target.exp() * (target - out)).sum(1).mean())

    clip, best = {}, loss(program)
    for _ in range(2):
        improved = False
        for name in names:
            for factor in CLIP_FACTORS:
                if factor == clip.get(name, 1.0):
                    continue
                candidate = lower({**clip, name: factor})
                score = loss(candidate)
                if score < best:
                    clip, best, program, improved = {**clip, name: factor}, score, candidate, True
        if not improved:
            break
    return program


def _outlier_scale(x: torch.Tensor, bits: int, signed: bool, ratio: float) -> float:
    """The scale whose dense format ends at the activation outlier threshold of ``x``
    (§18): the ``⌈(1 − ratio)·n⌉``-th smallest ``|x|`` over ``hi`` (max-abs when that is
    0)."""
    magnitude = x.abs()
    rank = max(1, math.ceil((1 - ratio) * len(magnitude)))
    threshold = float(magnitude.kthvalue(rank).values)
    if threshold <= 0:
        return float(max_abs_scale(x, bits, signed=signed))
    return threshold / int_range(bits, signed)[1]


@dataclass
class _Lowering:
    """The state of ``quantize_model`` while it emits ops in plan order."""
    modules: dict
    floats: dict
    result: fx.Node
    act_bits: int
    input_bits: int
    weight_bits: int
    highway: bool
    act_calibration: str
    bias_correction: bool
    scheme_of: object
    options: dict
    layer_bits: dict = field(default_factory=dict)
    outlier_ratios: dict = field(default_factory=dict)
    act_demand: dict = field(default_factory=dict)
    clip: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    trained: Trained | None = None
    rotate: bool = False
    residuals: set = field(default_factory=set)
    act_outliers: dict = field(default_factory=dict)
    act_outlier_ratio: float = 0.0
    input_order: tuple = ()
    values: dict = field(default_factory=dict)
    value_of: dict = field(default_factory=dict)
    low_of: dict = field(default_factory=dict)
    rotated_of: dict = field(default_factory=dict)
    cat_of: dict = field(default_factory=dict)
    producers: dict = field(default_factory=dict)
    cat_values: dict = field(default_factory=dict)
    ops: list = field(default_factory=list)

    def unique(self, name: str) -> str:
        candidate, k = name, 2
        while candidate in self.values:
            candidate, k = f"{name}#{k}", k + 1
        return candidate

    def scale(self, node: fx.Node, bits: int, signed: bool, name: str = "") -> float:
        """Calibrated scale of ``node``'s float output at ``bits`` (§13), for the value
        ``name`` (whose clipping factor of the ``"output"`` calibration applies)."""
        if bits <= ACT_BITS[1] and self.trained is not None and name in self.trained.scales:
            return float(self.trained.scales[name])
        x = self.floats[node].detach().to(torch.float64).reshape(-1)
        if name in self.act_outliers:
            return _outlier_scale(x, bits, signed, self.act_outlier_ratio)
        if bits > ACT_BITS[1]:
            peak = float(x.abs().max())
            return peak / int_range(bits, signed)[1] if peak > 0 else 1.0
        if self.act_calibration == "mmse":
            # The grid search on every value of a large batch costs seconds per tensor;
            # a fixed stride keeps at most MMSE_SAMPLES of them (§13).
            x = x[::-(-len(x) // MMSE_SAMPLES)]
            return float(mmse_scale(x, bits, signed=signed))
        return float(max_abs_scale(x, bits, signed=signed)) * self.clip.get(name, 1.0)

    def capped(self, scale: float, step: _Step, bits: int) -> float:
        """``scale``, at most ``cap/hi`` for a capped ReLU (§17): then the format's upper
        clamp ``hi`` stands for at most the cap, as the float model's clamp does."""
        if step.cap is None:
            return scale
        return min(scale, step.cap / int_range(bits, False)[1])

    def add_value(self, node: fx.Node, name: str, bits: int, signed: bool,
                  scale: float) -> str:
        self.values[name] = Value(tuple(self.floats[node].shape[1:]), bits, signed, scale,
                                  self.act_outliers.get(name))
        self.value_of[node] = name
        return name

    def bits_of(self, node: fx.Node) -> int:
        """The low width of ``node``'s value: as its GEMM readers ask (``act_demand``)."""
        return self.act_demand.get(node, self.act_bits)

    def low(self, node: fx.Node, rotate: bool = False) -> str:
        """The value of ``node`` at its low width for a GEMM: itself if at most 8 bits
        wide, else a ``Requantize`` copy ``<name>.low`` (made once); with ``rotate`` and a
        power-of-two first axis, a ``Rotate`` copy ``<name>.rot`` (§19) instead."""
        name = self.value_of[node]
        source = self.values[name]
        if source.bits <= ACT_BITS[1]:
            return name
        size = source.shape[0]
        if rotate and size >= 2 and not size & (size - 1):
            if name not in self.rotated_of:
                copy = self.unique(f"{name}.rot")
                key = ("rotated", node)  # the rotated float activations, for the scale
                self.floats[key] = walsh_hadamard(
                    self.floats[node].detach().to(torch.float64), 1) / size ** 0.5
                bits = self.bits_of(node)
                scale = self.scale(key, bits, True, copy)
                self.values[copy] = Value(source.shape, bits, True, scale)
                multiplier, shift = _requant(f"rotate '{copy}'",
                                             source.scale / (size ** 0.5 * scale))
                self.ops.append(Rotate(copy, name, copy, int(multiplier), int(shift)))
                self.rotated_of[name] = copy
            return self.rotated_of[name]
        if name not in self.low_of:
            copy = self.unique(f"{name}.low")
            bits = self.bits_of(node)
            scale = self.scale(node, bits, source.signed, copy)
            self.values[copy] = Value(source.shape, bits, source.signed, scale,
                                      self.act_outliers.get(copy))
            multiplier, shift = _requant(f"requantize '{copy}'", source.scale / scale)
            self.ops.append(Requantize(copy, name, copy, int(multiplier), int(shift)))
            self.low_of[name] = copy
        return self.low_of[name]

    def lower(self, step: _Step, pixel_max: int, pixel_scale: float,
              real_inputs: bool) -> None:
        node = step.nodes[0]
        if step.kind == "input":
            bits = self.act_demand.get(node, self.input_bits)
            if real_inputs:
                # signed only if the data has negative values: otherwise the sign bit of a
                # symmetric format would waste half the codes (§13)
                signed = bool((self.floats[node] < 0).any())
                scale = self.scale(node, bits, signed, "input")
                pixel_scale = scale  # the pixels are the input format itself: M·2^−s = 1
            else:
                signed = False
                scale = pixel_max * pixel_scale / int_range(bits, False)[1]
            name = self.add_value(step.last, "input", bits, signed, scale)
            self.input_order = _input_order(step.last) or ()
            multiplier, shift = _requant("quantize_input", pixel_scale / scale)
            self.ops.append(QuantizeInput(name, name, int(multiplier), int(shift)))
        elif step.kind == "gemm":
            self.ops.append(self.gemm(step))
        elif step.kind == "cat":
            self.concatenate(step)
        elif step.kind == "lookup":
            self.lookup(step)
        else:
            source = self.value_of[step.input]
            bits, signed, scale = (self.values[source].bits, self.values[source].signed,
                                   self.values[source].scale)
            name = self.unique(node.target if node.op == "call_module" else node.name)
            if step.kind == "flatten":
                self.add_value(node, name, bits, signed, scale)
                self.ops.append(Flatten(name, source, name))
                return
            module = self.modules[node.target]
            kernel = _pair(module.kernel_size)
            stride = _pair(module.stride or module.kernel_size)
            padding = _pair(module.padding)
            if step.kind == "maxpool":
                self.add_value(node, name, bits, signed, scale)
                self.ops.append(MaxPool(name, source, name, kernel, stride, padding))
                return
            self.add_value(node, name, bits, signed, self.scale(node, bits, signed, name))
            multiplier, shift = _requant(f"avgpool '{name}'", scale / (
                kernel[0] * kernel[1] * self.values[name].scale))
            self.ops.append(AvgPool(name, source, name, kernel, stride, padding, int(multiplier),
                                    int(shift)))

    def lookup(self, step: _Step) -> None:
        """A tabulated activation (§12, §17): the input at its low width, the output at
        ``act_bits`` (signed if ``f`` is negative somewhere on the input's grid) with its
        calibrated scale, and the table ``clamp(round_half_even(f(σ_x·q)/σ_y))`` over every
        input code ``q``."""
        node = step.nodes[0]
        function = _table_function(node, self.modules)
        source = self.low(step.input)
        x = self.values[source]
        low, high = int_range(x.bits, x.signed)
        real = TABLE_FUNCTIONS[function](torch.arange(low, high + 1, dtype=torch.float64)
                                         * x.scale)
        signed = bool((real < 0).any())
        name = self.unique(node.target if node.op == "call_module" else node.name)
        self.add_value(node, name, self.act_bits, signed,
                       self.scale(node, self.act_bits, signed, name))
        table = to_int_round_half_even(real, torch.tensor(self.values[name].scale),
                                       self.act_bits, signed=signed)
        self.ops.append(Lookup(name, source, name, function, x.bits, table.to(torch.int64)))

    def cat_value(self, step: _Step) -> str:
        """The value of the concatenation ``step`` (§17), declared when first asked for
        (its member GEMMs write in its format before it runs): ``HIGHWAY_BITS`` if it is
        the result or a highway skip tensor, else the widest width asked of it or of an
        operand; signed if an operand is (a GEMM without ReLU, or negative on the
        calibration images); the scale calibrated on the concatenated float tensor."""
        node = step.nodes[0]
        if node not in self.cat_values:
            wide = node is self.result or (self.highway and node in self.residuals)
            bits = HIGHWAY_BITS if wide else max(
                self.bits_of(operand) for operand in (node, *step.operands))
            signed = any(not self.producers[operand].relu if operand in self.cat_of else
                         bool((self.floats[operand] < 0).any()) for operand in step.operands)
            name = self.unique(node.name)
            self.values[name] = Value(tuple(self.floats[node].shape[1:]), bits, signed,
                                      self.scale(node, bits, signed, name))
            self.cat_values[node] = name
        return self.cat_values[node]

    def concatenate(self, step: _Step) -> None:
        """``torch.cat`` along the channels (§17): a ``concat`` of parts in the value's
        format and scale (``cat_value``). A member GEMM wrote its part in that format;
        any other operand not already in it is requantized into a part
        ``<name>.part<i>`` (§3 with ``M·2^(−s) = σ_x/σ_y``)."""
        name = self.cat_value(step)
        out = self.values[name]
        parts = []
        for index, operand in enumerate(step.operands):
            source_name = self.value_of[operand]
            source = self.values[source_name]
            if self.cat_of.get(operand) is step or (source.bits, source.signed, source.scale,
                                                    source.outliers) == (
                    out.bits, out.signed, out.scale, None):
                parts.append(source_name)
                continue
            part = self.unique(f"{name}.part{index}")
            self.values[part] = Value(source.shape, out.bits, out.signed, out.scale)
            multiplier, shift = _requant(f"concatenation '{name}'", source.scale / out.scale)
            self.ops.append(Requantize(part, source_name, part, int(multiplier), int(shift)))
            parts.append(part)
        self.ops.append(Concat(name, tuple(parts), name))
        self.value_of[step.nodes[0]] = name

    def weights(self, layer: str, weight: torch.Tensor, scheme: str, bits: int) -> dict:
        label = f"layer '{layer}'"
        key = ("weights", label)
        if key in self.cache:
            return self.cache[key]
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise ProgramError(f"{label}: scheme must be one of {', '.join(SCHEMES)}, not "
                               f"{scheme!r}")
        try:
            options = {**self.options, **({"outlier_ratio": self.outlier_ratios[layer]}
                                          if layer in self.outlier_ratios else {})}
            if self.trained is not None:
                options = {**options, **self.trained.layer_options.get(layer, {})}
            if layer in self.layer_bits and options["weight_outlier_bits"] <= bits:
                # the default outlier width follows the layer's own weights
                options = {**options, "weight_outlier_bits": min(2 * bits, HIGHWAY_BITS)}
            self.cache[key] = SCHEMES[scheme].quantize(weight, bits, options)
        except (TypeError, ValueError) as error:
            raise ProgramError(f"{label}: {scheme} weights: {error}") from error
        return self.cache[key]

    def gemm(self, step: _Step) -> Gemm:
        node = step.nodes[0]
        module = self.modules[node.target]
        label = f"layer '{node.target}'"
        source = self.low(step.input, rotate=self.rotate)
        act = self.values[source]
        rotated = source in self.rotated_of.values()
        weight = module.weight.detach()
        if rotated:  # offline, into the rotated input space (§19)
            weight = walsh_hadamard(weight.to(torch.float64), 1) / weight.shape[1] ** 0.5
        # With the highway the skip tensors and the residual sums (the stream a following
        # block takes its skip from) are 16-bit (§11); the output is always 16-bit; under
        # rotation every GEMM output is, for the next layer's online rotation (§19).
        wide = step.last is self.result or self.rotate or (self.highway and (
            step.last in self.residuals or step.residual is not None))
        name = self.unique(node.target)
        if step.last in self.cat_of:  # written straight into its concatenation (§17)
            cat = self.values[self.cat_value(self.cat_of[step.last])]
            name = self.add_value(step.last, name, cat.bits, cat.signed, cat.scale)
        else:
            signed = not step.relu
            bits = HIGHWAY_BITS if wide else self.bits_of(step.last)
            name = self.add_value(step.last, name, bits, signed, self.capped(
                self.scale(step.last, bits, signed, name), step, bits))
        out = self.values[name]
        scheme = self.scheme_of(node.target)
        weight_bits = self.layer_bits.get(node.target, (self.weight_bits,))[0]
        n = module.weight.shape[0]
        geometry = {}
        if isinstance(module, nn.Conv2d):
            geometry = {"kernel": _pair(module.kernel_size), "stride": _pair(module.stride),
                        "padding": _conv_padding(module)}
        zeros = torch.zeros(n, dtype=torch.int64)
        op = Gemm(name=name, input=source, output=name,
                  layer="conv2d" if geometry else "linear",
                  in_features=weight[0].numel(), out_features=n, scheme=scheme,
                  weight_bits=weight_bits, relu=step.relu, bias=zeros, multiplier=zeros,
                  shift=zeros, **geometry,
                  **self.weights(node.target, weight, scheme, weight_bits))
        weight_scale = op.weight_scale.to(torch.float64)
        bias_real = module.bias.detach().to(torch.float64) if module.bias is not None \
            else torch.zeros(n, dtype=torch.float64)
        if self.bias_correction:
            key = ("mean input", label)
            if key not in self.cache:
                acts = self.floats[("rotated", step.input) if rotated else step.input]
                acts = acts.detach().to(torch.float64)
                if geometry:
                    acts = im2col(acts, op.kernel, op.stride, op.padding)
                self.cache[key] = acts.mean(0)
            error = (weight.to(torch.float64).reshape(n, -1).T
                     - op.weight_scheme.matrix().to(torch.float64) * weight_scale)
            bias_real = bias_real + self.cache[key] @ error
        bias = torch.round(bias_real / (act.scale * weight_scale))
        low_b, high_b = int_range(BIAS_BITS, signed=True)
        if ((bias < low_b) | (bias > high_b)).any():
            raise ProgramError(f"{label}: a bias does not fit s32 at the scale σ_a·σ_w")
        multiplier, shift = _requant(label, act.scale * weight_scale / out.scale)
        extra = {}
        if step.residual is not None:
            residual = self.value_of[step.residual] if self.highway else self.low(step.residual)
            residual_multiplier, residual_shift = _align_shifts(label, *_requant(
                label, torch.full((n,), self.values[residual].scale / out.scale,
                                  dtype=torch.float64)), shift)
            extra = {"residual": residual, "residual_multiplier": residual_multiplier,
                     "residual_shift": residual_shift}
        return replace(op, bias=bias.to(torch.int64), multiplier=multiplier, shift=shift,
                       **extra)
