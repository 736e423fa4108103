"""Fast tier: the hardware blocks on Amaranth's simulator against the golden model."""

import random

import numpy as np
import pytest
import torch
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from olmac import golden
from olmac.hw import GemmEngine, MacArray, Requantizer
from olmac.hw.multipliers import as_signed_operand, odd_digit_bounds, odd_digit_product
from olmac.hw.requant import RequantParams
from olmac.hw.stream import PipeValid, SkidBuffer
from olmac.sim.codec import LayoutCodec
from olmac.sim.job import GemmCase
from olmac.sim.payloads import output_codec, output_values, stream_payloads
from olmac.sim.pysim import StreamSink, StreamSource, run_streams
from olmac.sim.tiling import assemble_output

pytestmark = pytest.mark.filterwarnings("error")


def _random_operands(rng, m, k, n, act_bits, act_signed, weight_bits):
    act_lo, act_hi = golden.int_range(act_bits, act_signed)
    w_lo, w_hi = golden.int_range(weight_bits, True)
    acts = rng.integers(act_lo, act_hi + 1, size=(m, k))
    weights = rng.integers(w_lo, w_hi + 1, size=(k, n))
    return acts, weights


def _run_gemm(engine, case, *, pause=0.0, seed=0):
    """Stream ``case`` through ``engine``; returns (M×N result, cycles, beats)."""
    payloads = stream_payloads(engine.config, case)
    m, n = case.acts.shape[0], case.weights.shape[-1]
    vector_count = m * -(-n // engine.config.cols)
    sources = [StreamSource(getattr(engine, name), payloads[name], pause_probability=pause,
                            seed=seed + index) for index, name in enumerate(payloads)]
    sink = StreamSink(engine.out, vector_count, pause_probability=pause, seed=seed + 3)
    received = run_streams(engine, sources, sink)
    vectors = output_values(engine.config, output_codec(engine.config).unpack(received))
    return assemble_output(vectors, m, n), sink.cycles, len(payloads["act"])


CONFIGS = [
    # lanes, cols, act_bits, act_signed, weight_bits
    (4, 3, 4, True, 4),
    (5, 2, 3, False, 2),
    (1, 1, 8, True, 8),
    (8, 4, 2, True, 3),
]


@pytest.mark.parametrize("lanes,cols,act_bits,act_signed,weight_bits", CONFIGS)
@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_mac_array_matches_golden(lanes, cols, act_bits, act_signed, weight_bits, pause):
    """The array's accumulators equal golden.gemm exactly, with random stalls on all streams."""
    check_dense_gemm(lanes, cols, act_bits, act_signed, weight_bits, pause)


def check_dense_gemm(lanes, cols, act_bits, act_signed, weight_bits, pause, **options):
    """An engine of the given shape (and ``options``) computes golden.gemm exactly on random
    operands under random stalls; shared with test_dsp, which adds ``multipliers``."""
    rng = np.random.default_rng(lanes * 100 + cols)
    m, k, n = 3, 2 * lanes + 1, 2 * cols + 1
    acts, weights = _random_operands(rng, m, k, n, act_bits, act_signed, weight_bits)
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=act_bits, weight_bits=weight_bits,
                        act_signed=act_signed, max_k=k, **options)
    result, _, _ = _run_gemm(engine, GemmCase(acts, weights), pause=pause)
    expected = golden.gemm(torch.tensor(acts), torch.tensor(weights), act_bits=act_bits,
                           act_signed=act_signed, weight_bits=weight_bits)
    np.testing.assert_array_equal(result, expected.numpy())


@pytest.mark.parametrize("act_shape,weight_bits", [
    (signed(4), 4), (unsigned(4), 4), (signed(2), 2), (unsigned(3), 3), (signed(8), 4)])
