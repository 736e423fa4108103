# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.)
"""Lookup-table activations (docs/program.md §12) on the network core: the compiler fuses a
table into the op that writes its input or gives it a pass of its own (docs/network.md
§15), and the core's logits equal golden's ``run_integer`` bit for bit on Amaranth's
simulator, under random stalls, with packed or 16-bit storage and with activation
outliers; a core without a table part refuses the op in one line."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from olmac.cli import main
from olmac.compiler import CompileError, compile_program
from olmac.golden import artifact
from olmac.golden.program import quantize_model, run_integer, to_pixels
from olmac.hw.network import NetworkCore, OpKind
from olmac.models.digits import as_images, load_digits_split
from test_cli_network import _refused

from test_network import _run_core

pytestmark = pytest.mark.filterwarnings("error")


def _program(model, shape, **options):
    torch.manual_seed(1)
    calibration = torch.rand(64, *shape)
    return quantize_model(model.eval(), calibration, **{"act_bits": 4, "weight_bits": 4,
                                                        "act_calibration": "max", **options})


def _check(program, shape, *, width=2, images=3, pause=0.3, core=None, **options):
    """The core's logits against ``run_integer`` on random pixels (``core``: options of
    the core's configuration); returns the compiled network."""
    compiled = compile_program(program, width=width, **options)
    pixels = torch.randint(0, 17, (images, *shape), generator=torch.Generator().manual_seed(2))
    config = dataclasses.replace(compiled.config, **(core or {}))
    logits = _run_core(NetworkCore(config, **compiled.contents), compiled, pixels,
                       pause=pause)
    assert torch.equal(logits, run_integer(program, pixels))
    return compiled


def _kinds(compiled):
    return [(op["kind"], bool(op.get("table"))) for op in compiled.ops]


@pytest.mark.parametrize("packed, core", [
    (True, None), (False, None), (True, {"requantizer": "serial", "memories": "narrow"})],
    ids=["packed", "16-bit", "serial-narrow"])
def test_tables_fused_into_the_ops_writing_their_inputs(packed, core):
    """A sigmoid on the quantized input (fused into its SUM op) and a Hardswish after a
    Linear (fused into its GEMM): no op of their own, and golden's logits, packed or not,
    and on the small-FPGA core (serial requantizer, narrow memories)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sigmoid(), nn.Linear(6, 5), nn.Hardswish(), nn.Linear(5, 3))
    program = _program(model, (6,))
    assert [op.KIND for op in program.ops].count("lookup") == 2
    compiled = _check(program, (6,), packed=packed, core=core)
    assert _kinds(compiled) == [(OpKind.LOAD, False), (OpKind.SUM, True),
                                (OpKind.GEMM, True), (OpKind.GEMM, False),
                                (OpKind.STORE, False)]
    assert compiled.config.table_depth == 2 * 16


def test_table_after_a_flatten_runs_as_a_pass_of_its_own():
    """A tanh after a flatten (which writes no words) cannot ride on an op: it runs as a
    SUM pass of its own (copy, then table) over the convolution's words."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Tanh(), nn.Linear(12, 4))
    program = _program(model, (1, 4, 4))
    compiled = _check(program, (1, 4, 4), width=2)
    assert (OpKind.SUM, True) in _kinds(compiled)


class ReadTwice(nn.Module):
    """A tanh whose input is read again (by a concatenation): the table cannot replace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(10, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.cat([torch.tanh(h), h], 1))


@pytest.mark.parametrize("factory", [ReadTwice, lambda: nn.Sequential(nn.Linear(6, 4),
                                                                       nn.Sigmoid())],
                         ids=["input-read-twice", "table-is-the-output"])
def test_tables_on_values_read_twice_and_as_the_output(factory):
    """A table whose input has another reader (its own pass: the input stays stored) and a
    sigmoid as the program's output (unsigned logits in 16-bit slots) match golden."""
    torch.manual_seed(0)
    compiled = _check(_program(factory(), (6,)), (6,))
    assert any(op.get("table") for op in compiled.ops)


