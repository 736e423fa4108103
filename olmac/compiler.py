"""Compile an integer program (docs/program.md §9–§13) for :class:`hw.network.NetworkCore`:
the op descriptors, weight and parameter words, and the activation memory layout
(docs/network.md §15).

The compiler is the only place that reads both sides: it takes the program from
``golden`` and packs it through the layouts ``hw`` declares.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from olmac.golden.formats import int_range
from olmac.golden.program import (AvgPool, Concat, Flatten, Gemm, IntegerProgram, Lookup,
                                  MaxPool, QuantizeInput, Requantize, Value)
from olmac.hw.codebook import DECODER_IDX_BITS, MAX_SUBGROUPS
from olmac.hw.network import (ACT_SHIFT_BITS, MAX_DIM, MAX_KERNEL, MAX_PASSES, STORAGE_BITS,
                              TABLE_ENTRY_BITS, CodebookMode, NetworkCore, OpKind, code_tiles,
                              codebook_word_entries)
from olmac.spec import (ACT_BITS, BOARD_FUSE_COPIES, BOARD_PREFETCH, CORE_SCHEMES,
                        OUTLIER_LANES, PLANE_SHIFT_BITS)

__all__ = ["CompileError", "CompiledNetwork", "compile_program", "compile_for_board", "SUPPORTED_SCHEMES",
           "digit_count", "plan_passes", "with_copy_gemms"]

#: Weight schemes the sequencer runs: every scheme of golden/program/schemes.py (SYQ codes
#: through the core's codebook decoder, docs/network.md §17; multi-tensor planes as
#: passes, §15).
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
    packed: bool = False          # in the packed memory (else the 16-bit one)
    stride: int = 0               # words from one pixel to the next: channel_words, or
    #                               a concatenation's (a part inside it)

    def __post_init__(self):
        self.stride = self.stride or self.channel_words

    @property
    def words(self) -> int:
        return len(self.slots)

    @property
    def channel_map(self) -> np.ndarray:
        """``[word, lane]``: the channel (feature) of a pixel's slot, or -1."""
        first = self.slots[:self.channel_words]
        return np.where(first >= 0, first // (self.pixels[0] * self.pixels[1]), -1)


def _layout_slots(channel_map: np.ndarray, height: int, width_px: int) -> np.ndarray:
    """The slots of a ``C×H×W`` value whose pixels (row-major) each hold the words
    ``channel_map`` (``[word, lane]``: a channel or -1)."""
    pixels = np.arange(height * width_px)[:, None, None]
    flat = channel_map[None] * (height * width_px) + pixels
    return np.where(channel_map[None] >= 0, flat, -1).reshape(-1, channel_map.shape[1])


def _image_slots(channels: int, height: int, width_px: int, width: int) -> np.ndarray:
    return _layout_slots(_flat_slots(channels, width), height, width_px)


def _im2col_slots(shape, op, out_pixels, width: int) -> tuple[np.ndarray, int]:
    """The im2col columns of convolution ``op`` over a ``C×H×W`` input, laid out across
    the lanes (docs/network.md §15): per output pixel, ``⌈C·kh·kw/width⌉`` words whose slot
    ``k`` (the weight row ``(c·kh + ky)·kw + kx``) holds the input at ``(c, y·sh + ky − ph,
    x·sw + kx − pw)``, or -1 (a zero) in the padding. Returns the slots and the words per
    pixel."""
    channels, height, width_px = shape
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    columns = channels * kh * kw
    words = -(-columns // width)
    k = np.arange(words * width)
    c, ky, kx = k // (kh * kw), k // kw % kh, k % kw
    rows = []
    for y in range(out_pixels[0]):
        for x in range(out_pixels[1]):
            iy, ix = y * sh + ky - ph, x * sw + kx - pw
            inside = (k < columns) & (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width_px)
            rows.append(np.where(inside, (c * height + iy) * width_px + ix, -1))
    return np.concatenate(rows).reshape(-1, width), words


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
    ``macs`` counts the multiply-accumulates of one image (every GEMM's ``M·K·N``);
    ``ops`` holds each op's descriptor fields, its ``label`` and (a GEMM's) ``macs``.
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


def digit_count(bits: int, signed: bool, array_bits: int, array_signed: bool) -> tuple[int, int]:
    """``(k, D)``: an ``s<bits>``/``u<bits>`` operand on an array operand of
    ``array_bits`` runs as ``D`` digits of ``k`` bits (docs/network.md §15): the lower ones
    ``(x >> k·j) mod 2^k``, the top one ``x >> k·(D−1)``; ``k = array_bits − 1`` on a signed
    array operand (a lower digit must be non-negative), else ``array_bits``.

    >>> digit_count(8, True, 4, True), digit_count(8, False, 4, False), digit_count(3, False, 4, False)
    ((3, 3), (4, 2), (4, 1))

    Raises
    ------
    ValueError
        For a signed operand on an unsigned array operand.
    """
    if signed and not array_signed:
        raise ValueError(f"signed {bits}-bit operands need a signed array operand")
    k = array_bits - 1 if array_signed else array_bits
    cap = array_bits if signed == array_signed else array_bits - 1
    return k, 1 + max(0, -(-(bits - cap) // k))


def _digits(x: np.ndarray, k: int, count: int) -> list[np.ndarray]:
    """The ``count`` digits of ``x`` (int64), most significant first (``digit_count``)."""
    return [x >> (k * j) if j == count - 1 else (x >> (k * j)) & ((1 << k) - 1)
            for j in reversed(range(count))]


@dataclass
class _Pass:
    """One pass of a GEMM (a whole reduction): the ``K×N`` dense weights, the weight
    outliers it carries, its exponent per column (the pass counts ``2^exponent`` times)
    and the activation digit it multiplies (shift, and whether it is a lower digit)."""
    dense: np.ndarray
    outliers: np.ndarray | None
    exponent: np.ndarray
    act_shift: int
    act_low: bool


def plan_passes(op: Gemm, act_bits: int, act_signed: bool, array_act_bits: int,
                array_act_signed: bool, array_weight_bits: int) -> list[_Pass]:
    """The passes of ``op`` on an array of the given operand widths, in the order they
    run: every product of an activation digit and a weight plane (the multi-tensor planes,
    each cut into digits as wide as the array's weights), exponents non-increasing in every
    column down to 0, so ``acc ← (acc << (e_prev − e)) + partial`` (Horner) gives
    ``Σ 2^e·partial`` exactly (docs/network.md §15). The weight outliers of a value-aware
    layer join the pass of each activation digit whose weight plane has exponent 0.

    Raises
    ------
    CompileError
        (without the op's label) If no order of the passes keeps every column's exponent
        non-increasing, or there are more than ``MAX_PASSES``.
    """
    scheme = op.weight_scheme
    n = op.out_features
    if op.scheme == "multi_tensor":
        planes = op.weights.to(torch.int64).numpy()
        exponents = op.plane_exponents.to(torch.int64).numpy()
        totals = [exponents[p:].sum(0) if p < len(planes) - 1 else np.zeros(n, np.int64)
                  for p in range(len(planes))]
        totals = [t.astype(np.int64) for t in totals]
    elif op.scheme == "value_aware":
        planes, totals = [op.weights.to(torch.int64).numpy()], [np.zeros(n, np.int64)]
    else:
        planes, totals = [scheme.matrix().numpy()], [np.zeros(n, np.int64)]
    outliers = (op.weight_outliers.to(torch.int64).numpy() if op.scheme == "value_aware"
                else None)
    k_w, count_w = digit_count(op.weight_bits, True, array_weight_bits, True)
    components = []   # (dense, exponent per column)
    for plane, total in zip(planes, totals):
        for index, digit in enumerate(_digits(plane, k_w, count_w)):
            components.append((digit, total + k_w * (count_w - 1 - index)))
    k_a, count_a = digit_count(act_bits, act_signed, array_act_bits, array_act_signed)
    passes = []
    for j in reversed(range(count_a)):
        for dense, exponent in components:
            carries = outliers is not None and not exponent.any()
            passes.append(_Pass(dense, outliers if carries else None, exponent + k_a * j,
                                k_a * j, j < count_a - 1 and array_act_signed))
    passes.sort(key=lambda p: -int(p.exponent.sum()))
    steps = [a.exponent - b.exponent for a, b in zip(passes, passes[1:])]
    if any((step < 0).any() for step in steps):
        raise CompileError(f"its {len(passes)} passes (activation digits × multi-tensor "
                           f"planes) have no order whose exponents fall in every column; "
                           f"activations of at most {array_act_bits} bits (one digit) or "
                           f"an array of {act_bits}-bit activations make it run")
    if len(passes) > MAX_PASSES:
        raise CompileError(f"it needs {len(passes)} passes (activation digits × weight "
                           f"planes), more than {MAX_PASSES}; an array of "
                           f"{op.weight_bits}/{act_bits} runs it in one")
    return passes


@dataclass
class _Codebook:
    """How an SYQ GEMM that runs in one pass reaches the core's codebook decoder
    (docs/network.md §17): ``mode``, the ``K×N`` codes re-encoded for the core's
    ``idx_bits`` (sign above index) and the tables' ``G × (2^idx_bits − 1)`` magnitudes
    (index 1 up), subgroup ``g`` the output channel (``ROW``) or the tap ``ky·kw + kx``
    (``PIXEL``)."""
    mode: CodebookMode
    codes: np.ndarray
    tables: np.ndarray


def _codebook(op: Gemm, idx_bits: int, weight_bits: int) -> _Codebook:
    """``op``'s codes and tables for a decoder of ``idx_bits``.

    Raises
    ------
    CompileError
        (without the op's label) If the decoder cannot decode them: an index width
        outside 1..3 or as wide as the array's ``weight_bits``, codebooks without a zero
        code, or subgroups other than the layer, the output channels or the kernel taps.
    """
    k = op.idx_bits
    top = min(DECODER_IDX_BITS[1], weight_bits - 1)
    if not 1 <= k <= top:
        wanted = f"1..{top}" if k == 0 else f"{top} or less"
        raise CompileError(f"its SYQ codes have idx_bits = {k}; the core's codebook decoder "
                           f"takes 1..{top} with a zero code (quantize with syq_idx_bits "
                           f"{wanted})")
    tables = op.tables.to(torch.int64).numpy()
    if tables[..., 0].any():
        raise CompileError("its SYQ codebooks have no zero code (T[g][0] ≠ 0); the core's "
                           "codebook decoder reads index 0 as 0 (quantize's SYQ layers "
                           "have one)")
    groups = tables.shape[:-1]
    n = op.out_features
    if all(size == 1 for size in groups):
        mode = CodebookMode.LAYER
    elif groups[0] == n and all(size == 1 for size in groups[1:]):
        mode = CodebookMode.ROW
    elif op.layer == "conv2d" and groups[:2] == (1, 1) and groups[2:] == op.kernel:
        mode = CodebookMode.PIXEL
    else:
        raise CompileError(f"its SYQ tables have subgroups {tuple(groups)}; the core's "
                           f"codebook decoder takes one codebook per layer, output channel "
                           f"or kernel tap (syq_granularity 'layer', 'row' or 'pixel')")
    count = int(np.prod(groups))
    if count > MAX_SUBGROUPS:
        raise CompileError(f"its {count} SYQ codebooks exceed the {MAX_SUBGROUPS} the core's "
                           f"codebook decoder holds (fewer output channels, syq_granularity "
                           f"'layer', or another scheme for this layer: --layer-scheme)")
    codes = op.codes.to(torch.int64).reshape(n, -1).T.numpy()
    sign, index = codes >> k, codes & ((1 << k) - 1)
    stored = np.zeros((count, (1 << idx_bits) - 1), dtype=np.int64)
    stored[:, :(1 << k) - 1] = tables.reshape(count, 1 << k)[:, 1:]
    return _Codebook(mode, (sign << idx_bits) | index, stored)


def _band(nonzero: np.ndarray) -> tuple[int, int]:
    """``(band_step, band_words)`` of a GEMM whose tile ``t`` has non-zero weights only on
    the input words ``nonzero[t]`` (docs/network.md §15): the fewest words a tile such that
    tile ``t`` reads words ``t·band_step ..`` and misses none of its own. A grouped
    convolution's block-diagonal weight skips its zero blocks; a dense layer reads them all
    (``band_step`` 0).

    >>> _band(np.eye(3, dtype=bool)), _band(np.ones((2, 3), dtype=bool))
    ((1, 1), (0, 3))
    """
    tiles, in_words = nonzero.shape
    best = (0, in_words)
    for step in range(1, in_words):
        starts = np.arange(tiles) * step
        words = 1
        for tile, start in enumerate(starts):
            used = np.flatnonzero(nonzero[tile])
            if used.size and used[0] < start:
                break
            words = max(words, int(used[-1]) - int(start) + 1 if used.size else 1)
        else:
            if starts[-1] + words <= in_words and words < best[1]:
                best = (step, words)
    return best


def _pack(layout, value) -> int:
    return layout.const(value).as_value().value


def _written(op: dict) -> dict:
    """``(packed, address) → n``: the words a compute op (or a quantizing ``LOAD``) writes,
    its copies (``copy``) too, ``n`` the write-back's count before it (tile by tile, pixel
    by pixel)."""
    targets = [(op.get("out_packed", 0), op["out_base"], op.get("out_stride", 0))]
    if op.get("copy"):
        targets.append((1, op["copy_base"], op["copy_stride"]))
    written = {}
    for packed, base, stride in targets:
        written.update({(packed, base + pixel * stride + tile): tile * op["out_pixels"] + pixel
                        for tile in range(op["out_words"]) for pixel in range(op["out_pixels"])})
    return written


def _beat_reads(op: dict):
    """The activation word each beat of a compute op reads, in the beat walk's order
    (``(packed, address)``, or ``None`` for a padded tap); a ``STORE``'s words in order."""
    def f(name):
        return op.get(name, 0)  # a field the core reads as 0 where the compiler left it out
    if op["kind"] == OpKind.STORE:  # its words in order, from the 16-bit memory
        yield from ((0, op["in_base"] + index) for index in range(op["count"]))
        return
    gemm = op["kind"] == OpKind.GEMM
    passes, band = (f("last_pass") + 1, f("band_words")) if gemm else (1, 1)
    for tile in range(f("out_words")):
        for oy in range(f("out_h")):
            for ox in range(f("out_w")):
                for _ in range(passes):
                    for ky in range(f("kernel_h")):
                        for kx in range(f("kernel_w")):
                            iy, ix = oy * f("stride_h") + ky - f("pad_h"), \
                                ox * f("stride_w") + kx - f("pad_w")
                            for word in range(band):
                                if not (0 <= iy < f("in_h") and 0 <= ix < f("in_w")):
                                    yield None
                                    continue
                                column = tile * f("band_step") + word if gemm else tile
                                yield (f("in_packed"),
                                       f("in_base") + (iy * f("in_w") + ix) * f("in_words")
                                       + column)


def _overlap(ops: list[dict]) -> None:
    """Marks each compute op (and the ``STORE``) that may start while the op before still
    writes its results (docs/network.md §15): ``overlap`` and ``lead``, the least ``L``
    such that every beat (word) ``b`` reads only words among the first ``b + L`` that op
    writes. Not after an op
    that writes no results through the back or keeps activation outliers (their blocks
    fill over the whole op)."""
    for before, op in zip(ops, ops[1:]):
        producer = (before["kind"] in (OpKind.GEMM, OpKind.SUM, OpKind.MAX)
                    or (before["kind"] == OpKind.LOAD and before.get("quantize")))
        if (op["kind"] not in (OpKind.GEMM, OpKind.SUM, OpKind.MAX, OpKind.STORE)
                or not producer
                or before.get("out_outliers")):
            continue
        written = _written(before)
        lead = 0
        # a beat at or past the producer's last output cannot need more than `lead`
        for beat, word in zip(range(len(written)), _beat_reads(op)):
            if word in written:
                lead = max(lead, written[word] + 1 - beat)
        op.update(overlap=1, lead=lead)


def _prefetch(ops: list[dict], param_words: list[list[dict]]) -> bool:
    """Marks where the next image's words may be taken in the background (docs/network.md
    §15, prefetch) and gives the quantizing ``LOAD`` its parameters: ``fetch_next`` on the
    op after the last one that reads the ``LOAD``'s words (its front has then read them
    all), ``input_multiplier``, ``input_shift`` on the ``LOAD``. Only for a program whose
    first op quantizes into the packed memory, whose words no later op writes; returns
    whether it marked one."""
    load = ops[0]
    if not (load["kind"] == OpKind.LOAD and load.get("quantize") and load.get("out_packed")):
        return False
    region = {(1, load["out_base"] + index) for index in range(load["count"])}
    if any(region & _written(op).keys() for op in ops[1:] if op["kind"] not in (OpKind.LOAD,
                                                                                  OpKind.STORE)):
        return False
    last_reader = max([index for index, op in enumerate(ops) if index
                       and op["kind"] != OpKind.LOAD and region & set(_beat_reads(op))],
                      default=0)
    ops[last_reader + 1]["fetch_next"] = 1
    params = param_words[load["param_base"]][0]
    load.update(input_multiplier=params["multiplier"], input_shift=params["shift"])
    return True


def _fuse_store(ops: list[dict]) -> None:
    """Fuses the program's closing ``STORE`` into the op before it (docs/network.md §15,
    prefetch) when that op is a ``GEMM``, ``SUM`` or ``MAX`` whose 16-bit results are the
    ``STORE``'s words in the write-back's order and which keeps no activation outliers and
    has no fused copy (whose fork assumes that the write-back never waits): its
    back then hands each result to the outputs as it writes it (``store``) and it ends the
    program (``final``), so the next image's ``LOAD``, taken in the background, and its
    first op need not wait for the back."""
    store, last = ops[-1], ops[-2]
    if (last["kind"] not in (OpKind.GEMM, OpKind.SUM, OpKind.MAX) or last.get("out_packed")
            or last.get("out_outliers") or last.get("copy")):
        return
    if _written(last) != {(0, store["in_base"] + index): index
                          for index in range(store["count"])}:
        return
    ops.pop()
    last.update(store=1, final=1)


def _packable(program: IntegerProgram, act_bits: int, act_signed: bool) -> set[str]:
    """The values stored in the packed memory (docs/network.md §15): every one that fits
    an activation slot, except residuals (the residual port reads the 16-bit memory) and
    the output; a flatten and its input share their words, so both or neither, and a
    concatenation and its parts all or none."""
    wide = {program.output} | {op.residual for op in program.ops
                               if isinstance(op, Gemm) and op.residual is not None}
    packed = {name for name, value in program.values.items() if name not in wide and
              value.bits + (1 if act_signed and not value.signed else 0) <= act_bits}
    # a concatenation and its parts share its words, so all or none (as a flatten's)
    groups = [{op.input, op.output} for op in program.ops if isinstance(op, Flatten)] + [
        {*op.parts, op.output} for op in program.ops if isinstance(op, Concat)]
    while any(group & packed and group - packed for group in groups):
        for group in groups:
            if group - packed:
                packed -= group
    return packed


def _fused_tables(program: IntegerProgram) -> dict[str, Lookup]:
    """The ``lookup`` ops the op writing their input runs (docs/network.md §15), by that
    input: every one whose input only it reads and a GEMM, SUM or MAX op writes (so the
    table part maps the producer's results on their way to memory, in no cycle of its
    own). The others run as a SUM pass of their own."""
    producers = {op.output: op for op in program.ops if not isinstance(op, (Flatten, Lookup))}
    fused = {}
    for op in program.ops:
        if (isinstance(op, Lookup) and op.input in producers and op.input != program.output
                and sum(op.input in other.inputs for other in program.ops) == 1):
            fused[op.input] = op
    return fused


def _channel_layout(program: IntegerProgram, name: str, width: int,
                    maps: dict[str, np.ndarray]) -> np.ndarray:
    """``[word, lane]``: the channel each slot of a pixel of value ``name`` holds (or
    -1) where the compiler lays it out by channels: in order, ``⌈C/width⌉`` words; a
    concatenation's parts each from a word of their own, in order (a part whose
    channels do not fill its last word leaves zero lanes there, docs/network.md §15);
    a lane-for-lane op's output (requantize, pooling, table) as its input; a GEMM's with a
    residual as that residual (its zero lanes are the GEMM's zero columns). ``maps``
    caches the answers."""
    if name not in maps:
        writer = next((op for op in program.ops if op.output == name), None)
        shape = program.values[name].shape
        if isinstance(writer, Concat):
            parts, offset = [], 0
            for part in writer.parts:
                channels = _channel_layout(program, part, width, maps)
                parts.append(np.where(channels >= 0, channels + offset, -1))
                offset += program.values[part].shape[0]
            maps[name] = np.concatenate(parts)
        elif isinstance(writer, (Requantize, AvgPool, MaxPool, Lookup)) and len(shape) == 3:
            maps[name] = _channel_layout(program, writer.input, width, maps)
        elif isinstance(writer, Gemm) and writer.residual is not None:
            # the residual port adds word for word, lane for lane (docs/network.md §15)
            maps[name] = _channel_layout(program, writer.residual, width, maps)
        else:
            maps[name] = _flat_slots(shape[0], width)
    return maps[name]


def _unique(values, name: str) -> str:
    """``name``, or ``name`` with a number, that is not a key of ``values``."""
    return next(candidate for candidate in (name if count == 0 else f"{name}.{count}"
                                            for count in range(len(values) + 1))
                if candidate not in values)


def _identity_gemm(source: str, output: str, value: Value) -> Gemm:
    """A Linear that copies the vector ``source`` (of ``value``'s shape and format) into
    ``output`` unchanged: identity weights (``s2``), ``β = 0``, ``M = 1``, ``s = 0`` and
    the format's clamp."""
    features = value.shape[0]
    ones = torch.ones(features, dtype=torch.int64)
    return Gemm(name=output, input=source, output=output, layer="linear", in_features=features,
                out_features=features, scheme="mmse", weight_bits=2, relu=False,
                bias=torch.zeros(features, dtype=torch.int32),
                multiplier=ones.to(torch.int32), shift=torch.zeros(features, dtype=torch.uint8),
                weight_scale=ones.to(torch.float64),
                weights=torch.eye(features, dtype=torch.int8))


def with_copy_gemms(program: IntegerProgram, width: int) -> tuple[IntegerProgram, list[str]]:
    """``program`` with an identity GEMM (:func:`_identity_gemm`, a Linear) copying each
    concatenation part that is a flattened feature map into its concatenation, on a core
    of ``width`` lanes (docs/network.md §15), and the label of every op of the result.

    A flattened feature map keeps its image's words, a pixel's channels to a word, so its
    slots do not hold its features in order; the SUM that copies other parts works lane
    for lane and cannot reorder them, while a GEMM's weight rows follow the slots. The copy
    is exact (weights 1, ``M = 1``, ``s = 0``, the value's own clamp), so the result
    computes what ``program`` does; it is named after its concatenation in the labels,
    and the other ops keep the labels of ``program``, so errors name the user's ops.
    ``program`` comes back unchanged where no part needs a copy."""
    maps: dict[str, np.ndarray] = {}
    writers = {op.output: op for op in program.ops}

    def flattened_image(name):  # slots in image order: a flatten of a C×H×W value
        root = name
        while isinstance(writers.get(root), Flatten):
            root = writers[root].input
        shape = program.values[root].shape
        return root != name and len(shape) == 3 and not (
            shape[1] * shape[2] == 1 and np.array_equal(
                _channel_layout(program, root, width, maps), _flat_slots(shape[0], width)))

    values, ops, labels = dict(program.values), [], []
    for index, op in enumerate(program.ops):
        label = op.label(index)
        if isinstance(op, Concat) and any(map(flattened_image, op.parts)):
            parts = list(op.parts)
            for place, part in enumerate(parts):
                if flattened_image(part):
                    copy = _unique(values, f"{part}.in.{op.output}")
                    values[copy] = program.values[part]
                    ops.append(_identity_gemm(part, copy, program.values[part]))
                    labels.append(f"{label} copy of '{part}'")
                    parts[place] = copy
            op = dataclasses.replace(op, parts=tuple(parts))
        ops.append(op)
        labels.append(label)
    if len(ops) == len(program.ops):
        return program, labels
    return dataclasses.replace(program, values=values, ops=tuple(ops)), labels


class _Compiler:
    def __init__(self, program: IntegerProgram, labels: list[str], width: int, array_bits,
                 packed: bool, tables: bool, codebook: bool, copies: bool):
        self.program = program
        self.copies = copies
        self.fused_copies = 0
        self.labels = labels
        self.tables = tables
        self.fused = _fused_tables(program) if tables else {}
        self.table_entries: list[int] = []
        self.width = width
        self.array_bits = array_bits   # (weight, activation) bits, signedness of activations
        self.packed = _packable(program, array_bits[1], array_bits[2]) if packed else set()
        # SYQ layers that run in one pass keep their codes (docs/network.md §17); one in
        # passes is decoded here, as its weights are cut into digits.
        self.coded = {id(op) for op in program.ops if codebook and isinstance(op, Gemm)
                      and op.scheme == "syq" and self.one_pass(op)}
        self.idx_bits = max([op.idx_bits for op in program.ops if id(op) in self.coded
                             and 1 <= op.idx_bits <= DECODER_IDX_BITS[1]
                             and op.idx_bits < array_bits[0]], default=1)
        self.subgroups = 0
        self.errors: list[str] = []
        self.plane_shift = 0           # widest shift before a pass
        self.max_plane_shift = 0       # largest first-pass exponent
        self.act_shift = 0             # largest activation digit shift
        self.stored: dict[str, _Stored] = {}
        self.data_words = 0
        self.packed_words = 0
        self.im2col: dict = {}  # the quantized input → the convolution whose columns it holds
        self.descriptors: list[dict] = []
        # per word: a dense beat (its tile and outliers) or, of an SYQ GEMM, a table or code
        # word (the bits of its tile)
        self.weight_beats: list[dict | int] = []
        self.param_words: list[list[dict]] = []
        self.macs = 0
        self.max_k = 1
        self.outlier_bits = None
        self.max_outliers = 0
        self.outlier_storage = None   # (block_words, slots) of the activation outliers
        self.outlier_base: dict[str, int] = {}
        self.outlier_blocks = 0
        self.containers: dict[str, _Stored] = {}   # a concatenation's words, by its name
        self.maps: dict[str, np.ndarray] = {}
        self.placeable = self.concat_parts()
        self.placed: set[str] = set()

    def concat_parts(self) -> dict[str, tuple[Concat, int]]:
        """The values whose producer may write them straight into their concatenation
        (docs/network.md §15), each to the ``concat`` op and its place there: a part (its
        first use in any concatenation) written by a compute op, without activation
        outliers, that is no residual (the residual port reads whole words of a value of
        its own), no flatten's input (a flat value is contiguous) and not the output."""
        program = self.program
        writers = {op.output: op for op in program.ops}
        contiguous = {program.output} | {op.residual for op in program.ops
                                         if isinstance(op, Gemm)} | {
            op.input for op in program.ops if isinstance(op, Flatten)}
        parts = {}
        for op in program.ops:
            if not isinstance(op, Concat):
                continue
            for index, part in enumerate(op.parts):
                if (part not in parts and part not in contiguous
                        and isinstance(writers[part], (Gemm, Requantize, AvgPool, MaxPool,
                                                       Lookup))
                        and program.values[part].outliers is None):
                    parts[part] = (op, index)
        return parts

    def layout(self, name: str) -> np.ndarray:
        """``[word, lane]``: the channel each slot of a pixel of value ``name`` holds, as
        :func:`_channel_layout` says."""
        return _channel_layout(self.program, name, self.width, self.maps)

    def container(self, op: Concat) -> _Stored:
        """The words of the concatenation ``op`` (allocated once), laid out as ``layout``
        says, so every part starts on a word."""
        if op.output not in self.containers:
            value = self.program.values[op.output]
            channel_map = self.layout(op.output)
            pixels = value.shape[1:] if len(value.shape) == 3 else (1, 1)
            self.containers[op.output] = self.allocate(
                _layout_slots(channel_map, *pixels), tuple(pixels), len(channel_map),
                op.output in self.packed)
        return self.containers[op.output]

    def part_offset(self, op: Concat, index: int) -> int:
        """The first word of part ``index`` in each pixel of concatenation ``op``."""
        return sum(len(self.layout(part)) for part in op.parts[:index])

    def output_of(self, name: str, channel_map: np.ndarray, pixels) -> _Stored:
        """Words for the output ``name`` of a compute op that writes the channels
        ``channel_map`` (``[word, lane]``) per pixel: its place in its concatenation where
        it has one and ``channel_map`` is its ``layout``, else words of its own."""
        if name in self.placeable and np.array_equal(channel_map, self.layout(name)):
            op, index = self.placeable[name]
            container = self.container(op)
            stored = _Stored(container.base + self.part_offset(op, index),
                             _layout_slots(channel_map, *pixels), tuple(pixels),
                             len(channel_map), container.packed, container.stride)
            self.placed.add(name)
        else:
            stored = self.allocate(_layout_slots(channel_map, *pixels), tuple(pixels),
                                   len(channel_map), name in self.packed)
        self.stored[name] = stored
        return stored

    def concat(self, label: str, op: Concat) -> None:
        """A concatenation is its container's words: each part its producer did not
        write there is copied in by an identity SUM (``M = 1, s = 0``), which reads the
        part's channels in order (lane for lane: every part is laid out by channels, as
        :func:`with_copy_gemms` made sure)."""
        container = self.container(op)
        value = self.program.values[op.output]
        for index, part in enumerate(op.parts):
            if self.placeable.get(part) == (op, index) and part in self.placed:
                continue
            source = self.stored[part]
            (h, w), words = source.pixels, source.channel_words
            self.descriptor(
                f"{label} copy of '{part}'", OpKind.SUM, in_packed=int(source.packed),
                out_packed=int(container.packed), in_base=source.base,
                out_base=container.base + self.part_offset(op, index), in_h=h, in_w=w,
                in_words=source.stride, out_h=h, out_w=w, out_words=words,
                out_pixels=h * w, out_stride=container.stride, kernel_h=1, kernel_w=1,
                stride_h=1, stride_w=1, in_signed=int(value.signed),
                param_base=self.uniform_params(1, 0), **self.bounds(value))
        self.stored[op.output] = container

    def one_pass(self, op: Gemm) -> bool:
        """Whether GEMM ``op`` runs in one pass: weights and activations fit the array."""
        source = self.program.values[op.input]
        weight_bits, act_bits, act_signed = self.array_bits
        if source.signed and not act_signed:
            return False
        return op.weight_bits <= weight_bits and digit_count(
            source.bits, source.signed, act_bits, act_signed)[1] == 1

    def allocate(self, slots: np.ndarray, pixels, channel_words, packed=False) -> _Stored:
        if packed:
            stored = _Stored(self.packed_words, slots, pixels, channel_words, True)
            self.packed_words += stored.words
        else:
            stored = _Stored(self.data_words, slots, pixels, channel_words)
            self.data_words += stored.words
        return stored

    def outliers(self, label: str, name: str, stored: _Stored, role: str) -> dict:
        """The descriptor fields of value ``name``'s activation outliers (docs/program.md
        §18) as an op's input (``role = "in"``) or output (``"out"``, which allocates its
        blocks in the outlier memory); none for a value without them."""
        value = self.program.values[name]
        if value.outliers is None:
            return {}
        storage = value.outliers
        if storage.word_values != self.width:
            raise CompileError(f"{label}: value '{name}' keeps activation outliers in words of "
                               f"{storage.word_values} values; this core's words hold "
                               f"{self.width} (quantize for width {self.width})")
        layout = (storage.block_words, storage.slots)
        if self.outlier_storage not in (None, layout):
            raise CompileError(f"{label}: value '{name}' keeps {storage.slots} outliers per "
                               f"{storage.block_words} words, another value "
                               f"{self.outlier_storage[1]} per {self.outlier_storage[0]}: one "
                               f"core has one outlier block format")
        self.outlier_storage = layout
        if value.bits + (1 if self.array_bits[2] and not value.signed else 0) \
                > self.array_bits[1]:
            raise CompileError(f"{label}: value '{name}' keeps activation outliers but is "
                               f"wider than the array's {self.array_bits[1]}-bit activations "
                               f"(digit passes would add each outlier once per pass)")
        if role == "out":
            self.outlier_base[name] = self.outlier_blocks
            self.outlier_blocks += -(-stored.words // storage.block_words)
            low, high = int_range(value.bits, value.signed)
            return {"out_outliers": 1, "out_obase": self.outlier_base[name],
                    "dense_low": low, "dense_high": high}
        return {"in_outliers": 1, "in_obase": self.outlier_base[name]}

    def value_slots(self, name: str) -> tuple[np.ndarray, tuple[int, int], int]:
        """Slots, pixels ``(H, W)`` and words per pixel of value ``name`` laid out by
        channels (a flat value: one pixel)."""
        value = self.program.values[name]
        if len(value.shape) == 3:
            c, h, w = value.shape
            return _image_slots(c, h, w, self.width), (h, w), -(-c // self.width)
        slots = _flat_slots(value.shape[0], self.width)
        return slots, (1, 1), len(slots)

    def allocate_value(self, name: str) -> _Stored:
        """Words for value ``name``, laid out by channels."""
        stored = self.allocate(*self.value_slots(name), name in self.packed)
        self.stored[name] = stored
        return stored

    def descriptor(self, label: str, kind: OpKind, **fields) -> None:
        for name in ("in_h", "in_w", "out_h", "out_w"):
            if fields.get(name, 0) > MAX_DIM:
                raise CompileError(f"{label}: {name} = {fields[name]} exceeds {MAX_DIM}")
        for name in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
            if fields.get(name, 0) > MAX_KERNEL:
                raise CompileError(f"{label}: {name} = {fields[name]} exceeds {MAX_KERNEL}")
        self.descriptors.append({"kind": kind, "label": label, **fields})

    @staticmethod
    def bounds(value, relu=False) -> dict:
        """The requantizer's clamp: the value's format, or its outlier format (§18)."""
        low, high = int_range(value.produced_bits, value.signed)
        return {"low": max(low, 0) if relu else low, "high": high}

    def uniform_params(self, multiplier: int, shift: int) -> int:
        self.param_words.append([{"bias": 0, "multiplier": multiplier, "shift": shift,
                                  "residual_multiplier": 0, "residual_shift": 0}] * self.width)
        return len(self.param_words) - 1

    def table(self, lookup: Lookup | None) -> dict:
        """The descriptor fields of an op whose results go through ``lookup``'s table (none
        without one): the table's place in the table memory and the input's lowest code,
        from which ``compile_program`` derives ``table_offset``."""
        if lookup is None:
            return {}
        source = self.program.values[lookup.input]
        base = len(self.table_entries)
        self.table_entries += [int(entry) for entry in lookup.table]
        return {"table": 1, "table_base": base,
                "table_low": int_range(source.bits, source.signed)[0]}

    def vector_op(self, label, kind, source: _Stored, out_name, multiplier, shift,
                  in_signed, kernel=(1, 1), stride=(1, 1), padding=(0, 0), lookup=None):
        """A SUM or MAX op writing ``out_name`` (clamped to its format), or, through
        ``lookup``'s table, the lookup's output."""
        out_value = self.program.values[out_name]
        stored_name = out_name if lookup is None else lookup.output
        elementwise = kernel == (1, 1) and stride == (1, 1)
        pixels = source.pixels if elementwise else out_value.shape[1:]
        if elementwise and not np.array_equal(
                source.slots, _layout_slots(source.channel_map, *pixels)):
            # elementwise over im2col columns: kept slot for slot
            out = self.allocate(source.slots, source.pixels, source.channel_words,
                                stored_name in self.packed)
            self.stored[stored_name] = out
        else:  # lane for lane: the input's channel layout (a flatten's: its input's words)
            out = self.output_of(stored_name, source.channel_map, pixels)
        (in_h, in_w), (out_h, out_w) = source.pixels, out.pixels
        self.descriptor(
            label, kind, **self.outliers(label, stored_name, out, "out"), **self.table(lookup),
            in_packed=int(source.packed), out_packed=int(out.packed), in_base=source.base,
            out_base=out.base, in_h=in_h, in_w=in_w,
            in_words=source.stride, out_h=out_h, out_w=out_w,
            out_words=out.channel_words, out_pixels=out_h * out_w,
            out_stride=out.stride, kernel_h=kernel[0],
            kernel_w=kernel[1], stride_h=stride[0], stride_w=stride[1], pad_h=padding[0],
            pad_w=padding[1], in_signed=in_signed,
            param_base=self.uniform_params(multiplier, shift), **self.bounds(out_value))

    def gemm(self, label: str, op: Gemm, lookup: Lookup | None = None) -> None:
        source_value = self.program.values[op.input]
        stored_name = op.output if lookup is None else lookup.output
        out_value = self.program.values[op.output]
        weight_bits, act_bits, act_signed = self.array_bits
        try:
            passes = plan_passes(op, source_value.bits, source_value.signed, act_bits,
                                 act_signed, weight_bits)
        except (ValueError, CompileError) as error:
            raise CompileError(f"{label}: {error}") from None
        coded = None
        if id(op) in self.coded:
            try:
                coded = _codebook(op, self.idx_bits, weight_bits)
            except CompileError as error:
                raise CompileError(f"{label}: {error}") from None
        self.plane_shift = max([self.plane_shift] + [int((a.exponent - b.exponent).max())
                                                     for a, b in zip(passes, passes[1:])])
        self.max_plane_shift = max(self.max_plane_shift, int(passes[0].exponent.max()))
        self.act_shift = max(self.act_shift, max(p.act_shift for p in passes))
        source = self.stored[op.input]
        width = self.width
        # the output's channels in order, or as its residual's where that skips lanes
        out_map = self.layout(op.output)
        out = self.output_of(stored_name, out_map,
                             out_value.shape[1:] if op.layer == "conv2d" else (1, 1))
        if op.weight_outliers is not None:
            self.outlier_bits = max(self.outlier_bits or 0, op.weight_outlier_bits)
        n_out = op.out_features
        if self.im2col.get(op.input) is op:
            # The input holds this convolution's im2col columns: a 1×1 GEMM over them.
            (kh, kw), (sh, sw), (ph, pw) = (1, 1), (1, 1), (0, 0)

            def k_index(ky, kx, word, lane):
                k = word * width + lane
                return k if k < op.in_features else -1
            in_pixels, out_pixels = source.pixels, out.pixels
            m_rows = out_pixels[0] * out_pixels[1]
        elif op.layer == "conv2d":
            (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
            channel_map = source.channel_map  # a concatenation's may skip lanes

            def k_index(ky, kx, word, lane):
                c = int(channel_map[word, lane])
                return (c * kh + ky) * kw + kx if c >= 0 else -1
            in_pixels, out_pixels = source.pixels, out.pixels
            m_rows = out_pixels[0] * out_pixels[1]
        else:
            (kh, kw), (sh, sw), (ph, pw) = (1, 1), (1, 1), (0, 0)

            def k_index(ky, kx, word, lane):
                return int(source.slots[word, lane])
            in_pixels, out_pixels = (1, 1), (1, 1)
            m_rows = 1
        in_words = source.channel_words if op.layer == "conv2d" else source.words
        band_step, band_words = _band(self.nonzero_words(
            passes, k_index, (kh, kw), in_words, out_map))
        macs = m_rows * op.in_features * n_out
        self.macs += macs
        self.max_k = max(self.max_k, kh * kw * band_words * width * len(passes))
        weight_base = len(self.weight_beats)
        param_base = len(self.param_words)
        code_tiles = []
        for tile in range(out.channel_words):
            columns = [int(n) for n in out_map[tile]]
            for index, step in enumerate(passes):
                # The shift before a pass is applied with its first beat (MacArray §8).
                shifts = ([0] * width if index == 0 else
                          [int(passes[index - 1].exponent[n] - step.exponent[n])
                           if n >= 0 else 0 for n in columns])
                first = True
                for ky in range(kh):
                    for kx in range(kw):
                        for word in range(tile * band_step, tile * band_step + band_words):
                            rows = [k_index(ky, kx, word, lane) for lane in range(width)]
                            if coded is not None:
                                code_tiles.append(self.code_tile(coded, rows, columns, n_out))
                            else:
                                self.weight_beats.append(self.beat(
                                    step, rows, columns, n_out, shifts if first else [0] * width))
                            first = False
            tile_params = []
            for n in columns:
                if n < 0:
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
        codebook = {}
        if coded is not None:
            weight_base, codebook = self.code_words(coded, code_tiles)
        self.descriptor(
            label, OpKind.GEMM, macs=macs, **self.outliers(label, op.input, source, "in"),
            **self.outliers(label, stored_name, out, "out"), **self.table(lookup),
            in_packed=int(source.packed),
            out_packed=int(out.packed), in_base=source.base,
            out_base=out.base,
            in_h=in_pixels[0], in_w=in_pixels[1],
            in_words=source.stride if op.layer == "conv2d" else in_words,
            band_words=band_words, band_step=band_step,
            out_h=out_pixels[0], out_w=out_pixels[1], out_words=out.channel_words,
            out_pixels=out_pixels[0] * out_pixels[1], out_stride=out.stride,
            kernel_h=kh, kernel_w=kw,
            stride_h=sh, stride_w=sw, pad_h=ph, pad_w=pw, relu=int(op.relu),
            last_pass=len(passes) - 1,
            weight_base=weight_base, param_base=param_base, **residual, **codebook,
            **self.bounds(out_value, op.relu))

    def fuse_copy(self) -> None:
        """Folds the ``requantize`` SUM just made into the op before it where that op's
        back can compute it (docs/network.md §15): the SUM copies, word for word in the
        write-back's order, exactly the 16-bit words that op writes (a GEMM, SUM or MAX
        without a table or activation outliers on either side) into the packed memory. The
        op then carries the copy's fields and the SUM and its parameter word go."""
        if len(self.descriptors) < 2:
            return
        producer, copy = self.descriptors[-2:]
        same_words = all(copy.get(a, 0) == producer.get(b, 0) for a, b in (
            ("in_base", "out_base"), ("in_words", "out_stride"), ("out_words", "out_words"),
            ("out_pixels", "out_pixels"), ("in_packed", "out_packed")))
        plain = not any(op.get(name) for op in (producer, copy)
                        for name in ("table", "out_outliers", "copy"))
        if not (producer["kind"] in (OpKind.GEMM, OpKind.SUM, OpKind.MAX) and same_words
                and plain and copy.get("out_packed") and not producer.get("out_packed")
                and copy["in_h"] * copy["in_w"] == copy["out_pixels"]
                and copy["param_base"] == len(self.param_words) - 1):
            return
        self.descriptors.pop()
        params = self.param_words.pop()[0]
        producer.update(copy=1, copy_base=copy["out_base"], copy_stride=copy["out_stride"],
                        copy_multiplier=params["multiplier"], copy_shift=params["shift"],
                        copy_low=copy["low"], copy_high=copy["high"],
                        label=f"{producer['label']} + {copy['label']}")
        self.fused_copies += 1

    def code_tile(self, coded: _Codebook, rows: list[int], columns: list[int],
                  n_out: int) -> int:
        """The codes of K rows ``rows`` (-1: none) and output channels ``columns`` as one
        tile's bits, ``[lane][col]`` at ``(lane·width + col)·(1 + idx_bits)``; a padded
        place holds the zero code."""
        bits, tile = 1 + self.idx_bits, 0
        for lane, k in enumerate(rows):
            for col, n in enumerate(columns):
                if k >= 0 and 0 <= n < n_out:
                    tile |= int(coded.codes[k, n]) << ((lane * self.width + col) * bits)
        return tile

    def code_words(self, coded: _Codebook, tiles: list[int]) -> tuple[int, dict]:
        """Appends an SYQ GEMM's codebook words, then its code tiles, ``code_tiles`` to a
        word (docs/network.md §17); returns the first code word's address and the
        descriptor's codebook fields."""
        weight_bits = self.array_bits[0]
        entry_bits, per_word = weight_bits - 1, codebook_word_entries(self.width, weight_bits)
        entries = coded.tables.reshape(-1)
        self.subgroups = max(self.subgroups, len(coded.tables))
        words = -(-len(entries) // per_word)
        for start in range(0, len(entries), per_word):
            self.weight_beats.append(sum(int(value) << (index * entry_bits) for index, value
                                         in enumerate(entries[start:start + per_word])))
        base = len(self.weight_beats)
        per_word = code_tiles(weight_bits, self.idx_bits)
        tile_bits = self.width * self.width * (1 + self.idx_bits)
        for start in range(0, len(tiles), per_word):
            self.weight_beats.append(sum(tile << (index * tile_bits) for index, tile
                                         in enumerate(tiles[start:start + per_word])))
        return base, {"codebook": coded.mode, "codebook_words": words,
                      "codebook_entries": len(entries)}

    def nonzero_words(self, passes: list[_Pass], k_index, kernel, in_words: int,
                      out_map: np.ndarray) -> np.ndarray:
        """``[tile, word]``: whether any pass has a non-zero weight (dense or outlier) of
        output tile ``tile`` (the output channels ``out_map[tile]``) on input word ``word``
        at some kernel tap."""
        width = self.width
        nonzero = np.zeros((len(out_map), in_words), dtype=bool)
        tile_of = np.zeros(int(out_map.max()) + 1, dtype=np.int64)
        tile_of[out_map[out_map >= 0]] = np.nonzero(out_map >= 0)[0]
        for word in range(in_words):
            rows = np.array([k_index(ky, kx, word, lane) for ky in range(kernel[0])
                             for kx in range(kernel[1]) for lane in range(width)])
            rows = rows[rows >= 0]
            for step in passes:
                weights = step.dense[rows] != 0
                if step.outliers is not None:
                    weights |= step.outliers[rows] != 0
                used = np.flatnonzero(weights.any(0))
                nonzero[np.unique(tile_of[used]), word] = True
        return nonzero

    def beat(self, step: _Pass, rows: list[int], columns: list[int], n_out: int,
             shifts: list[int]) -> dict:
        """One weight word of ``step``: the weights of K rows ``rows`` (-1: none) and the
        output channels ``columns``, the pass's outliers among them, ``shifts`` and the
        pass's activation digit."""
        width = self.width
        tile = [[0] * width for _ in range(width)]
        outliers = []
        for lane, k in enumerate(rows):
            if k < 0:
                continue
            for col, n in enumerate(columns):
                if not 0 <= n < n_out:
                    continue
                tile[lane][col] = int(step.dense[k, n])
                if step.outliers is not None and step.outliers[k, n]:
                    outliers.append({"valid": 1, "lane": lane, "col": col,
                                     "value": int(step.outliers[k, n])})
        self.max_outliers = max(self.max_outliers, len(outliers))
        return {"tile": tile, "outliers": outliers, "plane_shift": shifts,
                "act_shift": step.act_shift, "act_low": int(step.act_low)}

    def im2col_reader(self, name: str):
        """The convolution that alone reads value ``name`` (the quantized input) if it
        costs fewer cycles over the input's im2col columns than over its channels (a first
        layer with few input channels fills a lane per channel, the columns fill them all;
        but the columns are more words to load and quantize), and ``name`` keeps no
        activation outliers; else None."""
        readers = [op for op in self.program.ops if name in op.inputs]
        value = self.program.values[name]
        if (len(readers) != 1 or not isinstance(readers[0], Gemm)
                or readers[0].layer != "conv2d" or value.outliers is not None):
            return None
        conv = readers[0]
        if id(conv) in self.coded and math.prod(conv.tables.shape[2:-1]) > 1:
            return None  # per-tap codebooks: the decoder takes one subgroup per column
        (kh, kw), channels = conv.kernel, value.shape[0]
        im2col_words = -(-channels * kh * kw // self.width)
        channel_words = -(-channels // self.width)
        # per output pixel: LOAD and quantize beats (one pass when the LOAD quantizes) and
        # GEMM beats, each a word of columns or of channels (the GEMM once per tap)
        passes = 1 if self.quantize_on_load() else 2
        return (conv if (passes + 1) * im2col_words < (passes + kh * kw) * channel_words
                else None)

    def quantize_on_load(self) -> bool:
        """Whether the input's quantization runs in the ``LOAD`` (docs/network.md §15):
        the pixels then never take memory. It does unless the quantized input keeps
        activation outliers or goes through a table."""
        first = self.program.ops[0]
        return (isinstance(first, QuantizeInput)
                and self.program.values[first.output].outliers is None
                and first.output not in self.fused)

    def compile(self) -> None:
        program = self.program
        first = program.ops[0]
        conv = self.im2col_reader(first.output)
        if conv is None:  # laid out as the input
            slots, shape, words = self.value_slots(first.output)
        else:  # the pixels come as the columns of the first convolution (gemm)
            shape = tuple(program.values[conv.output].shape[1:])
            slots, words = _im2col_slots(program.values[first.output].shape, conv, shape,
                                         self.width)
            self.im2col[first.output] = conv
        self.on_load = self.quantize_on_load()
        # quantized on the way in, the pixels are no value in memory
        self.pixels = pixels = (_Stored(0, slots, shape, words) if self.on_load
                                else self.allocate(slots, shape, words))
        if not self.on_load:
            self.descriptor("load", OpKind.LOAD, out_base=pixels.base, count=pixels.words)
        for index, op in enumerate(program.ops):
            try:
                self.compile_op(self.labels[index], op)
            except CompileError as error:
                # Every op is checked: the error lists each one the core cannot run.
                self.errors.append(str(error))
                lookup = self.fused.get(op.output)
                for name in (op.output, lookup and lookup.output):
                    if name and name not in self.stored:
                        self.allocate_value(name)
        if self.errors:
            raise CompileError("\n".join(self.errors))
        out = self.stored[program.output]
        self.descriptor("store", OpKind.STORE, in_base=out.base, count=out.words, final=1)
        # The slots index the value "input"; an input_order makes that a permutation of the
        # pixels as the host gives them, which the packing of the inputs applies.
        source = program.arranged(torch.arange(math.prod(program.input_shape)).reshape(
            1, *program.input_shape)).reshape(-1).numpy()
        self.input_slots = np.where(pixels.slots >= 0, source[pixels.slots], -1)
        self.output_slots = out.slots

    def compile_op(self, label: str, op) -> None:
        program, pixels = self.program, self.pixels
        lookup = self.fused.get(op.output)  # this op's results go through a table
        if isinstance(op, QuantizeInput):
            self.vector_op(label, OpKind.SUM, pixels, op.output, op.multiplier, op.shift,
                           in_signed=int(self.program.pixel_min < 0), lookup=lookup)
            if self.on_load:
                # the same elementwise SUM, its operands the input words in order: one
                # window of one word per output word, the output as many words, in order
                fields = self.descriptors.pop()
                assert fields["out_stride"] == fields["out_words"] == pixels.channel_words
                keep = ("out_packed", "out_base", "in_signed", "param_base", "low", "high")
                self.descriptor(f"load, {label}", OpKind.LOAD, quantize=1,
                                count=pixels.words, out_words=1, out_pixels=pixels.words,
                                out_stride=1, **{name: fields[name] for name in keep})
        elif isinstance(op, Requantize):
            self.vector_op(label, OpKind.SUM, self.stored[op.input], op.output,
                           op.multiplier, op.shift,
                           in_signed=int(program.values[op.input].signed), lookup=lookup)
            if self.copies:
                self.fuse_copy()
        elif isinstance(op, AvgPool):
            self.vector_op(label, OpKind.SUM, self.stored[op.input], op.output,
                           op.multiplier, op.shift,
                           in_signed=int(program.values[op.input].signed),
                           kernel=op.kernel, stride=op.stride, padding=op.padding,
                           lookup=lookup)
        elif isinstance(op, MaxPool):
            self.vector_op(label, OpKind.MAX, self.stored[op.input], op.output, 1, 0,
                           in_signed=int(program.values[op.input].signed),
                           kernel=op.kernel, stride=op.stride, padding=op.padding,
                           lookup=lookup)
        elif isinstance(op, Lookup):
            if not self.tables:
                raise CompileError(f"{label}: this network core has no lookup-table part; "
                                   f"a core with one (the simulator's, `olmac run --backend "
                                   f"rtl`) runs it")
            if op.input not in self.fused:
                # its own pass: the input copied through the requantizer (M = 1, s = 0,
                # clamped to its own format) and the table
                self.vector_op(label, OpKind.SUM, self.stored[op.input], op.input, 1, 0,
                               in_signed=int(program.values[op.input].signed), lookup=op)
        elif isinstance(op, Flatten):
            self.stored[op.output] = self.stored[op.input]  # same words, same slots
            if op.input in self.outlier_base:  # and the same outlier blocks (§18)
                self.outlier_base[op.output] = self.outlier_base[op.input]
        elif isinstance(op, Gemm):
            self.gemm(label, op, lookup)
        elif isinstance(op, Concat):
            self.concat(label, op)
        else:
            raise CompileError(f"{label}: the network core has no {op.KIND!r} op")


def compile_program(program: IntegerProgram, *, width: int = 8,
                    weight_outlier_slots: int | None = None,
                    weight_outlier_lanes: int | None = None,
                    array_bits: tuple[int, int] | None = None, act_outlier_lanes: int = 1,
                    packed: bool = True, tables: bool = True,
                    codebook: bool = True, fuse_copies: bool | None = None,
                    prefetch: bool | None = None) -> CompiledNetwork:
    """Compile ``program`` for a :class:`NetworkCore` of ``width × width`` MACs.

    ``array_bits`` = ``(W, A)`` fixes the array's dense operand widths: weights ``s<W>``,
    activations ``u<A>`` (``s<A>`` if a GEMM reads signed activations); a layer wider than
    the array runs as several passes (``plan_passes``, docs/network.md §15). By default the
    array is as wide as the program needs and every layer runs in one pass (multi-tensor
    layers: one per plane): activations as wide as the widest GEMM input (unsigned if every
    GEMM input is), weights as the widest GEMM weight. When a layer is value-aware, the
    array has as many weight-outlier slots per weight word as the fullest beat needs (or
    ``weight_outlier_slots``) and ``weight_outlier_lanes`` lanes to multiply them (by
    default ``width²/32 + 1``, twice the outliers a beat holds at one per 64 weights, plus
    one: at most 16 and never more than the slots): a beat whose outliers
    outnumber the lanes holds the array a cycle per further group (docs/network.md §15).
    A value that keeps activation outliers gets ``act_outlier_lanes`` activation-outlier
    lanes and an outlier memory (docs/program.md §18). With
    ``packed`` every value that fits the array's activation slot (all but the pixels, the
    highway tensors, the residuals, the logits and values read in digit passes) is stored
    in a packed memory of ``act_bits``-bit slots (docs/network.md §15); without, every
    value takes 16-bit slots. With ``tables`` the core has a lookup-table memory holding
    the table of every ``lookup`` op (docs/program.md §12), each applied to the results of
    the op writing its input where that input has no other reader, else in a pass of its
    own (docs/network.md §15); without, a ``lookup`` op is refused.
    With ``codebook`` an SYQ layer that runs in one pass keeps its codes in the weight
    memory, and the core has a codebook decoder sized for them (docs/network.md §17);
    without, or for an SYQ layer that runs in passes, the compiler decodes the weights.
    With ``fuse_copies`` (by default from width 8 on, where a second requantizer is small
    beside the ``width²`` MACs; the iCE40 boards' narrower cores keep the ops) a
    ``requantize`` that copies the 16-bit results of the op just before it into the packed
    memory runs in that op's back (the core's ``copies``, docs/network.md §15).
    With ``prefetch`` (by default from width 8 on, as ``fuse_copies``; the board tops keep
    it off, ``spec.BOARD_PREFETCH``) a core whose first op quantizes the pixels into the
    packed memory takes the next image's words in the background from the op after the
    last reader of those words (the core's ``prefetch``, docs/network.md §15), and the
    program's ``STORE`` is fused into its last op where it can be (``_fuse_store``).
    Memories are exactly as deep as the program.

    Raises
    ------
    TypeError
        If ``width``, ``weight_outlier_lanes``, ``array_bits``, ``fuse_copies`` or
        ``prefetch`` is not of its form.
    CompileError
        For every op the core cannot run, one line each: a feature map or kernel beyond
        the descriptor fields, a layer whose passes do not fit (too many, or no order for
        a multi-tensor layer's exponents), activation outliers in words of another width,
        in two block formats or read in digit passes, SYQ codes the codebook decoder
        cannot decode (``_codebook``); or a beat with more weight outliers
        than ``weight_outlier_slots``, or a core configuration the program cannot have.
    """
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 64:
        raise TypeError(f"width must be an integer in 1..64, not {width!r}")
    if weight_outlier_lanes is not None and (
            isinstance(weight_outlier_lanes, bool) or not isinstance(weight_outlier_lanes, int)
            or not 1 <= weight_outlier_lanes <= OUTLIER_LANES[1]):
        raise TypeError(f"weight_outlier_lanes must be an integer in 1..{OUTLIER_LANES[1]}, "
                        f"not {weight_outlier_lanes!r}")
    if fuse_copies is None:
        fuse_copies = width >= 8
    elif not isinstance(fuse_copies, bool):
        raise TypeError(f"fuse_copies must be a bool or None, not {fuse_copies!r}")
    if prefetch is None:
        prefetch = width >= 8
    elif not isinstance(prefetch, bool):
        raise TypeError(f"prefetch must be a bool or None, not {prefetch!r}")
    program, labels = with_copy_gemms(program, width)
    gemms = [op for op in program.ops if isinstance(op, Gemm)]
    formats = {(program.values[op.input].bits, program.values[op.input].signed)
               for op in gemms}
    act_signed = any(signed for _, signed in formats)
    if array_bits is None:
        # u8 beside a signed input needs s9: the widest array, s8, runs it as passes
        act_bits = min(max([bits + (1 if act_signed and not signed else 0)
                            for bits, signed in formats], default=2), ACT_BITS[1])
        array_bits = (max([op.weight_bits for op in gemms], default=2), act_bits)
    elif not (isinstance(array_bits, tuple) and len(array_bits) == 2
              and all(isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 8
                      for b in array_bits)):
        raise TypeError(f"array_bits must be a pair (weight bits, activation bits) of "
                        f"integers in 2..8, not {array_bits!r}")
    compiler = _Compiler(program, labels, width, (array_bits[0], array_bits[1], act_signed),
                         packed, tables, codebook, fuse_copies)
    compiler.compile()
    slots = compiler.max_outliers if compiler.outlier_bits else 0
    if weight_outlier_slots is not None:
        if slots > weight_outlier_slots:
            raise CompileError(f"a weight beat holds {slots} outliers, more than "
                               f"weight_outlier_slots = {weight_outlier_slots}")
        slots = weight_outlier_slots
    options = {}
    if compiler.outlier_bits:
        slots = max(slots, 1)
        # A lane costs one outlier multiplier and its column adders, small beside the
        # width² dense products from width 8 on; one lane keeps the smallest arrays small.
        # At one outlier per 64 weights a beat of width² weights holds width²/64 on
        # average; twice that, plus one, keeps the holds rare (a 16×16 array with 4 lanes
        # held cnn28's beats 13 % of its cycles, with 8 about 21 of fc1's; the demo MLP
        # took 196 cycles an image on the 8×8 array with 2 lanes, 187 with 3, 186 with 4).
        lanes = min(weight_outlier_lanes or width * width // 32 + 1,
                    OUTLIER_LANES[1], slots)
        options.update(weight_outlier_lanes=lanes, weight_outlier_bits=compiler.outlier_bits,
                       weight_outlier_slots=slots)
    if compiler.plane_shift:
        options.update(plane_shift_bits=compiler.plane_shift.bit_length(),
                       max_plane_shift=compiler.max_plane_shift)
    if compiler.act_shift:
        options.update(act_shift_bits=compiler.act_shift.bit_length())
    if compiler.subgroups:
        options.update(codebook_subgroups=compiler.subgroups,
                       codebook_idx_bits=compiler.idx_bits)
    if compiler.outlier_storage is not None:
        block_words, act_slots = compiler.outlier_storage
        options.update(act_outlier_lanes=act_outlier_lanes, act_outlier_block_words=block_words,
                       act_outlier_slots=act_slots, outlier_depth=compiler.outlier_blocks)
    if compiler.table_entries:
        options.update(table_depth=len(compiler.table_entries))
    if compiler.fused_copies:
        options.update(copies=True)
    if prefetch and _prefetch(compiler.descriptors, compiler.param_words):
        options.update(prefetch=True)
        _fuse_store(compiler.descriptors)
    for name, bits, limits in (("a plane shift", options.get("plane_shift_bits", 0),
                                PLANE_SHIFT_BITS),
                               ("an activation shift", options.get("act_shift_bits", 0),
                                ACT_SHIFT_BITS)):
        if bits > limits[1]:
            raise CompileError(f"{name} of {bits} bits exceeds the core's {limits[1]}")
    try:
        config = NetworkCore.Config(
            width=width, act_bits=array_bits[1], act_signed=act_signed,
            weight_bits=array_bits[0], max_k=compiler.max_k,
            data_depth=max(compiler.data_words, 1), packed_depth=compiler.packed_words,
            weight_depth=max(len(compiler.weight_beats), 1),
            param_depth=len(compiler.param_words),
            program_depth=len(compiler.descriptors), **options)
    except (TypeError, ValueError) as error:
        raise CompileError(f"the program's core cannot be built: {error}") from None
    layouts = config.layouts
    for descriptor in compiler.descriptors:
        if descriptor.get("table"):
            # lands on entry x − lo of the op's table for input code x (TablePart)
            descriptor["table_offset"] = ((descriptor["table_base"] - descriptor["table_low"])
                                          % (1 << config.tables.address_bits))
    _overlap(compiler.descriptors)
    outlier_slots = options.get("weight_outlier_slots", 0)
    weight_words = []
    tile_offset = layouts["weights"]["beat"].offset + config.array.weight_layout["tile"].offset
    for beat in compiler.weight_beats:
        if isinstance(beat, int):  # an SYQ table or code word: its tile's bits
            weight_words.append(beat << tile_offset)
            continue
        word = {"beat": {"tile": beat["tile"]}}
        if outlier_slots:
            word["beat"]["outliers"] = beat["outliers"] + [
                {"valid": 0, "lane": 0, "col": 0, "value": 0}] * (outlier_slots
                                                                 - len(beat["outliers"]))
        if config.plane_shift_bits:
            word["beat"]["plane_shift"] = beat["plane_shift"]
        if config.act_shift_bits:
            word.update(act_shift=beat["act_shift"], act_low=beat["act_low"])
        weight_words.append(_pack(layouts["weights"], word))
    contents = dict(
        # a core without a packed memory has no in_packed/out_packed fields (all 0)
        program=[_pack(layouts["program"], {name: value for name, value in d.items()
                                            if name in layouts["program"].members})
                 for d in compiler.descriptors],
        weights=weight_words,
        params=[_pack(layouts["params"], p) for p in compiler.param_words])
    if compiler.table_entries:
        contents["tables"] = [entry % (1 << TABLE_ENTRY_BITS) for entry in compiler.table_entries]
    return CompiledNetwork(config, contents, compiler.input_slots, compiler.output_slots,
                           program.values[program.output].signed, compiler.macs,
                           compiler.descriptors)


def compile_for_board(program: IntegerProgram, *, width: int) -> CompiledNetwork:
    """:func:`compile_program` as a board top and its host both compile it: the highway
    copies and the prefetch as the boards take them (``spec.BOARD_FUSE_COPIES``,
    ``spec.BOARD_PREFETCH``), one rule for both sides, whose programs must agree."""
    return compile_program(program, width=width, fuse_copies=BOARD_FUSE_COPIES,
                           prefetch=BOARD_PREFETCH)
