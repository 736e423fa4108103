"""Deliberately broken variants of blocks, each of which a proof must reject.

A proof that passes its block and fails its mutant shows that its properties can fail at all;
:mod:`tests.test_formal` runs both. Each mutant wraps the real block and breaks one promise,
so the properties that read the block's registers still find them.
"""

from dataclasses import asdict

from amaranth.asserts import AnySeq
from amaranth.hdl import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from olmac.hw.codebook import CodebookDecoder
from olmac.hw.host_link import FrameReceiver, RequestSlots
from olmac.hw.mac_array import MacArray
from olmac.hw.network_app import Dispatcher
from olmac.hw.outlier_rules import OutlierRules
from olmac.hw.requant import Requantizer
from olmac.hw.result_buffer import ResultBuffer
from olmac.hw.serial_requant import SerialRequantizer
from olmac.hw.stream import SkidBuffer
from .properties import output_streams

__all__ = ["BlindLaneArray", "DeafFrameReceiver", "HastyDecoder", "LossyRequestSlots",
           "LossyResultBuffer", "OnesComplementDecoder", "OverrunSkidBuffer",
           "SkewedRequantizer", "TamperedArray", "WithdrawnStream", "LenientRules",
           "EagerDispatcher", "SkewedSerialRequantizer", "DroppedTransfer", "SpuriousStream",
           "TamperedLoads"]

#: The ways a :class:`LossyResultBuffer` breaks its buffer.
FAULTS = ("drop", "withdraw")


class _BrokenBlock(wiring.Component):
    """A broken variant of the block class ``BLOCK``: it builds the real block from its own
    parameters and takes the block's signature, so it stands wherever the block would (its
    ``elaborate`` wires the block in and breaks one promise on the way)."""

    BLOCK: type

    def __init__(self, *args, **params):
        self._block = self.BLOCK(*args, **params)
        super().__init__(self._block.signature)


class _TamperedBlock(_BrokenBlock):
    """A broken variant with one of several faults.

    Parameters
    ----------
    fault : str
        One of the subclass's ``FAULTS``.
    **params
        As the block (``BLOCK``) takes them.

    Raises
    ------
    ValueError
        If ``fault`` is not one of ``FAULTS``.
    """

    FAULTS: tuple

    def __init__(self, fault, **params):
        if fault not in self.FAULTS:
            raise ValueError(f"Fault must be one of {', '.join(self.FAULTS)}, not {fault!r}")
        self._fault = fault
        super().__init__(**params)


class LossyResultBuffer(_BrokenBlock):
    """A :class:`~olmac.hw.result_buffer.ResultBuffer` with a fault on ``r``.

    ``"drop"``: in a cycle chosen freely the buffer is told its result was taken though the
    consumer was not ready, so a result is lost. ``"withdraw"``: in a cycle chosen freely
    ``r.valid`` is hidden, so a held result is withdrawn before ``ready``.

    Parameters
    ----------
    payload_shape : ShapeLike
        Shape of one result.
    depth : int
        Number of entries.
    fault : str
        ``"drop"`` or ``"withdraw"``.

    Raises
    ------
    ValueError
        If ``fault`` is not ``"drop"`` or ``"withdraw"``.
    """

    BLOCK = ResultBuffer

    def __init__(self, payload_shape, depth, fault):
        if fault not in FAULTS:
            raise ValueError(f"Fault must be 'drop' or 'withdraw', not {fault!r}")
        self._fault = fault
        super().__init__(payload_shape, depth)

    @property
    def depth(self):
        """Number of entries."""
        return self._block.depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = self._block
        fault = AnySeq(1)
        m.d.comb += [buffer.claim.eq(self.claim), self.can_claim.eq(buffer.can_claim),
                     buffer.w.valid.eq(self.w.valid), buffer.w.payload.eq(self.w.payload),
                     self.r.payload.eq(buffer.r.payload)]
        if self._fault == "drop":
            m.d.comb += [buffer.r.ready.eq(self.r.ready | fault),
                         self.r.valid.eq(buffer.r.valid)]
        else:
            m.d.comb += [buffer.r.ready.eq(self.r.ready),
                         self.r.valid.eq(buffer.r.valid & ~fault)]
        return m


