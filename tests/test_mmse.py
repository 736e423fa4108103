"""MMSE scales and multi-tensor weights (golden/mmse.py) against docs/codebooks.md §1–§2.

Expected values come from the page: exact Python-int readings of the plane combination and
hand-worked cases of the scale rules. Each property test's docstring says which property it
checks.
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from olmac.golden import gemm
from olmac.golden.mmse import (GRID_POINTS, MAX_PLANES, choose_planes, combine_plane_accumulators,
                         max_abs_scale, mmse_scale, multi_tensor_quantize, quantization_mse,
                         reconstruct, relative_mse)

pytestmark = pytest.mark.filterwarnings("error")

BITS = st.integers(2, 8)
VALUES = st.floats(-4, 4, allow_nan=False, width=32)


@st.composite
def tensors(draw, max_rows=4, max_cols=12):
    """A ``rows × cols`` float32 tensor; a row may be all zero or hold a lone outlier."""
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    values = draw(st.lists(st.lists(VALUES, min_size=cols, max_size=cols), min_size=rows,
                           max_size=rows))
    x = torch.tensor(values, dtype=torch.float32)
    if draw(st.booleans()):
        x[draw(st.integers(0, rows - 1))] = 0
    if draw(st.booleans()):
        x[draw(st.integers(0, rows - 1)), 0] = draw(st.floats(-100, 100, width=32))
    return x


def spec_mse(x, scale, bits, signed):
    """§1 for one group, in Python floats: ``mean (x - α·clamp(round(x/α), lo, hi))²``."""
    lo, hi = (-2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    return sum((v - scale * min(max(round(v / scale), lo), hi)) ** 2 for v in x) / len(x)


# -- §1 scales --------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(x=tensors(), bits=BITS, signed=st.booleans(), per_channel=st.booleans())
def test_mmse_never_has_a_higher_mse_than_max_abs(x, bits, signed, per_channel):
    """§1: the search starts at ``α_max`` and moves only to a strictly lower MSE, so the
    MMSE scale's error is at most max-abs's, in every group, exactly."""
    mse = lambda scale: quantization_mse(x, scale, bits, signed=signed, per_channel=per_channel)
    best = mse(mmse_scale(x, bits, signed=signed, per_channel=per_channel))
    top = mse(max_abs_scale(x, bits, signed=signed, per_channel=per_channel))
    assert (best <= top).all()


@settings(max_examples=30, deadline=None)
@given(x=tensors(max_rows=1), bits=BITS, signed=st.booleans())
def test_mmse_is_no_worse_than_any_coarse_grid_point(x, bits, signed):
    """§1: the coarse grid ``α_max·k/64`` is searched in full and refining only lowers the
    error, so no coarse point beats the result."""
    top = max_abs_scale(x, bits, signed=signed)
    best = quantization_mse(x, mmse_scale(x, bits, signed=signed), bits, signed=signed)
    for k in range(1, GRID_POINTS + 1):
        assert best <= quantization_mse(x, top * (k / GRID_POINTS), bits, signed=signed)


@settings(max_examples=30, deadline=None)
@given(x=tensors(), bits=BITS, signed=st.booleans(), data=st.data())
def test_per_channel_scales_are_independent(x, bits, signed, data):
    """§1: a per-channel scale is the per-tensor scale of its channel alone, so changing
    one channel leaves every other channel's scale as it was."""
    for rule in (mmse_scale, max_abs_scale):
        scales = rule(x, bits, signed=signed, per_channel=True)
        assert scales.shape == (x.shape[0], 1)
        for c in range(x.shape[0]):
            assert torch.equal(scales[c, 0], rule(x[c], bits, signed=signed))
        changed = x.clone()
        row = data.draw(st.integers(0, x.shape[0] - 1))
        changed[row] = changed[row] * 3 + 1
        again = rule(changed, bits, signed=signed, per_channel=True)
        others = [c for c in range(x.shape[0]) if c != row]
        assert torch.equal(again[others], scales[others])


