"""``olmac quantize --budget-bits`` / ``--budget-kbit``: per-layer weight widths chosen by
measured sensitivity under an average bits-per-weight budget or a budget of on-chip memory
(olmac/budget.py, docs/program.md §20)."""

import contextlib
import io
import itertools
import json
import math

import numpy as np
import pytest
import torch

from olmac.budget import (OUTLIER_RATIOS, REFERENCE_BITS, allocate, choose, choose_kbit,
                          measure_sensitivity)
from olmac.cli import main
from olmac.flow import demo_data, quantize
from olmac.golden import artifact
from olmac.golden.program import ProgramError, run_integer, to_pixels

pytestmark = pytest.mark.filterwarnings("error")

#: Candidate widths of the library tests (fewer than the CLI's 2..8, to stay fast).
WIDTHS = (2, 3, 5)


@pytest.fixture(scope="module")
def mlp():
    return demo_data("mlp")


@pytest.fixture(scope="module")
def sensitivity(mlp):
    return measure_sensitivity(mlp.model, mlp.calibration, act_bits=4, scheme="mmse",
                               widths=WIDTHS)


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def test_narrower_weights_are_more_sensitive(sensitivity):
    """The measurement lowers the layer it names: for every layer the KL increase at 2 bits
    is above those at 3 and 5 bits and above 0 (the reference width, 8 bits; at 5 bits a
    layer may land a little below it)."""
    assert list(sensitivity.kl) == ["layers.0", "layers.2", "layers.4"]
    for name, by_key in sensitivity.kl.items():
        assert sorted(by_key) == [(w, None) for w in (*WIDTHS, REFERENCE_BITS)], name
        kl = {w: value for (w, _), value in by_key.items()}
        assert kl[2] > max(kl[3], kl[5], 0.0) and kl[REFERENCE_BITS] == 0.0, (name, kl)
        # an MMSE weight costs its width, no more
        assert sensitivity.cost[name] == {(w, None): w * sensitivity.layers[name].weights
                                          for w, _ in by_key}


def test_allocation_is_the_least_sensitive_within_the_budget(sensitivity):
    """For budgets from the least the layers allow up to 8 bits, the allocation's average
    (Σ W·n / Σ n over the reference program's layer sizes, recomputed here) stays within
    the budget, its summed KL increase equals the least of every combination of widths
    within the budget (enumerated here), and it never grows with the budget."""
    counts = {name: width.weights for name, width in sensitivity.layers.items()}
    assert counts == {"layers.0": 64 * 64, "layers.2": 64 * 64, "layers.4": 64 * 10}
    total = sum(counts.values())
    names = list(counts)
    candidates = [*WIDTHS, REFERENCE_BITS]
    combos = [(sum(w * counts[n] for w, n in zip(combo, names)) / total,
               sum(sensitivity.kl[n][w, None] for w, n in zip(combo, names)))
              for combo in itertools.product(candidates, repeat=len(names))]
    assert sensitivity.least_bits == 2.0
    previous = None
    for budget in np.arange(2.0, 8.01, 0.25):
        chosen = allocate(sensitivity, float(budget))
        bits = {name: pair[0] for name, pair in chosen.layer_bits.items()}
        average = sum(bits[n] * counts[n] for n in names) / total
        assert average == pytest.approx(chosen.average_bits) and average <= budget
        best = min(kl for bits_used, kl in combos if bits_used <= budget)
        assert chosen.total_sensitivity == pytest.approx(best, abs=1e-12)
        assert previous is None or chosen.total_sensitivity <= previous
        previous = chosen.total_sensitivity
    # every layer at the reference width is a candidate of the largest budget
    assert allocate(sensitivity, 8.0).total_sensitivity <= 0.0