class OnesComplementDecoder(CodebookDecoder):
    """A :class:`~olmac.hw.codebook.CodebookDecoder` that negates by inverting the bits.

    ``~m`` is ``-m - 1``: every negative weight is off by one, the classic slip of a
    sign-magnitude decoder.
    """

    def _decode(self, code, stored):
        sign, index = code[self._config.idx_bits], code[:self._config.idx_bits]
        zero = [Const(0, self._config.entry_bits)] if self._config.zero else []
        magnitude = Cat(*zero, *stored).word_select(index, self._config.entry_bits)
        word = Cat(magnitude, Const(0, 1))
        return Mux(sign, ~word, word)


class SkewedRequantizer(_BrokenBlock):
    """A :class:`~olmac.hw.requant.Requantizer` whose accumulators arrive one too high.

    An off-by-one before the rounding: every output whose ``(acc + 1 + β)·M`` rounds or
    clamps differently from ``(acc + β)·M`` is wrong.

    Parameters
    ----------
    **params
        As :class:`~olmac.hw.requant.Requantizer` takes them.
    """

    BLOCK = Requantizer

    def elaborate(self, platform):
        m = Module()
        m.submodules.requantizer = inner = self._block
        wiring.connect(m, wiring.flipped(self.params), inner.params)
        wiring.connect(m, inner.out, wiring.flipped(self.out))
        m.d.comb += [inner.acc.valid.eq(self.acc.valid), self.acc.ready.eq(inner.acc.ready)]
        for column, value in enumerate(self.acc.payload):
            m.d.comb += inner.acc.payload[column].eq(value + 1)
        return m


class SkewedSerialRequantizer(SkewedRequantizer):
    """A :class:`~olmac.hw.serial_requant.SerialRequantizer` whose accumulators arrive one
    too high (as :class:`SkewedRequantizer`).

    Parameters
    ----------
    **params
        As :class:`~olmac.hw.serial_requant.SerialRequantizer` takes them.
    """

    BLOCK = SerialRequantizer


class EagerDispatcher(Dispatcher):
    """A :class:`~olmac.hw.network_app.Dispatcher` as it was before issue 15's fix: back to
    ``COMMAND`` as soon as the handler's reply ends, so a handler that ends its reply before
    it has taken its whole request has the held byte withdrawn, and the rest of its request
    is read as a new command."""

    def _serve(self, m, handler, request_done, reply_done):
        super()._serve(m, handler, request_done, reply_done)
        reply = self.host.reply
        with m.If(reply.valid & reply.ready & reply.payload.last):
            m.next = "COMMAND"


