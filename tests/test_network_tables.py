# amaranth: UnusedElaboratable=no
# (Amaranth reads that only on line 1.)
"""Lookup-table activations (docs/program.md §12) on the network core: the compiler fuses a
table into the op that writes its input or gives it a pass of its own (docs/network.md
§15), and the core's logits equal golden's ``run_integer`` bit for bit on Amaranth's
simulator, under random stalls, with packed or 16-bit storage and with activation
outliers; a core without a table part refuses the op in one line."""

import pytest
import torch
from torch import nn

from olmac.compiler import CompileError, compile_program
from olmac.golden.program import quantize_model, run_integer
from olmac.hw.network import NetworkCore, OpKind

from test_network import _run_core

pytestmark = pytest.mark.filterwarnings("error")


def _program(model, shape, **options):
    torch.manual_seed(1)
    calibration = torch.rand(64, *shape)
    return quantize_model(model.eval(), calibration, **{"act_bits": 4, "weight_bits": 4,
                                                        "act_calibration": "max", **options})


def _check(program, shape, *, width=2, images=3, pause=0.3, **options):
    """The core's logits against ``run_integer`` on random pixels; returns the compiled
    network."""
    compiled = compile_program(program, width=width, **options)
    pixels = torch.randint(0, 17, (images, *shape), generator=torch.Generator().manual_seed(2))
    logits = _run_core(NetworkCore(compiled.config, **compiled.contents), compiled, pixels,
                       pause=pause)
    assert torch.equal(logits, run_integer(program, pixels))
    return compiled


def _kinds(compiled):
    return [(op["kind"], bool(op.get("table"))) for op in compiled.ops]


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "16-bit"])
def test_tables_fused_into_the_ops_writing_their_inputs(packed):
    """A sigmoid on the quantized input (fused into its SUM op) and a Hardswish after a
    Linear (fused into its GEMM): no op of their own, and golden's logits, packed or not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sigmoid(), nn.Linear(6, 5), nn.Hardswish(), nn.Linear(5, 3))
    program = _program(model, (6,))
    assert [op.KIND for op in program.ops].count("lookup") == 2
    compiled = _check(program, (6,), packed=packed)
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