def test_odd_digit_product_is_exact(act_shape, weight_bits):
    """For every activation and weight, odd_digit_product gives a·w − c with c the weight's
    sign bit, inside odd_digit_bounds (expected values: Python's own products)."""
    act, weight = Signal(act_shape), Signal(signed(weight_bits))
    operand = as_signed_operand(act)
    triple = Signal(signed(len(operand) + 2))
    short, correction = odd_digit_product(operand, triple, weight)
    short_out = Signal(signed(len(operand) + weight_bits + 2))
    correction_out = Signal()
    m = Module()
    m.d.comb += [triple.eq(operand * 3), short_out.eq(short), correction_out.eq(correction)]
    low, high = odd_digit_bounds(act_shape, signed(weight_bits))
    seen = []

    async def testbench(ctx):
        act_low, act_high = golden.int_range(act_shape.width, act_shape.signed)
        w_low, w_high = golden.int_range(weight_bits, True)
        for a in range(act_low, act_high + 1):
            for w in range(w_low, w_high + 1):
                ctx.set(act, a)
                ctx.set(weight, w)
                value, sign = ctx.get(short_out), ctx.get(correction_out)
                assert (value + sign, sign) == (a * w, int(w < 0)), (a, w, value, sign)
                seen.append(value)

    sim = Simulator(m)
    sim.add_testbench(testbench)
    sim.run()
    assert (min(seen), max(seen)) == (low, high)


@pytest.mark.parametrize("lanes,cols,act_bits,act_signed,weight_bits", CONFIGS)
def test_split_accumulators_match_golden(lanes, cols, act_bits, act_signed, weight_bits):
    """With each accumulator in two halves (the high half adding the low half's carry a
    cycle later) the array equals golden.gemm exactly, with random stalls."""
    check_dense_gemm(lanes, cols, act_bits, act_signed, weight_bits, 0.4,
                     accumulator_stages=2)


def test_split_accumulator_timing():
    """A split accumulator adds one stage from a closing beat to the output queue, and
    halves the accumulator (rounded up for the low half)."""
    make = lambda stages: MacArray.Config(lanes=8, cols=8, act_bits=4, weight_bits=4,
                                          max_k=256, accumulator_stages=stages)
    assert make(2).latency == make(1).latency + 1
    # 256 products up to (-8)·(-8) = 64 sum to 16384, which needs 16 signed bits
    assert make(1).acc_width == 16 and make(2).accumulator_low_bits == 8
    assert make(1).accumulator_low_bits is None


@pytest.mark.parametrize("stages", [1, 2])
def test_mac_array_extremes(stages):
    """All-minimum and all-maximum operands hit the accumulator bound without overflow."""
    lanes, cols, k = 4, 2, 12
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=4, max_k=k,
                        accumulator_stages=stages)
    acts = np.array([[-8] * k, [7] * k, [-8] * k])
    weights = np.stack([[-8, 7]] * k)
    result, _, _ = _run_gemm(engine, GemmCase(acts, weights))
    expected = golden.gemm(torch.tensor(acts), torch.tensor(weights), act_bits=4,
                           act_signed=True, weight_bits=4)
    np.testing.assert_array_equal(result, expected.numpy())
    assert result[0, 0] == 64 * k  # the largest sum §2 allows, reached


def _outlier_operands(rng, m, k, n, ratio, *, act_signed=True, clustered=False):
    """4-bit operands of which a ``ratio`` fraction are replaced by 16-bit outliers."""
    acts, weights = _random_operands(rng, m, k, n, 4, act_signed, 4)
    for tensor, signed in ((acts, act_signed), (weights, True)):
        count = int(round(ratio * tensor.size))
        flat = np.arange(count) if clustered else rng.choice(tensor.size, count, replace=False)
        low = -(1 << 15) if signed else 0
        tensor.flat[flat] = rng.integers(low, 1 << 15, size=count)
    return acts, weights


OUTLIER_CONFIGS = [
    # lanes, cols, act lanes, weight lanes, act slots, weight slots, ratio, clustered
    (4, 3, 1, 1, None, None, 0.1, False),
    (4, 2, 2, 1, None, 8, 1.0, False),
    (5, 2, 1, 0, 5, None, 0.3, True),
    (4, 3, 0, 2, None, 12, 0.3, True),
    (1, 2, 1, 1, None, 2, 0.5, False),
]


@pytest.mark.parametrize("lanes,cols,act_lanes,weight_lanes,act_slots,weight_slots,ratio,"
                         "clustered", OUTLIER_CONFIGS)
def test_outlier_lanes_match_golden(lanes, cols, act_lanes, weight_lanes, act_slots,
                                    weight_slots, ratio, clustered):
    """With outlier lanes, the array equals the exact GEMM of the recombined tensors (§6),
    under random stalls, including more outliers per beat than lanes."""
    check_outlier_gemm(lanes, cols, act_lanes, weight_lanes, act_slots, weight_slots, ratio,
                       clustered)


