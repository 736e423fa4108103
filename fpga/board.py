"""A network on a board: :class:`NetworkBoard` puts a :class:`hw.network.NetworkCore` behind
the UART host link (:class:`hw.host_link.SerialHostLink`) and the command protocol of
:class:`hw.network_app.NetworkApp` (docs/host_link.md §6), with the core's memories
preloaded from a compiled network and reloadable over the link; :func:`build_network_board`
builds it for a board's UART pins with amaranth-boards and the YoWASP tools.

Command line (``olmac board build``)::

    python -m fpga.board --board icebreaker [--model cnn] [--width 4]
"""

import argparse
import os
import sys
from pathlib import Path

from amaranth.hdl import *
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from olmac.hw.host_link import SerialHostLink
from olmac.hw.network import MEMORY_STYLES, REQUANTIZERS, NetworkCore
from olmac.hw.network_app import NetworkApp
from .build import BOARDS, _board, _synth_options, run_build, toolchain_env

__all__ = ["NetworkBoard", "BOARD_BAUD", "build_network_board", "demo_network", "main"]

#: The link's default baud rate.
BOARD_BAUD = 115200


class NetworkBoard(wiring.Component):
    """UART pins → :class:`SerialHostLink` → :class:`NetworkApp` → :class:`NetworkCore`.

    Parameters
    ----------
    compiled : olmac.compiler.CompiledNetwork
        The network: the core's parameters and its memory images (preloaded), and the
        words an image takes and gives.
    divisor : int
        Clock cycles per UART bit (``f_clk / baud``), 4..2**24.
    requantizer, memories, multipliers : str
        Options of :class:`NetworkCore` (``"serial"``/``"narrow"``/``"packed"`` fit an
        iCE40UP5K at width 2; docs/host_link.md §6).
    timeout : int or None
        The link's inter-byte timeout in cycles (default: four byte times).

    Raises
    ------
    TypeError
        If ``divisor`` or ``timeout`` is out of range, or as :class:`NetworkCore` raises.
    ValueError
        As :class:`NetworkCore` raises.

    Members
    -------
    rx : In(1, init=1)
        UART input pin (from the host).
    tx : Out(1, init=1)
        UART output pin (to the host).
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)

    def __init__(self, compiled, *, divisor, requantizer="serial", memories="narrow",
                 multipliers="lut", timeout=None):
        self._core = NetworkCore(**compiled.core_params, requantizer=requantizer,
                                 memories=memories, multipliers=multipliers)
        self._app = NetworkApp.for_core(self._core, input_words=compiled.input_words,
                                        output_words=compiled.output_words)
        max_reply = max(1 + compiled.output_words * compiled.width * 2, len(self._app.info()))
        self._link = SerialHostLink(divisor=divisor, max_payload=self._app.request_bytes,
                                    max_reply=max_reply, timeout=timeout)
        super().__init__()

    @property
    def core(self):
        """The :class:`NetworkCore`."""
        return self._core

    @property
    def app(self):
        """The :class:`NetworkApp`."""
        return self._app

    @property
    def link(self):
        """The :class:`SerialHostLink`."""
        return self._link

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self._link
        m.submodules.app = app = self._app
        m.submodules.core = core = self._core
        wiring.connect(m, link.app, app.host)
        wiring.connect(m, app.inputs, core.inputs)
        wiring.connect(m, core.outputs, app.outputs)
        wiring.connect(m, app.load, core.load)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        return m


class _OnPins(Elaboratable):
    """``board`` on the platform's first UART, the idle line shown on a LED."""

    def __init__(self, board):
        self._board = board

    def elaborate(self, platform):
        m = Module()
        m.submodules.board = board = self._board
        uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
        m.submodules.rx_buffer = rx = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx = io.Buffer("o", uart.tx)
        m.d.comb += [board.rx.eq(rx.i), tx.o.eq(board.tx)]
        return m


