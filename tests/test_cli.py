"""``olmac gemm``: both backends equal the exact product computed here with numpy, and
bad input is refused with a message naming what is wrong."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import olmac
from olmac.cli import main

pytestmark = pytest.mark.filterwarnings("error")


def _ranges(bits, signed):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _write_operands(tmp_path, m, k, n, act_bits, act_signed, weight_bits, seed=0):
    rng = np.random.default_rng(seed)
    acts = rng.integers(*np.add(_ranges(act_bits, act_signed), (0, 1)), size=(m, k))
    weights = rng.integers(*np.add(_ranges(weight_bits, True), (0, 1)), size=(k, n))
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "W.npy", weights)
    return acts, weights


def _gemm(tmp_path, *extra, act_bits=4, weight_bits=4, backend="golden"):
    main(["gemm", "--backend", backend, "--acts", str(tmp_path / "A.npy"),
          "--weights", str(tmp_path / "W.npy"), "--act-bits", str(act_bits),
          "--weight-bits", str(weight_bits), "--out", str(tmp_path / "Y.npy"), *extra])
    return np.load(tmp_path / "Y.npy")


def _refused(tmp_path, capsys, *args, **kwargs):
    with pytest.raises(SystemExit) as exit_info:
        _gemm(tmp_path, *args, **kwargs)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_golden_backend_equals_numpy(tmp_path):
    """The golden backend's Y equals numpy's exact int64 A @ W."""
    acts, weights = _write_operands(tmp_path, 5, 37, 6, 4, True, 4)
    np.testing.assert_array_equal(_gemm(tmp_path), acts @ weights)


# Every activation width and signedness, each with a different weight width; shapes chosen
# so K is not a multiple of lanes and N not a multiple of cols.
RTL_WIDTHS = [(act_bits, act_signed, (act_bits + 3 * act_signed) % 7 + 2)
              for act_bits in range(2, 9) for act_signed in (True, False)]


@pytest.mark.parametrize("act_bits,act_signed,weight_bits", RTL_WIDTHS,
                         ids=lambda value: str(value))
def test_rtl_backend_equals_product(tmp_path, act_bits, act_signed, weight_bits):
    """The RTL backend's Y equals numpy's exact A @ W for this width and signedness."""
    acts, weights = _write_operands(tmp_path, 3, 23, 7, act_bits, act_signed, weight_bits,
                                    seed=act_bits)
    extra = ["--lanes", "4", "--cols", "3"] + ([] if act_signed else ["--unsigned-acts"])
    result = _gemm(tmp_path, *extra, act_bits=act_bits, weight_bits=weight_bits,
                   backend="rtl")
    np.testing.assert_array_equal(result, acts @ weights)


@pytest.mark.slow
@pytest.mark.parametrize("act_signed", [True, False])
@pytest.mark.parametrize("weight_bits", range(2, 9))
@pytest.mark.parametrize("act_bits", range(2, 9))
def test_rtl_backend_every_width_pair(tmp_path, act_bits, weight_bits, act_signed):
    """Sweep: the RTL equals A @ W for every pair of widths and both signednesses."""
    acts, weights = _write_operands(tmp_path, 2, 19, 5, act_bits, act_signed, weight_bits)
    extra = ["--lanes", "4", "--cols", "2"] + ([] if act_signed else ["--unsigned-acts"])
    result = _gemm(tmp_path, *extra, act_bits=act_bits, weight_bits=weight_bits,
                   backend="rtl")
    np.testing.assert_array_equal(result, acts @ weights)


def test_rtl_backend_requantized(tmp_path):
    """RTL requantization equals §3 evaluated here in Python integers."""
    acts, weights = _write_operands(tmp_path, 4, 40, 5, 4, False, 4, seed=3)
    multiplier = np.array([1 << 30, (1 << 31) - 1, 1, -(1 << 31), 1234567])
    shift = np.array([36, 40, 0, 63, 20])
    bias = np.array([-100, 0, 5, -(1 << 31), 77])
    for name, values in (("M", multiplier), ("S", shift), ("B", bias)):
        np.save(tmp_path / f"{name}.npy", values)
    result = _gemm(tmp_path, "--lanes", "8", "--cols", "2", "--unsigned-acts",
                   "--multiplier", str(tmp_path / "M.npy"), "--shift", str(tmp_path / "S.npy"),
                   "--bias", str(tmp_path / "B.npy"), "--out-bits", "6", "--relu",
                   backend="rtl")
    acc = (acts @ weights).tolist()
    expected = [[min(max(((a + int(bias[n])) * int(multiplier[n]) + ((1 << int(shift[n])) >> 1))
                         >> int(shift[n]), 0), 31) for n, a in enumerate(row)] for row in acc]
    np.testing.assert_array_equal(result, expected)


def test_value_outside_width_names_its_position(tmp_path, capsys):
    acts, _ = _write_operands(tmp_path, 3, 5, 2, 4, True, 4)
    acts[2, 4] = 8
    np.save(tmp_path / "A.npy", acts)
    assert _refused(tmp_path, capsys) == \
        "olmac: error: --acts[2, 4] = 8 is outside s4 (-8..7)"


def test_unsigned_acts_refuse_negative_values(tmp_path, capsys):
    _write_operands(tmp_path, 3, 5, 2, 4, True, 4, seed=1)
    message = _refused(tmp_path, capsys, "--unsigned-acts")
    assert message.startswith("olmac: error: --acts[") and message.endswith("outside u4 (0..15)")


@pytest.mark.parametrize("option,value,message", [
    ("--act-bits", "9", "--act-bits must be an integer in 2..8, not 9"),
    ("--weight-bits", "1", "--weight-bits must be an integer in 2..8, not 1"),
])
def test_bad_width_is_refused(tmp_path, capsys, option, value, message):
    _write_operands(tmp_path, 2, 3, 2, 2, True, 2)
    bits = {"act_bits": 4, "weight_bits": 4}
    bits[option[2:].replace("-", "_")] = int(value)
    assert _refused(tmp_path, capsys, **bits) == f"olmac: error: {message}"


def test_bad_array_size_is_refused(tmp_path, capsys):
    _write_operands(tmp_path, 2, 3, 2, 2, True, 2)
    assert _refused(tmp_path, capsys, "--lanes", "65", backend="rtl") == \
        "olmac: error: --lanes must be an integer in 1..64, not 65"


def test_mismatched_shapes_are_refused(tmp_path, capsys):
    np.save(tmp_path / "A.npy", np.zeros((2, 3), np.int64))
    np.save(tmp_path / "W.npy", np.zeros((4, 2), np.int64))
    assert _refused(tmp_path, capsys) == ("olmac: error: --acts is (2, 3) and --weights is "
                                          "(4, 2): the K dimensions 3 and 4 differ")


def test_float_input_is_refused(tmp_path, capsys):
    np.save(tmp_path / "A.npy", np.zeros((2, 3)))
    np.save(tmp_path / "W.npy", np.zeros((3, 2), np.int64))
    assert _refused(tmp_path, capsys).endswith("must hold integers, not float64")


def test_requant_parameter_out_of_range_is_refused(tmp_path, capsys):
    _write_operands(tmp_path, 2, 3, 2, 4, True, 4)
    message = _refused(tmp_path, capsys, "--multiplier", "5", "--shift", "64", "--out-bits", "8")
    assert message == "olmac: error: --shift[0] = 64 is outside 0..63"


def test_partial_requant_flags_are_refused(tmp_path, capsys):
    _write_operands(tmp_path, 2, 3, 2, 4, True, 4)
    assert _refused(tmp_path, capsys, "--multiplier", "5").endswith(
        "requantization needs --multiplier, --shift and --out-bits together")


def test_rtl_backend_splits_outliers_itself(tmp_path):
    """Entries beyond the dense width but within the outlier width: the CLI splits them
    into dense + sparse, and the RTL result still equals the exact A @ W."""
    acts, weights = _write_operands(tmp_path, 3, 40, 6, 4, True, 4, seed=4)
    rng = np.random.default_rng(4)
    acts.flat[rng.choice(acts.size, 12, replace=False)] = rng.integers(-32768, 32768, 12)
    weights.flat[rng.choice(weights.size, 5, replace=False)] = rng.integers(-128, 128, 5)
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "W.npy", weights)
    result = _gemm(tmp_path, "--lanes", "8", "--cols", "4", "--act-outlier-lanes", "1",
                   "--weight-outlier-lanes", "1", "--weight-outlier-bits", "8",
                   backend="rtl")
    np.testing.assert_array_equal(result, acts @ weights)


def test_entry_beyond_outlier_width_names_its_position(tmp_path, capsys):
    acts, weights = _write_operands(tmp_path, 2, 5, 2, 4, True, 4)
    weights[3, 1] = 200
    np.save(tmp_path / "W.npy", weights)
    assert _refused(tmp_path, capsys, "--weight-outlier-lanes", "1",
                    "--weight-outlier-bits", "8") == \
        "olmac: error: --weights[3, 1] = 200 is outside s8 (-128..127)"


def test_too_many_outliers_for_the_slots_is_refused(tmp_path, capsys):
    acts, _ = _write_operands(tmp_path, 2, 8, 2, 4, True, 4)
    acts[1, :3] = 1000
    np.save(tmp_path / "A.npy", acts)
    assert _refused(tmp_path, capsys, "--act-outlier-lanes", "1", "--act-outlier-slots", "2",
                    "--lanes", "4", "--cols", "2", backend="rtl") == \
        "olmac: error: The activation vector of beat 2 holds 3 outliers; a beat carries at most 2"


def test_rtl_backend_output_outliers(tmp_path):
    """§7 through the CLI: with output outliers the RTL's Y (dense + outliers) equals §3
    evaluated here at the 16-bit outlier width."""
    acts, weights = _write_operands(tmp_path, 3, 20, 3, 4, True, 4, seed=6)
    result = _gemm(tmp_path, "--lanes", "4", "--cols", "2", "--multiplier", str(1 << 30),
                   "--shift", "31", "--out-bits", "4", "--out-outlier-bits", "16",
                   "--out-outlier-threshold", "5", backend="rtl")
    expected = [[max(-(1 << 15), min((1 << 15) - 1, (a * (1 << 30) + (1 << 30)) >> 31))
                 for a in row] for row in (acts @ weights).tolist()]
    np.testing.assert_array_equal(result, expected)
    assert (np.abs(result) > 7).any()  # values beyond the 4-bit output did come through


def test_rtl_backend_weight_planes(tmp_path):
    """§8 through the CLI: 3 planes of 2-bit weights with per-column exponents; golden and
    RTL both equal Σ_p A·Q_p·2^(S_p) computed here with numpy."""
    rng = np.random.default_rng(8)
    acts = rng.integers(-8, 8, (3, 30))
    planes = rng.integers(-2, 2, (3, 30, 5))
    shifts = rng.integers(0, 5, (2, 5))
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "W.npy", planes)
    np.save(tmp_path / "S.npy", shifts)
    expected = ((acts @ planes[0]) << (shifts[0] + shifts[1])) + \
        ((acts @ planes[1]) << shifts[1]) + acts @ planes[2]
    for backend in ("golden", "rtl"):
        result = _gemm(tmp_path, "--plane-shifts", str(tmp_path / "S.npy"), "--lanes", "8",
                       "--cols", "2", weight_bits=2, backend=backend)
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("idx_bits,zero,granularity", [(1, True, "row"), (0, False, "layer")])
def test_codebook_weights_decode_then_multiply(tmp_path, idx_bits, zero, granularity):
    """SYQ codes + tables: golden and RTL both equal A @ W with W decoded here from the
    written rule of docs/codebooks.md §4 ((-1)^sign · table[index], index 0 = 0 with a zero
    code)."""
    rng = np.random.default_rng(idx_bits)
    n, k, slots = 5, 21, 1 << idx_bits
    acts = rng.integers(-8, 8, (3, k))
    codes = rng.integers(0, 2 * slots, (n, k))
    tables = rng.integers(1, 32, ((n if granularity == "row" else 1), 1, slots))
    if zero:
        tables[..., 0] = 0
    np.save(tmp_path / "A.npy", acts)
    np.save(tmp_path / "C.npy", codes)
    np.save(tmp_path / "T.npy", tables)
    sign, index = codes >> idx_bits, codes & (slots - 1)
    magnitude = np.take_along_axis(np.broadcast_to(tables[:, 0, :], (n, slots)), index, axis=1)
    weights = np.where(sign == 1, -magnitude, magnitude).T
    for backend in ("golden", "rtl"):
        main(["gemm", "--backend", backend, "--acts", str(tmp_path / "A.npy"),
              "--codes", str(tmp_path / "C.npy"), "--codebook", str(tmp_path / "T.npy"),
              "--idx-bits", str(idx_bits), "--entry-bits", "5", "--act-bits", "4",
              "--codebook-granularity", granularity, "--lanes", "8", "--cols", "2",
              *(["--zero"] if zero else []), "--out", str(tmp_path / "Y.npy")])
        np.testing.assert_array_equal(np.load(tmp_path / "Y.npy"), acts @ weights)


def test_version(capsys):
    """``olmac --version`` prints the package's version."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"olmac {olmac.__version__}\n"


