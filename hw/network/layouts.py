"""What the parts of the network core exchange: the op set and its descriptor, the word
layouts of the memories, and the signatures between the sequencer and the walks
(docs/network.md §15)."""

from amaranth.hdl import *
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import Out

from olmac import spec
from olmac.spec import HIGHWAY_BITS, MULTIPLIER_BITS, SHIFT_RANGE
from ..requant import ChannelParams

__all__ = ["STORAGE_BITS", "MAX_DIM", "MAX_KERNEL", "MAX_PASSES", "ACT_SHIFT_BITS",
           "WINDOW_GROWTH", "CHUNK_BITS", "WeightWord",
           "REQUANTIZERS", "MEMORY_STYLES", "OpKind", "OpDescriptor", "ChannelWord",
           "LoadTarget", "LoadBeat", "row_slices", "is_compute", "writes_results", "ControlSignature",
           "VectorBeat", "SideRequest",
           "SideWords", "OUTLIER_VALUE_BITS", "OutlierSlot", "OutlierBlock", "TABLE_ENTRY_BITS",
           "CodebookMode", "AddressedWord"]

#: Every activation memory slot is as wide as a highway tensor, so one is stored whole and a
#: low-width tensor sits in the low bits (docs/network.md §15).
STORAGE_BITS = HIGHWAY_BITS
#: Largest feature-map height/width and kernel/stride/padding the descriptors hold.
MAX_DIM = 255
MAX_KERNEL = 15
#: Most passes of one GEMM (docs/network.md §15, per-layer precision): the products of a
#: layer's activation digits and weight planes, each a whole reduction.
MAX_PASSES = 16
#: Widths of a weight word's activation shift (0: no activation digits): which bits of a
#: 16-bit slot a pass reads.
ACT_SHIFT_BITS = (0, 4)
#: Widest window sum of a SUM op: the reducer keeps 17 + this many bits.
WINDOW_GROWTH = 8
#: Bits of one row of a narrow memory (``memories="narrow"``): an iCE40 block RAM is 16 bits
#: wide at its full depth of 256 words.
CHUNK_BITS = 16
#: Width of a stored activation outlier (docs/program.md §18): a 16-bit signed number (an
#: unsigned value's outliers are u15).
OUTLIER_VALUE_BITS = HIGHWAY_BITS
#: Width of a lookup-table entry (docs/program.md §12): a table writes 2..8-bit values,
#: u8 or s8 at most, so one signed 9-bit entry holds either (an ECP5 block RAM is 9 bits
#: wide at its full depth).
TABLE_ENTRY_BITS = spec.ACT_BITS[1] + 1
#: Choices of the ``requantizer`` and ``memories`` options of ``NetworkCore.Config``.
REQUANTIZERS = spec.REQUANTIZERS
MEMORY_STYLES = spec.MEMORY_STYLES


class OpKind(enum.Enum, shape=3):
    """What one op does (docs/network.md §15)."""
    #: ``count`` words from ``inputs`` into the activation memory at ``out_base``; with
    #: ``quantize``, each word through the requantizer on its way (an elementwise SUM).
    LOAD = 0
    #: ``count`` words from the activation memory at ``in_base`` to ``outputs``.
    STORE = 1
    #: Convolution or linear layer on the MAC array, requantized (with a residual).
    GEMM = 2
    #: Lane-wise window sum, requantized: average pooling, requantize, input quantization.
    SUM = 3
    #: Lane-wise window maximum (max pooling), passed through the requantizer unchanged.
    MAX = 4


class CodebookMode(enum.Enum, shape=2):
    """How a GEMM's weight words are read (docs/network.md §17): dense tiles, or SYQ codes
    whose decoder tables are loaded at the op's start, one codebook for the layer, per
    output channel (``ROW``) or per kernel tap (``PIXEL``)."""
    DENSE = 0
    LAYER = 1
    ROW = 2
    PIXEL = 3


def is_compute(kind):
    """Whether an op of ``kind`` (a value of :class:`OpKind`) runs on the walks."""
    return (kind == OpKind.GEMM) | (kind == OpKind.SUM) | (kind == OpKind.MAX)


def writes_results(op):
    """Whether the op ``op`` (a descriptor) ends in the requantizer and the write-back: a
    compute op, or a ``LOAD`` that quantizes its words on the way in (``quantize``)."""
    return is_compute(op.kind) | ((op.kind == OpKind.LOAD) & op.quantize)


