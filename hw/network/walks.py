"""The two walks of a compute op (docs/network.md §15): the beat walk reads the operands,
the output walk asks for what each output needs beside its accumulators."""

from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .layouts import (STORAGE_BITS, CodebookMode, ControlSignature, OpKind, SideRequest,
                      VectorBeat, is_compute, writes_results)

__all__ = ["BeatWalk", "OutputWalk", "nested_counters", "output_counters", "tile_pointer"]


def nested_counters(m, name, limits, step, clear):
    """Nested counters, outermost first, each running ``0..limit``; ``step`` advances the
    innermost and carries outwards, ``clear`` restarts them all. Returns the counters, the
    "at its limit" flag of each and the flag that the position is the final one."""
    counters = [Signal(unsigned(len(limit)), name=f"{name}_{index}")
                for index, limit in enumerate(limits)]
    at_limit = [counter == limit for counter, limit in zip(counters, limits)]
    carry = step
    for counter, limit_reached in reversed(list(zip(counters, at_limit))):
        with m.If(clear):
            m.d.sync += counter.eq(0)
        with m.Elif(carry):
            m.d.sync += counter.eq(Mux(limit_reached, 0, counter + 1))
        carry = carry & limit_reached
    final = Signal(name=f"{name}_final")
    m.d.comb += final.eq(Cat(*at_limit).all())
    return counters, at_limit, final


def output_counters(m, name, op, step, clear):
    """The outputs of the compute op ``op`` in the walks' order, ``tile`` outermost, then
    pixel. Returns the flags that the position is its tile's last pixel and that it is the
    op's last output. The counters count down from the op's counts − 1 (loaded at ``clear``
    and after the last output), so each flag is a test for zero: compared with a limit
    computed from the descriptor, they began the ECP5 board's critical path (the back's
    last write → the sequencer → the next op's fetch)."""
    tiles = Signal.like(op.out_words, name=f"{name}_tiles_left")
    pixels = Signal.like(op.out_pixels, name=f"{name}_pixels_left")
    end_of_tile = Signal(name=f"{name}_end_of_tile")
    final = Signal(name=f"{name}_final")
    m.d.comb += [end_of_tile.eq(pixels == 0), final.eq(end_of_tile & (tiles == 0))]
    with m.If(clear | (step & final)):
        m.d.sync += [tiles.eq(op.out_words - 1), pixels.eq(op.out_pixels - 1)]
    with m.Elif(step):
        with m.If(end_of_tile):
            m.d.sync += [tiles.eq(tiles - 1), pixels.eq(op.out_pixels - 1)]
        with m.Else():
            m.d.sync += pixels.eq(pixels - 1)
    return end_of_tile, final


def tile_pointer(m, name, base, stride, step, end_of_tile, clear):
    """Address of the current output of a tile-major walk over a pixel-major tensor:
    ``base + pixel·stride + tile``, kept without a multiplier."""
    start = Signal.like(base, name=f"{name}_start")
    pointer = Signal.like(base, name=name)
    with m.If(clear):
        m.d.sync += [start.eq(base), pointer.eq(base)]
    with m.Elif(step):
        with m.If(end_of_tile):
            m.d.sync += [start.eq(start + 1), pointer.eq(start + 1)]
        with m.Else():
            m.d.sync += pointer.eq(pointer + stride)
    return pointer


class _Stages:
    """Up to three register stages cut into a combinational path, each a ``cut`` whose
    ``rank`` says how soon it is wanted: ``cut`` registers its values if ``rank <
    stages``, else passes them on. Every stage moves on ``move``; ``clear`` empties them
    all. ``valid`` is whether the last stage holds a beat (``entering`` with no stage),
    ``holding`` whether any does."""

    def __init__(self, m, stages, move, clear, entering):
        self._m, self._stages, self._move, self._clear = m, stages, move, clear
        self.valid = entering
        self._valids = []

    @property
    def holding(self):
        return Cat(*self._valids).any() if self._valids else Const(0)

    def cut(self, name, rank, *values):
        if rank >= self._stages:
            return values
        m = self._m
        registers = [Signal(Value.cast(value).shape(), name=f"{name}_{index}")
                     for index, value in enumerate(values)]
        valid = Signal(name=f"{name}_valid")
        with m.If(self._clear):
            m.d.sync += valid.eq(0)
        with m.Elif(self._move):
            m.d.sync += [valid.eq(self.valid),
                         *(register.eq(value) for register, value in zip(registers, values))]
        self.valid = valid
        self._valids.append(valid)
        return registers