def test_measurement_and_choice_are_deterministic(mlp, sensitivity):
    """A second measurement (of one width) gives the same numbers bit for bit, and the
    same budget the same allocation."""
    again = measure_sensitivity(mlp.model, mlp.calibration, act_bits=4, scheme="mmse",
                                widths=(2,))
    assert again.reference_kl == sensitivity.reference_kl
    for name in sensitivity.kl:
        assert again.kl[name][2, None] == sensitivity.kl[name][2, None]
    assert allocate(sensitivity, 3.3) == allocate(sensitivity, 3.3)


def test_fixed_layers_count_and_bound_the_budget(mlp, sensitivity):
    """A layer given by ``layer_bits`` keeps its widths, counts in the average, and makes a
    budget below the least it allows an error naming that least (in the measurement
    already, when it is given the budget)."""
    fixed = measure_sensitivity(mlp.model, mlp.calibration, act_bits=4, scheme="mmse",
                                widths=(2,), layer_bits={"last": (8, 8)})
    assert fixed.fixed == {"layers.4"} and list(fixed.kl) == ["layers.0", "layers.2"]
    least = (2 * 4096 * 2 + 8 * 640) / 8832
    assert fixed.least_bits == pytest.approx(least)
    assert allocate(fixed, 2.5).layer_bits["layers.4"] == (8, 8)
    with pytest.raises(ValueError, match=r"^budget_bits 2\.3 is below 2\.435, the least "
                                         r"this model allows .*layers\.4 fixed"):
        allocate(fixed, 2.3)
    lowered = []
    with pytest.raises(ValueError, match=r"^budget_bits 2\.3 is below 2\.435"):
        measure_sensitivity(mlp.model, mlp.calibration, act_bits=4, scheme="mmse",
                            widths=(2,), layer_bits={"last": (8, 8)}, budget_bits=2.3,
                            report=lambda done, total: lowered.append(done))
    assert lowered == []  # refused before any layer's candidates were lowered
    for bad in (1.9, 8.5, float("nan"), True, "3"):
        with pytest.raises(ValueError, match=r"^budget_bits must be a number in 2\.\.8"):
            allocate(sensitivity, bad)


def _stored_bits(program) -> tuple[int, int]:
    """The bits a value-aware program's weights take and their number, recomputed from its
    tensors by the block format of docs/value_aware.md §4: ``W`` bits per dense weight;
    each channel's ``K`` weights in blocks of 64, every block of a layer with as many slots
    as its fullest block holds outliers, a slot ``log2 64 = 6`` offset bits plus the
    outlier width."""
    bits = count = 0
    for op in program.ops:
        if op.KIND != "gemm":
            continue
        k, n = op.weight_outliers.shape
        per_block = [int((op.weight_outliers[start:start + 64, channel] != 0).sum())
                     for channel in range(n) for start in range(0, k, 64)]
        bits += op.weight_bits * k * n + len(per_block) * max(per_block) \
            * (6 + op.weight_outlier_bits)
        count += k * n
    return bits, count


@pytest.fixture(scope="module")
def aware(mlp):
    """Value-aware sensitivities at 2 bits (and the 8-bit reference) and every ratio."""
    return measure_sensitivity(mlp.model, mlp.calibration, act_bits=4,
                               scheme="value_aware", widths=(2,))


def test_value_aware_candidates_are_width_and_outlier_ratio(aware):
    """Each value-aware layer is measured at every width with every ratio of
    ``OUTLIER_RATIOS``; the reference (8 bits, the run's 1/64) has ΔKL 0; outliers cost
    bits (a 16-bit value and a 6-bit offset per slot: the MLP's channels are one 64-weight
    block each, so a ratio of 1/64 is one slot per channel and 1/32 two)."""
    assert OUTLIER_RATIOS == (0.0, 1 / 64, 1 / 32)
    for name, cost in aware.cost.items():
        channels = {"layers.4": 10}.get(name, 64)
        count = aware.layers[name].weights
        assert sorted(cost) == [(w, r) for w in (2, 8) for r in OUTLIER_RATIOS]
        assert cost == {(w, r): w * count + int(r * 64) * channels * (16 + 6)
                        for w, r in cost}, name
        assert aware.kl[name][8, 1 / 64] == 0.0
        # at 2 bits, outliers help: fewer large weights are clipped into the dense range
        assert aware.kl[name][2, 0.0] > aware.kl[name][2, 1 / 32], name


