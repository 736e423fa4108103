"""Overlapping ops (docs/network.md §15, front and back): an op whose descriptor has
``overlap`` starts while the back still writes the op before, its beats fenced behind the
back's writes by the compiler's ``lead``. Checked bit for bit against golden.run_integer
on Amaranth's simulator, where the fence matters: a reader that needs the producer's
last-written words first, and a back slowed down by the serial requantizer."""

import dataclasses

import pytest
import torch
from amaranth.hdl import Shape

from olmac.compiler import compile_program
from olmac.golden.program import quantize_model, run_integer
from olmac.hw.network import NetworkCore, OpKind

from test_network import _run_core

pytestmark = pytest.mark.filterwarnings("error")


def _conv_pair():
    """Two 3×3 convolutions on 4×4 images: the first writes 6 channels, three words a pixel
    on a 2-wide core, tile by tile (word 0 of every pixel, then word 1, ...); the second
    reads all three words of a pixel in each tap, so its first unpadded beat needs a word
    the first writes among its last."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    calibration = torch.rand(64, 1, 4, 4)
    program = quantize_model(model, calibration, act_bits=4, weight_bits=4)
    pixels = torch.randint(0, 17, (2, 1, 4, 4))
    return program, pixels, compile_program(program, width=2)


def test_compiler_leads_cover_every_read_of_the_op_before():
    """The second convolution overlaps the first with the least ``lead`` that keeps each
    of its reads behind the first's writes, worked out here by hand from §15's orders.
    The first writes tile by tile: word ``t`` of pixel ``p`` is its result ``16·t + p``.
    The second's beats run over the taps, three words each: beats 0..8 are the padded top
    row, 9..11 the padded left tap, 12..14 read words 0..2 of pixel 0, so beat 14 needs
    results 0..32 written, ``lead ≥ 33 − 14 = 19``; no later beat needs as much (beat 17
    reads word 2 of pixel 1, result 33: 34 − 17 = 17). No ``LOAD`` overlaps (the ``STORE``
    does: tests/test_network_copies.py)."""
    _, _, compiled = _conv_pair()
    ops = compiled.ops
    kinds = [op["kind"] for op in ops]
    first, second = [index for index, kind in enumerate(kinds) if kind == OpKind.GEMM][:2]
    assert second == first + 1
    consumer = ops[second]
    assert consumer["overlap"] == 1 and consumer["lead"] == 19
    assert not any(op.get("overlap") for op in ops if op["kind"] == OpKind.LOAD)


def _without_leads(compiled, ops=None):
    """``compiled`` with every op's ``lead`` 0 (or those of the ops ``ops``, by index): a
    core that reads as if the op before had already written everything."""
    layout = compiled.config.layouts["program"]
    field = layout["lead"]
    mask = ((1 << Shape.cast(field.shape).width) - 1) << field.offset
    program = [word & ~mask if ops is None or index in ops else word
               for index, word in enumerate(compiled.contents["program"])]
    return dataclasses.replace(compiled, contents={**compiled.contents, "program": program})


@pytest.mark.parametrize("requantizer", ["parallel", "serial"])
def test_core_fences_a_reader_of_the_last_written_words(requantizer):
    """The convolution pair under random stalls, with the parallel requantizer and with
    the serial one (tens of cycles a channel: the back lags the front by far): golden's
    logits. The same program with every ``lead`` cleared reads words before they are
    written and gives other logits, so the fence is what keeps it exact."""
    program, pixels, compiled = _conv_pair()
    compiled = dataclasses.replace(compiled, config=dataclasses.replace(
        compiled.config, requantizer=requantizer))
    expected = run_integer(program, pixels)
    logits = _run_core(NetworkCore(compiled.config, **compiled.contents), compiled, pixels,
                       pause=0.3)
    assert torch.equal(logits, expected)
    if requantizer == "serial":
        unfenced = _without_leads(compiled)
        logits = _run_core(NetworkCore(unfenced.config, **unfenced.contents), unfenced,
                           pixels, pause=0.3)
        assert not torch.equal(logits, expected)