def check_outlier_gemm(lanes, cols, act_lanes, weight_lanes, act_slots, weight_slots, ratio,
                       clustered, **options):
    """An engine with the given outlier lanes (and ``options``) computes the exact GEMM of
    the recombined tensors under random stalls; shared with test_dsp."""
    rng = np.random.default_rng(lanes * 7 + act_lanes)
    m, k, n = 3, 3 * lanes + 1, 2 * cols + 1
    acts, weights = _outlier_operands(rng, m, k, n, ratio, clustered=clustered)
    if not act_lanes:
        acts = np.clip(acts, -8, 7)
    if not weight_lanes:
        weights = np.clip(weights, -8, 7)
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=4, max_k=k,
                        act_outlier_lanes=act_lanes, weight_outlier_lanes=weight_lanes,
                        act_outlier_slots=act_slots, weight_outlier_slots=weight_slots,
                        **options)
    result, _, _ = _run_gemm(engine, GemmCase(acts, weights), pause=0.3)
    expected = golden.gemm(torch.tensor(acts), torch.tensor(weights), act_bits=4,
                           act_signed=True, weight_bits=4,
                           act_outlier_bits=16 if act_lanes else None,
                           weight_outlier_bits=16 if weight_lanes else None)
    np.testing.assert_array_equal(result, expected.numpy())


@pytest.mark.parametrize("config", OUTLIER_CONFIGS[:2])
def test_split_accumulators_with_outliers_match_golden(config):
    """Split accumulators take the outlier sums too (their low bits with the column sum's,
    the rest in the high half): the exact GEMM of the recombined tensors."""
    check_outlier_gemm(*config, accumulator_stages=2)


def test_one_outlier_per_beat_costs_no_cycle():
    """With one outlier lane of each kind, a beat holding one outlier of each kind takes
    one cycle; a beat holding two activation outliers takes two."""
    lanes, cols, m = 4, 2, 30
    rng = np.random.default_rng(9)
    acts, weights = _random_operands(rng, m, lanes, cols, 4, True, 4)
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=4, max_k=lanes,
                        act_outlier_lanes=1, weight_outlier_lanes=1)
    fill = engine.config.array.latency + 3
    one_each = acts.copy()
    one_each[:, 1] = 1000
    weights_one = weights.copy()
    weights_one[2, 1] = -1000
    _, cycles, beats = _run_gemm(engine, GemmCase(one_each, weights_one))
    assert cycles <= beats + fill, (cycles, beats)
    two_acts = one_each.copy()
    two_acts[:, 3] = -1000
    _, cycles, beats = _run_gemm(engine, GemmCase(two_acts, weights))
    assert 2 * beats <= cycles <= 2 * beats + fill, (cycles, beats)


@pytest.mark.parametrize("stages", [1, 2])
def test_mac_array_one_beat_per_cycle(stages):
    """With no stalls, single-beat reductions leave at one vector per cycle after the fill."""
    lanes, cols, m = 4, 2, 40
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=4, max_k=lanes,
                        accumulator_stages=stages)
    rng = np.random.default_rng(7)
    acts, weights = _random_operands(rng, m, lanes, cols, 4, True, 4)
    _, cycles, beats = _run_gemm(engine, GemmCase(acts, weights))
    fill = engine.config.array.latency + 3
    assert cycles <= beats + fill, (cycles, beats, fill)


def test_requantizer_matches_golden():
    """The requantizer equals golden.requantize_round_half_up for random per-channel
    parameters, including shifts 0 and 63, negative multipliers and ReLU."""
    rng = np.random.default_rng(3)
    cols, acc_width, rows = 3, 20, 24
    requantizer = Requantizer(cols=cols, acc_width=acc_width, out_bits=6, out_signed=True)
    accs = rng.integers(-(1 << 19), 1 << 19, size=(rows, cols))
    bias = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    multiplier = rng.integers(-(1 << 31), 1 << 31, size=(rows, cols))
    shift = rng.integers(0, 64, size=(rows, cols))
    shift[0] = [0, 63, 31]
    relu = rng.integers(0, 2, size=rows)
    params_codec = LayoutCodec(RequantParams(cols))
    param_leaves = np.concatenate(
        [np.stack([bias, multiplier, shift], axis=2).reshape(rows, -1), relu[:, None]], axis=1)

    acc_codec = LayoutCodec(requantizer.acc.payload.shape())
    received = run_streams(requantizer, [
        StreamSource(requantizer.acc, acc_codec.pack(accs), pause_probability=0.3),
        StreamSource(requantizer.params, params_codec.pack(param_leaves),
                     pause_probability=0.3, seed=5),
    ], StreamSink(requantizer.out, rows, pause_probability=0.3))
    result = LayoutCodec(requantizer.out.payload.shape()).unpack(received)
    for row in range(rows):
        expected = golden.requantize_round_half_up(
            torch.tensor(accs[row:row + 1]), bias[row], multiplier[row], shift[row],
            out_bits=6, out_signed=True, relu=bool(relu[row]))
        np.testing.assert_array_equal(result[row], expected.numpy()[0])