class HastyDecoder(CodebookDecoder):
    """A :class:`~olmac.hw.codebook.CodebookDecoder` that takes a new tile while its last one
    is still held: it reads ``weights.ready`` as always high, so a stalled tile is
    overwritten (lost) and the held payload changes."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = CodebookDecoder(**asdict(self._config))
        wiring.connect(m, wiring.flipped(self.codes), decoder.codes)
        wiring.connect(m, wiring.flipped(self.load), decoder.load)
        m.d.comb += [self.weights.valid.eq(decoder.weights.valid),
                     self.weights.payload.eq(decoder.weights.payload),
                     decoder.weights.ready.eq(1)]
        return m


class TamperedLoads(_TamperedBlock):
    """A :class:`~olmac.hw.codebook.CodebookDecoder` whose inputs are tampered with on the
    way in: ``"misfiled"`` flips the lowest index bit of every load (an entry written to the
    neighbouring slot), ``"no_reload"`` hides every tile's ``reload`` (tiles decode without
    the batch they asked for). Made as :class:`_TamperedBlock` says.
    """

    BLOCK = CodebookDecoder
    FAULTS = ("misfiled", "no_reload")

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = decoder = self._block
        wiring.connect(m, wiring.flipped(self.codes), decoder.codes)
        wiring.connect(m, wiring.flipped(self.load), decoder.load)
        wiring.connect(m, decoder.weights, wiring.flipped(self.weights))
        if self._fault == "misfiled":
            m.d.comb += decoder.load.payload.index[0].eq(~self.load.payload.index[0])
        else:
            m.d.comb += decoder.codes.payload.reload.eq(0)
        return m


class LossyRequestSlots(_BrokenBlock):
    """A :class:`~olmac.hw.host_link.RequestSlots` told, in a cycle chosen freely, that a
    request byte was taken though the application was not ready: a byte is lost.

    Parameters
    ----------
    max_payload : int
        Bytes of a slot.
    """

    BLOCK = RequestSlots

    def elaborate(self, platform):
        m = Module()
        m.submodules.slots = slots = self._block
        wiring.connect(m, wiring.flipped(self.write), slots.write)
        m.d.comb += [self.request.valid.eq(slots.request.valid),
                     self.request.payload.eq(slots.request.payload),
                     slots.request.ready.eq(self.request.ready | AnySeq(1))]
        return m


class BlindLaneArray(_BrokenBlock):
    """A :class:`~olmac.hw.mac_array.MacArray` whose last lane always sees a zero activation:
    one product of every column sum is lost.

    Parameters
    ----------
    **params
        As :class:`~olmac.hw.mac_array.MacArray` takes them.
    """

    BLOCK = MacArray

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = array = self._block
        wiring.connect(m, wiring.flipped(self.weights), array.weights)
        wiring.connect(m, array.acc, wiring.flipped(self.acc))
        m.d.comb += [array.act.valid.eq(self.act.valid), self.act.ready.eq(array.act.ready),
                     array.act.payload.eq(self.act.payload),
                     array.act.payload.data[-1].eq(0)]
        return m


class OverrunSkidBuffer(_BrokenBlock):
    """A :class:`~olmac.hw.stream.SkidBuffer` whose upstream ``ready`` is always high: a beat
    offered while the skid register is full is taken from the producer and lost.

    Parameters
    ----------
    payload_shape : ShapeLike
        Shape of one beat.
    """

    BLOCK = SkidBuffer

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = self._block
        wiring.connect(m, buffer.o, wiring.flipped(self.o))
        m.d.comb += [buffer.i.valid.eq(self.i.valid), buffer.i.payload.eq(self.i.payload),
                     self.i.ready.eq(1)]
        return m


class DeafFrameReceiver(_BrokenBlock):
    """A :class:`~olmac.hw.host_link.FrameReceiver` that misses a byte in a cycle chosen
    freely without reporting it (a lost UART byte taken for none): it parses a byte stream
    other than the one the host sent.

    Parameters
    ----------
    **params
        As :class:`~olmac.hw.host_link.FrameReceiver` takes them.
    """

    BLOCK = FrameReceiver

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = self._block
        wiring.connect(m, receiver.slots, wiring.flipped(self.slots))
        m.d.comb += [receiver.rx.valid.eq(self.rx.valid & ~AnySeq(1)),
                     receiver.rx.payload.eq(self.rx.payload), self.rx.ready.eq(1),
                     receiver.rx_error.eq(self.rx_error), self.error.eq(receiver.error)]
        return m


class TamperedArray(_TamperedBlock):
    """A :class:`~olmac.hw.mac_array.MacArray` whose beats are tampered with on the way in:
    ``"act_outlier"`` loses the first activation-outlier slot (an outlier never counted),
    ``"weight_outlier"`` the first weight-outlier slot, ``"plane_shift"`` the first column's
    plane shift (§8: a plane added unscaled). Made as :class:`_TamperedBlock` says.
    """

    BLOCK = MacArray
    FAULTS = ("act_outlier", "weight_outlier", "plane_shift")

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = array = self._block
        wiring.connect(m, array.acc, wiring.flipped(self.acc))
        m.d.comb += [array.act.valid.eq(self.act.valid), self.act.ready.eq(array.act.ready),
                     array.act.payload.eq(self.act.payload),
                     array.weights.valid.eq(self.weights.valid),
                     self.weights.ready.eq(array.weights.ready),
                     array.weights.payload.eq(self.weights.payload)]
        if self._fault == "act_outlier":
            m.d.comb += array.act.payload.outliers[0].valid.eq(0)
        elif self._fault == "weight_outlier":
            m.d.comb += array.weights.payload.outliers[0].valid.eq(0)
        else:
            m.d.comb += array.weights.payload.plane_shift[0].eq(0)
        return m


class _PortFault(wiring.Component):
    """Any built block with a fault on some of its port signals: a subclass's
    ``_faults(block)`` maps
    the ids of the block's own signals to how each is driven instead (a function of the
    outer and the inner signal giving a statement); every other signal passes through."""

    def __init__(self, block):
        self._block = block
        super().__init__(block.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = block = self._block
        faults = self._faults(block)
        for (_, member, outer), (_, _, inner) in zip(self.signature.flatten(self),
                                                    block.signature.flatten(block)):
            if id(inner) in faults:
                m.d.comb += faults[id(inner)](outer, inner)
            elif member.flow == In:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        return m


class WithdrawnStream(_PortFault):
    """Any block whose first sending stream port (``properties.output_streams`` order) hides
    ``valid`` in a cycle chosen freely: a beat withdrawn before ``ready``, which the stream
    rules forbid. Everything else passes through.

    Parameters
    ----------
    block : wiring.Component
        The block to break (built by the caller).
    """

    def _faults(self, block):
        hidden = AnySeq(1)
        return {id(output_streams(block)[0][1].valid):
                lambda outer, inner: outer.eq(inner & ~hidden)}


class SpuriousStream(_PortFault):
    """Any block whose first sending stream port (``properties.output_streams`` order)
    offers a beat from nothing in a cycle chosen freely (``valid`` forced high), which it
    withdraws in the next unless it was taken: a beat created and withdrawn, which the
    stream rules forbid. Unlike :class:`WithdrawnStream` it needs no beat of the block's
    own, so it fails within two cycles even where the block takes long to send one (a UART
    receiver: a whole byte).

    Parameters
    ----------
    block : wiring.Component
        The block to break (built by the caller).
    """

    def _faults(self, block):
        offered = AnySeq(1)
        return {id(output_streams(block)[0][1].valid):
                lambda outer, inner: outer.eq(inner | offered)}


class DroppedTransfer(_PortFault):
    """Any block whose first receiving stream port (``properties.output_streams`` order,
    ``sending=False``) loses a beat in a cycle chosen freely: the producer's beat is taken
    (``ready`` high) but the block does not see it, so a transfer is lost between the
    block's input and output. Everything else passes through.

    Parameters
    ----------
    block : wiring.Component
        The block to break (built by the caller).
    """

    def _faults(self, block):
        port = output_streams(block, sending=False)[0][1]
        lost = AnySeq(1)
        return {id(port.valid): lambda outer, inner: inner.eq(outer & ~lost),
                id(port.ready): lambda outer, inner: outer.eq(inner | lost)}


class LenientRules(OutlierRules):
    """An :class:`~olmac.hw.outlier_rules.OutlierRules` that checks positions against the
    array's bounds only: two outliers at one position pass unflagged."""

    def _broken(self, slots, fields, bounds):
        return [slot.valid & Cat(*(getattr(slot, field) >= bound
                                   for field, bound in zip(fields, bounds))).any()
                for slot in slots]
