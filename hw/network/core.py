"""The network core: the parts of hw/network wired around one MAC array and one
requantizer (docs/network.md §15)."""

from dataclasses import dataclass, replace
from functools import cached_property, reduce

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.spec import ARRAY_DIM, OUTLIER_LANES, REQUANT_STAGES, WALK_STAGES, check_int
from ..codebook import DECODER_IDX_BITS, MAX_SUBGROUPS, CodebookDecoder
from ..mac_array import MacArray
from ..requant import Requantizer
from ..serial_requant import SerialRequantizer
from .compute import CopyPart, ParamFeed, Reducer, StorePart, WriteBack
from .layouts import (ACT_SHIFT_BITS, CHUNK_BITS, MEMORY_STYLES, OUTLIER_VALUE_BITS, REQUANTIZERS,
                      STORAGE_BITS, TABLE_ENTRY_BITS, WINDOW_GROWTH, ChannelWord, CodebookMode,
                      LoadBeat, LoadTarget, OpDescriptor, OpKind, OutlierBlock, WeightWord,
                      row_slices)
from .codes import CodebookPath, code_tiles, codebook_word_entries
from .memories import NarrowMemories, WideMemories
from .outliers import ActOutlierStore
from .packed import PackedMemory
from .sequencer import Sequencer
from .tables import TablePart
from .transfers import Loader, Prefetcher, Storer
from .walks import BeatWalk, OutputWalk

__all__ = ["NetworkCore"]


def _share(m, port, select, first, second):
    """Drive ``port`` (a memory port interface) from ``first`` while ``select`` holds, else
    from ``second``; both see what the port returns."""
    for path, member, value in port.signature.flatten(port):
        ours, theirs = (reduce(getattr, path, part) for part in (first, second))
        if member.flow == In:
            m.d.comb += value.eq(Mux(select, ours, theirs))
        else:
            m.d.comb += [ours.eq(value), theirs.eq(value)]


def _merge(m, select, first, second, sink):
    """Drive the stream ``sink`` from ``first`` while ``select`` holds, else from
    ``second``; the other source sees ``ready`` low."""
    m.d.comb += [
        sink.valid.eq(Mux(select, first.valid, second.valid)),
        sink.payload.eq(Mux(select, first.payload, second.payload)),
        first.ready.eq(select & sink.ready),
        second.ready.eq(~select & sink.ready),
    ]


def _route_loads(m, writes, memories, tables):
    """``load`` beats to the table part (``TABLES``, an entry in the word's low bits) or to
    the memories (every other target)."""
    to_tables = writes.payload.memory == LoadTarget.TABLES
    m.d.comb += [
        memories.valid.eq(writes.valid & ~to_tables),
        memories.payload.eq(writes.payload),
        tables.valid.eq(writes.valid & to_tables),
        tables.payload.address.eq(writes.payload.address),
        tables.payload.entry.eq(writes.payload.word[:TABLE_ENTRY_BITS]),
        writes.ready.eq(Mux(to_tables, tables.ready, memories.ready)),
    ]


