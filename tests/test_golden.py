"""The golden model (``golden/``) against the written semantics, docs/semantics.md.

Every expected value here is derived from the page itself, either by a direct Python-int
reading of a section (Python ints are unbounded, so the reading is exact) or by hand from
the formula; none is copied from the implementation. Each property test's docstring says
which property of the page it checks.
"""

import functools
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from olmac.golden import (accumulator_width, check_in_format, dequantize, fake_quantize, gemm,
                    int_range, requant_params, requantize_round_half_up,
                    to_int_round_half_even)

pytestmark = pytest.mark.filterwarnings("error")


# -- Direct readings of docs/semantics.md, in Python ints -----------------------------------

def spec_range(bits, signed):
    """§1: ``s<b>`` is ``-2^(b-1) .. 2^(b-1) - 1``, ``u<b>`` is ``0 .. 2^b - 1``."""
    if signed:
        return -2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def spec_name(bits, signed):
    return f"{'s' if signed else 'u'}{bits}"


def spec_requantize(acc, bias, multiplier, shift, out_bits, out_signed, relu):
    """§3 for one element: exact in Python ints."""
    x = acc + bias
    p = x * multiplier
    q = (p + (1 << shift >> 1)) >> shift  # 1 << s >> 1 is 2^(s-1) for s > 0, 0 for s = 0
    lo, hi = spec_range(out_bits, out_signed)
    if relu:
        lo = max(lo, 0)
    return min(max(q, lo), hi)


def spec_gemm(acts, weights):
    """§2: ``acc[m, n] = Σ_k A[m, k] · W[k, n]``, a plain triple loop."""
    rows, depth, cols = len(acts), len(weights), len(weights[0])
    out = [[0] * cols for _ in range(rows)]
    for m in range(rows):
        for n in range(cols):
            for k in range(depth):
                out[m][n] += acts[m][k] * weights[k][n]
    return out


@functools.cache
def spec_product_bounds(act_bits, act_signed, weight_bits):
    """Least and greatest product of §2, by enumerating *every* pair of values."""
    a_lo, a_hi = spec_range(act_bits, act_signed)
    w_lo, w_hi = spec_range(weight_bits, True)
    products = [a * w for a in range(a_lo, a_hi + 1) for w in range(w_lo, w_hi + 1)]
    return min(products), max(products)


