"""Fused copies (docs/network.md §15): a ``requantize`` that copies the 16-bit results of
the op just before it into the packed memory runs in that op's back (the core's copy
requantizer) instead of as a SUM op of its own. Checked bit for bit against
golden.run_integer on Amaranth's simulator, under random stalls."""

import dataclasses
import functools

import pytest
import torch
from torch import nn

from olmac.compiler import compile_program
from olmac.golden.program import ActOutliers, Requantize, quantize_model, run_integer
from olmac.hw.network import NetworkCore, OpKind

from test_network import _run_core
from test_network_overlap import _without_leads

pytestmark = pytest.mark.filterwarnings("error")


class _Residual(nn.Module):
    """conv1 feeds conv2 and is its residual, so it is a 16-bit highway value that conv2
    reads through a ``requantize`` copy ``conv1.low``; conv2's output is flattened and
    copied again (``flatten.low``) for the linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.flatten(torch.relu(self.conv2(y) + y), 1))


@functools.cache
def _residual(**options):
    torch.manual_seed(1)
    program = quantize_model(_Residual().eval(), torch.rand(64, 1, 4, 4), act_bits=4,
                             weight_bits=4, **options)
    return program, torch.randint(0, 17, (2, 1, 4, 4))


def test_compiler_fuses_each_copy_of_the_op_before():
    """Both ``requantize`` ops of the program copy the value the op before writes (conv1's
    output; conv2's, which the flatten only renames), so each becomes that op's copy: two
    ops fewer, each producer with the copy's multiplier and shift as golden's op has them,
    the copy's own clamp (u4) and a packed destination; without ``fuse_copies`` (the
    default below width 8) they stay SUM ops."""
    program, _ = _residual()
    copies = {op.input: op for op in program.ops if isinstance(op, Requantize)}
    assert set(copies) == {"conv1", "flatten"}
    fused = compile_program(program, width=2, fuse_copies=True)
    plain = compile_program(program, width=2)
    assert fused.config.copies and not plain.config.copies
    assert len(plain.ops) - len(fused.ops) == 2
    assert sum(op["kind"] == OpKind.SUM for op in plain.ops) == 2
    assert not any(op["kind"] == OpKind.SUM for op in fused.ops)
    gemms = [op for op in fused.ops if op["kind"] == OpKind.GEMM]
    for op, source in zip(gemms, ("conv1", "flatten")):
        copy = copies[source]
        assert op["copy"] == 1 and op.get("out_packed", 0) == 0
        assert (op["copy_multiplier"], op["copy_shift"]) == (int(copy.multiplier),
                                                              int(copy.shift))
        assert (op["copy_low"], op["copy_high"]) == (0, 15)
    assert not gemms[2].get("copy")


def test_compiler_fences_readers_of_copies_as_readers_of_the_copy_op():
    """The op after a fused producer reads the copies, written in the order the copy op
    wrote them, so its ``lead`` is the one it has behind the copy op when nothing is
    fused; the core's fence then counts copies, not results (``CopyPart.written``)."""
    program, _ = _residual()
    fused = compile_program(program, width=2, fuse_copies=True)
    plain = compile_program(program, width=2)
    readers = [op for op in plain.ops if op["kind"] == OpKind.GEMM][1:]
    assert [op["lead"] for op in readers] == [
        op["lead"] for op in fused.ops if op["kind"] == OpKind.GEMM][1:]
    assert all(op["overlap"] for op in readers)


@pytest.mark.parametrize("options", [
    {}, pytest.param({"memories": "narrow"}, marks=pytest.mark.slow)], ids=["wide", "narrow"])
def test_core_runs_fused_copies_bit_exactly(options):
    """The fused program under random stalls on both streams, with wide memories (the
    next op overlaps the producer, fenced by the copies it has written) and with narrow
    ones (no overlap, the single-port 16-bit memory): golden's logits."""
    program, pixels = _residual()
    compiled = compile_program(program, width=2, fuse_copies=True)
    config = dataclasses.replace(compiled.config, **options)
    logits = _run_core(NetworkCore(config, **compiled.contents), compiled, pixels, pause=0.3)
    assert torch.equal(logits, run_integer(program, pixels))