@settings(max_examples=40, deadline=None)
@given(x=tensors(max_rows=1), bits=BITS, signed=st.booleans(), factor=st.floats(0.01, 2))
def test_quantization_mse_is_section_1(x, bits, signed, factor):
    """§1: ``quantization_mse`` is the mean squared error of clamp-round quantization,
    read in Python floats (whose ``round`` is half-even too)."""
    scale = max_abs_scale(x, bits, signed=signed).item() * factor
    got = quantization_mse(x, scale, bits, signed=signed).item()
    assert got == pytest.approx(spec_mse(x[0].tolist(), scale, bits, signed), rel=1e-9,
                                abs=1e-12)


@pytest.mark.parametrize("bits, signed, expected", [(2, True, 4.0), (4, True, 4 / 7),
                                                    (2, False, 4 / 3), (8, False, 4 / 255)])
def test_max_abs_scale_maps_the_peak_to_the_top_code(bits, signed, expected):
    """§1: ``α_max = max|x| / hi`` with ``hi`` the top of ``s<b>`` or ``u<b>``."""
    x = torch.tensor([1.0, -4.0, 2.0])
    assert max_abs_scale(x, bits, signed=signed).item() == pytest.approx(expected)


def test_an_all_zero_channel_gets_scale_one():
    """§1: an all-zero group has scale 1 under both rules (any scale is exact)."""
    x = torch.tensor([[0.0, 0.0], [0.5, -0.25]])
    for rule in (mmse_scale, max_abs_scale):
        assert rule(x, 4, per_channel=True)[0, 0].item() == 1.0


def test_mmse_clips_an_outlier_max_abs_keeps():
    """§1, worked by hand: for ``[0.1, -0.1, 0.2, -0.2, 0.5]`` in ``s2`` max-abs keeps 0.5
    (MSE 0.02) and the best scale clips it, near α = 0.3 (MSE 0.016)."""
    x = torch.tensor([0.1, -0.1, 0.2, -0.2, 0.5])
    alpha = mmse_scale(x, 2).item()
    assert alpha == pytest.approx(0.3, abs=1e-3)
    assert quantization_mse(x, alpha, 2).item() == pytest.approx(0.016, abs=1e-6)
    assert quantization_mse(x, max_abs_scale(x, 2), 2).item() == pytest.approx(0.02)


# -- §2 planes --------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(w=tensors(), bits=BITS, per_channel=st.booleans())
def test_planes_follow_the_power_of_two_rule(w, bits, per_channel):
    """§2: every plane lies in ``s<bits>`` and ``α_{p+1} = α_p·2^(-e_p)`` exactly, with
    ``e_p`` in 0..15, one per channel."""
    mt = multi_tensor_quantize(w, bits, MAX_PLANES, per_channel=per_channel)
    channels = w.shape[0] if per_channel else 1
    assert mt.planes.shape == (MAX_PLANES,) + tuple(w.shape)
    assert mt.scales.shape == (MAX_PLANES, channels)
    assert mt.exponents.shape == (MAX_PLANES - 1, channels)
    assert mt.planes.min() >= -2 ** (bits - 1) and mt.planes.max() <= 2 ** (bits - 1) - 1
    assert mt.exponents.min() >= 0 and mt.exponents.max() <= 15
    assert torch.equal(mt.scales[1:], torch.ldexp(mt.scales[:-1], -mt.exponents))


@settings(max_examples=40, deadline=None)
@given(w=tensors(), bits=BITS, per_channel=st.booleans())
def test_reconstruction_error_does_not_grow_with_planes(w, bits, per_channel):
    """§2: a plane quantizes the residual to the nearest code in range and 0 is a code, so
    every channel's error is non-increasing in P (up to float64 rounding)."""
    errors = [((w.double() - reconstruct(multi_tensor_quantize(
        w, bits, planes, per_channel=per_channel))) ** 2).sum(dim=1)
        for planes in range(1, MAX_PLANES + 1)]
    for fewer, more in zip(errors, errors[1:]):
        assert (more <= fewer * (1 + 1e-9) + 1e-300).all()