def demo_network(model="cnn", *, width=4, calibration=64):
    """The demo ``model`` (``"cnn"`` or ``"mlp"``, :func:`olmac.network.demo_data`)
    quantized with the demo's settings on its first ``calibration`` training images,
    compiled for ``width``; returns ``(program, compiled, data)``."""
    from olmac.compiler import compile_program
    from olmac.network import demo_data, quantize

    data = demo_data(model)
    program = quantize(data.model, data.calibration[:calibration])
    return program, compile_program(program, width=width), data


def build_network_board(board, compiled, build_dir, *, baud=BOARD_BAUD, requantizer="serial",
                        memories="narrow", array_multipliers=None, multipliers=None,
                        target_mhz=None, seed=1, timeout_s=3600):
    """Synthesize, place, route and pack a :class:`NetworkBoard` for ``board``'s UART pins
    at its default clock; returns a :class:`fpga.build.BuildResult` (resources and fmax in
    its report, also written as ``report.json``/``report.md`` into ``build_dir``).

    ``array_multipliers`` is the core's ``multipliers`` option (default on iCE40:
    ``"packed"`` up to width 2, whose dense and outlier products take 3 of the UP5K's 8
    SB_MAC16; ``"lut"`` above); ``multipliers`` the flow's (:func:`fpga.build.build_bitstream`;
    default ``"dsp"``: ``synth_ice40 -dsp`` also puts the sequencer's address multiplies into
    SB_MAC16s, about 550 LUT4 fewer).

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    TypeError
        If ``baud`` is not a positive integer or the divisor it gives is out of range.
    DoesNotFit, BuildFailed
        As :func:`fpga.build.build_bitstream`.
    """
    from .build import _targeted
    spec = _board(board)
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise TypeError(f"Baud rate must be a positive integer, not {baud!r}")
    platform = _targeted(spec.platform, target_mhz)()
    divisor = round(platform.default_clk_frequency / baud)
    if array_multipliers is None:
        array_multipliers = "packed" if spec.family == "ice40" and compiled.width <= 2 \
            else "lut"
    top = NetworkBoard(compiled, divisor=divisor, requantizer=requantizer, memories=memories,
                       multipliers=array_multipliers)
    env = {**os.environ, **toolchain_env(board)}
    synth_opts, after_read = _synth_options(spec.family, multipliers or "dsp")
    return run_build(platform, _OnPins(top), build_dir, board=board, family=spec.family,
                     env=env, synth_opts=synth_opts, script_after_read=after_read, seed=seed,
                     timeout_s=timeout_s)


def _parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog, description="Build the network board top (UART host link, command "
                               "protocol, network core preloaded with a demo network) for "
                               "a board and report its resources and fmax.")
    parser.add_argument("--board", required=True, choices=BOARDS)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--width", type=int, default=4, help="MAC array width (default 4)")
    parser.add_argument("--baud", type=int, default=BOARD_BAUD)
    parser.add_argument("--requantizer", choices=REQUANTIZERS, default="serial")
    parser.add_argument("--memories", choices=MEMORY_STYLES, default="narrow")
    parser.add_argument("--target-mhz", type=float)
    parser.add_argument("--build-dir", type=Path)
    return parser


def main(argv=None, prog="python -m fpga.board"):
    """``olmac board build``: returns 0, or 1 when the build fails or does not fit."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    _program, compiled, _data = demo_network(args.model, width=args.width)
    build_dir = args.build_dir or (Path("build") / "fpga" / args.board
                                   / f"board_{args.model}_w{args.width}_{args.requantizer}"
                                     f"_{args.memories}")
    print(f"building the {args.model} board top for {args.board} in {build_dir}", flush=True)
    try:
        result = build_network_board(args.board, compiled, build_dir, baud=args.baud,
                                     requantizer=args.requantizer, memories=args.memories,
                                     target_mhz=args.target_mhz)
    except (RuntimeError, OSError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    print(result.report.markdown())
    print(f"bitstream: {result.bitstream} ({result.seconds:.0f} s)")
    if not result.runs_at_board_clock:
        print(f"warning: fmax is below the board clock of {result.board_clock_mhz:g} MHz",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