@pytest.mark.slow
@pytest.mark.parametrize("memories", ["wide", "narrow"])
def test_core_runs_fused_copies_with_the_serial_requantizers(memories):
    """The fused program with serial requantizers (the main one and the copy's, tens of
    cycles a vector each, so each copy trails its result by a vector's time and a fence
    that counted results would let the next op read copies not yet written), with wide
    and narrow memories: golden's logits."""
    program, pixels = _residual()
    compiled = compile_program(program, width=2, fuse_copies=True)
    config = dataclasses.replace(compiled.config, memories=memories, requantizer="serial")
    logits = _run_core(NetworkCore(config, **compiled.contents), compiled, pixels, pause=0.3)
    assert torch.equal(logits, run_integer(program, pixels))


def test_compiler_keeps_copies_it_cannot_fuse():
    """A copy stays a SUM op where the op before cannot compute it: without a packed
    memory the copy would land in the memory its source is written to; a copy whose
    value keeps activation outliers (docs/program.md §18) merges blocks in the outlier
    store, not the packed memory."""
    program, _ = _residual()
    unpacked = compile_program(program, width=2, fuse_copies=True, packed=False)
    assert not unpacked.config.copies
    assert sum(op["kind"] == OpKind.SUM for op in unpacked.ops) == 2
    program, _ = _residual(act_outlier_ratio=1 / 16, act_outliers=ActOutliers(
        bits=15, word_values=2, block_words=8, slots=1))
    lows = [name for name, value in program.values.items()
            if name.endswith(".low") and value.outliers is not None]
    assert lows
    compiled = compile_program(program, width=2, fuse_copies=True)
    kept = [op["label"] for op in compiled.ops if op["kind"] == OpKind.SUM]
    assert all(any(f"'{name}'" in label for label in kept) for name in lows)


def test_fuse_copies_must_be_a_bool():
    """``fuse_copies`` is a bool or None; anything else is refused, naming it."""
    program, _ = _residual()
    with pytest.raises(TypeError, match=r"^fuse_copies must be a bool or None, not 1$"):
        compile_program(program, width=2, fuse_copies=1)


def test_copies_need_a_packed_memory():
    """A core with a copy requantizer writes its copies to the packed memory; a
    configuration without one is refused, naming ``copies``."""
    program, _ = _residual()
    config = compile_program(program, width=2, fuse_copies=True).config
    with pytest.raises(ValueError, match=r"^copies needs a packed memory"):
        dataclasses.replace(config, packed_depth=0)
    with pytest.raises(TypeError, match=r"^copies must be a bool, not 1$"):
        dataclasses.replace(config, copies=1)


def test_core_stores_beside_the_last_ops_back():
    """The ``STORE`` starts while the linear head's back still writes the logits, fenced
    like a compute op: the head writes its two words (3 logits on a 2-wide core) in order,
    word ``i`` as its result ``i``, and the ``STORE`` reads word ``i`` as its ``i``-th, so
    ``lead = 1``. Under random stalls the logits are golden's; with that lead cleared the
    ``STORE`` reads the logits before they are written and sends others."""
    program, pixels = _residual()
    compiled = compile_program(program, width=2)
    store = compiled.ops[-1]
    assert store["kind"] == OpKind.STORE and (store["overlap"], store["lead"]) == (1, 1)
    expected = run_integer(program, pixels)
    logits = _run_core(NetworkCore(compiled.config, **compiled.contents), compiled, pixels,
                       pause=0.3)
    assert torch.equal(logits, expected)
    unfenced = _without_leads(compiled, {len(compiled.ops) - 1})
    logits = _run_core(NetworkCore(unfenced.config, **unfenced.contents), unfenced, pixels,
                       pause=0.3)
    assert not torch.equal(logits, expected)