@settings(max_examples=30, deadline=None)
@given(w=tensors(), bits=BITS, planes=st.integers(1, MAX_PLANES))
def test_fewer_planes_are_a_prefix_of_more(w, bits, planes):
    """§2: the planes are greedy, so asking for P planes gives the first P of three."""
    full = multi_tensor_quantize(w, bits, MAX_PLANES).first(planes)
    asked = multi_tensor_quantize(w, bits, planes)
    for field in ("planes", "scales", "exponents"):
        assert torch.equal(getattr(full, field), getattr(asked, field))


@settings(max_examples=40, deadline=None)
@given(w=tensors(max_rows=4, max_cols=8), bits=BITS, planes=st.integers(1, MAX_PLANES),
       per_channel=st.booleans(), data=st.data())
def test_combined_accumulator_is_the_float_reconstruction_gemm(w, bits, planes, per_channel,
                                                               data):
    """§2: under the power-of-two rule ``Σ_p α_p·Q_p = α_P·W_int`` with an integer
    ``W_int``, and combining the per-plane GEMMs gives ``A·W_int`` exactly."""
    mt = multi_tensor_quantize(w, bits, planes, per_channel=per_channel)
    finest = mt.scales[-1].reshape(-1, 1).to(torch.float64)
    ratio = reconstruct(mt) / finest
    combined_weight = torch.round(ratio)
    assert ((ratio - combined_weight).abs() <= 1e-9 * combined_weight.abs().clamp(min=1)).all()
    m = data.draw(st.integers(1, 3))
    acts = torch.tensor(data.draw(st.lists(st.integers(0, 255), min_size=m * w.shape[1],
                                           max_size=m * w.shape[1]))).reshape(m, -1)
    accs = torch.stack([gemm(acts, plane.T, act_bits=8, act_signed=False, weight_bits=bits)
                        for plane in mt.planes])
    combined = combine_plane_accumulators(accs, mt.exponents)
    assert torch.equal(combined, acts @ combined_weight.to(torch.int64).T)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), planes=st.integers(1, MAX_PLANES), m=st.integers(1, 3),
       n=st.integers(1, 4), broadcast=st.booleans())
def test_combine_is_the_horner_sum_in_python_ints(data, planes, m, n, broadcast):
    """§2: ``acc = Σ_p acc_p·2^(S_p)``, ``S_p = Σ_{i≥p} e_i``, read in Python ints."""
    accs = [[[data.draw(st.integers(-2 ** 20, 2 ** 20)) for _ in range(n)] for _ in range(m)]
            for _ in range(planes)]
    columns = 1 if broadcast else n
    exponents = [[data.draw(st.integers(0, 7)) for _ in range(columns)]
                 for _ in range(planes - 1)]
    got = combine_plane_accumulators(torch.tensor(accs), torch.tensor(
        exponents, dtype=torch.int64).reshape(planes - 1, columns))
    for i in range(m):
        for j in range(n):
            shifts = [sum(row[0 if broadcast else j] for row in exponents[p:])
                      for p in range(planes)]
            assert got[i, j].item() == sum(accs[p][i][j] << shifts[p] for p in range(planes))


@settings(max_examples=20, deadline=None)
@given(w=tensors(), bits=st.integers(2, 4), threshold=st.floats(0, 0.3))
def test_choose_planes_takes_the_fewest_that_meet_the_threshold(w, bits, threshold):
    """§2: a layer takes another plane only while its relative MSE exceeds the threshold,
    up to three."""
    chosen = choose_planes(w, bits, threshold).planes.shape[0]
    error = lambda p: relative_mse(w, reconstruct(multi_tensor_quantize(w, bits, p)))
    assert chosen == MAX_PLANES or error(chosen) <= threshold
    assert all(error(p) > threshold for p in range(1, chosen))


