"""The bottom layer: plain data shared by every other part of olmac.

The allowed ranges of docs/semantics.md §1, the widths of the precision highway
(docs/program.md §11) and of codebooks (docs/codebooks.md §4), and the constants of the host
link's frames and command protocol (docs/host_link.md). No arithmetic of the semantics lives
here, so the golden model and the hardware stay two independent readings of the written spec,
and nothing here imports another part of olmac.
"""

import enum

__all__ = [
    "ACT_BITS", "WEIGHT_BITS", "ACT_OUTLIER_RATIO",
    "ARRAY_DIM", "STALL_SIXTEENTHS", "OUTLIER_BITS", "OUTLIER_LANES",
    "PLANE_SHIFT_BITS", "WEIGHT_SCHEMES", "CORE_SCHEMES", "BOARD_NAMES", "MULTIPLIERS",
    "REQUANTIZERS", "MEMORY_STYLES", "WALK_STAGES", "REQUANT_STAGES", "BOARD_BAUD",
    "BOARD_DEFAULTS", "BOARD_FUSE_COPIES", "BOARD_PREFETCH",
    "OUT_BITS", "MULTIPLIER_BITS", "BIAS_BITS", "SHIFT_RANGE", "RESIDUAL_BITS",
    "RESIDUAL_SHIFT_RANGE", "HIGHWAY_BITS", "CODEBOOK_IDX_BITS", "CODEBOOK_ENTRY_BITS",
    "SYNC", "REPLY_KIND", "ERROR_KIND", "MAX_LENGTH", "ErrorCode",
    "PROTOCOL_VERSION", "INFO_MAGIC", "Command", "Status",
    "check_int",
]

#: Allowed activation widths (§1), inclusive.
ACT_BITS = (2, 8)
#: Allowed weight widths (§1), inclusive. Weights are always signed.
WEIGHT_BITS = (2, 8)
#: Allowed widths of activation and weight outliers (§6), inclusive.
OUTLIER_BITS = (3, 16)
#: Allowed lanes (multipliers along K) and columns (along N) of a MAC array, and widths of a
#: network core, inclusive.
ARRAY_DIM = (1, 64)
#: Allowed numbers of outlier multipliers of each kind (§6), inclusive.
OUTLIER_LANES = (0, 16)
#: Allowed widths of the per-column plane shift of multi-tensor layers (§8), inclusive.
PLANE_SHIFT_BITS = (0, 4)
#: The weight schemes of an integer program (docs/program.md §10) and those the network core
#: runs; here, not only in golden/, so the command line lists them without importing torch.
WEIGHT_SCHEMES = ("mmse", "value_aware", "multi_tensor", "syq")
CORE_SCHEMES = WEIGHT_SCHEMES
#: The choices the board builds (fpga/) and the network core (hw/network/) offer, named here
#: for the same reason: ``olmac build --help`` need not import amaranth. The boards by their
#: command-line name; where the multiplies go; the network core's requantizer and memory
#: style; the host link's default baud rate.
BOARD_NAMES = ("icebreaker", "ulx3s-85f", "ecpix5-85")
MULTIPLIERS = ("dsp", "lut", "booth", "hybrid")
REQUANTIZERS = ("parallel", "serial")
MEMORY_STYLES = ("wide", "narrow")
#: Allowed register stages in the network core's beat walk address (``walk_stages``), inclusive.
WALK_STAGES = (0, 3)
#: Allowed register stages added to the parallel requantizer (``split_stages``,
#: ``requant_stages``), inclusive.
REQUANT_STAGES = (0, 2)
BOARD_BAUD = 115200
#: Allowed fractions of a tensor's calibration values beyond its activation outlier
#: threshold (docs/program.md §18), inclusive.
ACT_OUTLIER_RATIO = (0.0, 0.1)
#: The network board's array width and core options by board (``olmac board build``'s
#: defaults, docs/host_link.md §6): the iCE40UP5K fits only with the serial requantizer and
#: narrow memories; the ECP5-85F boards have the block RAM for wide memories and the
#: MULT18X18Ds for the parallel requantizer, and take the beat walk's address registers
#: (``walk_stages``), the requantizer's (``requant_stages``) and the reducer's
#: (``reducer_stage``) and read each op's descriptor ahead (``fetch_ahead``) for a faster
#: clock; the UP5K takes two of the address registers (its width-4 board: 15.4 MHz without,
#: 23.2 with) and, with narrow memories, cannot read ahead.
_UP5K_BOARD = {"width": 2, "requantizer": "serial", "memories": "narrow", "walk_stages": 2,
               "requant_stages": 0, "fetch_ahead": False, "reducer_stage": False}
_ECP5_BOARD = {"width": 16, "requantizer": "parallel", "memories": "wide", "walk_stages": 3,
               "requant_stages": 2, "fetch_ahead": True, "reducer_stage": True}
