"""The MAC array's ``fault`` flag (docs/semantics.md §6 producer rules), on the Amaranth
simulator: a producer that breaks a rule raises it, for good; one that keeps them never does,
whether its beats are random or pick the corners of the rules."""

import random
from pathlib import Path

import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from olmac.hw import MacArray
from olmac.hw.outlier_rules import OutlierRules
from olmac.sim.outlier_rules_tb import job_env, phase
from olmac.sim.pysim import StreamSink, StreamSource
from olmac.sim.runner import run_cocotb

pytestmark = pytest.mark.filterwarnings("error")

#: Three lanes and columns: an index field of two bits can name a position past the array.
#: Four weight slots for one weight-outlier lane: a beat takes up to four sub-beats, so
#: duplicates can sit in different sub-beats.
ODD = dict(lanes=3, cols=3, act_bits=2, weight_bits=2, max_k=12, act_outlier_lanes=1,
           weight_outlier_lanes=1, act_outlier_bits=4, weight_outlier_bits=4,
           act_outlier_slots=3, weight_outlier_slots=4)
#: Powers of two (every index in range), as many outlier lanes as slots: one sub-beat.
EVEN = dict(lanes=4, cols=2, act_bits=2, weight_bits=2, max_k=16, act_outlier_lanes=2,
            weight_outlier_lanes=2, act_outlier_bits=4, weight_outlier_bits=4,
            act_outlier_slots=2, weight_outlier_slots=2)


def _breaks_rules(config, beat):
    """§6 read directly: a valid outlier outside the array, or two at one position."""
    act, weight = beat
    act_positions = [(lane,) for lane, _ in act]
    weight_positions = [(lane, col) for lane, col, _ in weight]
    outside = (any(lane >= config.lanes for (lane,) in act_positions) or
               any(lane >= config.lanes or col >= config.cols
                   for lane, col in weight_positions))
    return (outside or len(set(act_positions)) < len(act_positions) or
            len(set(weight_positions)) < len(weight_positions))


def _payloads(array, beats, rng, *, invalid_junk=False):
    """Packed act and weight payloads of ``beats`` (each ``(act outliers, weight
    outliers)``: lists of ``(lane, value)`` and ``(lane, col, value)``), dense parts random
    with the outliers' dense slots zero, ``last`` on every third beat and the final one.
    With ``invalid_junk``, the unused slots carry positions that would break the rules if
    they were valid."""
    config = array.config
    act_layout, weight_layout = config.act_layout, config.weight_layout
    acts, weights = [], []
    for number, (act, weight) in enumerate(beats):
        dense = [rng.randrange(-2, 2) for _ in range(config.lanes)]
        tile = [[rng.randrange(-2, 2) for _ in range(config.cols)]
                for _ in range(config.lanes)]
        for lane, _ in act:
            if lane < config.lanes:
                dense[lane] = 0
        for lane, col, _ in weight:
            if lane < config.lanes and col < config.cols:
                tile[lane][col] = 0
        junk_lane = (1 << (config.lanes - 1).bit_length()) - 1 if invalid_junk else 0
        act_slots = [{"valid": 1, "lane": lane, "value": value} for lane, value in act]
        act_slots += [{"valid": 0, "lane": junk_lane, "value": 5}] * (
            config.act_outlier_slots - len(act))
        weight_slots = [{"valid": 1, "lane": lane, "col": col, "value": value}
                        for lane, col, value in weight]
        weight_slots += [{"valid": 0, "lane": junk_lane, "col": 0, "value": -5}] * (
            config.weight_outlier_slots - len(weight))
        last = number % 3 == 2 or number == len(beats) - 1
        acts.append(act_layout.const({"data": dense, "last": last, "outliers": act_slots}))
        weights.append(weight_layout.const({"tile": tile, "outliers": weight_slots}))
    return ([Value.cast(payload.as_value()).value for payload in acts],
            [Value.cast(payload.as_value()).value for payload in weights])


def _reductions(beats):
    return sum(1 for number in range(len(beats)) if number % 3 == 2 or number == len(beats) - 1)


def _run(params, beats, *, seed=0, invalid_junk=False):
    """Stream ``beats`` through a ``MacArray(**params)`` under random stalls; returns the
    number of beats taken when ``fault`` was first seen high (None if never) and ``fault``
    at the end."""
    array = MacArray(**params)
    rng = random.Random(seed)
    acts, weights = _payloads(array, beats, rng, invalid_junk=invalid_junk)
    sink = StreamSink(array.acc, _reductions(beats), pause_probability=0.3, seed=seed + 1)
    seen = {"taken": 0, "first": None, "end": None}

    async def monitor(ctx):
        async for _, _, taken, fault in ctx.tick().sample(
                array.act.valid & array.act.ready, array.fault):
            if fault and seen["first"] is None:
                seen["first"] = seen["taken"]
            seen["taken"] += taken
            seen["end"] = fault

    simulator = Simulator(array)
    simulator.add_clock(1e-6)
    simulator.add_testbench(StreamSource(array.act, acts, pause_probability=0.2,
                                         seed=seed).run, background=True)
    simulator.add_testbench(StreamSource(array.weights, weights, pause_probability=0.2,
                                         seed=seed + 2).run, background=True)
    simulator.add_testbench(monitor, background=True)

    async def drain(ctx):
        await sink.run(ctx)
        await ctx.tick().repeat(4)      # the flag lags its beat by two cycles

    simulator.add_testbench(drain)
    simulator.run()
    return seen["first"], seen["end"]