def test_gemm_engine_requantized():
    """Array + requantizer equal golden gemm followed by golden requantization."""
    rng = np.random.default_rng(11)
    lanes, cols, m, k, n = 4, 2, 3, 9, 3
    acts, weights = _random_operands(rng, m, k, n, 4, False, 4)
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=4, act_signed=False,
                        max_k=k, out_bits=8, out_signed=False)
    bias = rng.integers(-500, 500, size=n)
    multiplier = rng.integers(1 << 30, 1 << 31, size=n)
    shift = rng.integers(30, 38, size=n)
    case = GemmCase(acts, weights, bias, multiplier, shift, relu=True)
    result, _, _ = _run_gemm(engine, case, pause=0.3)
    acc = golden.gemm(torch.tensor(acts), torch.tensor(weights), act_bits=4, act_signed=False,
                      weight_bits=4)
    expected = golden.requantize_round_half_up(acc, bias, multiplier, shift, out_bits=8,
                                               out_signed=False, relu=True)
    np.testing.assert_array_equal(result, expected.numpy())


# -- parameter validation ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lanes=0), TypeError, r"^Lane count must be an integer in 1\.\.64, not 0$"),
    (dict(cols=65), TypeError, r"^Column count must be an integer in 1\.\.64, not 65$"),
    (dict(act_bits=9), TypeError, r"^Activation width must be an integer in 2\.\.8, not 9$"),
    (dict(act_bits=1), TypeError, r"^Activation width must be an integer in 2\.\.8, not 1$"),
    (dict(weight_bits=9), TypeError, r"^Weight width must be an integer in 2\.\.8, not 9$"),
    (dict(act_signed=1), TypeError, r"^Activation signedness must be a bool, not 1$"),
    (dict(max_k=0), TypeError,
     r"^Maximum reduction length max_k must be an integer in 1\.\.1099511627776, not 0$"),
    (dict(acc_width=17), ValueError,
     r"^Accumulator width 17 can overflow: 1024 products of signed\(4\) × signed\(4\) range "
     r"over -57344\.\.65536, which needs at least 18 bits$"),
    (dict(act_bits=8, weight_bits=8, max_k=1 << 30), ValueError,
     r"^Maximum reduction length max_k=1073741824 needs a 46-bit accumulator; at most 44 "
     r"bits are supported$"),
    (dict(act_outlier_lanes=17), TypeError,
     r"^Activation outlier lane count must be an integer in 0\.\.16, not 17$"),
    (dict(weight_outlier_lanes=-1), TypeError,
     r"^Weight outlier lane count must be an integer in 0\.\.16, not -1$"),
    (dict(act_outlier_lanes=1, act_outlier_bits=4), ValueError,
     r"^Activation outlier width 4 must exceed the activation width 4$"),
    (dict(weight_outlier_lanes=1, weight_outlier_bits=17), TypeError,
     r"^Weight outlier width must be an integer in 3\.\.16, not 17$"),
    (dict(act_outlier_lanes=1, act_outlier_slots=0), TypeError,
     r"^Activation outlier slot count must be an integer in 1\.\.1024, not 0$"),
    (dict(act_outlier_lanes=1, weight_outlier_lanes=1, acc_width=37), ValueError,
     r"^Accumulator width 37 can overflow: 1024 products of signed\(16\) × signed\(16\) "
     r"range over -1099478073344\.\.1099511627776, which needs at least 42 bits$"),
    (dict(plane_shift_bits=5), TypeError,
     r"^Plane shift width must be an integer in 0\.\.4, not 5$"),
    (dict(accumulator_stages=3), TypeError,
     r"^Accumulator stages must be an integer in 1\.\.2, not 3$"),
    (dict(accumulator_stages=2, plane_shift_bits=2), ValueError,
     r"^Split accumulators cannot take plane shifts; with accumulator_stages=2, "
     r"plane_shift_bits must be 0, not 2$"),
    (dict(plane_shift_bits=4, max_plane_shift=30), ValueError,
     r"^Maximum reduction length max_k=1024 with plane shifts up to 30 needs a 48-bit "
     r"accumulator; at most 44 bits are supported$"),
])
def test_mac_array_refuses_bad_parameters(kwargs, error, message):
    params = dict(lanes=16, cols=4, act_bits=4, weight_bits=4, act_signed=True, max_k=1024)
    params.update(kwargs)
    with pytest.raises(error, match=message):
        MacArray.Config(**params)