class BeatWalk(wiring.Component):
    """The operand walk of a compute op: ``tile``, output pixel, (GEMM only) pass, kernel
    tap and (GEMM only) input channel word of the tile's band (``band_words`` words from
    word ``tile·band_step`` of each ``in_words``-word pixel), one activation word and one
    weight word a beat,
    then one register stage (the memories' read ports) whose enable is the stage's
    ``~valid | ready``. A GEMM of several passes (``last_pass``) walks the taps and
    channel words once per pass, each beat multiplying the activation digit its weight word
    names (docs/network.md §15, per-layer precision).

    A GEMM's beats go to the array (``act`` and ``weights`` together), a SUM's or MAX's to
    the reducer (``vector``); padded taps read as zeros (a MAX's as the lowest lane value,
    below every slot), ``last`` closes each output.

    With activation outliers (docs/program.md §18) a GEMM whose input keeps them also reads
    the block of each activation word from the outlier memory (``outliers_read``), in the
    same register stage: the block's kept outliers that belong to this word go to the
    array's outlier slots (valid ones first) and their dense lanes read 0, so the array
    adds each outlier once (semantics.md §6).

    With a codebook decoder, an SYQ GEMM (``op.codebook`` not ``DENSE``) first reads its
    ``codebook_words`` codebook words (those before ``weight_base``) to ``codebooks``, then
    walks as any GEMM with its weight pointer counting code tiles, ``code_tiles`` to a
    word: each beat also goes to ``codes`` with its tile of codes and each column's
    subgroup (docs/network.md §17).

    Parameters
    ----------
    config : NetworkCore.Config
        Memory layouts and depths, and the array's activation beat.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The op's shapes, bases and ``in_signed``.
    operand : In(ReadPort.Signature(...))
        The activation memory read port (driven here).
    granted : In(1)
        The memories let the walk read ``operand`` this cycle (a narrow core's residual
        reads take the port now and then).
    weights_read : In(ReadPort.Signature(...))
        The weight memory read port (driven here).
    act : Out(stream.Signature(act_layout))
    weights : Out(stream.Signature(array weight beat))
        A GEMM's beats, valid together; ``act.ready`` paces both.
    vector : Out(stream.Signature(VectorBeat(width)))
        A SUM's or MAX's beats.
    gemm_beats : Out(32)
        Beats the array has taken since reset.
    done : Out(1)
        The op's last beat has left the walk (its results may still be on their way).
    fenced : In(1)
        The op started while the back still writes the results of the op before
        (:class:`Sequencer`): beat ``b`` (counted from 0, padded taps included) is read
        only once ``written ≥ b + lead`` (the compiler's ``lead``: no beat reads a word
        that op has not yet written).
    written : In(range(address_depth + 1))
        Results of the back's op written so far.
    outliers_read : In(ReadPort.Signature(...))
        With activation outliers: the outlier memory's read port (driven here).
    codes : Out(stream.Signature(CodeBeat(...)))
        With a codebook decoder: a GEMM's beats as codes, valid with ``act``.
    codebooks : Out(stream.Signature(unsigned(tile bits)))
        With a codebook decoder: an SYQ GEMM's codebook words.
    """

    def __init__(self, config):
        word, weight_layout = config.layouts["data"], config.layouts["weights"]
        self._config = config
        self._width = config.width
        self._weight_depth = config.weight_depth
        self._act_bits = config.act_bits
        self._act_shift_bits = config.act_shift_bits
        self._stages = config.walk_stages
        outliers = {}
        if config.act_outlier_lanes:
            outliers["outliers_read"] = In(ReadPort.Signature(
                addr_width=ceil_log2(config.outlier_depth), shape=config.outlier_layout))
        if config.codebook:
            tile_bits = Shape.cast(config.array.weight_layout["tile"].shape).width
            outliers["codes"] = Out(stream.Signature(config.codebook.codes_layout))
            outliers["codebooks"] = Out(stream.Signature(unsigned(tile_bits)))
        super().__init__({
            **outliers,
            "control": In(ControlSignature(config.layouts["program"])),
            "operand": In(ReadPort.Signature(addr_width=ceil_log2(config.address_depth),
                                             shape=word)),
            "weights_read": In(ReadPort.Signature(addr_width=ceil_log2(config.weight_depth),
                                                  shape=weight_layout)),
            "act": Out(stream.Signature(config.array.act_layout)),
            "weights": Out(stream.Signature(config.array.weight_layout)),
            "vector": Out(stream.Signature(VectorBeat(self._width))),
            "granted": In(1),
            "gemm_beats": Out(32),
            "done": Out(1),
            "fenced": In(1),
            "written": In(range(config.address_depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        op, start = self.control.op, self.control.start
        is_gemm = op.kind == OpKind.GEMM

        step = Signal()
        limits = [op.out_words - 1, op.out_h - 1, op.out_w - 1, Mux(is_gemm, op.last_pass, 0),
                  op.kernel_h - 1, op.kernel_w - 1, Mux(is_gemm, op.band_words - 1, 0)]
        (tile, oy, ox, _, ky, kx, ci), at_limit, final = nested_counters(
            m, "beat", limits, step, start)
        end_of_pixel = at_limit[3] & at_limit[4] & at_limit[5] & at_limit[6]
        end_of_tile = end_of_pixel & at_limit[1] & at_limit[2]
        left = Signal()
        with m.If(start):
            m.d.sync += left.eq(is_compute(op.kind))
        with m.Elif(step & final):
            m.d.sync += left.eq(0)

        iy = Signal(signed(14))
        ix = Signal(signed(14))
        m.d.comb += [
            iy.eq(oy * op.stride_h + ky - op.pad_h),
            ix.eq(ox * op.stride_w + kx - op.pad_w),
        ]
        # A GEMM tile's first input word: a pointer, so the band costs no multiplier.
        band_start = Signal(range(self._config.address_depth + 1))
        with m.If(start):
            m.d.sync += band_start.eq(0)
        with m.Elif(step & end_of_tile):
            m.d.sync += band_start.eq(band_start + op.band_step)
        band = Signal(range(self._config.address_depth + 1))
        m.d.comb += band.eq(Mux(is_gemm, band_start + ci, tile))
        # Weights follow the beat order tile by tile, so a pointer replaces a multiplier. It
        # counts code tiles in an SYQ GEMM: the word is its top bits, the tile its low ones.
        codebook = self._config.codebook
        tile_shift = exact_log2(self._config.code_tiles) if codebook else 0
        syq = (op.codebook != CodebookMode.DENSE) if codebook else Const(0)
        weight_pointer = Signal(range(self._weight_depth << tile_shift))
        tile_weights = Signal.like(weight_pointer)
        with m.If(start):
            base = Mux(syq, op.weight_base << tile_shift, op.weight_base)
            m.d.sync += [weight_pointer.eq(base), tile_weights.eq(base)]
        with m.Elif(step):
            with m.If(end_of_tile):
                m.d.sync += [weight_pointer.eq(weight_pointer + 1),
                             tile_weights.eq(weight_pointer + 1)]
            with m.Elif(end_of_pixel):
                m.d.sync += weight_pointer.eq(tile_weights)
            with m.Else():
                m.d.sync += weight_pointer.eq(weight_pointer + 1)

        # The register stage after the memories: the beat, its padding and `last`.
        valid = Signal()
        padded = Signal()
        last = Signal()
        ready = Signal()
        advance = ~valid | ready
        # `walk_stages` registers between the counters and the memories' addresses, all
        # moving when the memory stage takes a beat (the walk's only stall).
        entering = Signal()
        stages = _Stages(m, self._stages, advance & self.granted, start, entering)
        iy, ix, band, end_of_pixel, weight_pointer, tile_index, tap = stages.cut(
            "address_0", 2, iy, ix, band, end_of_pixel, weight_pointer, tile,
            ky * op.kernel_w + kx)
        padding = (iy < 0) | (iy >= op.in_h) | (ix < 0) | (ix >= op.in_w)
        pixel = Signal(range(self._config.address_depth + 1))
        m.d.comb += pixel.eq(iy * op.in_w + ix)
        padding, pixel, band, end_of_pixel, weight_pointer, tile_index, tap = stages.cut(
            "address_1", 0, padding, pixel, band, end_of_pixel, weight_pointer, tile_index, tap)
        # Out of range under padding; the padded operand is zeroed after the read.
        offset = Signal(range(self._config.address_depth))
        m.d.comb += offset.eq(pixel * op.in_words + band)
        padding, offset, end_of_pixel, weight_pointer, tile_index, tap = stages.cut(
            "address_2", 1, padding, offset, end_of_pixel, weight_pointer, tile_index, tap)
        address = op.in_base + offset
        codebook_phase, is_codebook, word_address = self._codebooks(
            m, op, start, advance, syq & is_gemm, tile_shift, weight_pointer,
            tiles=(tile_index, tap))
        # Beats taken while fenced: no more than the back's op has written words for. A
        # beat is fenced as it enters the address stages, so it reaches the memory later
        # still, when at least as many are written.
        issued = Signal(range(self._config.address_depth + 2))
        readable = ~self.fenced | (self.written >= issued + op.lead)
        m.d.comb += [entering.eq(left & ~codebook_phase & readable),
                     step.eq(advance & self.granted & entering & ~start)]
        with m.If(start):
            m.d.sync += issued.eq(0)
        with m.Elif(step & self.fenced):
            m.d.sync += issued.eq(issued + 1)
        with m.If(start):
            m.d.sync += valid.eq(0)
        with m.Elif(advance):
            m.d.sync += [valid.eq(codebook_phase | (stages.valid & self.granted)),
                         padded.eq(padding), last.eq(end_of_pixel)]
        outlier_lanes = self._outliers(m, op, offset, advance, padded)
        m.d.comb += [
            self.operand.addr.eq(address),
            self.operand.en.eq(advance),
            self.weights_read.addr.eq(word_address),
            self.weights_read.en.eq(advance),
        ]

        operand = self.operand.data
        # A padded tap of a MAX reads below every 16-bit value, so the window's maximum is
        # that of its input taps (each window has one: padding ≤ kernel/2); a SUM's reads 0.
        pad_value = Mux(op.kind == OpKind.MAX, -(1 << STORAGE_BITS), 0)
        m.d.comb += [
            self.act.valid.eq(valid & is_gemm & ~is_codebook),
            self.act.payload.last.eq(last),
            self.weights.valid.eq(valid & is_gemm & ~is_codebook),
            self.weights.payload.eq(self.weights_read.data.beat),
            self.vector.valid.eq(valid & ~is_gemm),
            self.vector.payload.last.eq(last),
            ready.eq(Mux(is_codebook, self.codebooks.ready if codebook else 0,
                         Mux(is_gemm, self.act.ready, self.vector.ready))),
        ]
        if codebook:
            m.d.comb += [self.codes.valid.eq(self.act.valid),
                         self.codebooks.valid.eq(valid & is_codebook)]
        for lane in range(self._width):
            slot = operand[lane]
            m.d.comb += [
                self.act.payload.data[lane].eq(Mux(padded | outlier_lanes[lane], 0,
                                                   self._digit(slot))),
                self.vector.payload.lanes[lane].eq(
                    Mux(padded, pad_value, Mux(op.in_signed, slot.as_signed(), slot))),
            ]
        with m.If(self.act.valid & self.act.ready):
            m.d.sync += self.gemm_beats.eq(self.gemm_beats + 1)
        m.d.comb += self.done.eq(self.control.running & is_compute(op.kind) & ~start & ~left
                                 & ~stages.holding & ~valid)
        return m

    def _codebooks(self, m, op, start, advance, syq, tile_shift, weight_pointer, tiles):
        """With a codebook decoder: the codebook phase of an SYQ GEMM, its words read from
        ``weight_base − codebook_words`` on, and the ``codes`` of each beat, the tile
        ``weight_pointer`` names within its word and one subgroup per column (``tiles``:
        the beat's output tile and kernel tap). Returns whether the walk reads codebooks, its
        stage holds a codebook word, and the weight memory's address."""
        codebook = self._config.codebook
        if not codebook:
            return Const(0), Const(0), weight_pointer
        left = Signal.like(op.codebook_words, name="codebook_words_left")
        pointer = Signal(range(self._weight_depth), name="codebook_pointer")
        phase = left != 0
        with m.If(start):
            m.d.sync += [left.eq(Mux(syq, op.codebook_words, 0)),
                         pointer.eq(op.weight_base - op.codebook_words)]
        with m.Elif(advance & phase):
            m.d.sync += [left.eq(left - 1), pointer.eq(pointer + 1)]
        is_codebook = Signal()
        index = Signal(max(tile_shift, 1))
        tile, tap = (Signal.like(value, name=name) for value, name in
                     zip(tiles, ("group_tile", "group_tap")))
        with m.If(advance):
            m.d.sync += [is_codebook.eq(phase), index.eq(weight_pointer[:tile_shift]),
                         tile.eq(tiles[0]), tap.eq(tiles[1])]
        raw = self.weights_read.data.beat.tile.as_value()
        code_bits = Shape.cast(codebook.codes_layout["tile"].shape).width
        m.d.comb += [self.codebooks.payload.eq(raw),
                     self.codes.payload.tile.eq(raw.word_select(index, code_bits)
                                                if tile_shift else raw[:code_bits])]
        mode = op.codebook
        for col, group in enumerate(self.codes.payload.subgroup):
            m.d.comb += group.eq(Mux(mode == CodebookMode.ROW, tile * self._width + col,
                                     Mux(mode == CodebookMode.PIXEL, tap, 0)))
        return phase, is_codebook, Mux(phase, pointer, Mux(syq, weight_pointer >> tile_shift,
                                                        weight_pointer))

    def _digit(self, slot):
        """The array's operand of one 16-bit ``slot``: its low ``act_bits`` bits, or with
        activation shifts the digit the beat's weight word names."""
        if not self._act_shift_bits:
            return slot[:self._act_bits]
        word = self.weights_read.data
        digit = (slot >> word.act_shift)[:self._act_bits]
        return Cat(digit[:-1], digit[-1] & ~word.act_low)

    def _outliers(self, m, op, offset, advance, padded):
        """Reads the block of the word at ``offset`` of an input with activation outliers
        and hands the word's kept outliers to the array's slots, valid ones first. Returns,
        per lane, whether an outlier replaces the dense value there."""
        config, width = self._config, self._width
        if not config.act_outlier_lanes:
            return [Const(0)] * width
        block_shift = exact_log2(config.act_outlier_block_words)
        word = Signal(range(config.act_outlier_block_words))
        read = self.outliers_read
        m.d.comb += [read.addr.eq(op.in_obase + (offset >> block_shift)), read.en.eq(advance)]
        with m.If(advance):
            m.d.sync += word.eq(offset[:block_shift] if block_shift else 0)
        lane_bits = exact_log2(width) if width & (width - 1) == 0 else None
        matches = []
        for slot in read.data.slots:
            if lane_bits is not None:
                in_word, lane = slot.position[lane_bits:], slot.position[:lane_bits]
            else:
                in_word, lane = slot.position // width, slot.position % width
            match = Signal(name="outlier_match")
            m.d.comb += match.eq(op.in_outliers & ~padded & (slot.value != 0) & (in_word == word))
            matches.append((match, lane, slot.value))
        # compaction: output slot k takes the k-th matching stored slot
        for index, out in enumerate(self.act.payload.outliers):
            for count_before, (match, lane, value) in enumerate(matches):
                earlier = sum((previous for previous, _, _ in matches[:count_before]),
                              Const(0, range(len(matches) + 1)))
                with m.If(match & (earlier == index)):
                    m.d.comb += [out.valid.eq(1), out.lane.eq(lane), out.value.eq(value)]
        replaced = [Signal(name=f"outlier_lane_{lane}") for lane in range(width)]
        for match, lane, _ in matches:
            for target in range(width):
                with m.If(match & (lane == target)):
                    m.d.comb += replaced[target].eq(1)
        return replaced


class OutputWalk(wiring.Component):
    """The output walk of a compute op (or a quantizing ``LOAD``): the outputs in the beat
    walk's order (``tile``, then pixel), one :class:`SideRequest` each: the tile's parameter word (a GEMM has one
    per output tile, a SUM/MAX one for the op) and the residual word at the same pixel and
    tile of the residual value.

    Parameters
    ----------
    config : NetworkCore.Config
        The parameter and activation memory depths.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The op's ``out_words``, ``out_pixels``, ``param_base``, ``res_base`` and
        ``residual``.
    hold : In(1)
        No request while high: ``load`` beats may still write the memories the requests
        read (a quantizing ``LOAD`` before its first word, :class:`Loader`
        ``loads_open``), and a request read before them would be stale, or left over in
        the memories' answer after a ``RESTART``.
    requests : Out(stream.Signature(SideRequest(data_depth, param_depth)))
    """

    def __init__(self, config):
        self._param_depth = config.param_depth
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "hold": In(1),
            "requests": Out(stream.Signature(SideRequest(config.data_depth,
                                                         config.param_depth))),
        })

    def elaborate(self, platform):
        m = Module()
        op, start = self.control.op, self.control.start
        step = self.requests.valid & self.requests.ready
        end_of_tile, final = output_counters(m, "side", op, step, start)
        left = Signal()
        with m.If(start):
            m.d.sync += left.eq(writes_results(op))
        with m.Elif(step & final):
            m.d.sync += left.eq(0)
        param_pointer = Signal(range(self._param_depth))
        with m.If(start):
            m.d.sync += param_pointer.eq(op.param_base)
        with m.Elif(step & end_of_tile & (op.kind == OpKind.GEMM)):
            m.d.sync += param_pointer.eq(param_pointer + 1)
        residual_pointer = tile_pointer(m, "residual_pointer", op.res_base, op.out_words,
                                        step, end_of_tile, start)
        m.d.comb += [
            # only while the op runs: a RESTART ends a quantizing LOAD before its last
            # output, and the next op's descriptor may arrive over several cycles
            self.requests.valid.eq(left & self.control.running & ~self.hold),
            self.requests.payload.param.eq(param_pointer),
            self.requests.payload.residual.eq(residual_pointer),
            self.requests.payload.read_residual.eq(op.residual),
        ]
        return m