def spec_accumulator_width(k, lanes, act_bits, act_signed, weight_bits):
    """§2: least ``w`` with ``-2^(w-1) <= K'·p_lo`` and ``K'·p_hi <= 2^(w-1) - 1``."""
    padded = -(-k // lanes) * lanes
    p_lo, p_hi = spec_product_bounds(act_bits, act_signed, weight_bits)
    w = 1
    while not (-2 ** (w - 1) <= padded * p_lo and padded * p_hi <= 2 ** (w - 1) - 1):
        w += 1
    return w


# -- Strategies -----------------------------------------------------------------------------

INT32 = st.integers(-2 ** 31, 2 ** 31 - 1)
ACC = st.integers(-2 ** 43, 2 ** 43)
SHIFT = st.integers(0, 63)
OUT_FORMATS = [(bits, signed) for bits in range(2, 17) for signed in (True, False)]
ACT_FORMATS = [(bits, signed) for bits in range(2, 9) for signed in (True, False)]


@st.composite
def requant_case(draw, near_range=False):
    """A ``rows × cols`` accumulator block with per-column bias, multiplier and shift.

    With ``near_range`` the shift of each column is picked so that the first row's result
    lands within a few bits of the output range, so rounding (not only saturation) is
    exercised.
    """
    out_bits = draw(st.integers(2, 16))
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    acc = [[draw(ACC) for _ in range(cols)] for _ in range(rows)]
    bias = [draw(INT32) for _ in range(cols)]
    multiplier = [draw(INT32) for _ in range(cols)]
    if near_range:
        shift = []
        for n in range(cols):
            magnitude = abs((acc[0][n] + bias[n]) * multiplier[n]).bit_length()
            wanted = magnitude - (out_bits - 1) + draw(st.integers(-2, 2))
            shift.append(min(max(wanted, 0), 63))
    else:
        shift = [draw(SHIFT) for _ in range(cols)]
    return acc, bias, multiplier, shift, out_bits


def matrix(rows, cols, lo, hi):
    return st.lists(st.lists(st.integers(lo, hi), min_size=cols, max_size=cols),
                    min_size=rows, max_size=rows)


@st.composite
def gemm_operands(draw, act_bits, act_signed, weight_bits, act_dtype_range=None,
                  weight_dtype_range=None):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    a_lo, a_hi = spec_range(act_bits, act_signed)
    w_lo, w_hi = spec_range(weight_bits, True)
    if act_dtype_range is not None:
        a_lo, a_hi = max(a_lo, act_dtype_range[0]), min(a_hi, act_dtype_range[1])
    if weight_dtype_range is not None:
        w_lo, w_hi = max(w_lo, weight_dtype_range[0]), min(w_hi, weight_dtype_range[1])
    return draw(matrix(m, k, a_lo, a_hi)), draw(matrix(k, n, w_lo, w_hi))


# -- §1 formats -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("signed", [True, False])
def test_int_range_is_the_table_of_section_1(bits, signed):
    """``int_range`` is the §1 table."""
    assert int_range(bits, signed) == spec_range(bits, signed)


@pytest.mark.parametrize("dtype, values, bits, signed", [
    # A uint8 tensor holding 0..7 is inside s4; an int8 tensor holding 100 is inside u8.
    (torch.uint8, [[1, 2]], 4, True),
    (torch.int8, [[100, 0]], 8, False),
])
def test_check_in_format_accepts_in_range_values_of_narrow_dtypes(dtype, values, bits,
                                                                   signed):
    """§1: a value inside its declared format is accepted whatever integer dtype holds it."""
    tensor = torch.tensor(values, dtype=dtype)
    assert check_in_format("acts", tensor, bits, signed) is tensor


# -- §3 requantization ----------------------------------------------------------------------

def run_requant(acc, bias, multiplier, shift, out_bits, out_signed, relu):
    got = requantize_round_half_up(torch.tensor(acc, dtype=torch.int64), bias, multiplier,
                                   shift, out_bits=out_bits, out_signed=out_signed,
                                   relu=relu)
    assert got.dtype == torch.int64
    return got.tolist()


def expected_requant(acc, bias, multiplier, shift, out_bits, out_signed, relu):
    return [[spec_requantize(a, bias[n], multiplier[n], shift[n], out_bits, out_signed, relu)
             for n, a in enumerate(row)] for row in acc]


@settings(max_examples=300, deadline=None)
@given(requant_case(), st.booleans(), st.booleans())
def test_requantize_matches_section_3(case, out_signed, relu):
    """§3: per-channel requantization equals the exact Python-int reading of the formula,
    for any 44-bit accumulator, any s32 bias and multiplier, any shift 0..63."""
    acc, bias, multiplier, shift, out_bits = case
    assert (run_requant(acc, bias, multiplier, shift, out_bits, out_signed, relu)
            == expected_requant(acc, bias, multiplier, shift, out_bits, out_signed, relu))


@pytest.mark.parametrize("out_bits, out_signed", OUT_FORMATS)
@settings(max_examples=15, deadline=None)
@given(case=requant_case(near_range=True), relu=st.booleans())
def test_requantize_rounds_as_section_3_for_every_output_format(out_bits, out_signed, case,
                                                                 relu):
    """§3 for every output format ``s2..s16``/``u2..u16``, with shifts chosen so results
    fall near the output range and the round-half-up step, not only saturation, decides."""
    acc, bias, multiplier, shift, _ = case
    assert (run_requant(acc, bias, multiplier, shift, out_bits, out_signed, relu)
            == expected_requant(acc, bias, multiplier, shift, out_bits, out_signed, relu))


@settings(max_examples=200, deadline=None)
@given(quotient=st.integers(-2 ** 9, 2 ** 9), shift=st.integers(1, 63),
       bias=INT32, data=st.data())
def test_requantize_ties_go_up(quotient, shift, bias, data):
    """§3: a product exactly halfway between two multiples of ``2^s`` rounds toward +∞:
    ``p = (2q + 1)·2^(s-1)`` gives ``q + 1``."""
    # p = x·M with M = 2^j and x = (2q + 1)·2^(s-1-j); s-1-j <= 32 keeps |x| < 2^43 - 2^31
    # so that acc = x - β is a 44-bit accumulator.
    j = data.draw(st.integers(max(0, shift - 1 - 32), min(shift - 1, 30)))
    x = (2 * quotient + 1) << (shift - 1 - j)
    acc = x - bias
    assert abs(acc) <= 2 ** 43
    got = run_requant([[acc]], bias, 1 << j, shift, 16, True, False)
    assert got == [[quotient + 1]]


@settings(max_examples=50, deadline=None)
@given(acc=st.lists(st.lists(ACC, min_size=3, max_size=3), min_size=1, max_size=3),
       bias=INT32, multiplier=INT32, shift=SHIFT, fmt=st.sampled_from(OUT_FORMATS),
       relu=st.booleans())
def test_requantize_scalar_parameters_broadcast(acc, bias, multiplier, shift, fmt, relu):
    """§3: scalar bias, multiplier and shift act as the same value for every channel."""
    out_bits, out_signed = fmt
    got = requantize_round_half_up(torch.tensor(acc), bias, multiplier, shift,
                                   out_bits=out_bits, out_signed=out_signed, relu=relu)
    assert got.tolist() == expected_requant(acc, [bias] * 3, [multiplier] * 3, [shift] * 3,
                                            out_bits, out_signed, relu)


# Each expected value is worked out by hand from §3.
@pytest.mark.parametrize("acc, bias, multiplier, shift, out_bits, out_signed, relu, y", [
    # s = 0: no rounding term, p itself.
    (7, 1, 3, 0, 16, True, False, 24),
    (-7, 0, 3, 0, 16, True, False, -21),
    # Ties, s = 1: 5/2 = 2.5 -> 3, -5/2 = -2.5 -> -2, -1/2 -> 0, 3/2 -> 2, -3/2 -> -1.
    (5, 0, 1, 1, 8, True, False, 3),
    (-5, 0, 1, 1, 8, True, False, -2),
    (-1, 0, 1, 1, 8, True, False, 0),
    (3, 0, 1, 1, 8, True, False, 2),
    (-3, 0, 1, 1, 8, True, False, -1),
    # Not ties: 7/4 = 1.75 -> 2, -7/4 = -1.75 -> -2, -5/4 = -1.25 -> -1.
    (7, 0, 1, 2, 8, True, False, 2),
    (-7, 0, 1, 2, 8, True, False, -2),
    (-5, 0, 1, 2, 8, True, False, -1),
    # s = 63: p = 2^43·(2^31 - 1) = 2^74 - 2^43, p / 2^63 = 2^11 - 2^-20 -> 2048.
    (2 ** 43, 0, 2 ** 31 - 1, 63, 16, True, False, 2048),
    # s = 63: p = -2^74 + 2^43, p / 2^63 = -2^11 + 2^-20 -> -2048.
    (-(2 ** 43), 0, 2 ** 31 - 1, 63, 16, True, False, -2048),
    # M = -2^31 and β = -2^31: x = -2^31, p = 2^62; p / 2^62 = 1, p / 2^63 = 1/2 -> 1.
    (0, -2 ** 31, -2 ** 31, 62, 16, True, False, 1),
    (0, -2 ** 31, -2 ** 31, 63, 16, True, False, 1),
    # x = -2^43 - 2^31, M = -2^31: p = 2^74 + 2^62, p / 2^63 = 2^11 + 1/2 -> 2049.
    (-(2 ** 43), -2 ** 31, -2 ** 31, 63, 16, True, False, 2049),
    # ... and with M = 2^31 - 1 the sign flips: p / 2^63 slightly above -2^11 - 1/2 -> -2048.
    (-(2 ** 43), -2 ** 31, 2 ** 31 - 1, 63, 16, True, False, -2048),
    # Saturation at both ends, signed and unsigned, and ReLU.
    (1000, 0, 1, 0, 8, True, False, 127),
    (-1000, 0, 1, 0, 8, True, False, -128),
    (1000, 0, 1, 0, 8, False, False, 255),
    (-1000, 0, 1, 0, 8, False, False, 0),
    (2, 0, 1, 0, 2, True, False, 1),
    (-3, 0, 1, 0, 2, True, False, -2),
    (4, 0, 1, 0, 2, False, False, 3),
    (-5, 0, 1, 0, 8, True, True, 0),
    (5, 0, 1, 0, 8, True, True, 5),
    (2 ** 43, 2 ** 31 - 1, 2 ** 31 - 1, 0, 16, True, False, 2 ** 15 - 1),
    (2 ** 43, 2 ** 31 - 1, -2 ** 31, 0, 16, True, False, -2 ** 15),
    (2 ** 43, 2 ** 31 - 1, 2 ** 31 - 1, 0, 16, False, False, 2 ** 16 - 1),
    (-(2 ** 43), -2 ** 31, 2 ** 31 - 1, 0, 16, False, True, 0),
    # Sums cross the 16-bit boundary of the implementation's multiplier split.
    (1, 0, 0xFFFF, 16, 16, True, False, 1),  # 65535 / 65536 -> 1
    (1, 0, 0x7FFF, 16, 16, True, False, 0),  # 32767 / 65536 -> 0
    (1, 0, 0x8000, 16, 16, True, False, 1),  # exactly 1/2 -> 1
    (-1, 0, 0x8000, 16, 16, True, False, 0),  # exactly -1/2 -> 0
    (-1, 0, 0x8001, 16, 16, True, False, -1),  # just below -1/2 -> -1
])
def test_requantize_edge_cases(acc, bias, multiplier, shift, out_bits, out_signed, relu, y):
    """§3 at hand-worked edges: s = 0 and 63, M and β at -2^31, ties, saturation, ReLU."""
    assert spec_requantize(acc, bias, multiplier, shift, out_bits, out_signed, relu) == y
    assert run_requant([[acc]], bias, multiplier, shift, out_bits, out_signed, relu) == [[y]]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(shift=64), ValueError, r"^shift\[0\] = 64 is outside 0\.\.63$"),
    (dict(shift=-1), ValueError, r"^shift\[0\] = -1 is outside 0\.\.63$"),
    (dict(multiplier=2 ** 31), ValueError,
     r"^multiplier\[0\] = 2147483648 is outside -2147483648\.\.2147483647$"),
    (dict(bias=[0, -2 ** 31 - 1]), ValueError,
     r"^bias\[1\] = -2147483649 is outside -2147483648\.\.2147483647$"),
    (dict(bias=[0, 0, 0]), ValueError,
     r"^bias must be a scalar or have one entry per output channel \(2\), not shape \(3,\)$"),
    (dict(out_bits=17), TypeError, r"^Output width must be an integer in 2\.\.16, not 17$"),
    (dict(out_bits=1), TypeError, r"^Output width must be an integer in 2\.\.16, not 1$"),
])
def test_requantize_refuses_out_of_format_parameters(kwargs, error, message):
    """§1/§3: bias and multiplier are s32, shift is 0..63, outputs are 2..16 bits; a value
    outside its format is an error."""
    arguments = dict(bias=0, multiplier=1, shift=0, out_bits=8, out_signed=True)
    arguments.update(kwargs)
    acc = torch.zeros(1, 2, dtype=torch.int64)
    with pytest.raises(error, match=message):
        requantize_round_half_up(acc, arguments.pop("bias"), arguments.pop("multiplier"),
                                 arguments.pop("shift"), **arguments)