def test_mac_array_derives_the_accumulator_width_of_the_spec():
    """hw's own derivation of §2 agrees with golden's for every width, signedness and a
    spread of reduction lengths (the two are independent readings of the spec)."""
    for act_bits in range(2, 9):
        for weight_bits in range(2, 9):
            for act_signed in (True, False):
                for max_k, lanes in ((1, 1), (7, 4), (1024, 16), (1 << 20, 8)):
                    array = MacArray.Config(lanes=lanes, cols=1, act_bits=act_bits,
                                            weight_bits=weight_bits, act_signed=act_signed,
                                            max_k=max_k)
                    assert array.acc_width == golden.accumulator_width(
                        max_k, lanes, act_bits, act_signed, weight_bits)


@pytest.mark.parametrize("kwargs,message", [
    (dict(cols=0), r"^Column count must be an integer in 1\.\.64, not 0$"),
    (dict(acc_width=45), r"^Accumulator width must be an integer in 1\.\.44, not 45$"),
    (dict(out_bits=17), r"^Output width must be an integer in 2\.\.16, not 17$"),
    (dict(out_signed=None), r"^Output signedness must be a bool, not None$"),
])
def test_requantizer_refuses_bad_parameters(kwargs, message):
    params = dict(cols=4, acc_width=20, out_bits=8, out_signed=True)
    params.update(kwargs)
    with pytest.raises(TypeError, match=message):
        Requantizer.Config(**params)


def test_requantizer_extracts_output_outliers():
    """§7: values beyond the layer threshold leave as (col, 16-bit value) outliers with a
    zero dense slot; the leaves equal golden requantization at 16 bits, then the split."""
    rng = np.random.default_rng(13)
    cols, acc_width, rows, out_bits = 4, 24, 20, 4
    requantizer = Requantizer(cols=cols, acc_width=acc_width, out_bits=out_bits,
                              out_signed=True, outlier_bits=16)
    accs = rng.integers(-(1 << 23), 1 << 23, size=(rows, cols))
    bias = rng.integers(-1000, 1000, size=(rows, cols))
    multiplier = rng.integers(1 << 30, 1 << 31, size=(rows, cols))
    shift = rng.integers(36, 50, size=(rows, cols))
    relu = rng.integers(0, 2, size=rows)
    threshold = rng.integers(0, 8, size=rows)
    param_leaves = np.concatenate([np.stack([bias, multiplier, shift], axis=2).reshape(rows, -1),
                                   relu[:, None], threshold[:, None]], axis=1)
    received = run_streams(requantizer, [
        StreamSource(requantizer.acc, LayoutCodec(requantizer.acc.payload.shape()).pack(accs),
                     pause_probability=0.3),
        StreamSource(requantizer.params, LayoutCodec(
            requantizer.params.payload.shape()).pack(param_leaves), pause_probability=0.3,
            seed=5),
    ], StreamSink(requantizer.out, rows, pause_probability=0.3))
    leaves = LayoutCodec(requantizer.out.payload.shape()).unpack(received)
    extracted = 0
    for row in range(rows):
        y = golden.requantize_round_half_up(torch.tensor(accs[row:row + 1]), bias[row],
                                            multiplier[row], shift[row], out_bits=16,
                                            out_signed=True, relu=bool(relu[row]))
        dense, outliers = golden.split_output_outliers(y, int(threshold[row]),
                                                       out_bits=out_bits, out_signed=True)
        slots = leaves[row, cols:].reshape(cols, 3)
        np.testing.assert_array_equal(leaves[row, :cols], dense.numpy()[0])
        np.testing.assert_array_equal(slots[:, 0], (outliers.numpy()[0] != 0))
        np.testing.assert_array_equal(slots[:, 1], np.arange(cols))
        np.testing.assert_array_equal(slots[:, 2], outliers.numpy()[0])
        extracted += int(slots[:, 0].sum())
    assert 0 < extracted < rows * cols  # both kinds of value occurred


