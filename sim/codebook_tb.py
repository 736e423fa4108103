"""cocotb testbench of :class:`hw.codebook.CodebookDecoder` on Verilator.

A program is a list of layers in golden's own form (:func:`golden.syq.decode_to_int`'s
``codes`` and ``tables``), each loaded by one reload batch before its first tile: drivers
(``codes``, ``load``) → DUT → monitor (``weights``) → in-order scoreboard, whose expected
tiles are golden's decoded layers cut into tiles. The configuration to run is named by the
``OLMAC_CODEBOOK`` environment variable (JSON, see :func:`config_env`).
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles

from olmac.hw.codebook import CodebookDecoder
from .codebook_stream import CodebookProgram, codebook_program, random_layers
from .codec import LayoutCodec
from .streams import StreamDriver, StreamMonitor, start_and_reset

__all__ = ["CONFIG_ENV", "config_env", "CodebookTestbench"]

#: Environment variable through which the simulator process finds its configuration.
CONFIG_ENV = "OLMAC_CODEBOOK"


def config_env(decoder_params: dict, *, layers: int, rows: int, pause_probability: float,
               seed: int) -> dict[str, str]:
    """The environment that tells :func:`run_program` what to build and send."""
    return {CONFIG_ENV: json.dumps({"decoder": decoder_params, "layers": layers,
                                    "rows": rows, "pause": pause_probability, "seed": seed})}


class CodebookTestbench:
    """Streams a program through the DUT with random stalls on every stream and checks
    each decoded tile, in order, as it arrives."""

    def __init__(self, dut, decoder: CodebookDecoder.Config, program: CodebookProgram, *,
                 pause_probability: float, seed: int):
        self.dut = dut
        self._program = program
        self._pause = pause_probability
        self._seed = seed
        self._codec = LayoutCodec(decoder.weight_layout)
        self.received = 0
        self.mismatches = []

    def _scoreboard(self, payload):
        tile = self._codec.unpack([payload])[0]
        expected = self._program.tiles[self.received].reshape(-1)
        if not np.array_equal(tile, expected):
            self.mismatches.append(f"tile {self.received}: RTL {tile.tolist()} != golden "
                                   f"{expected.tolist()}")
        self.received += 1

    async def run(self):
        dut = self.dut
        await start_and_reset(dut)
        codes = StreamDriver(dut, "codes", pause_probability=self._pause, seed=self._seed)
        load = StreamDriver(dut, "load", pause_probability=self._pause, seed=self._seed + 1)
        monitor = StreamMonitor(dut, "weights", pause_probability=self._pause,
                                seed=self._seed + 2)
        cocotb.start_soon(codes.send(self._program.codes))
        cocotb.start_soon(load.send(self._program.loads))
        await monitor.receive(len(self._program.tiles), self._scoreboard)
        # Nothing may follow the last expected tile.
        await ClockCycles(dut.clk, 4)
        assert dut.weights__valid.value == 0, "the decoder sent more tiles than it was given"


@cocotb.test()
async def run_program(dut):
    """Every tile of a program of random layers with reloads equals golden's decode."""
    config = json.loads(os.environ[CONFIG_ENV])
    decoder = CodebookDecoder.Config(**config["decoder"])
    rng = np.random.default_rng(config["seed"])
    program = codebook_program(decoder, random_layers(decoder, rng, config["layers"]),
                               rows=config["rows"])
    testbench = CodebookTestbench(dut, decoder, program, pause_probability=config["pause"],
                                  seed=config["seed"])
    await testbench.run()
    dut._log.info("%d tiles checked, %d loads sent", testbench.received, len(program.loads))
    assert not testbench.mismatches, (
        f"{len(testbench.mismatches)} mismatching tiles, first: {testbench.mismatches[:3]}")
