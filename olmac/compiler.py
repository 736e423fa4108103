"""Compile an integer program (docs/program.md §9–§13) for :class:`hw.network.NetworkCore`:
the op descriptors, weight and parameter words, and the activation memory layout
(docs/network.md §15).

The compiler is the only place that reads both sides: it takes the program from
``golden`` and packs it through the layouts ``hw`` declares.
"""

from dataclasses import dataclass

import numpy as np
import torch

from olmac.golden.formats import int_range
from olmac.golden.program import (AvgPool, Flatten, Gemm, IntegerProgram, MaxPool, QuantizeInput,
                            Requantize)
from olmac.hw.network import MAX_DIM, MAX_KERNEL, STORAGE_BITS, NetworkCore, OpKind
from olmac.spec import CORE_SCHEMES

__all__ = ["CompileError", "CompiledNetwork", "compile_program", "SUPPORTED_SCHEMES"]

#: Weight schemes the sequencer runs (the array's dense lanes plus weight-outlier lanes).
SUPPORTED_SCHEMES = CORE_SCHEMES


class CompileError(ValueError):
    """The program cannot run on the network core; the message names the op and why."""


@dataclass
class _Stored:
    """Where a value lives: ``words`` words from ``base``; ``slots[word, lane]`` is the
    per-sample flat (``C×H×W`` row-major) index stored there, or -1 (a zero slot)."""
    base: int
    slots: np.ndarray
    pixels: tuple[int, int]       # (H, W) of an image tensor, (1, 1) for a flat one
    channel_words: int            # words per pixel

    @property
    def words(self) -> int:
        return len(self.slots)