# -- §2 GEMM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_bits", range(2, 9))
@pytest.mark.parametrize("act_bits, act_signed", ACT_FORMATS)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_gemm_is_the_sum_of_products(act_bits, act_signed, weight_bits, data):
    """§2: ``gemm`` is ``Σ_k A[m, k]·W[k, n]`` exactly, for every activation and weight
    format."""
    acts, weights = data.draw(gemm_operands(act_bits, act_signed, weight_bits))
    got = gemm(torch.tensor(acts), torch.tensor(weights), act_bits=act_bits,
               act_signed=act_signed, weight_bits=weight_bits)
    assert got.dtype == torch.int64
    assert got.tolist() == spec_gemm(acts, weights)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32,
                                   torch.int64])
@settings(max_examples=20, deadline=None)
@given(data=st.data(), act_format=st.sampled_from(ACT_FORMATS),
       weight_bits=st.integers(2, 8))
def test_gemm_does_not_depend_on_the_integer_dtype(dtype, data, act_format, weight_bits):
    """§1/§2: in-format values are accepted and multiplied exactly whatever integer dtype
    holds them (the formats are value ranges, not storage types)."""
    act_bits, act_signed = act_format
    info = torch.iinfo(dtype)
    acts, weights = data.draw(gemm_operands(act_bits, act_signed, weight_bits,
                                            (info.min, info.max), (info.min, info.max)))
    got = gemm(torch.tensor(acts, dtype=dtype), torch.tensor(weights, dtype=dtype),
               act_bits=act_bits, act_signed=act_signed, weight_bits=weight_bits)
    assert got.tolist() == spec_gemm(acts, weights)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), act_format=st.sampled_from(ACT_FORMATS),
       weight_bits=st.integers(2, 8), which=st.sampled_from(["acts", "weights"]))