HELP_COMMANDS = [["gemm"], ["quantize"], ["layers"], ["run"], ["demo"], ["gemm-demo"],
                 ["build"], ["board"], ["board", "run"], ["board", "build"], ["explore"]]


def test_help_loads_neither_torch_nor_amaranth():
    """``olmac --help`` and every subcommand's ``--help`` answer without importing torch or
    amaranth (each takes seconds to import; the help must come in under one)."""
    code = ("import sys\nfrom olmac.cli import main\n"
            f"for command in {[[]] + HELP_COMMANDS!r}:\n"
            "    try:\n        main(command + ['--help'])\n    except SystemExit:\n        pass\n"
            "print([name for name in ('torch', 'amaranth') if name in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines()[-1] == "[]"


def test_scheme_and_board_names_match_their_modules():
    """The choices the command line takes from ``olmac.spec`` (so that its help needs no
    torch or amaranth) are those the golden model, compiler, core and boards define."""
    from olmac import spec
    from olmac.compiler import SUPPORTED_SCHEMES
    from olmac.fpga.build import BOARDS
    from olmac.golden.program import SCHEMES
    assert tuple(SCHEMES) == spec.WEIGHT_SCHEMES
    assert set(SUPPORTED_SCHEMES) <= set(SCHEMES)
    assert tuple(BOARDS) == spec.BOARD_NAMES


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_help_shows_every_default(command, capsys):
    """Each subcommand's help lists its options, each with its default where it has one."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: olmac {' '.join(command)} ")
    if command == ["gemm"]:
        assert "--lanes LANES RTL: multipliers along K, 1..64 (default: 16)" in text


def test_gemm_demo_refuses_a_bad_width_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["gemm-demo", "--bits", "9"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "olmac: error: --bits must be an integer in 2..8, not 9\n"


def test_layers_prints_the_supported_table(capsys):
    """``olmac layers`` prints the table of docs/program.md §17, whole."""
    main(["layers"])
    out = capsys.readouterr().out
    assert out.startswith("| you write | it runs as |\n|---|---|\n")
    assert len(out.splitlines()) > 10 and out in Path("docs/program.md").read_text()