def _image_slots(channels: int, height: int, width_px: int, width: int) -> np.ndarray:
    channel_words = -(-channels // width)
    slots = np.full((height * width_px * channel_words, width), -1, dtype=np.int64)
    for pixel in range(height * width_px):
        y, x = divmod(pixel, width_px)
        for word in range(channel_words):
            for lane in range(width):
                c = word * width + lane
                if c < channels:
                    slots[pixel * channel_words + word, lane] = (c * height + y) * width_px + x
    return slots


def _flat_slots(features: int, width: int) -> np.ndarray:
    index = np.arange(-(-features // width) * width).reshape(-1, width)
    return np.where(index < features, index, -1)


@dataclass
class CompiledNetwork:
    """A program ready for :class:`NetworkCore`: the core's configuration and memory
    images, and the packing of inputs and outputs.

    ``config`` is the core's ``NetworkCore.Config`` and ``contents`` its memory images
    (``program``, ``weights``, ``params``: lists of packed words), so
    ``NetworkCore(config, **contents)`` runs the program;
    ``input_words``/``output_words`` words cross ``inputs``/``outputs`` per image;
    ``macs`` counts the multiply-accumulates of one image (every GEMM's ``M·K·N``).
    """
    config: NetworkCore.Config
    contents: dict
    input_slots: np.ndarray
    output_slots: np.ndarray
    output_signed: bool
    macs: int
    ops: list

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def input_words(self) -> int:
        return len(self.input_slots)

    @property
    def output_words(self) -> int:
        return len(self.output_slots)

    def pack_inputs(self, pixels: torch.Tensor) -> np.ndarray:
        """``N`` images of integer pixels as ``N × input_words × width`` 16-bit slots."""
        flat = pixels.reshape(len(pixels), -1).to(torch.int64).numpy()
        padded = np.concatenate([flat, np.zeros((len(flat), 1), dtype=np.int64)], axis=1)
        return padded[:, self.input_slots]  # slot -1 reads the appended zero

    def unpack_outputs(self, slots: np.ndarray) -> torch.Tensor:
        """``N × output_words × width`` 16-bit slots as ``N × F`` int64 logits."""
        slots = np.asarray(slots, dtype=np.int64)
        if self.output_signed:
            slots = np.where(slots >= 1 << (STORAGE_BITS - 1), slots - (1 << STORAGE_BITS),
                             slots)
        features = int(self.output_slots.max()) + 1
        logits = np.zeros((len(slots), features), dtype=np.int64)
        used = self.output_slots >= 0
        logits[:, self.output_slots[used]] = slots[:, used]
        return torch.from_numpy(logits)


def _pack(layout, value) -> int:
    return layout.const(value).as_value().value


class _Compiler:
    def __init__(self, program: IntegerProgram, width: int):
        self.program = program
        self.width = width
        self.stored: dict[str, _Stored] = {}
        self.data_words = 0
        self.descriptors: list[dict] = []
        self.weight_beats: list[dict] = []   # per beat: dense tile and outliers
        self.param_words: list[list[dict]] = []
        self.macs = 0
        self.max_k = 1
        self.act_formats: set[tuple[int, bool]] = set()
        self.weight_bits = 2
        self.outlier_bits = None
        self.max_outliers = 0

    def allocate(self, slots: np.ndarray, pixels, channel_words) -> _Stored:
        stored = _Stored(self.data_words, slots, pixels, channel_words)
        self.data_words += stored.words
        return stored

    def allocate_value(self, name: str) -> _Stored:
        value = self.program.values[name]
        if len(value.shape) == 3:
            c, h, w = value.shape
            stored = self.allocate(_image_slots(c, h, w, self.width), (h, w),
                                   -(-c // self.width))
        else:
            slots = _flat_slots(value.shape[0], self.width)
            stored = self.allocate(slots, (1, 1), len(slots))
        self.stored[name] = stored
        return stored

    def descriptor(self, label: str, kind: OpKind, **fields) -> None:
        for name in ("in_h", "in_w", "out_h", "out_w"):
            if fields.get(name, 0) > MAX_DIM:
                raise CompileError(f"{label}: {name} = {fields[name]} exceeds {MAX_DIM}")
        for name in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
            if fields.get(name, 0) > MAX_KERNEL:
                raise CompileError(f"{label}: {name} = {fields[name]} exceeds {MAX_KERNEL}")
        self.descriptors.append({"kind": kind, **fields})

    @staticmethod
    def bounds(value, relu=False) -> dict:
        low, high = int_range(value.bits, value.signed)
        return {"low": max(low, 0) if relu else low, "high": high}

    def uniform_params(self, multiplier: int, shift: int) -> int:
        self.param_words.append([{"bias": 0, "multiplier": multiplier, "shift": shift,
                                  "residual_multiplier": 0, "residual_shift": 0}] * self.width)
        return len(self.param_words) - 1

    def vector_op(self, label, kind, source: _Stored, out_name, multiplier, shift,
                  in_signed, kernel=(1, 1), stride=(1, 1)):
        out_value = self.program.values[out_name]
        if kernel == (1, 1) and stride == (1, 1):
            # elementwise: any layout, kept slot for slot
            out = self.allocate(source.slots, source.pixels, source.channel_words)
            self.stored[out_name] = out
        else:
            out = self.allocate_value(out_name)
        (in_h, in_w), (out_h, out_w) = source.pixels, out.pixels
        self.descriptor(
            label, kind, in_base=source.base, out_base=out.base, in_h=in_h, in_w=in_w,
            in_words=source.channel_words, out_h=out_h, out_w=out_w,
            out_words=out.channel_words, out_pixels=out_h * out_w, kernel_h=kernel[0],
            kernel_w=kernel[1], stride_h=stride[0], stride_w=stride[1], in_signed=in_signed,
            param_base=self.uniform_params(multiplier, shift), **self.bounds(out_value))

    def gemm(self, label: str, op: Gemm) -> None:
        if op.scheme not in SUPPORTED_SCHEMES:
            raise CompileError(f"{label}: the network core runs the schemes "
                               f"{', '.join(SUPPORTED_SCHEMES)}, not {op.scheme!r}")
        source_value = self.program.values[op.input]
        out_value = self.program.values[op.output]
        self.act_formats.add((source_value.bits, source_value.signed))
        self.weight_bits = max(self.weight_bits, op.weight_bits)
        source = self.stored[op.input]
        out = self.allocate_value(op.output)
        width = self.width
        dense = op.weights.to(torch.int64).numpy()
        outliers = (op.weight_outliers.to(torch.int64).numpy()
                    if op.weight_outliers is not None else np.zeros_like(dense))
        if op.weight_outliers is not None:
            self.outlier_bits = max(self.outlier_bits or 0, op.weight_outlier_bits)
        n_out = op.out_features
        if op.layer == "conv2d":
            (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
            channels = source_value.shape[0]

            def k_index(ky, kx, word, lane):
                c = word * width + lane
                return (c * kh + ky) * kw + kx if c < channels else -1
            in_pixels, out_pixels = source.pixels, out.pixels
            m_rows = out_pixels[0] * out_pixels[1]
        else:
            (kh, kw), (sh, sw), (ph, pw) = (1, 1), (1, 1), (0, 0)

            def k_index(ky, kx, word, lane):
                return int(source.slots[word, lane])
            in_pixels, out_pixels = (1, 1), (1, 1)
            m_rows = 1
        in_words = source.channel_words if op.layer == "conv2d" else source.words
        self.macs += m_rows * op.in_features * n_out
        self.max_k = max(self.max_k, kh * kw * in_words * width)
        weight_base = len(self.weight_beats)
        param_base = len(self.param_words)
        for tile in range(out.channel_words):
            for ky in range(kh):
                for kx in range(kw):
                    for word in range(in_words):
                        beat_tile = [[0] * width for _ in range(width)]
                        beat_outliers = []
                        for lane in range(width):
                            k = k_index(ky, kx, word, lane)
                            if k < 0:
                                continue
                            for col in range(width):
                                n = tile * width + col
                                if n >= n_out:
                                    continue
                                beat_tile[lane][col] = int(dense[k, n])
                                if outliers[k, n]:
                                    beat_outliers.append({"valid": 1, "lane": lane,
                                                          "col": col,
                                                          "value": int(outliers[k, n])})
                        self.max_outliers = max(self.max_outliers, len(beat_outliers))
                        self.weight_beats.append({"tile": beat_tile, "outliers": beat_outliers})
            tile_params = []
            for col in range(width):
                n = tile * width + col
                if n >= n_out:
                    tile_params.append({"bias": 0, "multiplier": 0, "shift": 0,
                                     "residual_multiplier": 0, "residual_shift": 0})
                    continue
                tile_params.append({
                    "bias": int(op.bias[n]), "multiplier": int(op.multiplier[n]),
                    "shift": int(op.shift[n]),
                    "residual_multiplier": int(op.residual_multiplier[n])
                    if op.residual is not None else 0,
                    "residual_shift": int(op.residual_shift[n]) if op.residual is not None else 0,
                })
            self.param_words.append(tile_params)
        residual = {}
        if op.residual is not None:
            residual_value = self.program.values[op.residual]
            residual = {"residual": 1, "res_base": self.stored[op.residual].base,
                        "res_signed": int(residual_value.signed)}
        self.descriptor(
            label, OpKind.GEMM, in_base=source.base, out_base=out.base,
            in_h=in_pixels[0], in_w=in_pixels[1], in_words=in_words,
            out_h=out_pixels[0], out_w=out_pixels[1], out_words=out.channel_words,
            out_pixels=out_pixels[0] * out_pixels[1], kernel_h=kh, kernel_w=kw,
            stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, relu=int(op.relu),
            weight_base=weight_base, param_base=param_base, **residual,
            **self.bounds(out_value, op.relu))

    def compile(self) -> None:
        program = self.program
        first = program.ops[0]
        pixels = self.allocate_value(first.output)  # the raw pixels, laid out as the input
        del self.stored[first.output]
        self.descriptor("load", OpKind.LOAD, out_base=pixels.base, count=pixels.words)
        for index, op in enumerate(program.ops):
            label = op.label(index)
            if isinstance(op, QuantizeInput):
                self.vector_op(label, OpKind.SUM, pixels, op.output, op.multiplier, op.shift,
                               in_signed=0)
            elif isinstance(op, Requantize):
                self.vector_op(label, OpKind.SUM, self.stored[op.input], op.output,
                               op.multiplier, op.shift,
                               in_signed=int(program.values[op.input].signed))
            elif isinstance(op, AvgPool):
                self.vector_op(label, OpKind.SUM, self.stored[op.input], op.output,
                               op.multiplier, op.shift,
                               in_signed=int(program.values[op.input].signed),
                               kernel=op.kernel, stride=op.stride)
            elif isinstance(op, MaxPool):
                self.vector_op(label, OpKind.MAX, self.stored[op.input], op.output, 1, 0,
                               in_signed=int(program.values[op.input].signed),
                               kernel=op.kernel, stride=op.stride)
            elif isinstance(op, Flatten):
                self.stored[op.output] = self.stored[op.input]  # same words, same slots
            elif isinstance(op, Gemm):
                self.gemm(label, op)
            else:
                raise CompileError(f"{label}: the network core has no {op.KIND!r} op")
        out = self.stored[program.output]
        self.descriptor("store", OpKind.STORE, in_base=out.base, count=out.words, final=1)
        self.input_slots = pixels.slots
        self.output_slots = out.slots


def compile_program(program: IntegerProgram, *, width: int = 8,
                    weight_outlier_slots: int | None = None) -> CompiledNetwork:
    """Compile ``program`` for a :class:`NetworkCore` of ``width × width`` MACs.

    The core's formats are the program's: activations as wide as the widest GEMM input
    (unsigned if every GEMM input is), weights as the widest GEMM weight, one weight-outlier
    lane when a layer is value-aware, with as many slots per weight word as the fullest
    beat needs (or ``weight_outlier_slots``). Memories are exactly as deep as the program.

    Raises
    ------
    CompileError
        For a scheme or op the core does not run, a feature map or kernel beyond the
        descriptor fields, or a beat with more weight outliers than
        ``weight_outlier_slots``.
    """
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 64:
        raise TypeError(f"width must be an integer in 1..64, not {width!r}")
    compiler = _Compiler(program, width)
    compiler.compile()
    signs = {signed for _, signed in compiler.act_formats}
    act_signed = True in signs
    act_bits = max(bits + (1 if act_signed and not signed else 0)
                   for bits, signed in compiler.act_formats)
    slots = compiler.max_outliers if compiler.outlier_bits else 0
    if weight_outlier_slots is not None:
        if slots > weight_outlier_slots:
            raise CompileError(f"a weight beat holds {slots} outliers, more than "
                               f"weight_outlier_slots = {weight_outlier_slots}")
        slots = weight_outlier_slots
    outlier_params = {}
    if compiler.outlier_bits:
        outlier_params = dict(weight_outlier_lanes=1, weight_outlier_bits=compiler.outlier_bits,
                              weight_outlier_slots=max(slots, 1))
    config = NetworkCore.Config(
        width=width, act_bits=act_bits, act_signed=act_signed,
        weight_bits=compiler.weight_bits, max_k=compiler.max_k,
        data_depth=max(compiler.data_words, 1),
        weight_depth=max(len(compiler.weight_beats), 1),
        param_depth=len(compiler.param_words),
        program_depth=len(compiler.descriptors), **outlier_params)
    layouts = config.layouts
    outlier_slots = outlier_params.get("weight_outlier_slots", 0)
    weight_words = []
    for beat in compiler.weight_beats:
        word = {"tile": beat["tile"]}
        if outlier_slots:
            word["outliers"] = beat["outliers"] + [{"valid": 0, "lane": 0, "col": 0,
                                                    "value": 0}] * (outlier_slots
                                                                    - len(beat["outliers"]))
        weight_words.append(_pack(layouts["weights"], word))
    contents = dict(
        program=[_pack(layouts["program"], d) for d in compiler.descriptors],
        weights=weight_words,
        params=[_pack(layouts["params"], p) for p in compiler.param_words])
    return CompiledNetwork(config, contents, compiler.input_slots, compiler.output_slots,
                           program.values[program.output].signed, compiler.macs,
                           compiler.descriptors)