def test_value_aware_allocation_fits_its_stored_bits(mlp, aware):
    """Programs lowered with the chosen widths and ratios store at most the budget in bits
    per weight (recomputed from their outlier tensors), exactly the allocation's average;
    the summed ΔKL is the least of every combination of candidates within the budget
    (enumerated here) and never grows with the budget."""
    names = list(aware.kl)
    count = sum(aware.layers[name].weights for name in names)
    keys = [sorted(aware.kl[name]) for name in names]
    combos = [(sum(aware.cost[n][key] for n, key in zip(names, combo)) / count,
               sum(aware.kl[n][key] for n, key in zip(names, combo)))
              for combo in itertools.product(*keys)]
    previous = None
    for budget in (2.0, 2.3, 3.5, 8.0):
        chosen = allocate(aware, budget)
        assert chosen.total_sensitivity == pytest.approx(
            min(kl for bits, kl in combos if bits <= budget), abs=1e-12)
        assert previous is None or chosen.total_sensitivity <= previous
        previous = chosen.total_sensitivity
        program = quantize(mlp.model, mlp.calibration, act_bits=4, weight_bits=REFERENCE_BITS,
                           layer_bits=chosen.layer_bits,
                           layer_outlier_ratios=chosen.outlier_ratios)
        bits, weights = _stored_bits(program)
        assert weights == count and bits / count <= budget
        assert bits / count == pytest.approx(chosen.average_bits, abs=1e-12)
    assert set(allocate(aware, 2.3).outlier_ratios.values()) != {0.0}  # outliers were bought


