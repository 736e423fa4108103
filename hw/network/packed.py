"""Packed low-bit activation storage (docs/network.md §15): a second activation memory whose
slots are as wide as the array's activations, between the walks and the 16-bit one."""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..ram import NO_COLLISIONS, no_collision_read_port
from .layouts import AddressedWord, ControlSignature

__all__ = ["PackedMemory"]


class PackedMemory(wiring.Component):
    """The packed activation memory: ``width`` slots of ``act_bits`` bits a word, for every
    value a GEMM can read (at most ``act_bits`` wide); highway tensors, the pixels and the
    logits stay in the 16-bit memory. It sits on the beat walk's operand port and the
    write-back's write port and passes each access on to the 16-bit memory unless the op's
    ``in_packed``/``out_packed`` says the value is packed. A packed word is read back as
    16-bit slots, sign-extended for a signed input (``in_signed``), so the walk reads both
    memories alike.

    Parameters
    ----------
    config : NetworkCore.Config
        The width, ``act_bits``, ``packed_depth`` and the address space of both memories.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The reading op's (the front's) ``in_packed`` and ``in_signed``.
    back : In(ControlSignature(descriptor))
        The writing op's (the back's) ``out_packed``.
    operand : Out(ReadPort.Signature(...))
        The beat walk's operand port, over both memories.
    write : Out(WritePort.Signature(...))
        The write-back's port, over both memories.
    copy_write : Out(WritePort.Signature(...))
        With ``config.copies``: the copy part's port, to the packed memory only. The compiler
        copies only results the op writes to the 16-bit memory, so it never writes in a
        cycle the write-back writes here.
    prefetch_write : In(stream.Signature(AddressedWord(...)))
        With ``config.prefetch``: the background loader's words, taken in a cycle no other
        port writes this memory (the last in priority: the others cannot wait).
    wide_operand, wide_write : In(ReadPort.Signature(...)), In(WritePort.Signature(...))
        The 16-bit memory's ports (driven here).
    """

    def __init__(self, config):
        self._config = config
        word = config.layouts["data"]
        address = ceil_log2(config.address_depth)
        wide = ceil_log2(config.data_depth)
        writers = ({"copy_write": Out(WritePort.Signature(addr_width=address, shape=word))}
                   if config.copies else {})
        if config.prefetch:
            writers["prefetch_write"] = In(stream.Signature(AddressedWord(config.address_depth,
                                                                         word)))
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "back": In(ControlSignature(config.layouts["program"])),
            "operand": Out(ReadPort.Signature(addr_width=address, shape=word)),
            "write": Out(WritePort.Signature(addr_width=address, shape=word)),
            "wide_operand": In(ReadPort.Signature(addr_width=wide, shape=word)),
            "wide_write": In(WritePort.Signature(addr_width=wide, shape=word)),
            **writers,
        })

    def elaborate(self, platform):
        m = Module()
        config = self._config
        op, out_packed = self.control.op, self.back.op.out_packed
        bits = config.act_bits
        m.submodules.memory = memory = Memory(
            shape=data.ArrayLayout(unsigned(bits), config.width), depth=config.packed_depth,
            # no op reads a word it writes (memories.py says why this matters on iCE40)
            init=[], attrs=NO_COLLISIONS)
        read, write = no_collision_read_port(m, memory), memory.write_port()
        address, enable = self.write.addr, self.write.en & out_packed
        lanes = [self.write.data[lane] for lane in range(config.width)]
        if config.copies:
            copy = self.copy_write
            address, enable = Mux(copy.en, copy.addr, address), enable | copy.en
            lanes = [Mux(copy.en, copy.data[lane], value) for lane, value in enumerate(lanes)]
        if config.prefetch:
            prefetch = self.prefetch_write
            m.d.comb += prefetch.ready.eq(~enable)
            background = prefetch.valid & ~enable
            address = Mux(background, prefetch.payload.address, address)
            enable = enable | background
            lanes = [Mux(background, prefetch.payload.word[lane], value)
                     for lane, value in enumerate(lanes)]
        m.d.comb += [
            read.addr.eq(self.operand.addr), read.en.eq(self.operand.en & op.in_packed),
            self.wide_operand.addr.eq(self.operand.addr),
            self.wide_operand.en.eq(self.operand.en & ~op.in_packed),
            write.addr.eq(address), write.en.eq(enable),
            self.wide_write.addr.eq(self.write.addr),
            self.wide_write.en.eq(self.write.en & ~out_packed),
            self.wide_write.data.eq(self.write.data),
        ]
        for lane in range(config.width):
            slot = read.data[lane]
            m.d.comb += [
                write.data[lane].eq(lanes[lane][:bits]),
                # assigning the signed view sign-extends it to the 16-bit slot
                self.operand.data[lane].eq(Mux(
                    op.in_packed, Mux(op.in_signed, slot.as_signed(), slot),
                    self.wide_operand.data[lane])),
            ]
        return m