@pytest.mark.parametrize("planes,lanes,cols", [(2, 4, 3), (3, 5, 2)])
def test_weight_planes_combine_in_one_accumulator(planes, lanes, cols):
    """§8: planes streamed as one reduction with per-column shifts equal golden's Horner
    combination of the per-plane GEMMs, under random stalls."""
    from olmac.golden.mmse import combine_plane_accumulators
    rng = np.random.default_rng(planes)
    m, k, n = 3, 2 * lanes + 1, 2 * cols + 1
    acts = rng.integers(-8, 8, (m, k))
    weights = rng.integers(-2, 2, (planes, k, n))
    shifts = rng.integers(0, 8, (planes - 1, n))
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=2,
                        max_k=planes * k, plane_shift_bits=3, max_plane_shift=14)
    case = GemmCase(acts, weights, plane_shifts=shifts)
    result, _, _ = _run_gemm(engine, case, pause=0.3)
    accs = torch.stack([golden.gemm(torch.tensor(acts), torch.tensor(plane), act_bits=4,
                                    act_signed=True, weight_bits=2) for plane in weights])
    expected = combine_plane_accumulators(accs, torch.tensor(shifts))
    np.testing.assert_array_equal(result, expected.numpy())


@pytest.mark.parametrize("idx_bits,zero,granularity", [(0, False, "layer"), (1, True, "row"),
                                                       (2, True, "row")])
def test_codebook_engine_matches_decode_then_multiply(idx_bits, zero, granularity):
    """SYQ codes through the engine's decoder into the array equal golden.gemm of golden's
    decode (docs/codebooks.md), requantized, under random stalls."""
    from olmac.golden.syq import decode_to_int
    rng = np.random.default_rng(idx_bits)
    lanes, cols, m, k, n, entry_bits = 4, 3, 3, 11, 7, 3
    acts = rng.integers(-8, 8, (m, k))
    codes = rng.integers(0, 2 << idx_bits, (n, k))
    tables = rng.integers(0, 1 << entry_bits, ((n if granularity == "row" else 1), 1,
                                                1 << idx_bits))
    if zero:
        tables[..., 0] = 0
    weights = decode_to_int(torch.tensor(codes), torch.tensor(tables), idx_bits=idx_bits,
                            entry_bits=entry_bits).numpy().T
    engine = GemmEngine(lanes=lanes, cols=cols, act_bits=4, weight_bits=entry_bits + 1,
                        max_k=k, out_bits=8,
                        codebook=dict(idx_bits=idx_bits, zero=zero, entry_bits=entry_bits,
                                      granularity=granularity, subgroups=n))
    case = GemmCase(acts, weights, rng.integers(-50, 50, n), np.full(n, 1 << 30),
                    np.full(n, 32), codes=codes, tables=tables)
    result, _, _ = _run_gemm(engine, case, pause=0.3)
    acc = golden.gemm(torch.tensor(acts), torch.tensor(weights), act_bits=4, act_signed=True,
                      weight_bits=entry_bits + 1)
    expected = golden.requantize_round_half_up(acc, case.bias, case.multiplier, case.shift,
                                               out_bits=8, out_signed=True)
    np.testing.assert_array_equal(result, expected.numpy())


@pytest.mark.parametrize("buffer", [SkidBuffer, PipeValid])
@pytest.mark.parametrize("pause", [0.0, 0.5])
def test_stream_buffers_pass_every_beat_in_order(pause, buffer):
    """hw.stream.SkidBuffer and PipeValid hand on every beat once, in order and whole
    (across the skid buffer's payload slices), under random stalls on both sides, and at
    one beat per cycle when nothing stalls."""
    dut = buffer(unsigned(150))  # three slices of 64 bits, each with its own state copy
    rng = random.Random(2)
    beats = [rng.getrandbits(150) for _ in range(255)]
    sink = StreamSink(dut.o, len(beats), pause_probability=pause, seed=4)
    run_streams(dut, [StreamSource(dut.i, beats, pause_probability=pause, seed=3)], sink)
    assert [int(value) for value in sink.received] == beats
    if not pause:
        assert sink.cycles <= len(beats) + 2
