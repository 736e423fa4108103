"""The end of a compute op (docs/network.md §15): window sums and maxima, the requantizer's
parameter beats, and the writes of its results."""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import (STORAGE_BITS, ControlSignature, OpKind, SideWords, VectorBeat,
                      writes_results)
from .walks import output_counters, tile_pointer

__all__ = ["Reducer", "ParamFeed", "WriteBack", "CopyPart", "StorePart"]


class Reducer(wiring.Component):
    """Lane-wise window sums (SUM) and maxima (MAX) of the ``beats`` of each output, and the
    one accumulator stream the requantizer reads: the array's during a GEMM, the reducer's
    otherwise (a quantizing ``LOAD``'s beats are windows of one).

    With ``config.reducer_stage`` each beat is registered with its op's kind before it is
    added or compared (the front may go on to the next op meanwhile), so an operand read
    from a memory no longer reaches the compare's carry chain in its cycle; each window
    result comes a cycle later.

    Parameters
    ----------
    config : NetworkCore.Config
        The core's configuration (lanes, accumulator width, ``reducer_stage``).

    Members
    -------
    control : In(ControlSignature(descriptor))
        The kind of the op whose beats come in (the front's): SUM or MAX.
    array_results : In(1)
        The op whose results go out (the back's) is a GEMM: pass the array's accumulators
        on; a window result waits until it is not.
    beats : In(stream.Signature(VectorBeat(width)))
        A SUM's or MAX's operands; ``last`` closes a window.
    array : In(stream.Signature(ArrayLayout(signed(acc_width), width)))
        The array's accumulators.
    acc : Out(stream.Signature(ArrayLayout(signed(acc_width), width)))
        To the requantizer.
    """

    def __init__(self, config):
        self._width = config.width
        self._stage = config.reducer_stage
        acc = data.ArrayLayout(signed(config.acc_width), config.width)
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "array_results": In(1),
            "beats": In(stream.Signature(VectorBeat(config.width))),
            "array": In(stream.Signature(acc)),
            "acc": Out(stream.Signature(acc)),
        })

    def elaborate(self, platform):
        m = Module()
        beats, kind = self.beats, self.control.op.kind
        if self._stage:
            beats, kind = self._staged(m, beats, kind)
        is_gemm = self.array_results
        valid = Signal()
        ready = ~is_gemm & self.acc.ready
        partial = Signal(self.acc.payload.shape())
        first = Signal(init=1)
        # A window's result is its partial sum itself, offered until taken (one register
        # a lane instead of two): the next window's first beat may come in the cycle it
        # is taken, so windows of one (an element-wise SUM, a quantizing LOAD) still pass
        # one a cycle (with `~valid` alone they took two: the demo CNN 1 918 cycles
        # instead of 1 698).
        m.d.comb += beats.ready.eq(~valid | ready)
        with m.If(valid & ready):
            m.d.sync += valid.eq(0)
        with m.If(beats.valid & beats.ready):
            last = beats.payload.last
            for lane in range(self._width):
                value = beats.payload.lanes[lane]
                # A maximum is one of the values, so a MAX compares only their width.
                held = partial[lane][:len(value)].as_signed()
                m.d.sync += partial[lane].eq(Mux(
                    first, value, Mux(kind == OpKind.SUM, partial[lane] + value,
                                      Mux(value > held, value, partial[lane]))))
            m.d.sync += first.eq(last)
            with m.If(last):
                m.d.sync += valid.eq(1)
        m.d.comb += [
            self.acc.valid.eq(Mux(is_gemm, self.array.valid, valid)),
            self.acc.payload.eq(Mux(is_gemm, self.array.payload, partial)),
            self.array.ready.eq(is_gemm & self.acc.ready),
        ]
        return m

    @staticmethod
    def _staged(m, beats, kind):
        """A register for one beat and its op's kind between ``beats`` and the sums: it
        takes a beat whenever it is empty or its beat is taken, so beats still pass one a
        cycle. Returns the registered beat stream and kind."""
        staged = stream.Signature(beats.payload.shape()).create(path=("staged",))
        staged_kind = Signal.like(kind, name="staged_kind")
        m.d.comb += beats.ready.eq(~staged.valid | staged.ready)
        with m.If(beats.ready):
            m.d.sync += [staged.valid.eq(beats.valid), staged.payload.eq(beats.payload),
                         staged_kind.eq(kind)]
        return staged, staged_kind