def test_ratios_with_the_same_outliers_are_lowered_once():
    """A channel of ``K`` weights keeps ``⌊r·K⌋`` outliers (value_aware.md §1): a 3×3
    convolution of one channel (``K = 9``) has none at any ratio up to 1/32, so it is
    measured at 2 bits once (and at the reference); a linear layer of ``K = 72`` keeps one
    at 1/64 and two at 1/32, three candidates per width."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 3))
    lowered = []
    measured = measure_sensitivity(model, torch.rand(64, 1, 8, 8), scheme="value_aware",
                                   widths=(2,), report=lambda done, total: lowered.append(total))
    assert sorted(measured.kl["0"]) == [(2, 0.0), (8, 1 / 64)]
    assert sorted(measured.kl["3"]) == [(w, r) for w in (2, 8) for r in OUTLIER_RATIOS]
    assert set(lowered) == {1 + 5} and len(lowered) == 6


def test_codes_and_planes_are_not_allocated(mlp):
    """SYQ codes and multi-tensor planes are not W-bit weights: a budget refuses them."""
    with pytest.raises(ValueError, match=r"^layer 'layers\.0' has scheme syq, whose weights "
                                         r"are not W-bit integers"):
        measure_sensitivity(mlp.model, mlp.calibration, scheme="syq", widths=(2,))
    with pytest.raises(ProgramError, match="no GEMM layer 'conv9'"):
        measure_sensitivity(mlp.model, mlp.calibration, layer_bits={"conv9": (4, 4)})


@pytest.mark.parametrize("value", ["1.5", "9", "nan"])
def test_cli_refuses_a_budget_out_of_range(capsys, tmp_path, value):
    """Before any work: one line naming ``--budget-bits`` and its range."""
    error = _refused(capsys, ["quantize", "--model", "mlp", "--budget-bits", value,
                              "--out", str(tmp_path / "p")])
    assert error == (f"olmac: error: --budget-bits must be a number in 2..8 (average bits "
                     f"per weight), not {float(value):g}")
    assert not (tmp_path / "p").exists()


def test_cli_refuses_a_budget_below_its_fixed_layers(capsys, tmp_path):
    """A budget the ``--layer-bits`` layers leave no room for: one line naming both options
    and the least, after the first lowering, nothing written."""
    error = _refused(capsys, ["quantize", "--model", "mlp", "--scheme", "mmse",
                              "--layer-bits", "last=8/8", "--budget-bits", "2.2",
                              "--out", str(tmp_path / "p")])
    assert error == ("olmac: error: --budget-bits 2.2 is below 2.435, the least this model "
                     "allows (every layer at its narrowest width; layers.4 fixed by "
                     "--layer-bits)")
    assert not (tmp_path / "p").exists()


def test_cli_refuses_a_budget_with_a_weight_width(capsys, tmp_path):
    """``--budget-bits`` chooses the weight widths, so ``--weight-bits`` beside it is an
    error rather than silently unused."""
    error = _refused(capsys, ["quantize", "--model", "mlp", "--weight-bits", "3",
                              "--budget-bits", "3", "--out", str(tmp_path / "p")])
    assert error.startswith("olmac: error: argument --budget-bits: not allowed with "
                            "argument --weight-bits")


@pytest.fixture(scope="module")
def budget_artifact(tmp_path_factory):
    """An artifact of ``--budget-bits 3.5`` with the last layer fixed at 8/8, and what
    ``olmac quantize`` printed."""
    directory = tmp_path_factory.mktemp("budget") / "program"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(["quantize", "--model", "mlp", "--scheme", "mmse", "--budget-bits", "3.5",
              "--layer-bits", "last=8/8", "--out", str(directory)])
    return directory, out.getvalue()


def test_cli_records_and_prints_the_choice(budget_artifact):
    """The artifact's own widths and sizes (read from program.json here) average at most
    the budget, the fixed layer keeps 8/8, and the printed table has one row per layer
    with its weights and the widths the artifact holds (``fixed`` for the given layer),
    and the average reached."""
    directory, out = budget_artifact
    manifest = json.loads((directory / "program.json").read_text())
    gemms = [op for op in manifest["ops"] if op["kind"] == "gemm"]
    counts = [op["in_features"] * op["out_features"] for op in gemms]
    average = sum(op["weight_bits"] * n for op, n in zip(gemms, counts)) / sum(counts)
    assert 3.0 < average <= 3.5
    assert gemms[-1]["weight_bits"] == 8
    program = artifact.load(directory)
    act_bits = [program.values[op.input].bits for op in program.ops if op.KIND == "gemm"]
    assert act_bits == [4, 4, 8]
    rows = [line.split() for line in out.splitlines() if line.startswith("# layers.")]
    assert [row[1:4] for row in rows] == [
        [op["name"], str(n), f"{op['weight_bits']}/{a}"]
        for op, n, a in zip(gemms, counts, act_bits)]
    # MMSE weights: no weight outliers, and a weight takes its width
    assert [row[4:6] for row in rows] == [["-", f"{op['weight_bits']:.3f}"] for op in gemms]
    assert rows[-1][-1] == "fixed" and all(float(row[-1]) > 0 for row in rows[:-1])
    assert f"# average {average:.3f} bits per weight" in out


def test_budget_artifact_runs_on_the_rtl(budget_artifact, tmp_path):
    """``olmac run --backend rtl`` (Verilator, random stalls) of the budget artifact gives
    golden's logits on a few test images."""
    directory = budget_artifact[0]
    subset = tmp_path / "subset.npy"
    np.save(subset, to_pixels(demo_data("mlp").images[:6]).numpy())
    main(["run", "--program", str(directory), "--inputs", str(subset), "--backend",
          "rtl", "--stall-sixteenths", "5", "--out", str(tmp_path / "rtl.npy")])
    expected = run_integer(artifact.load(directory), torch.from_numpy(np.load(subset)))
    np.testing.assert_array_equal(np.load(tmp_path / "rtl.npy"), expected.numpy())


