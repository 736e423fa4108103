"""Run-time activation outliers in the integer program (docs/program.md §18): the storage
order, the block rule, the checks, the artifact and the lowering.

Expected values are worked out by hand from the page, not computed by the code under test.
"""

import dataclasses

import pytest
import torch
from torch import nn

from olmac.golden import artifact
from olmac.golden.program import (ActOutliers, Flatten, Gemm, IntegerProgram, MaxPool,
                                  ProgramError, QuantizeInput, Requantize, Value,
                                  act_outlier_counts, keep_act_outliers, quantize_model,
                                  run_fake_quant, run_integer, storage_shape, storage_words)

pytestmark = pytest.mark.filterwarnings("error")

ONE = 1 << 30  # with shift 30: the identity requantization


def storage(slots, word_values=4, block_words=1, bits=15):
    return ActOutliers(bits=bits, word_values=word_values, block_words=block_words,
                       slots=slots)


def summing_program(outliers, low_bits=2):
    """pixels (4 features) → input u8 (identity) → low u<low_bits> (identity, with
    ``outliers``) → the sum of the four (a linear layer of ones) as s16."""
    gemm = Gemm(name="sum", input="low", output="sum", layer="linear", in_features=4,
                out_features=1, scheme="mmse", weight_bits=4, relu=False,
                bias=torch.zeros(1, dtype=torch.int64),
                multiplier=torch.tensor([ONE]), shift=torch.tensor([30]),
                weight_scale=torch.ones(1, dtype=torch.float64),
                weights=torch.ones(4, 1, dtype=torch.int64))
    values = {"input": Value((4,), 8, False, 1.0),
              "low": Value((4,), low_bits, False, 1.0, outliers),
              "sum": Value((1,), 16, True, 1.0)}
    ops = (QuantizeInput("input", "input", ONE, 30), Requantize("low", "input", "low", ONE, 30),
           gemm)
    return IntegerProgram((4,), 16, 1.0, values, ops, "sum")


PIXELS = torch.tensor([[5, 1, 0, 9]])


@pytest.mark.parametrize("outliers, total", [
    # u2: d = (3, 1, 0, 3), e = (2, 0, 0, 6): one slot keeps 9, 5 saturates to 3
    (None, 3 + 1 + 0 + 3),
    (storage(slots=1), 3 + 1 + 0 + 9),
    (storage(slots=2), 5 + 1 + 0 + 9),
    # two words of two values, a block each: each block keeps its one outlier
    (storage(slots=1, word_values=2), 5 + 1 + 0 + 9),
    # one block of those two words: one slot for both outliers again
    (storage(slots=1, word_values=2, block_words=2), 3 + 1 + 0 + 9),
])
def test_a_gemm_reads_the_kept_outliers(outliers, total):
    """§18: the GEMM sums ŷ: kept outliers whole, the others saturated to the dense format."""
    assert run_integer(summing_program(outliers), PIXELS).tolist() == [[total]]


def test_outliers_are_clamped_to_their_own_format():
    """§18: the op clamps to the outlier format s<B>/u<B> before the block rule."""
    program = summing_program(storage(slots=2, bits=3))  # u3: 0..7
    assert run_integer(program, PIXELS).tolist() == [[5 + 1 + 0 + 7]]


def test_block_rule_doc_example():
    """§18's example: u3, one block (20, 3, 9, 30), one slot: 30 is kept."""
    kept, counts = keep_act_outliers(torch.tensor([[20, 3, 9, 30]]), 3, False, storage(1),
                                     torch.zeros(4, dtype=torch.int64), torch.arange(4))
    assert kept.tolist() == [[7, 3, 7, 30]]
    assert (counts.outliers, counts.saturated, counts.blocks, counts.blocks_over) == (3, 2, 1, 1)