def test_tables_beside_activation_outliers():
    """A GELU table in a network whose ReLU layer keeps 10 % activation outliers (§18; a
    table's own output never has any: every entry is in its format): the table part sits
    before the outlier store, and the core still matches golden."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU(),
                          nn.Linear(8, 4))
    program = _program(model, (8,), act_outlier_ratio=0.1)
    assert any(value.outliers for value in program.values.values())
    compiled = _check(program, (8,), width=8, pause=0.2)
    assert compiled.config.act_outlier_lanes and compiled.config.table_depth


def test_core_without_tables_refuses_a_lookup_in_one_line():
    torch.manual_seed(0)
    program = _program(nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Linear(5, 3)), (6,))
    with pytest.raises(CompileError, match=r"^op 2 \(lookup '1'\): this network core has no "
                                           r"lookup-table part; a core with one \(the "
                                           r"simulator's, `olmac run --backend rtl`\) runs it$"):
        compile_program(program, tables=False)


class Functional(nn.Module):
    def forward(self, x):
        return F.silu(F.hardswish(x))


def test_functional_forms_become_tables():
    """§17: ``F.hardswish(x)`` and ``F.silu(x)``, which fx records with their default
    ``inplace=False``, lower to lookup ops."""
    program = _program(nn.Sequential(nn.Linear(4, 4), Functional(), nn.Linear(4, 2)), (4,))
    assert [op.KIND for op in program.ops] == ["quantize_input", "gemm", "lookup", "lookup",
                                               "gemm"]


def test_rtl_run_of_table_activations_equals_golden(tmp_path):
    """Verilator: ``olmac.models.ordinary.SmoothActivations`` (Hardswish, SiLU, Tanh after a
    flatten, a sigmoid gate) quantized with ``olmac quantize`` at 8/8 runs through ``olmac
    run --backend rtl`` under random stalls to the logits of ``--backend golden``."""
    split = load_digits_split()
    calibration, pixels = tmp_path / "calibration.npy", tmp_path / "pixels.npy"
    np.save(calibration, as_images(split.x_train[:64]).double().numpy())
    np.save(pixels, to_pixels(as_images(split.x_test[:4])).numpy())
    program = tmp_path / "program"
    torch.manual_seed(0)
    main(["quantize", "--model", "olmac.models.ordinary:SmoothActivations", "--calibration",
          str(calibration), "--act-bits", "8", "--weight-bits", "8", "--scheme", "mmse",
          "--out", str(program)])
    kinds = [op.KIND for op in artifact.load(program).ops]
    assert kinds.count("lookup") == 4
    for backend in ("golden", "rtl"):
        main(["run", "--program", str(program), "--inputs", str(pixels), "--backend", backend,
              "--width", "2", "--stall-sixteenths", "5", "--out", str(tmp_path / f"{backend}.npy")]
             if backend == "rtl" else ["run", "--program", str(program), "--inputs",
                                       str(pixels), "--out", str(tmp_path / f"{backend}.npy")])
    rtl, golden = np.load(tmp_path / "rtl.npy"), np.load(tmp_path / "golden.npy")
    assert np.array_equal(rtl, golden)


def test_quantize_refuses_tables_for_a_core_without_them(tmp_path, capsys):
    """``olmac quantize --no-tables`` checks against a core without the table part: each
    table refused in one line naming it and what runs it, exit 2, nothing written."""
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, as_images(load_digits_split().x_train[:16]).double().numpy())
    out = tmp_path / "program"
    lines = _refused(capsys, ["quantize", "--model", "olmac.models.ordinary:SmoothActivations",
                              "--calibration", str(calibration), "--no-tables",
                              "--out", str(out)]).splitlines()
    assert lines[0] == ("olmac: error: the network core (8x8, no tables) cannot run 4 op(s); "
                        "nothing written")
    assert lines[1] == ("olmac: error: op 2 (lookup 'act1'): this network core has no "
                        "lookup-table part; a core with one (the simulator's, `olmac run "
                        "--backend rtl`) runs it")
    assert len(lines) == 5 and not out.exists()


def test_board_refuses_a_program_whose_table_depth_is_not_its_own():
    """docs/host_link.md §6: INFO reports the board's table depth and the host refuses a
    program of another (an op's table offset is taken modulo the table memory's size, so
    another depth would look up other entries), here on a board without tables."""
    from olmac.board import BoardError, BoardInfo
    from olmac.spec import PROTOCOL_VERSION
    torch.manual_seed(0)
    compiled = compile_program(_program(nn.Sequential(nn.Linear(6, 5), nn.Tanh(),
                                                      nn.Linear(5, 3)), (6,)))
    sizes = {"program": 1, "weights": 1, "params": 1}
    board = BoardInfo(PROTOCOL_VERSION, compiled.width, compiled.input_words,
                      compiled.output_words, {**compiled.config.depths, "tables": 0},
                      {**sizes, "tables": 0})
    with pytest.raises(BoardError, match=r"^the compiled network \(.*'tables': 16\}\}\) does "
                                         r"not fit the board \(.*'tables': 0\}\}\)$"):
        board.check(compiled)
    dataclasses.replace(board, depths={**board.depths, "tables": 16}).check(compiled)