def _lowered_kl(mlp, sensitivity, layer_bits, ratios, weight_bits=REFERENCE_BITS):
    """The KL of a program lowered here, with the measurement's options, from the float
    logits the sensitivities were measured against."""
    from olmac.golden.program import quantize_model
    from olmac.golden.program.sensitivity import logit_kl, real_logits
    program = quantize_model(mlp.model, mlp.calibration.to(torch.float32), act_bits=4,
                             weight_bits=weight_bits, act_calibration="max",
                             scheme="value_aware", layer_bits=layer_bits,
                             layer_outlier_ratios=ratios)
    return float(logit_kl(sensitivity.reference, real_logits(program, sensitivity.images)))


def test_choice_is_never_measured_worse_than_a_uniform_allocation(mlp, aware):
    """``choose`` keeps to the budget and its whole program is at least as close to the
    float model (KL on the measurement images) as every uniform allocation within the
    budget (lowered as ``--weight-bits W``: outliers ``min(2W, 16)`` bits wide) and as the
    summed-ΔKL knapsack's choice, each lowered here on its own."""
    counts = {name: width.weights for name, width in aware.layers.items()}
    for budget in (2.3, 3.0):
        chosen = choose(aware, budget)
        assert chosen.average_bits <= budget and chosen.budget_bits == budget
        assert chosen.kl == pytest.approx(_lowered_kl(
            mlp, aware, chosen.layer_bits, chosen.outlier_ratios, chosen.weight_bits),
            abs=1e-12)
        knapsack = allocate(aware, budget)
        assert chosen.kl <= _lowered_kl(mlp, aware, knapsack.layer_bits,
                                        knapsack.outlier_ratios) + 1e-12
        uniform_within = 0
        for width in (2, 8):
            for ratio in OUTLIER_RATIOS:
                # the MLP's channels are one 64-weight block: ⌊64·r⌋ slots, each a 6-bit
                # offset and a min(2W, 16)-bit value
                bits = sum(width * n + int(64 * ratio) * (n // 64) * (6 + min(2 * width, 16))
                           for n in counts.values())
                if bits / sum(counts.values()) <= budget:
                    uniform_within += 1
                    assert chosen.kl <= _lowered_kl(
                        mlp, aware, {name: (width, 4) for name in counts},
                        {name: ratio for name in counts}, width) + 1e-12, (budget, width, ratio)
        assert uniform_within == (2 if budget == 2.3 else 3)


def _on_chip(program) -> int:
    from olmac.compiler import compile_program
    from olmac.network import memory_bits
    return sum(memory_bits(compile_program(program)).values())


#: The MLP's weight beats on an 8×8 array (docs/network.md §15: one word per 8×8 tile of
#: each layer's K×N weights): 64→64, 64→64 and 64→10.
MLP_BEATS = 8 * 8 + 8 * 8 + 8 * 2


def test_kbit_cost_is_the_compiled_memory(mlp, sensitivity):
    """Under ``budget_kbit`` (MMSE weights, the array as wide as the widest layer) the
    choice's on-chip bits are what its program compiles to, within the budget; a wider
    layer costs a weight word of ``64·W`` bits per beat, so two budgets' memories differ
    by ``MLP_BEATS·64`` bits per bit of the widest layer, whatever the narrower ones are;
    a budget below every layer at 2 bits is refused naming that least."""
    chosen = {budget: choose_kbit(sensitivity, budget, _on_chip) for budget in (60, 80)}
    least = None
    for budget, allocation in chosen.items():
        assert allocation.budget_kbit == budget and allocation.budget_bits is None
        assert allocation.memory_bits <= budget * 1024
        program = quantize(mlp.model, mlp.calibration, act_bits=4, scheme="mmse",
                           weight_bits=REFERENCE_BITS, layer_bits=allocation.layer_bits)
        assert _on_chip(program) == allocation.memory_bits
        widest = max(bits for bits, _ in allocation.layer_bits.values())
        base = allocation.memory_bits - MLP_BEATS * 64 * widest
        assert least is None or base == least
        least = base
    # the rest of the core (activations, parameters, program) does not move with the widths
    narrowest = least + MLP_BEATS * 64 * 2
    assert max(bits for bits, _ in chosen[80].layer_bits.values()) \
        > max(bits for bits, _ in chosen[60].layer_bits.values())
    with pytest.raises(ValueError, match=rf"^budget_kbit 30 is below "
                                         rf"{math.ceil(narrowest / 1.024) / 1000:.3f}, the "
                                         rf"least on-chip memory this model compiles to"):
        choose_kbit(sensitivity, 30, _on_chip)
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match=r"^budget_kbit must be a positive number"):
            choose_kbit(sensitivity, bad, _on_chip)


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf"])
def test_cli_refuses_a_kbit_budget_out_of_range(capsys, tmp_path, value):
    """Before any work: one line naming ``--budget-kbit`` and its form."""
    error = _refused(capsys, ["quantize", "--model", "mlp", "--budget-kbit", value,
                              "--out", str(tmp_path / "p")])
    assert error == (f"olmac: error: --budget-kbit must be a positive number (kbit of "
                     f"on-chip memory), not {float(value):g}")