BOARD_DEFAULTS = {"icebreaker": _UP5K_BOARD, "ulx3s-85f": _ECP5_BOARD, "ecpix5-85": _ECP5_BOARD}
#: Whether a board's program (built into its top, and compiled by the host that loads it)
#: runs ``requantize`` copies in their producers' backs (``compile_program(fuse_copies=…)``,
#: docs/network.md §15): not yet, until the copy requantizer's area and fmax on the boards
#: are measured. Board and host must agree: the programs differ in depth.
BOARD_FUSE_COPIES = False
#: Whether a board's program takes the next image's words in the background
#: (``compile_program(prefetch=…)``, docs/network.md §15): not yet, for the same reason (its
#: requantizer's area and fmax there are not measured); and a board's host sends an image
#: only after the last one's logits, so there is nothing to take early.
BOARD_PREFETCH = False
#: Allowed requantized output widths (§1), inclusive.
OUT_BITS = (2, 16)
#: Width of the signed per-channel requantization multiplier and bias (§3).
MULTIPLIER_BITS = 32
BIAS_BITS = 32
#: Allowed requantization shifts (§3), inclusive.
SHIFT_RANGE = (0, 63)
#: Allowed widths of the signed residual a requantizer adds (docs/program.md §11), inclusive:
#: a ``u16`` highway tensor needs 17.
RESIDUAL_BITS = (2, 17)
#: Allowed residual shifts ``t`` (docs/program.md §11), inclusive.
RESIDUAL_SHIFT_RANGE = (0, 31)
#: Allowed chances, in sixteenths, that a Verilator bench withholds a stream's valid or ready.
STALL_SIXTEENTHS = (0, 15)
#: Width of the precision highway (docs/program.md §11): skip tensors and a program's output
#: are s16/u16.
HIGHWAY_BITS = 16
#: Allowed codebook index widths (docs/codebooks.md §4), inclusive: codes are
#: ``1 + idx_bits`` wide.
CODEBOOK_IDX_BITS = (0, 4)
#: Allowed widths of the unsigned fixed-point codebook entries (docs/codebooks.md §4),
#: inclusive: a decoded weight is an ``s<entry_bits + 1>``, a weight width of §1.
CODEBOOK_ENTRY_BITS = (WEIGHT_BITS[0] - 1, WEIGHT_BITS[1] - 1)

# The host link (docs/host_link.md): frame bytes, then the network application's commands.

#: First byte of every frame.
SYNC = 0xA5
#: First payload byte of a frame from the device that carries an application reply.
REPLY_KIND = 0x00
#: First payload byte of a frame from the device that reports an error (then the code).
ERROR_KIND = 0xEE
#: Largest payload the 16-bit length field can describe.
MAX_LENGTH = 0xFFFF


class ErrorCode(enum.IntEnum):
    """Codes of the device's error frames (``0xEE, code``). None of them was applied."""

    #: A whole frame arrived but its CRC did not match.
    CRC = 0x01
    #: The length field was 0 or over the device's ``max_payload``.
    LENGTH = 0x02
    #: A frame stopped in the middle for longer than the inter-byte timeout.
    TRUNCATED = 0x03
    #: The UART received a byte with a bad stop bit (or lost one).
    FRAMING = 0x04
    #: Bytes that were not a sync byte arrived between frames.
    GARBAGE = 0x05
    #: A frame arrived while the previous request was still being handed on.
    BUSY = 0x06
    #: The application's reply did not fit the device's reply memory.
    REPLY_OVERFLOW = 0x07


#: Version byte of the network application's command protocol, reported by ``INFO``
#: (2: ``INFO`` reports the lookup-table memory and ``LOAD`` writes it, memory 4).
PROTOCOL_VERSION = 2
#: First two bytes of an ``INFO`` reply after the status.
INFO_MAGIC = b"OM"


class Command(enum.IntEnum):
    """First byte of a request to the network application (docs/host_link.md §6)."""
    LOAD = 0x01
    RESTART = 0x02
    INFER = 0x03
    INFO = 0x04


class Status(enum.IntEnum):
    """First byte of every reply of the network application."""
    OK = 0x00
    BAD_COMMAND = 0x01
    BAD_LENGTH = 0x02
    BAD_MEMORY = 0x03
    BAD_ADDRESS = 0x04
    #: The core's MAC array was given a beat that breaks the outlier rules of
    #: docs/semantics.md §6 (since reset): its results cannot be trusted.
    FAULT = 0x05


def check_int(description, value, bounds):
    """Return ``value`` if it is an ``int`` within the inclusive ``bounds``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (``bool`` is refused too) or is outside ``bounds``;
        the message names ``description`` and shows the allowed range and the value.
    """
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TypeError(f"{description} must be an integer in {low}..{high}, not {value!r}")
    return value
