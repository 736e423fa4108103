"""The SYQ codebook path of the network core (docs/network.md §17): the beats of a GEMM whose
weight words hold codes reach the array through a :class:`CodebookDecoder`, whose tables
are loaded at the op's start; every other op's beats pass straight through."""

from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..codebook import CodebookDecoder
from .layouts import CodebookMode, ControlSignature

__all__ = ["CodebookPath", "code_tiles", "codebook_word_entries"]


def code_tiles(weight_bits, idx_bits):
    """Tiles of ``1 + idx_bits``-bit codes one weight word holds in the bits of its dense
    tile of ``weight_bits``-bit weights: the largest power of two that fits, so a beat's
    word and tile are the high and low bits of its index.

    >>> code_tiles(8, 1), code_tiles(4, 1), code_tiles(3, 1), code_tiles(8, 3)
    (4, 2, 1, 2)
    """
    return 1 << ((weight_bits // (1 + idx_bits)).bit_length() - 1)


def codebook_word_entries(width, weight_bits):
    """Table entries (``weight_bits − 1``-bit magnitudes) one weight word holds in the bits
    of its ``width × width`` dense tile.

    >>> codebook_word_entries(8, 4)
    85
    """
    return width * width * weight_bits // (weight_bits - 1)


class CodebookPath(wiring.Component):
    """Between the :class:`BeatWalk` and the :class:`MacArray` of a core with a codebook
    decoder (``config.codebook``).

    In a dense op (``op.codebook`` is ``DENSE``) ``act`` and ``weights`` are the walk's
    ``beat_act`` and ``beat_weights``, wired through with no register. In an SYQ GEMM:

    * **Tables.** From ``start`` the decoder is offered a reload request, a tile of zero
      codes with ``reload`` set, and the entries of the walk's ``beat_codebooks`` words go to
      its ``load`` port one a cycle: ``codebook_word_entries`` magnitudes to a word, in the
      order (subgroup, index 1..2^idx_bits − 1), the op's ``codebook_entries``-th ending the
      batch. The request's decoded tile is dropped, so the tables are in place before the
      first beat and no beat waits inside the decoder for a load.
    * **Beats.** Each beat of the walk (``beat_act`` with ``beat_codes``, valid together)
      is forked: the codes into the decoder, the activations into a register of their own,
      so both reach the array one cycle later, together, one beat a cycle. The walk's beat
      is taken when both halves are.

    Parameters
    ----------
    config : NetworkCore.Config
        A core configuration with a codebook decoder.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The op's ``codebook`` and ``codebook_entries``.
    beat_act, beat_weights : In(stream.Signature(...))
        The walk's GEMM beats: activations and dense weight tiles.
    beat_codes : In(stream.Signature(CodeBeat(...)))
        The walk's beats as codes and subgroups, valid with ``beat_act``.
    beat_codebooks : In(stream.Signature(unsigned(tile bits)))
        Table words.
    act, weights : Out(stream.Signature(...))
        The array's beats.
    """

    def __init__(self, config):
        self._config = config
        array = config.array
        tile_bits = Shape.cast(array.weight_layout["tile"].shape).width
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "beat_act": In(stream.Signature(array.act_layout)),
            "beat_weights": In(stream.Signature(array.weight_layout)),
            "beat_codes": In(stream.Signature(config.codebook.codes_layout)),
            "beat_codebooks": In(stream.Signature(unsigned(tile_bits))),
            "act": Out(stream.Signature(array.act_layout)),
            "weights": Out(stream.Signature(array.weight_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = CodebookDecoder(**vars(self._config.codebook))
        op, start = self.control.op, self.control.start
        syq = op.codebook != CodebookMode.DENSE

        # The reload request stands at the decoder's input from the op's start until the
        # decoder takes it (after the batch's last load); its decoded tile is dropped.
        loading = Signal()
        drop = Signal()
        requested = decoder.codes.valid & decoder.codes.ready & loading
        with m.If(start):
            m.d.sync += loading.eq(syq)
        with m.Elif(requested):
            m.d.sync += [loading.eq(0), drop.eq(1)]
        with m.If(drop & decoder.weights.valid):
            m.d.sync += drop.eq(0)
        self._feed_codebooks(m, decoder.load, start)

        # The fork: each half of a beat is taken once, the beat when both are.
        held = Signal.like(self.beat_act.payload)
        held_valid = Signal()
        act_taken = Signal()
        codes_taken = Signal()
        act_space = ~held_valid | self.act.ready
        codes_space = decoder.codes.ready & ~loading
        whole = (act_taken | act_space) & (codes_taken | codes_space)
        act_load = syq & self.beat_act.valid & ~act_taken & act_space
        codes_load = syq & self.beat_codes.valid & ~codes_taken & codes_space
        with m.If(start | (self.beat_act.valid & whole)):
            m.d.sync += [act_taken.eq(0), codes_taken.eq(0)]
        with m.Else():
            with m.If(act_load):
                m.d.sync += act_taken.eq(1)
            with m.If(codes_load):
                m.d.sync += codes_taken.eq(1)
        with m.If(start):
            m.d.sync += held_valid.eq(0)
        with m.Else():
            with m.If(self.act.ready):
                m.d.sync += held_valid.eq(0)
            with m.If(act_load):
                m.d.sync += [held_valid.eq(1), held.eq(self.beat_act.payload)]

        request = Signal.like(decoder.codes.payload)
        m.d.comb += request.reload.eq(1)
        decoded = Signal.like(self.weights.payload)
        m.d.comb += [
            decoder.codes.valid.eq(loading | (syq & self.beat_codes.valid & ~codes_taken)),
            decoder.codes.payload.eq(Mux(loading, request, self.beat_codes.payload)),
            decoder.weights.ready.eq(drop | (syq & self.weights.ready)),
            decoded.tile.eq(decoder.weights.payload.tile),
            self.act.valid.eq(Mux(syq, held_valid, self.beat_act.valid)),
            self.act.payload.eq(Mux(syq, held, self.beat_act.payload)),
            self.beat_act.ready.eq(Mux(syq, whole, self.act.ready)),
            self.beat_codes.ready.eq(syq & whole),
            self.weights.valid.eq(Mux(syq, decoder.weights.valid & ~drop,
                                      self.beat_weights.valid)),
            self.weights.payload.eq(Mux(syq, decoded, self.beat_weights.payload)),
            self.beat_weights.ready.eq(Mux(syq, whole, self.weights.ready)),
        ]
        return m

    def _feed_codebooks(self, m, load, start):
        """The entries of each ``beat_codebooks`` word to ``load``, one a cycle."""
        config = self._config
        entry_bits = config.codebook.entry_bits
        per_word = config.codebook_word_entries
        stored = config.codebook.stored
        op = self.control.op
        word = Signal.like(self.beat_codebooks.payload)
        have = Signal()
        slot = Signal(range(per_word))
        group = Signal(range(config.codebook.subgroups))
        index = Signal(range(stored + 1))
        remaining = Signal.like(op.codebook_entries)
        final = remaining == 1
        m.d.comb += [
            self.beat_codebooks.ready.eq(~have),
            load.valid.eq(have),
            load.payload.subgroup.eq(group),
            load.payload.index.eq(index),
            load.payload.magnitude.eq(word.word_select(slot, entry_bits)),
            load.payload.last.eq(final),
        ]
        with m.If(start):
            m.d.sync += [have.eq(0), group.eq(0), index.eq(1),
                         remaining.eq(op.codebook_entries)]
        with m.Elif(self.beat_codebooks.valid & ~have):
            m.d.sync += [word.eq(self.beat_codebooks.payload), have.eq(1), slot.eq(0)]
        with m.Elif(load.valid & load.ready):
            m.d.sync += [remaining.eq(remaining - 1), slot.eq(slot + 1)]
            with m.If((slot == per_word - 1) | final):
                m.d.sync += have.eq(0)
            with m.If(index == stored):
                m.d.sync += [index.eq(1), group.eq(group + 1)]
            with m.Else():
                m.d.sync += index.eq(index + 1)