@pytest.mark.parametrize("other", [["--budget-bits", "3"], ["--weight-bits", "3"]])
def test_cli_kbit_excludes_the_other_widths(capsys, tmp_path, other):
    """``--budget-kbit`` chooses the widths: beside ``--budget-bits`` or ``--weight-bits``
    it is one line naming both."""
    error = _refused(capsys, ["quantize", "--model", "mlp", *other, "--budget-kbit", "50",
                              "--out", str(tmp_path / "p")])
    assert error.startswith(f"olmac: error: argument --budget-kbit: not allowed with "
                            f"argument {other[0]}")


@pytest.mark.slow  # about 30 s of CPU: 21 sensitivity lowerings, then the search's
def test_cli_kbit_budget_records_the_choice(capsys, tmp_path):
    """``--budget-kbit`` with MMSE weights: the artifact's widths compile to at most the
    budget (the weight memory recomputed from the widest width and the beats), the choice
    is recorded in ``budget.json`` beside the artifact and printed; a budget below the
    narrowest widths is one line naming the least, nothing written."""
    directory = tmp_path / "program"
    budget = 48.0
    main(["quantize", "--model", "mlp", "--scheme", "mmse", "--budget-kbit", str(budget),
          "--out", str(directory)])
    out = capsys.readouterr().out
    program = artifact.load(directory)
    record = json.loads((directory / "budget.json").read_text())
    widths = {op.name: op.weight_bits for op in program.ops if op.KIND == "gemm"}
    assert record["budget"] == {"bits_per_weight": None, "kbit": budget}
    assert {name: layer["weight_bits"] for name, layer in record["layers"].items()} == widths
    assert record["on_chip_bits"] == _on_chip(program) <= budget * 1024
    narrowest = record["on_chip_bits"] - MLP_BEATS * 64 * (max(widths.values()) - 2)
    # the widest width the budget leaves room for is taken (more bits, less KL)
    assert narrowest + MLP_BEATS * 64 * (max(widths.values()) + 1 - 2) > budget * 1024
    assert f"# budget {budget:g} kbit of on-chip memory" in out
    assert f"on-chip memory {record['on_chip_bits'] / 1024:.3f} kbit" in out
    error = _refused(capsys, ["quantize", "--model", "mlp", "--scheme", "mmse",
                              "--budget-kbit", "20", "--out", str(tmp_path / "q")])
    assert error == (f"olmac: error: --budget-kbit 20 is below "
                     f"{math.ceil(narrowest / 1.024) / 1000:.3f}, the least on-chip memory "
                     f"this model compiles to (every layer at its narrowest width without "
                     f"weight outliers)")
    assert not (tmp_path / "q").exists()