class OpDescriptor(data.StructLayout):
    """One op of a program; addresses are in words of the memory named. With a packed
    activation memory (``packed``), whether the op's input and output are packed (their
    addresses are then in that memory); with an outlier memory (``outlier_depth``), whether
    they keep activation outliers (docs/program.md §18), their blocks' bases and the dense
    range of the output; with a table memory (``table_address_bits``), whether the op's
    results go through a lookup table and ``table_offset``, the table's first entry minus
    the lowest input code, modulo ``2^table_address_bits`` (docs/network.md §15); with a
    codebook decoder (``codebook_entries``, the most codebook entries of one op), a GEMM's
    :class:`CodebookMode` and its codebooks (docs/network.md §17); with ``copies`` (a core
    with a copy requantizer), whether the op's results also go, requantized by
    ``copy_multiplier``, ``copy_shift`` and clamped to ``copy_low..copy_high``, to the
    packed memory at ``copy_base + pixel·copy_stride + tile`` (a fused ``requantize``,
    docs/network.md §15); with ``prefetch`` (a core that takes the next image's words in
    the background), ``fetch_next`` on the op from whose start they may be taken, on
    the quantizing ``LOAD`` its ``input_multiplier`` and ``input_shift`` (the parameter
    word's, which the background quantizer cannot read beside the running op), and
    ``store`` on an op whose results also leave on the core's outputs (the program's
    ``STORE`` fused into its last op, docs/network.md §15)."""

    def __init__(self, data_depth, weight_depth, param_depth, outlier_depth=0, packed=False,
                 table_address_bits=0, codebook_entries=0, copies=False, prefetch=False):
        dim = range(MAX_DIM + 1)
        kernel = range(MAX_KERNEL + 1)
        outliers = {"in_packed": unsigned(1), "out_packed": unsigned(1)} if packed else {}
        if outlier_depth:
            outliers |= {"in_outliers": unsigned(1), "in_obase": range(outlier_depth),
                        "out_outliers": unsigned(1), "out_obase": range(outlier_depth),
                        "dense_low": signed(STORAGE_BITS + 1),
                        "dense_high": signed(STORAGE_BITS + 1)}
        if table_address_bits:
            outliers |= {"table": unsigned(1), "table_offset": unsigned(table_address_bits)}
        if codebook_entries:
            outliers |= {"codebook": CodebookMode, "codebook_words": range(weight_depth + 1),
                         "codebook_entries": range(codebook_entries + 1)}
        if copies:
            outliers |= {"copy": unsigned(1), "copy_base": range(data_depth),
                         "copy_stride": range(data_depth + 1),
                         "copy_multiplier": signed(MULTIPLIER_BITS),
                         "copy_shift": range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1),
                         "copy_low": signed(STORAGE_BITS + 1),
                         "copy_high": signed(STORAGE_BITS + 1)}
        if prefetch:
            outliers |= {"fetch_next": unsigned(1), "store": unsigned(1),
                         "input_multiplier": signed(MULTIPLIER_BITS),
                         "input_shift": range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1)}
        super().__init__({
            "kind": OpKind,
            "final": unsigned(1),
            # a LOAD whose words pass the reducer and the requantizer as a 1×1 SUM would
            "quantize": unsigned(1),
            # the op starts while the back still writes the previous op's results; its
            # beat `b` then waits until `b + lead` of them are written (docs/network.md §15)
            "overlap": unsigned(1), "lead": range(data_depth + 1),
            "in_base": range(data_depth),
            "out_base": range(data_depth),
            "res_base": range(data_depth),
            "count": range(data_depth + 1),
            "in_h": dim, "in_w": dim, "in_words": range(data_depth + 1),
            "out_h": dim, "out_w": dim, "out_words": range(data_depth + 1),
            "out_pixels": range(data_depth + 1),
            # a GEMM's input words per tile: `band_words` from word `tile·band_step` of each
            # pixel (a grouped convolution skips its zero weight blocks); the write-back's
            # words between pixels (an output inside a concatenation, docs/network.md §15)
            "band_words": range(data_depth + 1), "band_step": range(data_depth + 1),
            "out_stride": range(data_depth + 1),
            "kernel_h": kernel, "kernel_w": kernel,
            "stride_h": kernel, "stride_w": kernel,
            "pad_h": kernel, "pad_w": kernel,
            "last_pass": range(MAX_PASSES),
            "in_signed": unsigned(1),
            "residual": unsigned(1),
            "res_signed": unsigned(1),
            "relu": unsigned(1),
            "low": signed(STORAGE_BITS + 1),
            "high": signed(STORAGE_BITS + 1),
            "weight_base": range(weight_depth),
            "param_base": range(param_depth),
            **outliers,
        })


class WeightWord(data.StructLayout):
    """One word of the weight memory: the array's weight ``beat`` and, with
    ``act_shift_bits``, which digit of the activation slots the beat multiplies: the slot
    shifted right by ``act_shift``, its low ``act_bits`` bits, the top one cleared if
    ``act_low`` (a lower digit of a signed array, docs/network.md §15)."""

    def __init__(self, beat, act_shift_bits=0):
        fields = {"beat": beat}
        if act_shift_bits:
            fields.update(act_shift=unsigned(act_shift_bits), act_low=unsigned(1))
        super().__init__(fields)