def test_gemm_names_the_out_of_format_element(data, act_format, weight_bits, which):
    """§1: an element outside its format is an error (never wrapped or clipped), and the
    message names the position, the value and the format with its range."""
    act_bits, act_signed = act_format
    acts, weights = data.draw(gemm_operands(act_bits, act_signed, weight_bits))
    target = acts if which == "acts" else weights
    bits, signed = (act_bits, act_signed) if which == "acts" else (weight_bits, True)
    lo, hi = spec_range(bits, signed)
    i = data.draw(st.integers(0, len(target) - 1))
    j = data.draw(st.integers(0, len(target[0]) - 1))
    value = data.draw(st.one_of(st.integers(hi + 1, hi + 300), st.integers(lo - 300, lo - 1)))
    target[i][j] = value
    message = (rf"^{which}\[{i}, {j}\] = {value} is outside {spec_name(bits, signed)} "
               rf"\({lo}\.\.{hi}\)$")
    with pytest.raises(ValueError, match=message):
        gemm(torch.tensor(acts), torch.tensor(weights), act_bits=act_bits,
             act_signed=act_signed, weight_bits=weight_bits)


def test_gemm_error_message_example():
    """§1: the worked form of the out-of-format message, ``acts[1, 2] = 9`` in ``s4``."""
    acts = torch.zeros(2, 3, dtype=torch.int64)
    acts[1, 2] = 9
    with pytest.raises(ValueError, match=r"^acts\[1, 2\] = 9 is outside s4 \(-8\.\.7\)$"):
        gemm(acts, torch.zeros(3, 1, dtype=torch.int64), act_bits=4, act_signed=True,
             weight_bits=4)
    with pytest.raises(ValueError, match=r"^acts\[0, 0\] = -1 is outside u4 \(0\.\.15\)$"):
        gemm(torch.tensor([[-1]]), torch.tensor([[0]]), act_bits=4, act_signed=False,
             weight_bits=4)