class NetworkCore(wiring.Component):
    """Runs an integer program on one ``width × width`` MAC array (docs/network.md §15).

    Activations live in one memory of ``width``-slot words, each slot 16 bits; a tensor of
    ``C`` channels takes ``⌈C/width⌉`` words per pixel, pixels in row-major order, so a
    GEMM beat reads the ``width`` channels of one word and one weight tile, and the
    output vector of ``width`` channels is one word. GEMMs run on a :class:`MacArray`
    (``lanes = cols = width``); window sums and maxima on a lane-wise :class:`Reducer`; both
    end in one requantizer with residual and run-time bounds.

    The parts: a :class:`Sequencer` fetches each op and tells every walk; a :class:`Loader`
    and a :class:`Storer` run ``LOAD`` and ``STORE``; a compute op's :class:`BeatWalk` feeds
    the array or the :class:`Reducer`, its :class:`OutputWalk` asks the memories for each
    output's parameters and residual, which a :class:`ParamFeed` hands to the requantizer,
    and a :class:`WriteBack` stores the results. The memories are a :class:`WideMemories`
    or a :class:`NarrowMemories`, as ``config.memories`` says.

    Parameters
    ----------
    config : NetworkCore.Config
        The formats, depths and options.
    program, weights, params, tables : list of int or None
        Initial memory contents (packed words; table entries as 9-bit two's complement
        words, only with a table memory; zeros where not given). The ``load`` port
        rewrites them while the core waits in a ``LOAD`` op. An all-zero program word is a
        ``LOAD`` of no words, which halts the core: a core built without a program waits
        for one to be loaded, then for a ``load`` beat to ``Memory.RESTART``.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`NetworkCore.Config`.
    ValueError
        If initial contents do not fit their memory.

    Members
    -------
    inputs : In(stream.Signature(ArrayLayout(unsigned(16), width)))
        Words for ``LOAD`` ops.
    outputs : Out(stream.Signature(StructLayout({"word": ..., "last": 1})))
        Words of ``STORE`` ops; ``last`` marks the final word of each ``STORE``.
    load : In(stream.Signature(LoadBeat))
        Memory writes ``(memory, address, word)`` (narrow memories: ``(memory, address,
        row, word)``, a 16-bit row of a word a beat, :meth:`Config.load_beats`), or a
        restart at op 0 (``RESTART``); taken only while a ``LOAD`` op waits and ``inputs``
        offers nothing.
    op_index : Out(range(program_depth))
        The op running.
    gemm_beats : Out(32)
        Beats the array has taken since reset (for utilization figures).
    fault : Out(1)
        The array's ``fault``: a beat broke the outlier rules of docs/semantics.md §6
        (sticky until reset; never raised by a program the compiler made).
    """

    #: Which memory a ``load`` beat writes.
    Memory = LoadTarget

    @dataclass(frozen=True)
    class Config:
        """A network core's formats, memory depths and options, validated, and what they
        imply (layouts, accumulator width) without building hardware.

        Parameters
        ----------
        width : int
            Array lanes and columns, and channels per memory word; 1..64.
        act_bits, act_signed : int, bool
            The array's activation format; every GEMM input must fit it.
        weight_bits : int
            The dense weight width, 2..8.
        max_k : int
            Longest reduction (the padded ``K``) of any GEMM.
        data_depth, weight_depth, param_depth, program_depth : int
            Words of the activation, weight, parameter and program memories, 1..65536.
        weight_outlier_lanes, weight_outlier_bits, weight_outlier_slots : int
            Weight-outlier multipliers (0: none), their width and the slots per weight
            word, as for :class:`MacArray`.
        plane_shift_bits, max_plane_shift : int
            The array's per-column plane shift (0: none) and the largest total shift of one
            reduction, as for :class:`MacArray`: the weight planes of multi-tensor layers
            and the passes of a layer wider than the array.
        act_shift_bits : int
            Width of a weight word's activation shift, 0..4 (0: none): a layer whose
            activations are wider than ``act_bits`` runs one pass per activation digit.
        act_outlier_lanes : int
            Activation-outlier multipliers of the array (0: no run-time activation
            outliers, docs/program.md §18), 0..16; a beat with more outliers than lanes
            takes a cycle more per further group.
        act_outlier_block_words, act_outlier_slots : int
            Words per outlier block (a power of two, 1..256) and outliers each block keeps
            (1..``block_words·width``); a beat carries up to ``act_outlier_slots``.
        outlier_depth : int
            Blocks of the outlier memory, 1..65536.
        packed_depth : int
            Words of the packed activation memory (``width`` slots of ``act_bits`` bits),
            0..65536; 0: every activation in the 16-bit memory.
        table_depth : int
            Entries of the lookup-table memory (a :class:`TablePart` between the
            requantizer and the write-back, docs/network.md §15), 0 or 4..65536; 0: no
            table part (a core without tables pays nothing for them).
        requantizer : str
            ``"parallel"`` (default): a :class:`Requantizer` with ``2·width`` wide
            multipliers, one vector a cycle. ``"serial"``: a :class:`SerialRequantizer`,
            one channel at a time through a shift-and-add multiplier (tens of cycles a
            channel, a few hundred logic cells), with the same results.
        memories : str
            ``"wide"`` (default): :class:`WideMemories`. ``"narrow"``:
            :class:`NarrowMemories` (same results; loads of the program and parameter
            memories and the walks take longer).
        multipliers : str
            Where the array's products go, as :class:`MacArray` takes it: ``"lut"``
            (default), ``"dsp"`` or ``"packed"``.
        dsp_lane_pairs : int
            The array's lane pairs a column in DSP blocks, as :class:`MacArray` takes it
            (default 0).
        codebook_subgroups : int
            Codebooks the SYQ decoder holds for one op (0, the default: no decoder, every
            weight word dense), 0..4096 (docs/network.md §17).
        codebook_idx_bits : int
            Index width of the decoder's codes (``1 + codebook_idx_bits`` bits a weight,
            index 0 the zero code), 1..3; at most ``weight_bits − 1``.
        walk_stages : int
            Register stages in the beat walk's activation address (its row, pixel and
            word products), 0..3 (default 0): each cuts that path for a faster clock
            (the ECP5 board's) and makes every compute op a cycle longer.
        copies : bool
            A copy requantizer in the back (default False; needs a packed memory): an op
            whose descriptor has ``copy`` also writes its results requantized to the packed
            memory, so the compiler drops the ``requantize`` op that would copy them there
            (docs/network.md §15). It is a second requantizer of the ``requantizer`` kind.
        requant_stages : int
            Register stages added to the parallel requantizer, 0..2 (default 0; its
            ``split_stages``), for a faster clock (the ECP5 board's): each makes an op's
            back a cycle longer. The serial requantizer has none to add (0 only).
        prefetch : bool
            A background loader (default False; needs a packed memory):
            from the start of the op marked ``fetch_next`` it takes the next image's
            words and quantizes them, :attr:`prefetch_lanes` lanes a cycle, into the
            quantizing ``LOAD``'s words of the packed memory, so that ``LOAD`` then ends at
            once; the program's ``STORE`` is fused into its last op (``store``: that op's
            back hands its results to the outputs), so the next image's ``LOAD`` and first
            op start beside the last op's back (docs/network.md §15, prefetch).
        fetch_ahead : bool
            The sequencer reads the next op's descriptor while the op before runs and keeps
            the front's in a register of its own (default False; needs wide memories), so
            letting an op go is a register move instead of a program memory read behind
            ``done``, for a faster clock (the ECP5 board's). Ops stay one cycle apart; the
            first op after a reset starts a cycle later and after a ``RESTART`` two
            (docs/network.md §15, "Fetch ahead").
        reducer_stage : bool
            A register between the beats and the reducer's sums and compares (default
            False), for a faster clock (the ECP5 board's): an operand read no longer reaches
            a ``MAX``'s compare in its cycle; each ``SUM``, ``MAX`` and quantizing ``LOAD``
            ends a cycle later.

        Raises
        ------
        TypeError
            If a parameter is of the wrong type or outside its range.
        ValueError
            If ``requantizer`` or ``memories`` is not one of its choices, ``copies``
            or ``prefetch`` without a packed memory, ``fetch_ahead`` with narrow memories,
            ``requant_stages`` is not 0 with the serial requantizer, or as :class:`MacArray.Config` raises.
        """
        width: int
        act_bits: int
        weight_bits: int
        max_k: int
        data_depth: int
        weight_depth: int
        param_depth: int
        program_depth: int
        act_signed: bool = False
        weight_outlier_lanes: int = 0
        weight_outlier_bits: int = 8
        weight_outlier_slots: int | None = None
        plane_shift_bits: int = 0
        max_plane_shift: int | None = None
        act_shift_bits: int = 0
        requantizer: str = "parallel"
        memories: str = "wide"
        multipliers: str = "lut"
        dsp_lane_pairs: int = 0
        act_outlier_lanes: int = 0
        act_outlier_block_words: int = 8
        act_outlier_slots: int = 1
        outlier_depth: int = 1
        packed_depth: int = 0
        table_depth: int = 0
        codebook_subgroups: int = 0
        codebook_idx_bits: int = 1
        walk_stages: int = 0
        copies: bool = False
        requant_stages: int = 0
        prefetch: bool = False
        fetch_ahead: bool = False
        reducer_stage: bool = False

        def __post_init__(self):
            check_int("Width", self.width, ARRAY_DIM)
            check_int("act_outlier_lanes", self.act_outlier_lanes, OUTLIER_LANES)
            check_int("act_outlier_block_words", self.act_outlier_block_words, (1, 256))
            if self.act_outlier_block_words & (self.act_outlier_block_words - 1):
                raise ValueError(f"act_outlier_block_words must be a power of two, not "
                                 f"{self.act_outlier_block_words}")
            check_int("act_outlier_slots", self.act_outlier_slots,
                      (1, self.act_outlier_block_words * self.width))
            check_int("outlier_depth", self.outlier_depth, (1, 65536))
            check_int("packed_depth", self.packed_depth, (0, 65536))
            if self.requantizer not in REQUANTIZERS:
                raise ValueError(f"requantizer must be one of "
                                 f"{', '.join(map(repr, REQUANTIZERS))}, not "
                                 f"{self.requantizer!r}")
            if self.memories not in MEMORY_STYLES:
                raise ValueError(f"memories must be one of {', '.join(map(repr, MEMORY_STYLES))}"
                                 f", not {self.memories!r}")
            for name in ("data_depth", "weight_depth", "param_depth", "program_depth"):
                check_int(name, getattr(self, name), (1, 65536))
            check_int("act_shift_bits", self.act_shift_bits, ACT_SHIFT_BITS)
            check_int("table_depth", self.table_depth, (0, 65536))
            check_int("codebook_subgroups", self.codebook_subgroups, (0, MAX_SUBGROUPS))
            check_int("walk_stages", self.walk_stages, WALK_STAGES)
            if not isinstance(self.copies, bool):
                raise TypeError(f"copies must be a bool, not {self.copies!r}")
            if self.copies and not self.packed_depth:
                raise ValueError("copies needs a packed memory (packed_depth > 0): the copy "
                                 "requantizer writes there")
            if not isinstance(self.prefetch, bool):
                raise TypeError(f"prefetch must be a bool, not {self.prefetch!r}")
            if self.prefetch and not self.packed_depth:
                raise ValueError("prefetch needs a packed memory (packed_depth > 0): the "
                                 "background loader writes there beside the running op")
            if not isinstance(self.fetch_ahead, bool):
                raise TypeError(f"fetch_ahead must be a bool, not {self.fetch_ahead!r}")
            if self.fetch_ahead and self.memories != "wide":
                raise ValueError(f"fetch_ahead needs wide memories (they answer a fetch in one "
                                 f"cycle), not memories={self.memories!r}")
            if not isinstance(self.reducer_stage, bool):
                raise TypeError(f"reducer_stage must be a bool, not {self.reducer_stage!r}")
            check_int("requant_stages", self.requant_stages, REQUANT_STAGES)
            if self.requant_stages and self.requantizer == "serial":
                raise ValueError(f"requant_stages must be 0 with the serial requantizer, not "
                                 f"{self.requant_stages}")
            self.array  # checks the array's parameters
            self.tables  # and the table part's
            if self.codebook_subgroups:
                # A code no wider than a weight, so a word of codes holds a tile at least.
                check_int("codebook_idx_bits", self.codebook_idx_bits,
                          (max(DECODER_IDX_BITS[0], 1),
                           min(DECODER_IDX_BITS[1], self.weight_bits - 1)))

        @cached_property
        def array(self) -> MacArray.Config:
            """The :class:`MacArray`'s configuration (``lanes = cols = width``), its
            accumulators also wide enough for the reducer's window sums of 17-bit values."""
            least = MacArray.Config(
                lanes=self.width, cols=self.width, act_bits=self.act_bits,
                act_signed=self.act_signed, weight_bits=self.weight_bits, max_k=self.max_k,
                weight_outlier_lanes=self.weight_outlier_lanes,
                weight_outlier_bits=self.weight_outlier_bits,
                weight_outlier_slots=self.weight_outlier_slots,
                plane_shift_bits=self.plane_shift_bits, max_plane_shift=self.max_plane_shift,
                multipliers=self.multipliers, dsp_lane_pairs=self.dsp_lane_pairs,
                act_outlier_lanes=self.act_outlier_lanes,
                act_outlier_bits=OUTLIER_VALUE_BITS,
                act_outlier_slots=self.act_outlier_slots if self.act_outlier_lanes else None)
            return replace(least, acc_width=max(least.acc_width,
                                                STORAGE_BITS + 1 + WINDOW_GROWTH))

        @cached_property
        def codebook(self) -> CodebookDecoder.Config | None:
            """The SYQ decoder's configuration (a subgroup id per column, zero code,
            decoded weights as wide as the array's), or ``None`` without one."""
            if not self.codebook_subgroups:
                return None
            return CodebookDecoder.Config(
                lanes=self.width, cols=self.width, idx_bits=self.codebook_idx_bits, zero=True,
                entry_bits=self.weight_bits - 1, subgroups=self.codebook_subgroups,
                granularity="row")

        @property
        def code_tiles(self) -> int:
            """Tiles of codes one weight word holds (:func:`code_tiles`)."""
            return code_tiles(self.weight_bits, self.codebook_idx_bits)

        @property
        def codebook_word_entries(self) -> int:
            """Table entries one weight word holds (:func:`codebook_word_entries`)."""
            return codebook_word_entries(self.width, self.weight_bits)

        @property
        def acc_width(self) -> int:
            """Accumulator bits, of the array and the reducer."""
            return self.array.acc_width

        @cached_property
        def tables(self) -> TablePart.Config | None:
            """The :class:`TablePart`'s configuration, or ``None`` without tables."""
            if not self.table_depth:
                return None
            slot = self.requantizer_config.out_layout.elem_shape
            return TablePart.Config(self.width, self.table_depth, Shape.cast(slot).width)

        @property
        def requantizer_kind(self) -> type[Requantizer] | type[SerialRequantizer]:
            """The class of the core's requantizer, and of its copy requantizer."""
            return SerialRequantizer if self.requantizer == "serial" else Requantizer

        @cached_property
        def requantizer_config(self) -> Requantizer.Config | SerialRequantizer.Config:
            """The requantizer's configuration: 16-bit outputs, a 17-bit residual and
            run-time bounds; the serial one per channel with narrow memories."""
            options = dict(cols=self.width, acc_width=self.acc_width, out_bits=STORAGE_BITS,
                           residual_bits=STORAGE_BITS + 1, runtime_bounds=True)
            if self.requantizer == "serial":
                return SerialRequantizer.Config(**options, per_channel=self.per_channel)
            return Requantizer.Config(**options, split_stages=self.requant_stages)

        def _vector_requantizer_config(self, cols):
            """A requantizer of ``cols`` stored 16-bit values (run-time bounds, no
            residual; its parameters from the descriptor, all channels at once: the
            parallel one per tensor, with the main one's stages)."""
            options = dict(cols=cols, acc_width=STORAGE_BITS + 1, out_bits=STORAGE_BITS,
                           runtime_bounds=True)
            if self.requantizer == "serial":
                return SerialRequantizer.Config(**options)
            return Requantizer.Config(**options, per_tensor=True,
                                      split_stages=self.requant_stages)

        @cached_property
        def copy_config(self) -> Requantizer.Config | SerialRequantizer.Config | None:
            """The copy requantizer's configuration, ``width`` lanes, or ``None`` without
            ``copies``."""
            return self._vector_requantizer_config(self.width) if self.copies else None

        @property
        def prefetch_lanes(self) -> int:
            """Lanes the background loader quantizes a cycle (``prefetch``): a quarter of
            the word's (the largest divisor of ``width`` up to ``width/4``, at least one),
            so its multipliers stay few beside the requantizer's ``2·width`` and an image
            still comes in well within the ops that follow the last read of the one
            before (the demo CNN: 128 words in about 520 cycles against 1 290)."""
            return max(lanes for lanes in range(1, max(self.width // 4, 1) + 1)
                       if self.width % lanes == 0)

        @cached_property
        def prefetch_config(self) -> Requantizer.Config | SerialRequantizer.Config | None:
            """The background loader's requantizer's configuration, ``prefetch_lanes``
            lanes, or ``None`` without ``prefetch``."""
            return (self._vector_requantizer_config(self.prefetch_lanes) if self.prefetch
                    else None)

        @property
        def per_channel(self) -> bool:
            """A narrow core feeds the serial requantizer one channel's parameters at a
            time."""
            return self.requantizer == "serial" and self.memories == "narrow"

        @property
        def overlap(self) -> bool:
            """Whether an op may start while the back still writes the one before
            (docs/network.md §15): with wide memories; narrow ones, for small FPGAs, keep
            no copy of the back's descriptor."""
            return self.memories == "wide"

        @property
        def depths(self) -> dict:
            """Memory depths by name: ``data``, ``weights``, ``params``, ``program``."""
            return dict(data=self.data_depth, weights=self.weight_depth,
                        params=self.param_depth, program=self.program_depth)

        @cached_property
        def layouts(self) -> dict:
            """The word layout of each memory: ``program`` (:class:`OpDescriptor`),
            ``weights`` (a :class:`WeightWord`: the array's weight beat and the
            activation shift), ``params`` (a :class:`ChannelWord` per
            column) and ``data`` (16-bit slots)."""
            return {
                "program": OpDescriptor(self.address_depth, self.weight_depth,
                                        self.param_depth,
                                        self.outlier_depth if self.act_outlier_lanes else 0,
                                        packed=bool(self.packed_depth),
                                        table_address_bits=self.tables.address_bits
                                        if self.tables else 0,
                                        codebook_entries=self.codebook_subgroups
                                        * ((1 << self.codebook_idx_bits) - 1),
                                        copies=self.copies, prefetch=self.prefetch),
                "weights": WeightWord(self.array.weight_layout, self.act_shift_bits),
                "params": data.ArrayLayout(ChannelWord(), self.width),
                "data": data.ArrayLayout(unsigned(STORAGE_BITS), self.width),
            }

        @property
        def address_depth(self) -> int:
            """Words an activation address reaches: the deeper of the 16-bit and the packed
            memory (each value lives in one of them)."""
            return max(self.data_depth, self.packed_depth)

        @property
        def outlier_layout(self) -> OutlierBlock | None:
            """A word of the outlier memory (one block's slots), or ``None`` without
            activation outliers."""
            if not self.act_outlier_lanes:
                return None
            return OutlierBlock(self.act_outlier_block_words * self.width,
                                self.act_outlier_slots)

        @property
        def load_rows(self) -> dict[str, tuple[int, int]] | None:
            """How the ``load`` port cuts a word of each memory into rows: ``None`` with
            wide memories (a beat a word), else ``(items, item_bits)`` by memory name (a
            beat a row, :func:`row_slices`): the narrow memories are written a row a cycle
            anyway, so nothing need hold a whole word (on the UP5K at width 4 a 432-bit
            register fed a byte at a time, a logic cell a bit)."""
            if self.memories != "narrow":
                return None
            rows = {"program": (1, Shape.cast(self.layouts["program"]).width),
                    "weights": (1, Shape.cast(self.layouts["weights"]).width),
                    "params": (self.width, Shape.cast(ChannelWord()).width)}
            if self.table_depth:
                rows["tables"] = (1, TABLE_ENTRY_BITS)
            return rows

        @property
        def load_layout(self) -> LoadBeat:
            """A beat of the ``load`` port: as wide as the widest program, weight or
            parameter word (or table entry), or one row of one (:attr:`load_rows`)."""
            depth = max(self.program_depth, self.weight_depth, self.param_depth,
                        self.table_depth)
            if self.load_rows is not None:
                return LoadBeat(depth, CHUNK_BITS,
                                rows=max(len(row_slices(bits, items))
                                         for items, bits in self.load_rows.values()))
            return LoadBeat(depth, max([Shape.cast(self.layouts[name]).width
                                        for name in ("program", "weights", "params")]
                                       + [TABLE_ENTRY_BITS]))

        def load_beats(self, memory, address, word) -> list[dict]:
            """The ``load`` beats (as :attr:`load_layout` fields) that write ``word`` at
            ``address`` of ``memory`` (a :class:`LoadTarget` other than ``RESTART``)."""
            if self.load_rows is None:
                return [{"memory": memory, "address": address, "word": word}]
            items, item_bits = self.load_rows[memory.name.lower()]
            return [{"memory": memory, "address": address, "row": row,
                     "word": (word >> offset) & ((1 << bits) - 1)}
                    for row, (offset, bits) in enumerate(row_slices(item_bits, items))]

    def __init__(self, config, *, program=None, weights=None, params=None, tables=None):
        if not isinstance(config, NetworkCore.Config):
            raise TypeError(f"config must be a NetworkCore.Config, not {config!r}")
        tables = list(tables or [])
        if tables and not config.tables:
            raise ValueError("Table entries need a core with a table memory (table_depth)")
        if any(not isinstance(word, int) or not 0 <= word < 1 << TABLE_ENTRY_BITS
               for word in tables):
            raise ValueError(f"Every tables word must be an integer in "
                             f"0..{(1 << TABLE_ENTRY_BITS) - 1}")
        half = 1 << (TABLE_ENTRY_BITS - 1)
        self._tables = (TablePart(config.tables, tables=[(w ^ half) - half for w in tables])
                        if config.tables else None)
        self._config = config
        self._contents = {}
        for name, words in (("program", program), ("weights", weights), ("params", params)):
            words = list(words or [])
            depth = config.depths[name]
            if len(words) > depth:
                raise ValueError(f"{len(words)} {name} words do not fit {name} memory of "
                                 f"depth {depth}")
            limit = 1 << Shape.cast(config.layouts[name]).width
            if any(not isinstance(w, int) or not 0 <= w < limit for w in words):
                raise ValueError(f"Every {name} word must be an integer in 0..{limit - 1}")
            self._contents[name] = words
        self._array = MacArray(**vars(config.array))
        self._requantizer = config.requantizer_kind(**vars(config.requantizer_config))
        word = config.layouts["data"]
        super().__init__({
            "inputs": In(stream.Signature(word)),
            "outputs": Out(stream.Signature(data.StructLayout({"word": word,
                                                               "last": unsigned(1)}))),
            "load": In(stream.Signature(config.load_layout)),
            "op_index": Out(range(config.program_depth)),
            "gemm_beats": Out(32),
            "fault": Out(1),
        })

    @property
    def config(self):
        """The :class:`NetworkCore.Config`."""
        return self._config

    @property
    def width(self):
        """Array lanes and columns; channels per activation word."""
        return self._config.width

    @property
    def array(self):
        """The :class:`MacArray`."""
        return self._array

    @property
    def descriptor_layout(self):
        """The :class:`OpDescriptor` of a program word."""
        return self._config.layouts["program"]

    @property
    def weight_layout(self):
        """The layout of a weight word: a :class:`WeightWord`."""
        return self._config.layouts["weights"]

    @property
    def param_layout(self):
        """The layout of a parameter word: ``width`` :class:`ChannelWord`."""
        return self._config.layouts["params"]

    @property
    def word_layout(self):
        """The layout of an activation word: ``width`` 16-bit slots."""
        return self._config.layouts["data"]

    @property
    def depths(self):
        """Memory depths by name: ``data``, ``weights``, ``params``, ``program``."""
        return self._config.depths

    def elaborate(self, platform):
        m = Module()
        config, array, requantizer = self._config, self._array, self._requantizer
        if config.memories == "narrow":
            memories = NarrowMemories(config, self._contents, per_channel=config.per_channel)
        else:
            memories = WideMemories(config, self._contents)
        m.submodules.memories = memories
        m.submodules.array = array
        m.submodules.requantizer = requantizer
        m.submodules.sequencer = sequencer = Sequencer(config)
        m.submodules.loader = loader = Loader(config)
        m.submodules.storer = storer = Storer(config)
        m.submodules.beats = beats = BeatWalk(config)
        m.submodules.reducer = reducer = Reducer(config)
        m.submodules.outputs = outputs = OutputWalk(config)
        m.submodules.feed = feed = ParamFeed(config)
        m.submodules.write_back = write_back = WriteBack(config)

        # The front takes an op's operands, the back writes its results; the back may still
        # write one op's while the front reads the next one's (Sequencer).
        front, back = sequencer.control, sequencer.back
        wiring.connect(m, front, loader.control, storer.control, beats.control,
                       reducer.control)
        wiring.connect(m, back, outputs.control, feed.control, write_back.control)
        wiring.connect(m, sequencer.fetch, memories.fetch)
        wiring.connect(m, memories.descriptor, sequencer.descriptor)
        # With a copy, the back ends with its last copy, which trails the last result, and
        # the next op reads only copied words (the compiler's lead counts both writes).
        back_done, written = write_back.done, write_back.written
        if config.copies:
            m.submodules.copies = copies = CopyPart(config)
            wiring.connect(m, back, copies.control)
            back_done = Mux(back.op.copy, copies.done, back_done)
            written = Mux(back.op.copy, copies.written, written)
        # With a prefetch, the LOAD of an image taken in the background ends without its
        # own words, and the back gets nothing of it.
        inputs, load_done = wiring.flipped(self.inputs), loader.done
        if config.prefetch:
            m.submodules.prefetcher = prefetcher = Prefetcher(config)
            wiring.connect(m, front, prefetcher.control)
            wiring.connect(m, inputs, prefetcher.inputs)
            inputs, load_done = prefetcher.passed, loader.done | prefetcher.done
            m.d.comb += [loader.prefetched.eq(prefetcher.claimed),
                         sequencer.prefetched.eq(prefetcher.claimed),
                         sequencer.load_claimable.eq(prefetcher.holding)]
        if config.fetch_ahead:
            writes = loader.writes
            m.d.comb += sequencer.program_written.eq(
                writes.valid & writes.ready & (writes.payload.memory == LoadTarget.PROGRAM))
        m.d.comb += [
            sequencer.done.eq(load_done | storer.done | self._walk_done(
                front.op, beats, write_back, sequencer.queued)),
            sequencer.back_done.eq(back_done),
            sequencer.restart.eq(loader.restart),
            # parameters are read only once no load beat can rewrite them
            outputs.hold.eq(loader.loads_open),
            beats.fenced.eq(sequencer.fenced),
            beats.written.eq(Mux(back.running, written, 0)),
            # a STORE that overlaps reads beside the back's last op until it is idle
            storer.fenced.eq(back.start | back.running),
            storer.written.eq(Mux(back.running, written, 0)),
            reducer.array_results.eq(back.op.kind == OpKind.GEMM),
            self.op_index.eq(sequencer.op_index),
            self.gemm_beats.eq(beats.gemm_beats),
            self.fault.eq(array.fault),
        ]

        wiring.connect(m, inputs, loader.inputs)
        wiring.connect(m, wiring.flipped(self.load), loader.load)
        if self._tables is None:
            wiring.connect(m, loader.writes, memories.load)
        else:
            m.submodules.tables = tables = self._tables
            _route_loads(m, loader.writes, memories.load, tables.write)

        wiring.connect(m, beats.weights_read, memories.weights)
        if config.codebook:
            m.submodules.codebook = codebook = CodebookPath(config)
            wiring.connect(m, front, codebook.control)
            for name in ("act", "weights", "codes", "codebooks"):
                wiring.connect(m, getattr(beats, name), getattr(codebook, f"beat_{name}"))
            wiring.connect(m, codebook.act, array.act)
            wiring.connect(m, codebook.weights, array.weights)
        else:
            wiring.connect(m, beats.act, array.act)
            wiring.connect(m, beats.weights, array.weights)
        # A quantizing LOAD's words reach the reducer from the loader, every other op's
        # windows from the beat walk; the op kind picks, as only one of them runs.
        _merge(m, front.op.kind == OpKind.LOAD, loader.vector, beats.vector,
               reducer.beats)
        wiring.connect(m, array.acc, reducer.array)
        wiring.connect(m, reducer.acc, requantizer.acc)
        wiring.connect(m, outputs.requests, memories.side)
        wiring.connect(m, memories.side_words, feed.words)
        wiring.connect(m, feed.params, requantizer.params)
        results = requantizer.out
        if self._tables is not None:
            wiring.connect(m, requantizer.out, tables.results)
            m.d.comb += [tables.enable.eq(back.op.table),
                         tables.offset.eq(back.op.table_offset)]
            results = tables.out
        if config.act_outlier_lanes:
            m.submodules.outliers = outliers = ActOutlierStore(config)
            wiring.connect(m, back, outliers.control)
            wiring.connect(m, results, outliers.results)
            wiring.connect(m, beats.outliers_read, outliers.read)
            m.d.comb += outliers.image_start.eq(front.start &
                                                (sequencer.op_index == 0))
            results = outliers.dense
        if config.copies:
            wiring.connect(m, results, copies.results)
            results = copies.out
        if config.prefetch:
            # the fused STORE's words leave from the back while it runs that op; nothing
            # else is stored then (the compiler fuses only the program's last op)
            m.submodules.stores = stores = StorePart(config)
            wiring.connect(m, back, stores.control)
            wiring.connect(m, results, stores.results)
            results = stores.out
            _merge(m, back.op.store & (back.start | back.running), stores.outputs,
                   storer.outputs, self.outputs)
        else:
            wiring.connect(m, storer.outputs, wiring.flipped(self.outputs))
        wiring.connect(m, results, write_back.results)

        # STORE and the beat walk never run together, nor a plain LOAD and the write-back:
        # each pair takes turns on one activation memory port.
        kind = front.op.kind
        operand, write = beats.operand, write_back.write
        if config.packed_depth:
            m.submodules.packed = packed = PackedMemory(config)
            wiring.connect(m, front, packed.control)
            wiring.connect(m, back, packed.back)
            wiring.connect(m, beats.operand, packed.operand)
            wiring.connect(m, write_back.write, packed.write)
            if config.copies:
                wiring.connect(m, copies.write, packed.copy_write)
            if config.prefetch:
                wiring.connect(m, prefetcher.write, packed.prefetch_write)
            operand, write = packed.wide_operand, packed.wide_write
        _share(m, memories.operand, kind == OpKind.STORE, storer.read, operand)
        _share(m, memories.write, (kind == OpKind.LOAD) & ~front.op.quantize,
               loader.write, write)
        m.d.comb += beats.granted.eq(memories.granted)
        return m

    def _walk_done(self, op, beats, write_back, queued):
        """The front of a compute op ``op`` ends when its last beat has left the walk; an
        SYQ GEMM's beats then still pass the codebook path, so its front ends with its last
        result (once the back runs it, not ``queued``)."""
        if not self._config.codebook:
            return beats.done
        syq = op.codebook != CodebookMode.DENSE
        return Mux(syq, write_back.done & ~queued, beats.done)