@pytest.mark.parametrize("y, signed, expected", [
    ([9, 9], False, [9, 7]),      # equal corrections: the lower position is kept
    ([7, 9], False, [7, 9]),      # 7 fits u3: not an outlier
    ([-9, 8], True, [-9, 3]),     # s3 (−4..3): e = −5 and 5, a tie: position 0 kept
    ([-8, 9], True, [-4, 9]),     # e = −4 and 6: 9 kept, −8 saturates to −4
])
def test_block_rule_ranks_by_correction_then_position(y, signed, expected):
    """§18: rank by |e| = |y − clamp(y)|, larger first, ties to the lower position."""
    kept, _ = keep_act_outliers(torch.tensor([y]), 3, signed, storage(1, word_values=2),
                                torch.zeros(2, dtype=torch.int64), torch.arange(2))
    assert kept.tolist() == [expected]


def test_storage_words_of_an_image():
    """§18 / network.md §15: 3 channels, 2 a word, 2 pixels: channel c of pixel p in word
    2p + c // 2, lane c mod 2; elements in row-major (c, y, x) order."""
    word, lane = storage_words((3, 1, 2), 2)
    # (c, p): (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    assert word.tolist() == [0, 2, 0, 2, 1, 3]
    assert lane.tolist() == [0, 0, 1, 1, 0, 0]


def test_over_budget_blocks_are_counted():
    """§18: ``act_outlier_counts`` reports outliers, saturated values and full blocks."""
    counts = act_outlier_counts(summing_program(storage(slots=1)),
                                torch.tensor([[5, 1, 0, 9], [0, 0, 0, 4], [1, 1, 1, 1]]))
    low = counts["low"]
    assert (low.values, low.outliers, low.saturated, low.blocks, low.blocks_over) == \
        (12, 3, 1, 3, 1)


# -- checks ---------------------------------------------------------------------------------

def _replace_value(program, name, **changes):
    values = dict(program.values)
    values[name] = dataclasses.replace(values[name], **changes)
    return values


@pytest.mark.parametrize("changes, message", [
    (dict(outliers=storage(1, bits=2)), r"field 'outliers\.bits' must be int in 3\.\.16, not 2"),
    (dict(outliers=storage(1, block_words=3)),
     r"field 'outliers\.block_words' must be a power of two, not 3"),
    (dict(outliers=storage(5)), r"field 'outliers\.slots' must be int in 1\.\.4, not 5"),
    (dict(outliers=storage(1, word_values=65)),
     r"field 'outliers\.word_values' must be int in 1\.\.64, not 65"),
    (dict(bits=12), r"only a value of 2\.\.8 bits keeps activation outliers, not u12\+u15"),
])
def test_bad_outlier_storage_is_refused(changes, message):
    """§18: the storage fields are checked when the program is built."""
    program = summing_program(storage(1))
    with pytest.raises(ProgramError, match=r"^value 'low': " + message + "$"):
        IntegerProgram((4,), 16, 1.0, _replace_value(program, "low", **changes), program.ops,
                       "sum")


def test_only_gemm_inputs_and_flattens_read_outliers():
    """§18: a requantize (or residual, pool) reading a value with outliers is refused."""
    program = summing_program(storage(1))
    values = dict(program.values, again=Value((4,), 4, False, 1.0))
    ops = program.ops[:2] + (Requantize("again", "low", "again", ONE, 30),) + program.ops[2:]
    with pytest.raises(ProgramError, match=r"^op 2 \(requantize 'again'\): reads 'low', which "
                       r"keeps activation outliers; only a GEMM input or a flatten reads such "
                       r"a value \(§18\)$"):
        IntegerProgram((4,), 16, 1.0, values, ops, "sum")


def test_a_flatten_keeps_its_inputs_outliers():
    """§18: a flatten output stores the same words, so it has the same outliers."""
    program = summing_program(storage(1))
    values = dict(program.values, flat=Value((4,), 2, False, 1.0))
    gemm = dataclasses.replace(program.ops[2], input="flat")
    ops = program.ops[:2] + (Flatten("flat", "low", "flat"), gemm)
    with pytest.raises(ProgramError, match=r"^op 2 \(flatten 'flat'\): output 'flat' must keep "
                       r"the activation outliers of input 'low' \(the same words, §18\)$"):
        IntegerProgram((4,), 16, 1.0, values, ops, "sum")


def test_artifact_round_trip_keeps_outliers(tmp_path):
    """§14: the values' ``outliers`` are written and read back exactly."""
    program = summing_program(storage(slots=2, word_values=2, block_words=2))
    loaded = artifact.load(artifact.save(program, tmp_path).parent)
    assert dict(loaded.values) == dict(program.values)
    assert torch.equal(run_integer(loaded, PIXELS), run_integer(program, PIXELS))