def test_gemm_refuses_mismatched_shapes():
    """§2: ``A`` is ``M×K`` and ``W`` is ``K×N``; K must agree and be at least 1."""
    with pytest.raises(ValueError, match=r"^acts is \(2, 3\) and weights is \(4, 5\): "
                                         r"the K dimensions 3 and 4 differ$"):
        gemm(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(4, 5, dtype=torch.int64),
             act_bits=4, act_signed=True, weight_bits=4)
    with pytest.raises(ValueError, match=r"^acts and weights must be 2-D, not \(3,\) and "
                                         r"\(3, 1\)$"):
        gemm(torch.zeros(3, dtype=torch.int64), torch.zeros(3, 1, dtype=torch.int64),
             act_bits=4, act_signed=True, weight_bits=4)
    with pytest.raises(ValueError, match=r"^The reduction length K must be at least 1, "
                                         r"not 0$"):
        gemm(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0, 5, dtype=torch.int64),
             act_bits=4, act_signed=True, weight_bits=4)


@pytest.mark.parametrize("acts_dtype, weights_dtype, message", [
    (torch.float32, torch.int64, r"^acts must be an integer tensor, not torch\.float32$"),
    (torch.int64, torch.float64, r"^weights must be an integer tensor, not torch\.float64$"),
    (torch.bool, torch.int64, r"^acts must be an integer tensor, not torch\.bool$"),
])
def test_gemm_refuses_non_integer_tensors(acts_dtype, weights_dtype, message):
    """§2 works on integers: a float or bool tensor is a type error naming the tensor."""
    with pytest.raises(TypeError, match=message):
        gemm(torch.zeros(2, 3, dtype=acts_dtype), torch.zeros(3, 1, dtype=weights_dtype),
             act_bits=4, act_signed=True, weight_bits=4)


