from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from olmac.spec import ARRAY_DIM, CODEBOOK_ENTRY_BITS, check_int
from .config import ConfigProperty, ConfiguredComponent
from .mac_array import WeightBeat

__all__ = ["GRANULARITIES", "DECODER_IDX_BITS", "MAX_SUBGROUPS", "CodeBeat", "CodebookEntry",
           "CodebookDecoder"]

#: Which subgroup id of a :class:`CodeBeat` each element of a tile reads (docs/codebooks.md §3).
GRANULARITIES = ("layer", "row", "pixel")
#: Index widths the decoder takes (codes of 1..4 bits): a limit of this hardware, narrower
#: than the spec's ``CODEBOOK_IDX_BITS``; each further bit doubles every weight's
#: multiplexer, and 15–16 magnitudes are past what SYQ uses.
DECODER_IDX_BITS = (0, 3)
#: Most codebooks one decoder holds.
MAX_SUBGROUPS = 4096


def _subgroup_ids(granularity, lanes, cols):
    """Subgroup ids one tile carries: one, one per column, or one per lane."""
    return {"layer": 1, "row": cols, "pixel": lanes}[granularity]


class CodeBeat(data.StructLayout):
    """One tile of SYQ codes indexed ``[lane][col]`` and the subgroups they decode with.

    ``subgroup`` holds one id (``layer``), one per column (``row``) or one per lane
    (``pixel``). ``reload`` asks for a batch of codebook loads to be applied before the tile
    is decoded (see :class:`CodebookDecoder`).
    """

    def __init__(self, idx_bits, lanes, cols, subgroups, granularity):
        super().__init__({
            "tile": data.ArrayLayout(data.ArrayLayout(unsigned(1 + idx_bits), cols), lanes),
            "subgroup": data.ArrayLayout(range(subgroups),
                                         _subgroup_ids(granularity, lanes, cols)),
            "reload": unsigned(1),
        })


class CodebookEntry(data.StructLayout):
    """One table entry ``T[subgroup][index] = magnitude``; ``last`` ends a reload batch."""

    def __init__(self, idx_bits, entry_bits, subgroups):
        super().__init__({
            "subgroup": range(subgroups),
            "index": unsigned(idx_bits),
            "magnitude": unsigned(entry_bits),
            "last": unsigned(1),
        })