def test_relative_mse_of_a_zero_tensor():
    """§2: the relative MSE of a zero tensor is 0 when exact, infinite otherwise."""
    assert relative_mse(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_mse(torch.zeros(3), torch.ones(3)) == math.inf


def test_combine_refuses_a_partial_sum_outside_s44():
    """§2: every partial sum is a 44-bit accumulator; one outside ``s44`` is an error."""
    accs = torch.tensor([[[2 ** 40]], [[0]]])
    message = (r"^combined accumulator\[0, 0\] = 17592186044416 is outside s44 "
               r"\(-8796093022208\.\.8796093022207\)$")
    with pytest.raises(ValueError, match=message):
        combine_plane_accumulators(accs, torch.tensor([[4]]))


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: mmse_scale(torch.ones(3), 9), TypeError,
     r"^bits must be an integer in 2\.\.8, not 9$"),
    (lambda: max_abs_scale(torch.ones(3), 1), TypeError,
     r"^bits must be an integer in 2\.\.8, not 1$"),
    (lambda: quantization_mse(torch.ones(3), 1.0, True), TypeError,
     r"^bits must be an integer in 2\.\.8, not True$"),
    (lambda: mmse_scale(torch.ones(3, dtype=torch.int64), 4), TypeError,
     r"^x must be a floating-point tensor, not torch\.int64$"),
    (lambda: mmse_scale(torch.ones(0), 4), ValueError, r"^x must have at least one element$"),
    (lambda: mmse_scale(torch.tensor(1.0), 4, per_channel=True), ValueError,
     r"^A per-channel scale needs x with at least one dimension, not 0-D$"),
    (lambda: multi_tensor_quantize(torch.ones(2, 2), 4, 4), TypeError,
     r"^planes must be an integer in 1\.\.3, not 4$"),
    (lambda: multi_tensor_quantize(torch.ones(2, 2), 4, 0), TypeError,
     r"^planes must be an integer in 1\.\.3, not 0$"),
    (lambda: multi_tensor_quantize(torch.ones(2, 2), 4, 2).first(3), TypeError,
     r"^planes must be an integer in 1\.\.2, not 3$"),
    (lambda: choose_planes(torch.ones(2, 2), 4, -0.1), ValueError,
     r"^threshold must be >= 0, not -0\.1$"),
    (lambda: choose_planes(torch.ones(2, 2), 4, math.nan), ValueError,
     r"^threshold must be >= 0, not nan$"),
    (lambda: choose_planes(torch.ones(2, 2), 4, "0.1"), TypeError,
     r"^threshold must be a real number >= 0, not '0\.1'$"),
    (lambda: combine_plane_accumulators(torch.zeros(4, 1, 1, dtype=torch.int64),
                                        torch.zeros(3, 1, dtype=torch.int64)), TypeError,
     r"^planes must be an integer in 1\.\.3, not 4$"),
    (lambda: combine_plane_accumulators(torch.zeros(2, 1, 3, dtype=torch.int64),
                                        torch.zeros(1, 2, dtype=torch.int64)), ValueError,
     r"^exponents must have shape \(1, 3\) or \(1, 1\), not \(1, 2\)$"),
    (lambda: combine_plane_accumulators(torch.zeros(2, 1, 1, dtype=torch.int64),
                                        torch.tensor([[16]])), ValueError,
     r"^exponents\[0, 0\] = 16 is outside u4 \(0\.\.15\)$"),
    (lambda: combine_plane_accumulators(torch.zeros(2, 1, 1), torch.tensor([[1]])), TypeError,
     r"^accs must be an integer tensor, not torch\.float32$"),
    (lambda: combine_plane_accumulators(torch.tensor([[[2 ** 43]]]), torch.zeros(0, 1)),
     ValueError, r"^accs\[0, 0, 0\] = 8796093022208 is outside s44 "
                 r"\(-8796093022208\.\.8796093022207\)$"),
    (lambda: combine_plane_accumulators(torch.zeros(1, 2), torch.zeros(0, 1)), ValueError,
     r"^accs must be 3-D \(planes × M × N\), not \(1, 2\)$"),
])
def test_errors_name_the_parameter_and_the_allowed_range(call, error, message):
    """§1–§2: widths are 2..8, planes 1..3, exponents ``u4``, thresholds non-negative, and
    each refusal names the parameter, the allowed range and the value."""
    with pytest.raises(error, match=message):
        call()