@pytest.mark.parametrize("act_bits, weight_bits, message", [
    (9, 4, r"^Activation width must be an integer in 2\.\.8, not 9$"),
    (1, 4, r"^Activation width must be an integer in 2\.\.8, not 1$"),
    (True, 4, r"^Activation width must be an integer in 2\.\.8, not True$"),
    (4.0, 4, r"^Activation width must be an integer in 2\.\.8, not 4\.0$"),
    (4, 9, r"^Weight width must be an integer in 2\.\.8, not 9$"),
    (4, 1, r"^Weight width must be an integer in 2\.\.8, not 1$"),
])
def test_gemm_refuses_widths_outside_section_1(act_bits, weight_bits, message):
    """§1: activation and weight widths are integers in 2..8; the message names the
    parameter, the range and the value."""
    with pytest.raises(TypeError, match=message):
        gemm(torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64),
             act_bits=act_bits, act_signed=True, weight_bits=weight_bits)


# -- §2 accumulator width --------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(k=st.one_of(st.integers(1, 4096), st.integers(1, 2 ** 30)),
       lanes=st.one_of(st.integers(1, 64), st.integers(1, 2 ** 16)),
       act_format=st.sampled_from(ACT_FORMATS), weight_bits=st.integers(2, 8))
def test_accumulator_width_is_the_least_width_of_section_2(k, lanes, act_format,
                                                          weight_bits):
    """§2: the width is the least ``w`` holding ``[K'·p_lo, K'·p_hi]``, with ``p_lo/p_hi``
    over *all* products of the two ranges and ``K'`` = ``k`` rounded up to ``lanes``;
    beyond 44 bits it is refused with the bound named."""
    act_bits, act_signed = act_format
    width = spec_accumulator_width(k, lanes, act_bits, act_signed, weight_bits)
    if width <= 44:
        assert accumulator_width(k, lanes, act_bits, act_signed, weight_bits) == width
    else:
        with pytest.raises(ValueError, match=rf"^Reduction length k={k} needs a {width}-bit "
                                             rf"accumulator; at most 44 bits are supported$"):
            accumulator_width(k, lanes, act_bits, act_signed, weight_bits)


def test_accumulator_width_worked_example():
    """§2 example: ``s4 × s4``, ``K' = 1024``: ``p_lo = -56``, ``p_hi = 64``, width 18."""
    assert spec_product_bounds(4, True, 4) == (-56, 64)
    assert spec_accumulator_width(1024, 16, 4, True, 4) == 18
    assert accumulator_width(1024, lanes=16, act_bits=4, act_signed=True, weight_bits=4) == 18
    # K = 1000 pads to K' = 1008 with 16 lanes and to 1024 with 1024 lanes.
    assert accumulator_width(1000, lanes=1024, act_bits=4, act_signed=True,
                             weight_bits=4) == 18


def test_accumulator_width_limit():
    """§2: 44 bits suffice for ``s8 × s8`` with ``K`` up to 2^28 (and in fact up to
    2^29 - 1: ``p_hi = (-128)·(-128) = 2^14`` and ``(2^29 - 1)·2^14 <= 2^43 - 1``); at
    ``K = 2^29`` the sum reaches ``2^43`` and needs 45 bits, which is refused."""
    for k in (2 ** 28, 2 ** 29 - 1):
        assert accumulator_width(k, lanes=1, act_bits=8, act_signed=True,
                                 weight_bits=8) == 44
    with pytest.raises(ValueError, match=r"^Reduction length k=536870912 needs a 45-bit "
                                         r"accumulator; at most 44 bits are supported$"):
        accumulator_width(2 ** 29, lanes=1, act_bits=8, act_signed=True, weight_bits=8)
    # Padding counts: 2^29 - 1 rounded up to 2 lanes is 2^29.
    with pytest.raises(ValueError, match=r"^Reduction length k=536870911 needs a 45-bit "):
        accumulator_width(2 ** 29 - 1, lanes=2, act_bits=8, act_signed=True, weight_bits=8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(act_bits=9), r"^Activation width must be an integer in 2\.\.8, not 9$"),
    (dict(weight_bits=1), r"^Weight width must be an integer in 2\.\.8, not 1$"),
    (dict(k=0), r"^Reduction length k must be an integer in 1\.\.\d+, not 0$"),
    (dict(lanes=0), r"^Lane count must be an integer in 1\.\.\d+, not 0$"),
])
def test_accumulator_width_refuses_bad_arguments(kwargs, message):
    """§1/§2: widths are integers in 2..8, ``k`` and ``lanes`` are positive integers."""
    arguments = dict(k=16, lanes=4, act_bits=4, act_signed=True, weight_bits=4)
    arguments.update(kwargs)
    with pytest.raises(TypeError, match=message):
        accumulator_width(**arguments)