# -- lowering -------------------------------------------------------------------------------

class Pooled(nn.Module):
    """conv → ReLU → avgpool → flatten → linear → ReLU → linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(16, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(h, 1))))


def _pooled(ratio, **options):
    torch.manual_seed(0)
    model = Pooled().eval()
    calibration = torch.rand(64, 1, 4, 4)
    return quantize_model(model, calibration, act_outlier_ratio=ratio, act_bits=3,
                          act_calibration="max", **options), calibration


def test_lowering_gives_outliers_to_values_only_gemms_read():
    """§18: every low-width gemm/requantize/avgpool output read only by GEMMs (through
    flattens) keeps outliers; the input, the logits and what a pool reads do not."""
    program, _ = _pooled(0.05)
    with_outliers = {name for name, value in program.values.items() if value.outliers}
    assert with_outliers == {"pool", "flatten", "fc1"}
    assert program.values["fc1"].outliers == ActOutliers(bits=15, word_values=8,
                                                          block_words=8, slots=1)
    assert storage_shape(program, "flatten") == (4, 2, 2)


def test_lowering_scale_puts_the_ratio_beyond_the_dense_format():
    """§18: the threshold is the ⌈(1 − R)·n⌉-th smallest |x| of the calibration values."""
    program, calibration = _pooled(0.1)
    torch.manual_seed(0)
    model = Pooled().eval()  # the same weights as _pooled's
    with torch.no_grad():
        x = torch.relu(model.fc1(torch.flatten(model.pool(torch.relu(model.conv(calibration))),
                                               1))).reshape(-1)
    assert len(x) == 384  # 0.9·384 = 345.6: the 346th smallest, over hi = 7 of u3
    expected = torch.sort(x.to(torch.float64)).values[345] / 7
    assert program.values["fc1"].scale == pytest.approx(float(expected))


def test_float_view_models_the_block_rule():
    """§18: the float view agrees with the integer program on the lowered model."""
    program, calibration = _pooled(0.05)
    pixels = torch.randint(0, 17, (32, 1, 4, 4))
    integer = run_integer(program, pixels).to(torch.float64) * program.values["fc2"].scale
    fake = run_fake_quant(program, pixels / 16)
    assert torch.equal(integer.argmax(1), fake.argmax(1))


@pytest.mark.parametrize("ratio", [-0.01, 0.2, True, "0.1"])
def test_bad_outlier_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match=r"^act_outlier_ratio must be a number in 0\.\.0\.1, "
                       r"not .+$"):
        quantize_model(Pooled(), torch.rand(4, 1, 4, 4), act_outlier_ratio=ratio)


def test_maxpool_never_writes_outliers():
    """§18: a maxpool output cannot keep outliers (it inherits its input's format)."""
    values = {"input": Value((1, 2, 2), 8, False, 1.0),
              "low": Value((1, 2, 2), 3, False, 1.0, storage(1, word_values=1)),
              "pooled": Value((1, 1, 1), 3, False, 1.0, storage(1, word_values=1))}
    ops = (QuantizeInput("input", "input", ONE, 30), Requantize("low", "input", "low", ONE, 30),
           MaxPool("pooled", "low", "pooled", (2, 2), (2, 2), (0, 0)))
    with pytest.raises(ProgramError, match=r"^op 2 \(maxpool 'pooled'\): (a maxpool output "
                       r"cannot keep|reads 'low')"):
        IntegerProgram((1, 2, 2), 16, 1.0, values, ops, "pooled")


# -- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("command", [["quantize", "--model", "mlp", "--out", "unused"],
                                     ["demo", "--images", "1"]])
@pytest.mark.parametrize("ratio", ["0.5", "-0.01", "nan"])
def test_cli_refuses_a_bad_act_outlier_ratio(capsys, command, ratio):
    """One line naming the option and its range, exit status 2, before any work."""
    from olmac.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--act-outlier-ratio", ratio])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == \
        f"olmac: error: --act-outlier-ratio must be a number in 0..0.1, not {float(ratio):g}"
