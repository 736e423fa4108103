# amaranth: UnusedElaboratable=no
"""The network core's lookup-table part (hw/network/tables.py) on Amaranth's simulator:
``y = table[x − lo]`` of docs/program.md §12 lane by lane, computed here from the table and
the input's range (not from the part's offset arithmetic), under random ``valid`` and
``ready``; loads through ``write``; vectors pass unchanged while the op has no table.
(The first line silences UnusedElaboratable: the validation tests build parts that raise.)"""

import random

import pytest
from amaranth.sim import Simulator

from olmac.hw.network import NetworkCore, TablePart

pytestmark = pytest.mark.filterwarnings("error")

WIDTH = 3


def _offset(base: int, low: int, config: TablePart.Config) -> int:
    """The descriptor's ``table_offset`` for a table at ``base`` of an input whose lowest
    code is ``low`` (docs/network.md §15)."""
    return (base - low) % (1 << config.address_bits)


def _run(config, initial, loads, ops, *, seed):
    """Writes ``loads`` (address, entry), then streams each op's vectors ``(enable,
    offset, vectors)`` through the part with random gaps and stalls; returns what
    ``out`` gave, op by op."""
    dut = TablePart(config, tables=initial)
    rng = random.Random(seed)
    got = []

    async def bench(ctx):
        for address, entry in loads:
            ctx.set(dut.write.valid, 1)
            ctx.set(dut.write.payload, {"address": address, "entry": entry})
            await ctx.tick()
        ctx.set(dut.write.valid, 0)
        for enable, offset, vectors in ops:
            ctx.set(dut.enable, enable)
            ctx.set(dut.offset, offset)
            sent, taken = 0, []
            while len(taken) < len(vectors):
                offer = sent < len(vectors) and rng.random() < 0.6
                ready = rng.random() < 0.6
                ctx.set(dut.results.valid, offer)
                if offer:
                    ctx.set(dut.results.payload, vectors[sent])
                ctx.set(dut.out.ready, ready)
                _, _, accepted, out_valid, out = await ctx.tick().sample(
                    dut.results.ready, dut.out.valid, dut.out.payload)
                if offer and accepted:
                    sent += 1
                if ready and out_valid:
                    taken.append([out[lane] for lane in range(WIDTH)])
            ctx.set(dut.results.valid, 0)
            ctx.set(dut.out.ready, 1)
            for _ in range(3):  # nothing more comes out: no vector is repeated
                _, _, out_valid = await ctx.tick().sample(dut.out.valid)
                assert not out_valid
            got.append(taken)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_table_part_looks_up_every_lane_under_backpressure(seed):
    """§12: each slot ``x`` becomes ``table[x − lo]`` of the op's table, for a signed 4-bit
    input (``lo = −8``, 16 entries at 0) and an unsigned 2-bit one (``lo = 0``, 4 entries at
    16, written through ``write`` over the initial zeros); every vector arrives once, in
    order, whatever the gaps and stalls; without ``enable`` the vectors pass unchanged."""
    rng = random.Random(seed)
    config = TablePart.Config(WIDTH, 21)
    signed4 = [rng.randrange(-256, 256) for _ in range(16)]
    unsigned2 = [rng.randrange(0, 256) for _ in range(4)]
    vectors4 = [[rng.randrange(-8, 8) for _ in range(WIDTH)] for _ in range(40)]
    vectors2 = [[rng.randrange(0, 4) for _ in range(WIDTH)] for _ in range(25)]
    wide = [[rng.randrange(-(1 << 16), 1 << 16) for _ in range(WIDTH)] for _ in range(20)]
    ops = [(1, _offset(0, -8, config), vectors4), (1, _offset(16, 0, config), vectors2),
           (0, _offset(0, -8, config), wide)]
    got = _run(config, signed4, list(enumerate(unsigned2, start=16)), ops, seed=seed)
    assert got[0] == [[signed4[x + 8] for x in vector] for vector in vectors4]
    assert got[1] == [[unsigned2[x] for x in vector] for vector in vectors2]
    assert got[2] == wide


@pytest.mark.parametrize("options,error,message", [
    (dict(width=0, depth=8), TypeError, r"^Width must be an integer in 1\.\.64, not 0$"),
    (dict(width=2, depth=3), TypeError, r"^table_depth must be an integer in 4\.\.65536, not 3$"),
    (dict(width=2, depth=8, value_bits=9), TypeError,
     r"^value_bits must be an integer in 10\.\.32, not 9$"),
])
def test_table_part_config_refuses_bad_values(options, error, message):
    with pytest.raises(error, match=message):
        TablePart.Config(**options)


def test_table_part_refuses_entries_that_do_not_fit():
    config = TablePart.Config(2, 4)
    with pytest.raises(ValueError, match=r"^5 table entries do not fit a table memory of "
                                         r"depth 4$"):
        TablePart(config, tables=[0] * 5)
    with pytest.raises(ValueError, match=r"^Every table entry must be an integer in "
                                         r"-256\.\.255$"):
        TablePart(config, tables=[256])
    with pytest.raises(TypeError, match=r"^config must be a TablePart\.Config, not 4$"):
        TablePart(4)


def test_core_without_tables_has_no_table_fields_and_refuses_entries():
    """A core without a table memory pays nothing: no table fields in its descriptor, no
    table part; a core with one derives the part's configuration."""
    options = dict(width=2, act_bits=4, weight_bits=4, max_k=8, data_depth=16,
                   weight_depth=4, param_depth=3, program_depth=3)
    plain = NetworkCore.Config(**options)
    assert plain.tables is None and "table" not in plain.layouts["program"].members
    with pytest.raises(ValueError, match=r"^Table entries need a core with a table memory "
                                         r"\(table_depth\)$"):
        NetworkCore(plain, tables=[1])
    tabled = NetworkCore.Config(**options, table_depth=300)
    assert tabled.tables == TablePart.Config(2, 300, 17)
    assert tabled.layouts["program"].members["table_offset"].width == 9
