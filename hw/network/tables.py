"""Lookup-table activations (docs/program.md §12) on the network core's results
(docs/network.md §15): a table memory per lane between the requantizer and the write-back."""

from dataclasses import dataclass

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from olmac.spec import ARRAY_DIM, check_int
from .layouts import STORAGE_BITS, TABLE_ENTRY_BITS

__all__ = ["TablePart"]


class TablePart(wiring.Component):
    """Replaces each slot ``x`` of every result vector by ``table[(offset + x) mod 2^a]``
    while ``enable`` holds (``a`` = ``config.address_bits``), and passes the vectors
    through unchanged otherwise.

    The tables of all the program's ``lookup`` ops lie one after another in a memory of
    ``config.depth`` signed 9-bit entries; an op's ``offset`` is its table's first entry
    minus the lowest code of its input, modulo ``2^a``, so ``offset + x`` lands on entry
    ``x − lo`` of its table without a subtraction. Every lane reads an entry each cycle, so
    the memory is kept once per lane (``width`` copies written together by ``write``).

    One register stage (the memories' read ports) whose enable is ``~valid | ready``: a
    vector moves on only when the next stage takes the one before it, so none is dropped
    or repeated under backpressure.

    Parameters
    ----------
    config : TablePart.Config
        Lanes and table entries.
    tables : list of int or None
        Initial entries (``-256..255``; zeros where not given).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`TablePart.Config`.
    ValueError
        If ``tables`` does not fit the memory.

    Members
    -------
    enable : In(1)
        Look the results up (held for the whole op).
    offset : In(address_bits)
        The op's table offset.
    write : In(stream.Signature(StructLayout({"address": ..., "entry": signed(9)})))
        Writes one entry into every lane's copy; always ready.
    results : In(stream.Signature(ArrayLayout(signed(value_bits), width)))
        The requantizer's vectors.
    out : Out(stream.Signature(ArrayLayout(signed(value_bits), width)))
        The vectors, looked up or not.
    """

    @dataclass(frozen=True)
    class Config:
        """A table part's lanes and memory depth, validated, and what they imply.

        Parameters
        ----------
        width : int
            Lanes of a result vector, 1..64.
        depth : int
            Entries of the table memory (every table of the program), 4..65536.
        value_bits : int
            Bits of a signed result slot, 10..32 (wide enough for every entry).

        Raises
        ------
        TypeError
            If a parameter is not an integer in its range.
        """
        width: int
        depth: int
        value_bits: int = STORAGE_BITS + 1

        def __post_init__(self):
            check_int("Width", self.width, ARRAY_DIM)
            check_int("table_depth", self.depth, (4, 65536))
            check_int("value_bits", self.value_bits, (TABLE_ENTRY_BITS + 1, 32))

        @property
        def address_bits(self) -> int:
            """Bits of a table address and of an op's ``offset``."""
            return ceil_log2(self.depth)

        @property
        def write_layout(self) -> data.StructLayout:
            """A beat of ``write``: an entry and where it goes."""
            return data.StructLayout({"address": unsigned(self.address_bits),
                                      "entry": signed(TABLE_ENTRY_BITS)})

        @property
        def vector_layout(self) -> data.ArrayLayout:
            """A result vector: ``width`` signed ``value_bits``-bit slots."""
            return data.ArrayLayout(signed(self.value_bits), self.width)

    def __init__(self, config, *, tables=None):
        if not isinstance(config, TablePart.Config):
            raise TypeError(f"config must be a TablePart.Config, not {config!r}")
        entries = list(tables or [])
        if len(entries) > config.depth:
            raise ValueError(f"{len(entries)} table entries do not fit a table memory of "
                             f"depth {config.depth}")
        low, high = -(1 << (TABLE_ENTRY_BITS - 1)), (1 << (TABLE_ENTRY_BITS - 1)) - 1
        if any(not isinstance(e, int) or not low <= e <= high for e in entries):
            raise ValueError(f"Every table entry must be an integer in {low}..{high}")
        self._config = config
        self._tables = entries
        super().__init__({
            "enable": In(1),
            "offset": In(config.address_bits),
            "write": In(stream.Signature(config.write_layout)),
            "results": In(stream.Signature(config.vector_layout)),
            "out": Out(stream.Signature(config.vector_layout)),
        })

    @property
    def config(self):
        """The :class:`TablePart.Config`."""
        return self._config

    def elaborate(self, platform):
        m = Module()
        config = self._config
        bits = config.address_bits
        advance = ~self.out.valid | self.out.ready
        looked_up = Signal()
        passed = Signal(config.vector_layout)
        m.d.comb += [self.results.ready.eq(advance), self.write.ready.eq(1)]
        with m.If(advance):
            m.d.sync += [self.out.valid.eq(self.results.valid), looked_up.eq(self.enable),
                         passed.eq(self.results.payload)]
        for lane in range(config.width):
            memory = Memory(shape=signed(TABLE_ENTRY_BITS), depth=config.depth,
                            init=self._tables)
            m.submodules[f"table_{lane}"] = memory
            write, read = memory.write_port(), memory.read_port()
            m.d.comb += [
                write.en.eq(self.write.valid),
                write.addr.eq(self.write.payload.address),
                write.data.eq(self.write.payload.entry),
                # the sum's low bits are the address modulo 2^bits (see ``offset``)
                read.addr.eq((self.offset + self.results.payload[lane])[:bits]),
                read.en.eq(advance),
                self.out.payload[lane].eq(Mux(looked_up, read.data, passed[lane])),
            ]
        return m
