"""Run-time activation outliers in the network core (docs/program.md §18, docs/network.md
§15): the store that splits each requantized vector into its dense part and the outliers a
block keeps, and the outlier memory the beat walk reads them from."""

from amaranth.hdl import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .layouts import ControlSignature, OutlierBlock, is_compute
from .walks import output_counters, tile_pointer

__all__ = ["ActOutlierStore"]


def _better(a, b):
    """Whether candidate ``a`` ranks before ``b`` (§18): valid before invalid, then the
    larger correction ``|e|``, then the lower position. Candidates are ``(valid, excess,
    position)`` triples of values."""
    (a_valid, a_excess, a_position), (b_valid, b_excess, b_position) = a, b
    return a_valid & (~b_valid | (a_excess > b_excess) |
                      ((a_excess == b_excess) & (a_position < b_position)))


class ActOutlierStore(wiring.Component):
    """Between the requantizer and the write-back of a compute op whose output keeps
    activation outliers (docs/program.md §18): passes each vector on with every value
    saturated to the dense range ``dense_low..dense_high`` (the dense part ``d``), and
    merges the vector's outliers (values outside that range, ranked by ``|y − d|``, ties to
    the lower position) into its block's ``slots`` in the outlier memory, keeping the best.

    The merge is a read of the block and a write one cycle later; the read port is
    transparent to that write, so consecutive vectors of one block see each other. A block
    written in another image (its ``parity`` differs) reads as empty, so no op clears the
    memory. The rule depends on a block's set of values only, so the order the vectors come
    in (tile by tile) does not matter. The store never stalls: it takes a vector whenever
    the write-back does.

    Parameters
    ----------
    config : NetworkCore.Config
        The width, the requantizer's output vector, the outlier memory's depth, block and
        slots.

    Members
    -------
    control : In(ControlSignature(descriptor))
        The op's ``out_outliers``, ``out_obase``, ``dense_low``/``dense_high`` and its walk.
    image_start : In(1)
        A new image starts (op 0 starts): flips the parity.
    results : In(stream.Signature(requantizer out_layout))
    dense : Out(stream.Signature(requantizer out_layout))
        ``results`` saturated to the dense range (unchanged in an op without outliers).
    read : Out(ReadPort.Signature(...))
        The outlier memory's read port for the beat walk.
    """

    def __init__(self, config):
        self._config = config
        vector = config.requantizer_config.out_layout
        super().__init__({
            "control": In(ControlSignature(config.layouts["program"])),
            "image_start": In(1),
            "results": In(stream.Signature(vector)),
            "dense": Out(stream.Signature(vector)),
            "read": Out(ReadPort.Signature(addr_width=ceil_log2(config.outlier_depth),
                                           shape=config.outlier_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        config = self._config
        width, slots = config.width, config.act_outlier_slots
        op, start = self.control.op, self.control.start
        memory = Memory(shape=config.outlier_layout, depth=config.outlier_depth, init=[])
        m.submodules.memory = memory
        write = memory.write_port()
        merge_read = memory.read_port(transparent_for=(write,))
        wiring.connect(m, wiring.flipped(self.read), memory.read_port())

        parity = Signal()
        with m.If(self.image_start):
            m.d.sync += parity.eq(~parity)

        step = self.dense.valid & self.dense.ready
        m.d.comb += [
            self.dense.valid.eq(self.results.valid),
            self.results.ready.eq(self.dense.ready),
        ]
        for lane in range(width):
            value = self.results.payload[lane]
            m.d.comb += self.dense.payload[lane].eq(Mux(
                op.out_outliers, Mux(value < op.dense_low, op.dense_low,
                                     Mux(value > op.dense_high, op.dense_high, value)),
                value))

        # The word each vector goes to, as the write-back counts it.
        end_of_tile, _ = output_counters(m, "outlier_word", op, step, start)
        pointer = tile_pointer(m, "outlier_pointer", op.out_base, op.out_words, step,
                               end_of_tile, start)
        offset = Signal.like(pointer)
        m.d.comb += offset.eq(pointer - op.out_base)
        block_shift = exact_log2(config.act_outlier_block_words)

        # Stage 1: the block is read; the candidates wait with the op's dense range.
        pending = Signal()
        block = Signal.like(write.addr)
        candidates = Signal(data.ArrayLayout(data.StructLayout({
            "valid": unsigned(1), "excess": unsigned(config.requantizer_config.out_shape.width),
            "slot": config.outlier_layout["slots"].shape.elem_shape}), width))
        low = Signal.like(op.dense_low)
        high = Signal.like(op.dense_high)
        m.d.comb += [merge_read.addr.eq(op.out_obase + (offset >> block_shift)),
                     merge_read.en.eq(1)]
        m.d.sync += [pending.eq(step & op.out_outliers & is_compute(op.kind)),
                     block.eq(merge_read.addr), low.eq(op.dense_low), high.eq(op.dense_high)]
        word = offset[:block_shift] if block_shift else Const(0, 1)
        for lane in range(width):
            value, candidate = self.results.payload[lane], candidates[lane]
            m.d.sync += [
                candidate.valid.eq((value < op.dense_low) | (value > op.dense_high)),
                candidate.excess.eq(Mux(value > op.dense_high, value - op.dense_high,
                                        op.dense_low - value)),
                candidate.slot.position.eq(word * width + lane),
                candidate.slot.value.eq(value),
            ]

        # Stage 2: the best `slots` of the block's slots and the candidates are written.
        stored = merge_read.data
        pool = []
        for index in range(slots):
            slot = stored.slots[index]
            valid = (stored.parity == parity) & (slot.value != 0)
            excess = Mux(slot.value > high, slot.value - high, low - slot.value)
            pool.append((valid, excess[:len(candidates[0].excess)], slot))
        for lane in range(width):
            candidate = candidates[lane]
            pool.append((candidate.valid, candidate.excess, candidate.slot))
        chosen = []
        for index in range(slots):
            best = self._best(m, pool, chosen, f"best_{index}")
            chosen.append(best)
            m.d.comb += write.data.slots[index].eq(Mux(best[0], best[2], 0))
        m.d.comb += [write.addr.eq(block), write.en.eq(pending), write.data.parity.eq(parity)]
        return m

    @staticmethod
    def _best(m, pool, chosen, name):
        """The best candidate of ``pool`` not already ``chosen`` (a chosen one is marked by
        its position), as ``(valid, excess, slot)`` signals: a chain of comparisons, each
        keeping the better of a candidate and the best so far."""
        best = None
        for index, (valid, excess, slot) in enumerate(pool):
            taken = Const(0)
            for chosen_valid, _, chosen_slot in chosen:
                taken = taken | (chosen_valid & (chosen_slot.position == slot.position))
            candidate = (valid & ~taken, excess, slot)
            if best is None:
                best = candidate
                continue
            keep = _better((candidate[0], candidate[1], candidate[2].position),
                                  (best[0], best[1], best[2].position))
            step = (Signal(name=f"{name}_{index}_valid"),
                    Signal.like(pool[0][1], name=f"{name}_{index}_excess"),
                    Signal.like(pool[0][2], name=f"{name}_{index}_slot"))
            m.d.comb += [ours.eq(Mux(keep, theirs, kept))
                         for ours, theirs, kept in zip(step, candidate, best)]
            best = step
        return best
