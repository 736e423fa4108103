"""Quantization-aware training through an integer program's float view (docs/program.md
§13): ``TrainableProgram`` is ``float_view`` with trainable parameters and
straight-through gradients, for ``quantize_model``'s ``fine_tune``.

What trains, in place of what the post-training lowering chose:

* each GEMM's float weight and bias (BatchNorm already folded), starting from the
  program's bias (with its bias correction); the forward pass multiplies with the real
  weight the layer's scheme makes of the current float weight (``real_weight``: MMSE
  scales, value-aware thresholds and outliers, multi-tensor planes, all re-derived every
  step), the backward pass goes straight through to the float weight;
* SYQ layers' codebook magnitudes (``syq_quantize``'s gradients, as in the SYQ study);
* each low-width activation's step size σ (LSQ, ``fake_quantize_ste``), as ``log σ``,
  starting from the calibrated scale; with activation outliers (§18) the step is the
  dense format's (so the value-aware threshold ``hi·σ`` is learned) and the block rule
  applies in the forward pass. The input keeps its grid (pixels, or a real input's
  calibrated and clipped scale, handed back to the lowering) and 16-bit values
  (the highway, the logits) keep their scales while training; the lowering afterwards
  calibrates them on the trained float model.

At the start the forward pass equals ``run_fake_quant`` of the program (up to SYQ's
fixed-point tables); afterwards the program is lowered again and
``run_integer`` stays the truth.
"""

import torch
from torch import nn

from olmac.spec import ACT_BITS
from ..fake_quant import fake_quantize_ste
from ..formats import int_range
from ..syq import init_codebook, program_zero_code, syq_quantize
from .float_view import float_view, program_weights
from .integer_program import IntegerProgram
from .lowering import Trained
from .kernels import walsh_hadamard
from .ops import Gemm, Rotate
from .outliers import stored
from .schemes import SCHEMES

__all__ = ["TrainableProgram", "fake_quantize_stored_ste"]


def fake_quantize_stored_ste(program: IntegerProgram, name: str, x: torch.Tensor,
                             scale: torch.Tensor | float) -> torch.Tensor:
    """The value ``name`` of ``program``, which has activation outliers (§18), of real
    ``x`` (``N×`` its shape) at step ``scale``, for training: ``σ·k`` with ``k`` the level
    its readers see (``round_half_even(x/σ)`` clamped to the outlier format, then the
    block rule: what a block cannot keep saturates to the dense format). Gradients as
    ``fake_quantize_ste``'s, with a value that the block rule saturated counted as
    clipped: ``∂/∂x = 0`` and ``∂/∂σ = k``. (Passing the gradient straight through there
    rewards growing a value the forward pass clamps: the 4/3 + 2 % residual CNN trained
    at 10⁻² diverged, 97 % after 6 epochs, 23 % after 40.)
    """
    value = program.values[name]
    low, high = int_range(value.produced_bits, value.signed)
    steps = torch.clamp(x / scale, low, high)
    rounded = torch.round(steps)
    kept = stored(program, name, rounded.to(torch.int64))[0].to(steps.dtype)
    straight = rounded + (steps - steps.detach())
    return torch.where(kept == rounded, straight, kept) * scale