class CodebookDecoder(ConfiguredComponent):
    """SYQ symmetric-codebook weight decoder (docs/codebooks.md §3–§4).

    Each beat of ``codes`` is a ``lanes × cols`` tile of codes
    ``code = (sign << idx_bits) | index``; the decoder sends the tile of integer weights
    ``D = (-1)^sign · T[g][index]`` (``s<entry_bits + 1>``) on ``weights``, whose layout is
    the :class:`MacArray` weight beat without outliers, so ``weights`` connects straight to
    the ``weights`` port of a ``MacArray(weight_bits=entry_bits + 1, ...)`` of the same
    shape. With a zero code, index 0 decodes to 0 whatever the sign.

    **Subgroups.** The decoder holds ``subgroups`` tables of magnitudes (the sign comes from
    the code, so only ``|c|`` is stored, and the zero code needs no entry). ``granularity``
    fixes which id of the beat's ``subgroup`` array the element ``[lane][col]`` uses, the
    sequencer supplying the ids as it walks the GEMM (the tile's rows are K, its columns N):

    * ``"layer"``: ``subgroup[0]`` for the whole tile (one codebook per layer; several layers'
      codebooks may be held at once);
    * ``"row"``: ``subgroup[col]``, the codebook of the output channel in that column;
    * ``"pixel"``: ``subgroup[lane]``, the codebook of the kernel tap of that K row (a
      convolution's im2col K runs over taps).

    **Reloads.** Entries are written through ``load``. To keep reloads in order with the
    tiles whatever the stalls on either stream, a tile with ``reload`` set first takes loads
    up to and including one with ``last`` set, and loads are taken at no other time. A tile
    therefore decodes with the tables as left by every batch requested at or before it, and
    a tile already decoded but held at ``weights`` keeps the values it read. The tile enters
    the cycle after its batch's last load. Loads to index 0 with a zero code are taken and
    discarded (golden's ``T[g][0] = 0`` may be sent as it is). Tables start at zero; a reset
    does not clear them.

    One tile per cycle in steady state, with a latency of one cycle.

    Made from keyword arguments, the fields of :class:`CodebookDecoder.Config`, which validates
    them (see its Raises).

    Members
    -------
    codes : In(stream.Signature(CodeBeat(...)))
        Code tiles with their subgroup ids and ``reload`` flag.
    load : In(stream.Signature(CodebookEntry(...)))
        Table entries, in batches ended by ``last``.
    weights : Out(stream.Signature(WeightBeat(signed(entry_bits + 1), lanes, cols)))
        Decoded weight tiles.
    """

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """The parameters of a :class:`CodebookDecoder`, validated, and its port layouts.

        Parameters
        ----------
        lanes : int
            Tile rows, along K; 1..64.
        cols : int
            Tile columns, along N; 1..64.
        idx_bits : int
            Index width, 0..3; codes are ``1 + idx_bits`` bits.
        zero : bool
            Index 0 is the zero code (ternary-style codebooks).
        entry_bits : int
            Width of the unsigned table entries, 1..7.
        subgroups : int
            Codebooks held, 1..4096.
        granularity : str
            ``"layer"``, ``"row"`` or ``"pixel"``.

        Raises
        ------
        TypeError
            If an integer parameter is not an integer or is outside its range, ``zero`` is
            not a bool, or ``granularity`` is not a string.
        ValueError
            If ``granularity`` is not one of ``"layer"``, ``"row"``, ``"pixel"``, or a zero
            code is asked for with ``idx_bits = 0`` (binary codes have no index to spare).
        """
        lanes: int
        cols: int
        idx_bits: int
        zero: bool
        entry_bits: int
        subgroups: int = 1
        granularity: str = "layer"

        def __post_init__(self):
            check_int("Lane count", self.lanes, ARRAY_DIM)
            check_int("Column count", self.cols, ARRAY_DIM)
            check_int("Index width", self.idx_bits, DECODER_IDX_BITS)
            if not isinstance(self.zero, bool):
                raise TypeError(f"Zero code must be a bool, not {self.zero!r}")
            if self.zero and self.idx_bits == 0:
                raise ValueError("A zero code needs an index width of at least 1, not 0")
            # Entries decode to s<entry_bits + 1>, which must be a weight width of the array.
            check_int("Entry width", self.entry_bits, CODEBOOK_ENTRY_BITS)
            check_int("Subgroup count", self.subgroups, (1, MAX_SUBGROUPS))
            if not isinstance(self.granularity, str):
                raise TypeError(f"Granularity must be a string, not {self.granularity!r}")
            if self.granularity not in GRANULARITIES:
                raise ValueError(f"Granularity must be one of 'layer', 'row', 'pixel', not "
                                 f"{self.granularity!r}")

        @property
        def weight_shape(self):
            """Shape of one decoded weight."""
            return signed(self.entry_bits + 1)

        @property
        def stored(self):
            """Magnitudes stored per codebook: the zero code has none."""
            return (1 << self.idx_bits) - int(self.zero)

        @property
        def codes_layout(self):
            """Payload of the ``codes`` port."""
            return CodeBeat(self.idx_bits, self.lanes, self.cols, self.subgroups,
                            self.granularity)

        @property
        def load_layout(self):
            """Payload of the ``load`` port."""
            return CodebookEntry(self.idx_bits, self.entry_bits, self.subgroups)

        @property
        def weight_layout(self):
            """Payload of the ``weights`` port."""
            return WeightBeat(self.weight_shape, self.lanes, self.cols)

        @property
        def signature(self):
            """The decoder's signature: ``codes``, ``load`` and ``weights``."""
            return wiring.Signature({
                "codes": In(stream.Signature(self.codes_layout)),
                "load": In(stream.Signature(self.load_layout)),
                "weights": Out(stream.Signature(self.weight_layout)),
            })

    lanes = ConfigProperty()
    cols = ConfigProperty()
    idx_bits = ConfigProperty()
    zero = ConfigProperty()
    entry_bits = ConfigProperty()
    subgroups = ConfigProperty()
    granularity = ConfigProperty()
    weight_shape = ConfigProperty()

    #: Cycles from a tile's transfer on ``codes`` to its decoded tile on ``weights``.
    latency = 1

    def elaborate(self, platform):
        m = Module()

        # One row per codebook, and one read port per subgroup id a tile carries: each port
        # fetches a whole codebook and every weight on it picks its value with a small
        # multiplexer (`_decode`). That is 1, cols or lanes ports rather than lanes·cols
        # per-weight lookups, and synchronous ports let a large table map to block RAM
        # (one copy per port: 8 iCE40 BRAMs for 256 ternary u7 codebooks read row-wise by
        # 8 columns) instead of flip-flops and multiplexers as wide as `subgroups`.
        m.submodules.tables = tables = Memory(
            shape=data.ArrayLayout(unsigned(self._config.entry_bits), self._config.stored),
            depth=self._config.subgroups, init=[])
        write = tables.write_port(granularity=1)
        reads = [tables.read_port()
                 for _ in range(_subgroup_ids(self._config.granularity, self._config.lanes,
                                              self._config.cols))]

        full = Signal()
        reloaded = Signal()
        take = ~full | self.weights.ready
        waiting = self.codes.payload.reload & ~reloaded
        m.d.comb += [
            self.codes.ready.eq(take & ~waiting),
            self.load.ready.eq(self.codes.valid & waiting),
        ]
        accepted = self.codes.valid & self.codes.ready
        loaded = self.load.valid & self.load.ready

        entry = self.load.payload
        m.d.comb += [write.addr.eq(entry.subgroup),
                     write.data.eq(Cat(*[entry.magnitude] * self._config.stored))]
        for slot in range(self._config.stored):
            m.d.comb += write.en[slot].eq(loaded & (entry.index == slot + int(self._config.zero)))
        with m.If(loaded & entry.last):
            m.d.sync += reloaded.eq(1)
        with m.If(accepted):
            m.d.sync += reloaded.eq(0)

        # Loads are never taken in a cycle that accepts a tile, so no read meets a write to
        # its row and the ports need no transparency; a port reads only when its tile is
        # accepted, so a tile held by backpressure keeps the table it was accepted with.
        for port, subgroup in zip(reads, self.codes.payload.subgroup):
            m.d.comb += [port.addr.eq(subgroup), port.en.eq(accepted)]
        codes = Signal.like(self.codes.payload.tile, reset_less=True)
        with m.If(accepted):
            m.d.sync += codes.eq(self.codes.payload.tile)
        with m.If(take):
            m.d.sync += full.eq(accepted)

        # The decode is combinational after the registers: the array registers its inputs
        # at once, so it needs no output register of its own.
        for lane in range(self._config.lanes):
            for col in range(self._config.cols):
                port = reads[{"layer": 0, "row": col, "pixel": lane}[self._config.granularity]]
                m.d.comb += self.weights.payload.tile[lane][col].eq(
                    self._decode(codes[lane][col], port.data))
        m.d.comb += self.weights.valid.eq(full)
        return m

    def _decode(self, code, stored):
        """The weight ``code`` stands for in a codebook row of ``stored`` magnitudes."""
        zero = [Const(0, self._config.entry_bits)] if self._config.zero else []
        magnitudes = zero + list(stored)
        if self._config.stored == 1:
            # Binary and ternary: the code selects among `+T[0..2^k-1], -T[0..2^k-1]` (sign
            # above index), a 2:1 or 4:1 mux with no arithmetic per weight, as the
            # negation is shared by every weight on the port. On iCE40 this halves a ternary
            # decoder (535 against 968 LUTs at 8×8, u7 entries).
            words = [Cat(magnitude, Const(0, 1)) for magnitude in magnitudes]
            words += [-magnitude for magnitude in magnitudes]
            return Cat(*words).word_select(code, self._config.entry_bits + 1)
        # Wider codebooks: a 2^(k+1):1 mux of signed words costs more than a 2^k:1 mux of
        # magnitudes and a negation (2767 against 5409 LUTs with a zero code and 3-bit
        # indexes, as above).
        sign, index = code[self._config.idx_bits], code[:self._config.idx_bits]
        magnitude = Cat(*magnitudes).word_select(index, self._config.entry_bits)
        return Mux(sign, -magnitude, magnitude)