# -- §3/§5 requant_params --------------------------------------------------------------------

POSITIVE_SCALE = st.floats(min_value=2.0 ** -33, max_value=2.0 ** 31 - 1, allow_nan=False,
                           allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(scales=st.lists(POSITIVE_SCALE, min_size=1, max_size=8))
def test_requant_params_is_the_nearest_representation(scales):
    """§3: ``σ ≈ M·2^(-s)`` with ``M`` in ``2^30 .. 2^31 - 1`` and ``s`` in 0..63, and it
    is the nearest such value: ``|M·2^(-s) - σ| <= 2^(-s)/2``."""
    multiplier, shift = requant_params(torch.tensor(scales, dtype=torch.float64))
    assert multiplier.dtype == torch.int64 and shift.dtype == torch.int64
    assert multiplier.shape == shift.shape == (len(scales),)
    for scale, m, s in zip(scales, multiplier.tolist(), shift.tolist()):
        assert 2 ** 30 <= m <= 2 ** 31 - 1
        assert 0 <= s <= 63
        assert abs(Fraction(m, 2 ** s) - Fraction(scale)) <= Fraction(1, 2 ** (s + 1))


@pytest.mark.parametrize("scale, m, s", [
    (1.0, 2 ** 30, 30),
    (0.75, 3 * 2 ** 29, 31),
    (2.0 ** -33, 2 ** 30, 63),
    (2.0 ** 30, 2 ** 30, 0),
    (2.0 ** 31 - 1, 2 ** 31 - 1, 0),
    # 1 - 2^-40 rounds up to 2^31 at s = 31, which is written as 2^30 at s = 30.
    (1.0 - 2.0 ** -40, 2 ** 30, 30),
])
def test_requant_params_examples(scale, m, s):
    """§3: hand-worked ``(M, s)`` for exact and carrying scales."""
    multiplier, shift = requant_params(torch.tensor([scale], dtype=torch.float64))
    assert (multiplier.tolist(), shift.tolist()) == ([m], [s])


@pytest.mark.parametrize("scale", [0.0, -0.0, -1.0, -(2.0 ** -40), float("nan"), float("inf"),
                                   float("-inf")])
def test_requant_params_refuses_non_positive_scales(scale):
    """§3: only a finite real scale ``σ > 0`` has a representation ``M·2^(-s)``."""
    with pytest.raises(ValueError, match=r"^real_scale must be positive and finite, not \["):
        requant_params(torch.tensor([1.0, scale], dtype=torch.float64))


@pytest.mark.parametrize("scale", [2.0 ** -40, 2.0 ** 40])
def test_requant_params_refuses_scales_without_a_shift(scale):
    """§1/§3: a scale that needs a shift outside 0..63 is an error,
    not an ``M`` outside ``2^30 .. 2^31 - 1``."""
    with pytest.raises(ValueError, match=r"needs a shift outside 0\.\.63$"):
        requant_params(torch.tensor([scale], dtype=torch.float64))


# -- §5 float view ---------------------------------------------------------------------------

@pytest.mark.parametrize("x, q", [
    (0.5, 0), (1.5, 2), (2.5, 2), (3.5, 4), (-0.5, 0), (-1.5, -2), (-2.5, -2),
    (0.49, 0), (0.51, 1), (-0.51, -1),
    (7.5, 7), (8.0, 7), (100.0, 7), (-8.5, -8), (-100.0, -8),  # clamped to s4
])
def test_to_int_rounds_half_even_and_clamps(x, q):
    """§5: ``to_int(x) = clamp(round_half_even(x / σ), lo, hi)``, here at σ = 1 in s4."""
    got = to_int_round_half_even(torch.tensor([x], dtype=torch.float64), 1.0, 4, True)
    assert got.dtype == torch.int64
    assert got.tolist() == [q]


def test_to_int_unsigned_clamps_at_zero():
    """§1/§5: ``u<b>`` clamps negatives to 0 and the top at ``2^b - 1``."""
    got = to_int_round_half_even(torch.tensor([-3.0, -0.5, 0.5, 1.5, 20.0]), 1.0, 4, False)
    assert got.tolist() == [0, 0, 0, 2, 15]


@settings(max_examples=200, deadline=None)
@given(xs=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=16),
       exponent=st.integers(-20, 20), fmt=st.sampled_from(OUT_FORMATS))