class TrainableProgram(nn.Module):
    """The float view of ``program`` (``float_view``) with trainable weights, biases, SYQ
    codebooks and activation step sizes, in float64 as ``run_fake_quant`` (an input on a
    rounding tie must round the same way); ``forward(images)`` gives float64 logits.

    ``layers`` are the float ``nn.Linear``/``nn.Conv2d`` each GEMM was lowered from, by
    op name (``quantize_model`` hands them to ``fine_tune``), and ``options`` the scheme
    options of the lowering. ``finish()`` writes the trained weights and biases back into
    ``layers`` and returns the learned scales and codebooks.
    """

    def __init__(self, program: IntegerProgram, layers: dict[str, nn.Module], options: dict):
        super().__init__()
        self.program, self._layers, self._options = program, layers, options
        # a concatenation's 0/1 copies (§17) have no float layer: they stay as they are
        self._gemms = [op for op in program.ops if isinstance(op, Gemm) and op.name in layers]
        self._rotated = {op.output for op in program.ops if isinstance(op, Rotate)}
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.magnitudes = nn.ParameterList()
        self._syq: dict[str, int] = {}
        for op in self._gemms:
            weight = layers[op.name].weight.detach().to(torch.float64)
            self.weights.append(nn.Parameter(weight.clone()))
            scale = program.values[op.input].scale * op.weight_scale.to(torch.float64)
            self.biases.append(nn.Parameter(op.bias * scale))
            if op.scheme == "syq":
                self._syq[op.name] = len(self.magnitudes)
                self.magnitudes.append(nn.Parameter(init_codebook(
                    self._rotate(op, weight), granularity=options["syq_granularity"],
                    idx_bits=options["syq_idx_bits"],
                    zero=program_zero_code(options["syq_idx_bits"]))))
        inherited = {op.output for op in program.ops if op.KIND in ("flatten", "maxpool")}
        self._learned = [name for name, value in program.values.items()
                         if value.bits <= ACT_BITS[1] and name != "input"
                         and name not in inherited]
        self.log_scales = nn.Parameter(torch.tensor(
            [program.values[name].scale for name in self._learned], dtype=torch.float64
        ).log())
        self._index = {name: i for i, name in enumerate(self._learned)}

    def _fake(self, name: str, x: torch.Tensor) -> torch.Tensor:
        value = self.program.values[name]
        scale = self.log_scales[self._index[name]].exp() if name in self._index \
            else value.scale
        if value.outliers is None:
            return fake_quantize_ste(x, scale, value.bits, value.signed)
        return fake_quantize_stored_ste(self.program, name, x, scale)

    def _rotate(self, op: Gemm, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` in the input space of ``op``: rotated as the lowering does (§19)
        where ``op`` reads a ``Rotate`` output."""
        if op.input not in self._rotated:
            return weight
        return walsh_hadamard(weight, 1) / weight.shape[1] ** 0.5

    def _weights(self, op: Gemm) -> tuple[torch.Tensor, torch.Tensor]:
        if op not in self._gemms:
            return program_weights(self.program, op)
        i = self._gemms.index(op)
        weight = self._rotate(op, self.weights[i])
        n = weight.shape[0]
        if op.name in self._syq:
            real = syq_quantize(weight, self.magnitudes[self._syq[op.name]],
                                zero=program_zero_code(self._options["syq_idx_bits"]))
            return real.reshape(n, -1).T, self.biases[i]
        rows = weight.reshape(n, -1).T
        real = SCHEMES[op.scheme].real_weight(weight.detach(), op.weight_bits, self._options)
        # the scheme's weight forward, straight through to the float weight backward
        return real.to(rows.dtype) + (rows - rows.detach()), self.biases[i]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return float_view(self.program, images.to(torch.float64), self._fake, self._weights)

    @torch.no_grad()
    def finish(self) -> Trained:
        """Write the trained weights and biases into the layers; the learned activation
        scales and SYQ codebooks, for the lowering."""
        for op, weight, bias in zip(self._gemms, self.weights, self.biases):
            layer = self._layers[op.name]
            layer.weight.copy_(weight)
            if layer.bias is None:
                layer.bias = nn.Parameter(bias.detach().to(layer.weight.dtype))
            else:
                layer.bias.copy_(bias)
        scales = dict(zip(self._learned, self.log_scales.detach().exp().tolist()))
        if self.program.real_inputs:
            # the real input's grid was fixed while training, clip factor (§13) included:
            # the second lowering must not recalibrate it by max-abs
            scales["input"] = self.program.values["input"].scale
        codebooks = {name: {"syq_magnitudes": self.magnitudes[i].detach().clone()}
                     for name, i in self._syq.items()}
        return Trained(scales, codebooks)