def _random_valid_beat(config, rng):
    """Distinct in-range positions, as many as the slots hold (or fewer)."""
    lanes = rng.sample(range(config.lanes), rng.randint(0, min(config.lanes,
                                                               config.act_outlier_slots)))
    cells = [(lane, col) for lane in range(config.lanes) for col in range(config.cols)]
    chosen = rng.sample(cells, rng.randint(0, min(len(cells), config.weight_outlier_slots)))
    return ([(lane, rng.choice((-8, 7))) for lane in lanes],
            [(lane, col, rng.choice((-8, 7))) for lane, col in chosen])


def _corner_beats(config):
    """Valid beats at the rules' edges: the last lane and column, every slot used, an
    activation and a weight outlier at one lane, weight outliers sharing a lane or a
    column, no outliers at all."""
    last_lane, last_col = config.lanes - 1, config.cols - 1
    full_act = [(lane, 7) for lane in range(config.lanes)][:config.act_outlier_slots]
    full_weight = [(lane, col, -8) for lane in range(config.lanes)
                   for col in range(config.cols)][:config.weight_outlier_slots]
    return [
        ([(last_lane, 7)], [(last_lane, last_col, -8)]),
        (full_act, full_weight),
        ([(0, -8)], [(0, 0, 7), (0, last_col, 7)]),
        ([], [(0, last_col, 7), (last_lane, last_col, -8)]),
        ([], []),
        (full_act[::-1], full_weight[::-1]),
    ]


@pytest.mark.parametrize("params", [ODD, EVEN], ids=["odd", "even"])
def test_a_valid_producer_never_raises_the_flag(params):
    """Random valid beats and corner beats (with the unused slots' fields at positions that
    would break the rules if those slots were valid) under stalls: ``fault`` stays low."""
    config = MacArray.Config(**params)
    rng = random.Random(5)
    beats = _corner_beats(config) + [_random_valid_beat(config, rng) for _ in range(40)]
    assert not any(_breaks_rules(config, beat) for beat in beats)
    assert _run(params, beats, invalid_junk=True) == (None, 0)


VIOLATIONS = [
    (ODD, ([(3, 5)], []), "activation lane past the array"),
    (ODD, ([], [(3, 0, 5)]), "weight lane past the array"),
    (ODD, ([], [(1, 3, 5)]), "weight column past the array"),
    (ODD, ([(1, 5), (0, 2), (1, -3)], []), "two activation outliers at a lane, slots 0 and 2"),
    (ODD, ([], [(0, 0, 1), (2, 1, 1), (1, 1, 1), (2, 1, -1)]),
     "two weight outliers at a position, in sub-beats 1 and 3"),
    (EVEN, ([(3, 5), (3, 6)], []), "two activation outliers at a lane"),
    (EVEN, ([], [(2, 1, 5), (2, 1, 6)]), "two weight outliers at a position"),
]


@pytest.mark.parametrize("params,bad,rule", VIOLATIONS, ids=[v[2] for v in VIOLATIONS])
def test_a_broken_rule_raises_the_flag_for_good(params, bad, rule):
    """Valid beats, one that breaks ``rule``, valid beats: ``fault`` is low until that beat
    is taken, then high to the end."""
    config = MacArray.Config(**params)
    assert _breaks_rules(config, bad)
    rng = random.Random(7)
    before = [_random_valid_beat(config, rng) for _ in range(6)]
    after = [_random_valid_beat(config, rng) for _ in range(5)]
    first, end = _run(params, before + [bad] + after, seed=3)
    assert first is not None and first > len(before), (first, rule)
    assert end == 1


def test_without_outlier_lanes_the_flag_is_constant_low():
    """Dense beats cannot break a rule: ``fault`` is 0."""
    array = MacArray(lanes=2, cols=2, act_bits=2, weight_bits=2, max_k=4)
    simulator = Simulator(array)
    simulator.add_clock(1e-6)

    async def bench(ctx):
        for _ in range(3):
            assert ctx.get(array.fault) == 0
            await ctx.tick()

    simulator.add_testbench(bench)
    simulator.run()


@pytest.mark.parametrize("params,message", [
    (dict(lanes=0, cols=1), r"^Lane count must be an integer in 1\.\.64, not 0$"),
    (dict(lanes=1, cols=65), r"^Column count must be an integer in 1\.\.64, not 65$"),
    (dict(lanes=1, cols=1, act_outlier_slots=-1),
     r"^Activation outlier slot count must be an integer in 0\.\.1024, not -1$"),
    (dict(lanes=1, cols=1, weight_outlier_slots=1025),
     r"^Weight outlier slot count must be an integer in 0\.\.1024, not 1025$"),
])
def test_rules_configuration_is_validated(params, message):
    with pytest.raises(TypeError, match=message):
        OutlierRules.Config(**params)


@pytest.mark.slow
def test_the_flag_on_verilator():
    """The generated Verilog on Verilator (cocotb), with random stalls: after a reset, random
    and corner valid beats never raise ``fault``; after another, a beat with two weight
    outliers at one position in different sub-beats raises it, and it stays high."""
    array = MacArray(**ODD)
    rng = random.Random(11)
    valid = _corner_beats(array.config) + [_random_valid_beat(array.config, rng)
                                           for _ in range(60)]
    bad = ([], [(0, 0, 1), (2, 1, 1), (1, 1, 1), (2, 1, -1)])
    broken = valid[:7] + [bad] + valid[7:12]
    phases = [phase(*_payloads(array, beats, rng, invalid_junk=True),
                    reductions=_reductions(beats), violation=violation)
              for beats, violation in ((valid, None), (broken, 7))]
    build = Path(__file__).resolve().parent.parent / "build" / "test-outlier-rules"
    tests, failures = run_cocotb(array, "olmac_outlier_rules", build,
                                 test_module="olmac.sim.outlier_rules_tb",
                                 testcase="run_beats",
                                 env=job_env(phases, pause_probability=0.3, seed=4))
    assert (tests, failures) == (1, 0), f"see {build / 'test.log'}"