def test_to_int_matches_exact_round_half_even(xs, exponent, fmt):
    """§5: with a power-of-two scale ``x/σ`` is exact, so ``to_int`` equals the exact
    rational ``round_half_even(x/σ)`` (Python's ``round`` of a ``Fraction``), clamped."""
    bits, signed = fmt
    lo, hi = spec_range(bits, signed)
    scale = 2.0 ** exponent
    got = to_int_round_half_even(torch.tensor(xs, dtype=torch.float64), scale, bits, signed)
    assert got.tolist() == [min(max(round(Fraction(x) / Fraction(scale)), lo), hi)
                            for x in xs]


@st.composite
def float_gemm_case(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 4))
    values = st.floats(-300.0, 300.0, allow_nan=False)
    a = [[draw(values) for _ in range(k)] for _ in range(m)]
    w = [[draw(values) for _ in range(n)] for _ in range(k)]
    return a, w


@settings(max_examples=200, deadline=None)
@given(case=float_gemm_case(), act_format=st.sampled_from(ACT_FORMATS),
       weight_bits=st.integers(2, 8), exp_a=st.integers(-20, 20), exp_w=st.integers(-20, 20))
def test_fake_quantized_matmul_is_scaled_gemm(case, act_format, weight_bits, exp_a, exp_w):
    """§5: ``fake_quantize(A)·fake_quantize(W) = σ_a σ_w · gemm(qA, qW)``, exactly in
    float64 when the scales are powers of two."""
    act_bits, act_signed = act_format
    a, w = (torch.tensor(t, dtype=torch.float64) for t in case)
    scale_a, scale_w = 2.0 ** exp_a, 2.0 ** exp_w
    q_a = to_int_round_half_even(a, scale_a, act_bits, act_signed)
    q_w = to_int_round_half_even(w, scale_w, weight_bits, True)
    fq_a = fake_quantize(a, scale_a, act_bits, act_signed)
    fq_w = fake_quantize(w, scale_w, weight_bits, True)
    # Why this is exact: every fake-quantized element is q·2^e with |q| <= 2^8 and
    # |e| <= 20, so it is representable exactly in float32 and float64 (8 significant bits,
    # exponent far from overflow and underflow), and so is the σ·q of §5 the comparison
    # below relies on. Each product is q_a·q_w·2^(e_a+e_w) with |q_a·q_w| <= 2^15, and every
    # partial sum is an integer multiple of the one grid step 2^(e_a+e_w) of magnitude at
    # most K·2^15 < 2^53, so float64 represents every intermediate exactly and no addition
    # rounds. On the right, gemm is an integer below 2^53 (exact in float64) times a power
    # of two (exact). Any other scale would round, and the two sides could differ.
    assert torch.equal(fq_a.to(torch.float64), q_a.to(torch.float64) * scale_a)
    assert torch.equal(fq_w.to(torch.float64), q_w.to(torch.float64) * scale_w)
    float_product = fq_a.to(torch.float64) @ fq_w.to(torch.float64)
    integer_product = gemm(q_a, q_w, act_bits=act_bits, act_signed=act_signed,
                           weight_bits=weight_bits)
    assert torch.equal(float_product, scale_a * scale_w * integer_product.to(torch.float64))


@settings(max_examples=100, deadline=None)
@given(qs=st.lists(st.integers(-128, 127), min_size=1, max_size=8),
       exponent=st.integers(-20, 20))
def test_dequantize_is_scale_times_q(qs, exponent):
    """§5: ``dequantize(q) = σ·q`` (exact for a power-of-two σ and 8-bit ``q``)."""
    scale = 2.0 ** exponent
    got = dequantize(torch.tensor(qs), scale)
    assert got.tolist() == [scale * q for q in qs]