class ChannelWord(data.StructLayout):
    """Requantization parameters of one output channel in the parameter memory: the
    requantizer's :class:`~hw.requant.ChannelParams` (β, M, s, M_r, t) without the residual
    value ``r``, which the core reads from the activation memory."""

    def __init__(self):
        super().__init__({name: field.shape
                          for name, field in ChannelParams(signed(STORAGE_BITS + 1))
                          if name != "residual"})


class LoadTarget(enum.Enum, shape=3):
    """Which memory a ``load`` beat writes."""
    PROGRAM = 0
    WEIGHTS = 1
    PARAMS = 2
    #: Not a memory: start the program again at op 0.
    RESTART = 3
    #: The lookup tables (a core with a table memory): one entry a beat.
    TABLES = 4


class LoadBeat(data.StructLayout):
    """A write of one ``word`` (``word_bits`` wide) at ``address`` of a memory, or a
    restart, on the core's ``load`` port. With ``rows`` (a core with narrow memories),
    ``word`` is row ``row`` of the memory word at ``address`` instead (``word_bits`` is
    then :data:`CHUNK_BITS`; :func:`row_slices` says which bits of the word each row holds)."""

    def __init__(self, depth, word_bits, rows=None):
        row = {} if rows is None else {"row": range(rows)}
        super().__init__({"memory": LoadTarget, "address": range(depth), **row,
                          "word": unsigned(word_bits)})


def row_slices(item_bits, items=1):
    """``(offset, bits)`` of each :data:`CHUNK_BITS`-bit row of a word made of ``items``
    fields of ``item_bits`` bits, each field starting on a row of its own (so one field,
    e.g. one channel's parameters, is read without the rest), least significant first; the
    rows cover the word's bits in order, the last row of each field short where
    ``item_bits`` is not a multiple of :data:`CHUNK_BITS`."""
    rows = -(-item_bits // CHUNK_BITS)
    return [(item * item_bits + row * CHUNK_BITS, min(CHUNK_BITS, item_bits - row * CHUNK_BITS))
            for item in range(items) for row in range(rows)]


class ControlSignature(wiring.Signature):
    """The op running, from the sequencer to every walk (all of them listen).

    Members
    -------
    op : Out(descriptor)
        The descriptor; it holds from ``start`` until the op is done.
    start : Out(1)
        One cycle before the op runs: every walk restarts.
    running : Out(1)
        The op runs (``op`` is complete).
    """

    def __init__(self, descriptor):
        super().__init__({"op": Out(descriptor), "start": Out(1), "running": Out(1)})


class AddressedWord(data.StructLayout):
    """One activation memory write as a stream payload: ``word`` at ``address``."""

    def __init__(self, address_depth, word):
        super().__init__({"address": range(address_depth), "word": word})


class VectorBeat(data.StructLayout):
    """One activation word for the reducer: ``width`` lanes read as 17-bit signed values
    (zero under padding), ``last`` on a window's final beat."""

    def __init__(self, width):
        super().__init__({"lanes": data.ArrayLayout(signed(STORAGE_BITS + 1), width),
                          "last": unsigned(1)})


class SideRequest(data.StructLayout):
    """What one output needs beside its accumulators: its parameter word and (if
    ``read_residual``) its residual word."""

    def __init__(self, data_depth, param_depth):
        super().__init__({"param": range(param_depth), "residual": range(data_depth),
                          "read_residual": unsigned(1)})


class SideWords(data.StructLayout):
    """The answer to a :class:`SideRequest` for ``channels`` channels: their parameter
    words and residual slots (16 bits, sign not yet applied)."""

    def __init__(self, channels):
        super().__init__({"channels": data.ArrayLayout(ChannelWord(), channels),
                          "residuals": data.ArrayLayout(unsigned(STORAGE_BITS), channels)})


class OutlierSlot(data.StructLayout):
    """One kept activation outlier of a block (docs/program.md §18): its ``position`` in the
    block (``word·width + lane``) and its value; an empty slot holds the value 0, which is
    never an outlier."""

    def __init__(self, block_values):
        super().__init__({"position": range(max(block_values, 2)),
                          "value": signed(OUTLIER_VALUE_BITS)})


class OutlierBlock(data.StructLayout):
    """A word of the outlier memory: the ``slots`` of one block and the image ``parity`` it
    was written in (a block of the other parity is stale: its slots read as empty)."""

    def __init__(self, block_values, slots):
        super().__init__({"parity": unsigned(1),
                          "slots": data.ArrayLayout(OutlierSlot(block_values), slots)})