class ParamFeed(wiring.Component):
    """The requantizer's parameter beats: each :class:`SideWords` answer of the memories
    with the op's ReLU flag and output range; the residual is read signed or unsigned as
    the op says, and is zero (with its multiplier and shift) in an op without one.

    Parameters
    ----------
    config : NetworkCore.Config
        The requantizer's parameter beat; a beat carries ``width`` channels, or one for
        a per-channel serial requantizer.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The op's ``relu``, ``low``, ``high``, ``residual`` and ``res_signed``.
    words : In(stream.Signature(SideWords(channels)))
    params : Out(stream.Signature(RequantParams))
    """

    def __init__(self, config):
        self._channels = 1 if config.per_channel else config.width
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "words": In(stream.Signature(SideWords(self._channels))),
            "params": Out(stream.Signature(config.requantizer_config.params_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        op = self.control.op
        params = self.params.payload
        m.d.comb += [
            self.params.valid.eq(self.words.valid),
            self.words.ready.eq(self.params.ready),
            params.relu.eq(op.relu),
            params.low.eq(op.low),
            params.high.eq(op.high),
        ]
        for col in range(self._channels):
            channel, word = params.channels[col], self.words.payload.channels[col]
            slot = self.words.payload.residuals[col]
            residual = Mux(op.res_signed, slot.as_signed(), slot)
            m.d.comb += [
                channel.bias.eq(word.bias),
                channel.multiplier.eq(word.multiplier),
                channel.shift.eq(word.shift),
                channel.residual.eq(Mux(op.residual, residual, 0)),
                channel.residual_multiplier.eq(Mux(op.residual, word.residual_multiplier, 0)),
                channel.residual_shift.eq(Mux(op.residual, word.residual_shift, 0)),
            ]
        return m


def _writer_members(config):
    """The ports of a part that writes an op's results (:class:`WriteBack`) or their copies
    (:class:`CopyPart`): the back's ``control``, the requantized ``results``, a ``write``
    port over the activation address space, ``done`` and ``written``."""
    return {
        "control": In(ControlSignature(config.layouts["program"])),
        "results": In(stream.Signature(config.requantizer_config.out_layout)),
        "write": In(WritePort.Signature(addr_width=ceil_log2(config.address_depth),
                                        shape=config.layouts["data"])),
        "done": Out(1),
        "written": Out(range(config.address_depth + 1)),
    }


class WriteBack(wiring.Component):
    """Writes each requantized vector of a compute op (or a quantizing ``LOAD``) to the
    activation memory, in the walks' order (``tile``, then pixel), each as one 16-bit-slot word at ``out_base +
    pixel·out_stride + tile``; the op is done with its last write.

    Parameters
    ----------
    config : NetworkCore.Config
        The activation word layout and memory depth, the requantizer's output vector.
    copies : bool
        Write the op's copies instead (:class:`CopyPart`): at ``copy_base +
        pixel·copy_stride + tile``.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The op's ``out_base``, ``out_words``, ``out_pixels`` and ``out_stride`` (the words
        between pixels: ``out_words``, or a concatenation's words per pixel).
    results : In(stream.Signature(ArrayLayout(signed(16), width)))
    write : In(WritePort.Signature(...))
        The activation memory's write port (driven here).
    done : Out(1)
        The op's last word is written.
    written : Out(range(address_depth + 1))
        Words the op has written (the beat walk of an op that overlaps this one reads
        only those).
    """

    def __init__(self, config, *, copies=False):
        self._width = config.width
        self._copies = copies
        super().__init__(_writer_members(config))

    def elaborate(self, platform):
        m = Module()
        op, start = self.control.op, self.control.start
        step = self.results.valid & self.results.ready
        with m.If(start):
            m.d.sync += self.written.eq(0)
        with m.Elif(step):
            m.d.sync += self.written.eq(self.written + 1)
        end_of_tile, final = output_counters(m, "write", op, step, start)
        base, stride = ((op.copy_base, op.copy_stride) if self._copies
                        else (op.out_base, op.out_stride))
        pointer = tile_pointer(m, "write_pointer", base, stride, step, end_of_tile, start)
        m.d.comb += [
            self.results.ready.eq(writes_results(op)),
            self.write.addr.eq(pointer),
            self.write.en.eq(step),
            self.done.eq(step & final),
        ]
        for col in range(self._width):
            m.d.comb += self.write.data[col].eq(self.results.payload[col][:STORAGE_BITS])
        return m


class CopyPart(wiring.Component):
    """A fused ``requantize`` (docs/network.md §15): passes each result vector of the back's
    op on to the write-back and, if the op's descriptor has ``copy``, also through a second,
    per-tensor requantizer, ``clamp((x·M + 2^(s−1)) >> s, lo, hi)`` with the descriptor's
    ``copy_multiplier``, ``copy_shift``, ``copy_low`` and ``copy_high`` (what the dropped
    ``requantize`` op computed from the stored value), to the packed memory at
    ``copy_base + pixel·copy_stride + tile``. A vector passes only when both the write-back
    and the copy requantizer take it, so neither drops one; the copies trail the results
    by the requantizer's latency, and the op ends with its last copy.

    Parameters
    ----------
    config : NetworkCore.Config
        The width, the result vector, the address space and ``copy_config``.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The back's op: ``copy`` and its fields, ``out_words``, ``out_pixels``.
    results : In(stream.Signature(ArrayLayout(signed(17), width)))
        The requantized vectors, on their way to the write-back.
    out : Out(stream.Signature(ArrayLayout(signed(17), width)))
        The same vectors, to the write-back.
    write : In(WritePort.Signature(...))
        The packed memory's copy port (driven here).
    done : Out(1)
        The op's last copy is written (one cycle).
    written : Out(range(address_depth + 1))
        Copies the op has written.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({**_writer_members(config),
                          "out": Out(stream.Signature(config.requantizer_config.out_layout))})

    def elaborate(self, platform):
        m = Module()
        config = self._config
        op = self.control.op
        m.submodules.requantizer = requantizer = config.requantizer_kind(
            **vars(config.copy_config))
        copying = op.copy
        # a fork: the vector leaves once both sides take it
        m.d.comb += [
            self.out.valid.eq(self.results.valid & (~copying | requantizer.acc.ready)),
            self.out.payload.eq(self.results.payload),
            requantizer.acc.valid.eq(self.results.valid & copying & self.out.ready),
            self.results.ready.eq(self.out.ready & (~copying | requantizer.acc.ready)),
            # one parameter beat, the descriptor's, for every vector
            requantizer.params.valid.eq(1),
            requantizer.params.payload.low.eq(op.copy_low),
            requantizer.params.payload.high.eq(op.copy_high),
        ]
        m.d.comb += requantizer.acc.payload.eq(self.results.payload)
        # the parallel requantizer's one per-tensor channel, or the serial one's every channel
        for channel in requantizer.params.payload.channels:
            m.d.comb += [channel.multiplier.eq(op.copy_multiplier),
                         channel.shift.eq(op.copy_shift)]
        # its own write-back, to the copies' words
        m.submodules.writer = writer = WriteBack(config, copies=True)
        wiring.connect(m, wiring.flipped(self.control), writer.control)
        wiring.connect(m, requantizer.out, writer.results)
        wiring.connect(m, writer.write, wiring.flipped(self.write))
        m.d.comb += [self.done.eq(writer.done), self.written.eq(writer.written)]
        return m


class StorePart(wiring.Component):
    """A fused ``STORE`` (docs/network.md §15, prefetch): passes each result vector of the
    back's op on to the write-back and, if the op's descriptor has ``store`` (the program's
    last op, whose results are the logits in the order the ``STORE`` read them), also to
    ``outputs`` as a 16-bit word, ``last`` on the op's last result. A vector passes only
    when both take it, so neither drops one, and the op's last write (its ``done``) comes
    once its last word has left.

    Parameters
    ----------
    config : NetworkCore.Config
        The activation word layout and the requantizer's output vector.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The back's op: ``store``, ``out_words`` and ``out_pixels``.
    results : In(stream.Signature(requantizer out_layout))
        The requantized vectors, on their way to the write-back.
    out : Out(stream.Signature(requantizer out_layout))
        The same vectors, to the write-back.
    outputs : Out(stream.Signature(StructLayout({"word": word, "last": 1})))
        The stored words, as a ``STORE``'s ``Storer`` gives them.
    """

    def __init__(self, config):
        vector = config.requantizer_config.out_layout
        self._width = config.width
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "results": In(stream.Signature(vector)),
            "out": Out(stream.Signature(vector)),
            "outputs": Out(stream.Signature(data.StructLayout({"word": config.layouts["data"],
                                                               "last": unsigned(1)}))),
        })

    def elaborate(self, platform):
        m = Module()
        op, start = self.control.op, self.control.start
        storing = op.store
        step = self.results.valid & self.results.ready
        _, final = output_counters(m, "store", op, step, start)
        # a fork: the vector leaves once both sides take it
        m.d.comb += [
            self.out.valid.eq(self.results.valid & (~storing | self.outputs.ready)),
            self.out.payload.eq(self.results.payload),
            self.outputs.valid.eq(self.results.valid & storing & self.out.ready),
            self.outputs.payload.last.eq(final),
            self.results.ready.eq(self.out.ready & (~storing | self.outputs.ready)),
        ]
        for col in range(self._width):
            m.d.comb += self.outputs.payload.word[col].eq(
                self.results.payload[col][:STORAGE_BITS])
        return m
