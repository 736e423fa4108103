"""Memories as the iCE40 keeps them cheaply: :class:`SinglePortMemory` (one address, a read
or a write a cycle) in an iCE40UP's SB_SPRAM256KA blocks (4 × 16 384 × 16 bits, the UP5K's
1 Mbit), the network core's activation memory on the iCEBreaker board; and
:func:`no_collision_read_port`, a block RAM read port without the read-before-write
emulation Yosys puts around an iCE40 block RAM (docs/network.md §15)."""

from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from olmac.spec import check_int
from .config import ConfigProperty, ConfiguredComponent

__all__ = ["SinglePortMemory", "no_collision_read_port", "NO_COLLISIONS", "SPRAM_BLOCKS",
           "SPRAM_DEPTH", "SPRAM_WIDTH"]

#: SB_SPRAM256KA blocks of an iCE40UP5K, and the words and bits of one.
SPRAM_BLOCKS = 4
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16


#: The attributes of a memory whose reads never use a word written in the same cycle.
NO_COLLISIONS = {"no_rw_check": 1}


def no_collision_read_port(m, memory):
    """A synchronous read port of ``memory`` (an interface of ``ReadPort.Signature``: the
    word at ``addr`` on ``data`` the cycle after ``en``, held while ``en`` is low; a word
    written in the same cycle reads as before the write) built in ``m`` as an asynchronous
    read port and a register.

    Yosys merges that register into the block RAM and then honours ``memory``'s
    ``no_rw_check`` attribute (:data:`NO_COLLISIONS`), which it ignores on a synchronous
    port: the iCE40 block RAM defines no result for a read of the word being written, so
    without it Yosys emulates read-before-write with two flip-flops and a multiplexer a
    bit. Use it only where no read uses such a word (simulation keeps read-before-write)."""
    comb = memory.read_port(domain="comb")
    port = ReadPort.Signature(addr_width=len(comb.addr), shape=memory.shape).create()
    m.d.comb += comb.addr.eq(port.addr)
    with m.If(port.en):
        m.d.sync += port.data.eq(comb.data)
    return port


def _platform_has_spram(platform):
    device = getattr(platform, "device", None)
    return isinstance(device, str) and device.startswith("iCE40UP")


class SinglePortMemory(ConfiguredComponent):
    """``depth`` words of ``width`` bits behind one address: a cycle either writes
    ``write_data`` (``write_en``) or, with ``read_en``, reads the word whose value
    ``read_data`` shows from the next cycle until the next read. A write wins over a read
    in the same cycle, and ``read_data`` is undefined the cycle after a write (the SPRAM
    drives X then), so a user keeps what it read before.

    On an iCE40UP platform (``platform.device`` ``"iCE40UP…"``) a memory of at most
    :data:`SPRAM_DEPTH` words that takes at most :data:`SPRAM_BLOCKS` blocks side by side
    is ``⌈width/16⌉`` ``SB_SPRAM256KA`` instances (they have no initial contents: nothing
    may be read before it is written); otherwise, and in simulation, an
    ``amaranth.lib.memory.Memory`` with the same cycle timing.

    Made from keyword arguments, the fields of :class:`SinglePortMemory.Config`.

    Members
    -------
    addr : In(ceil_log2(depth))
    read_en : In(1)
    read_data : Out(width)
    write_en : In(1)
    write_data : In(width)
    """

    @dataclass(frozen=True)
    class Config:
        """Words and bits of a :class:`SinglePortMemory`.

        Parameters
        ----------
        width : int
            Bits a word, 1..1024.
        depth : int
            Words, 1..65536.

        Raises
        ------
        TypeError
            If ``width`` or ``depth`` is not an integer in its range.
        """
        width: int
        depth: int

        def __post_init__(self):
            check_int("width", self.width, (1, 1024))
            check_int("depth", self.depth, (1, 65536))

        @property
        def spram_blocks(self) -> int:
            """SB_SPRAM256KA blocks side by side on an iCE40UP part (0: it does not fit
            them and stays a ``Memory``)."""
            blocks = -(-self.width // SPRAM_WIDTH)
            return blocks if blocks <= SPRAM_BLOCKS and self.depth <= SPRAM_DEPTH else 0

        @property
        def signature(self) -> wiring.Signature:
            """The ports."""
            return wiring.Signature({
                "addr": In(ceil_log2(self.depth)), "read_en": In(1),
                "read_data": Out(self.width), "write_en": In(1),
                "write_data": In(self.width)})

    width = ConfigProperty()
    depth = ConfigProperty()

    def elaborate(self, platform):
        m = Module()
        if _platform_has_spram(platform) and self._config.spram_blocks:
            self._spram(m)
        else:
            m.submodules.memory = memory = Memory(shape=self.width, depth=self.depth, init=[])
            write, read = memory.write_port(), memory.read_port()
            m.d.comb += [
                write.addr.eq(self.addr), write.data.eq(self.write_data),
                write.en.eq(self.write_en),
                read.addr.eq(self.addr), read.en.eq(self.read_en & ~self.write_en),
                self.read_data.eq(read.data),
            ]
        return m

    def _spram(self, m):
        address = Signal(14)
        data_in = Signal(self._config.spram_blocks * SPRAM_WIDTH)
        data_out = Signal.like(data_in)
        m.d.comb += [address.eq(self.addr), data_in.eq(self.write_data),
                     self.read_data.eq(data_out)]
        for block in range(self._config.spram_blocks):
            bits = slice(block * SPRAM_WIDTH, (block + 1) * SPRAM_WIDTH)
            m.submodules[f"spram{block}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=address, i_DATAIN=data_in[bits], i_MASKWREN=Const(0b1111, 4),
                i_WREN=self.write_en, i_CHIPSELECT=self.write_en | self.read_en,
                i_CLOCK=ClockSignal(), i_STANDBY=Const(0), i_SLEEP=Const(0),
                i_POWEROFF=Const(1), o_DATAOUT=data_out[bits])
