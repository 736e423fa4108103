"""A network on a board: :class:`NetworkBoard` puts a :class:`hw.network.NetworkCore` behind
the UART host link (:class:`hw.host_link.SerialHostLink`) and the command protocol of
:class:`hw.network_app.NetworkApp` (docs/host_link.md §6), with the core's memories
preloaded from a compiled network and reloadable over the link; :func:`build_network_board`
builds it for a board's UART pins with amaranth-boards and the YoWASP tools, and
:func:`build_board` builds it preloaded with a demo network or a user's integer program.

Command line (:func:`build_board`)::

    olmac board build --board icebreaker [--model cnn | --program DIR] [--width 4]
"""

import dataclasses
import os
from operator import attrgetter
from pathlib import Path

from amaranth.hdl import *
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from olmac import spec
from olmac.hw.host_link import SerialHostLink
from olmac.hw.network import NetworkCore
from olmac.hw.network_app import NetworkApp
from olmac.hw.stream import PipeValid, SkidBuffer
from .build import _board, _synth_options, run_build, toolchain_env

__all__ = ["NetworkBoard", "BOARD_BAUD", "board_defaults", "default_array_multipliers",
           "default_dsp_lane_pairs", "default_link_buffers", "what_would_fit",
           "build_network_board", "demo_network", "build_board"]

#: The link's default baud rate.
BOARD_BAUD = spec.BOARD_BAUD



def board_defaults(board):
    """The network board's array width and core options for ``board``
    (:data:`olmac.spec.BOARD_DEFAULTS`, a copy).

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    """
    _board(board)
    return dict(spec.BOARD_DEFAULTS[board])


def default_array_multipliers(board, width):
    """The core's ``multipliers`` option a board build uses for ``board`` at ``width``:
    ``"packed"`` on iCE40 up to width 2 (the dense and outlier products then take 3 of the
    UP5K's 8 SB_MAC16), ``"lut"`` otherwise.

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    """
    return "packed" if _board(board).family == "ice40" and width <= 2 else "lut"


#: SB_MAC16s of the iCE40UP5K left to the array once the beat walk's three address
#: multiplies have theirs.
_UP5K_ARRAY_DSPS = 5


def default_dsp_lane_pairs(board, width):
    """The core's ``dsp_lane_pairs`` option a board build uses for ``board`` at ``width``:
    on iCE40 above width 2 (where the array's products are ``"lut"``), 1 while the
    ``width`` columns' pairs fit the SB_MAC16s the beat walk leaves (width 4: 4 blocks,
    lanes 0 and 1 of each column), else 0.

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    """
    free = _UP5K_ARRAY_DSPS if _board(board).family == "ice40" else 0
    return int(default_array_multipliers(board, width) == "lut" and width <= free)


def default_link_buffers(board):
    """The :class:`NetworkBoard` option ``link_buffers`` a board build uses for ``board``:
    on ECP5 (the request stream's ``ready`` ran from the dispatcher's state through the
    handler back into the link's request slots, across the chip: the width-8 board's
    longest path, 16.3 ns, once the core's were cut); not on the iCE40UP5K, whose logic
    cells are nearly all taken and whose clock the core's paths set.

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    """
    return _board(board).family == "ecp5"


def what_would_fit(board, width):
    """What to try when the network board of ``board`` at ``width`` does not fit, for a
    one-line error: the board's default width where ``width`` is above it (the default is
    the widest that fits the UP5K, and fits the demo CNN on the ECP5-85F), else a smaller
    program, or the ECP5 board for an iCE40 one.

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    """
    default = board_defaults(board)["width"]
    advice = []
    if width > default:
        advice.append(f"--width {default} (the {board}'s default, which fits the demo CNN)")
    advice.append("a program with fewer weights and activations")
    if _board(board).family == "ice40":
        advice.append("--board ulx3s-85f (an ECP5-85F)")
    return ", or ".join(advice)


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
    dsp_lane_pairs : int
        The :class:`NetworkCore` option (lane pairs of each array column in DSP blocks).
    walk_stages, requant_stages : int
        The :class:`NetworkCore` options (address registers of the beat walk, register
        stages of the requantizer, for the ECP5's clock).
    fetch_ahead, reducer_stage : bool
        The :class:`NetworkCore` options (each op's descriptor read while the op before
        runs, a register before the reducer's sums and compares, for the ECP5's clock).
    link_buffers : bool
        A :class:`SkidBuffer` and a :class:`PipeValid` on the link's request stream and on
        the application's reply stream, so no path of either handshake runs from one side
        into the other (for the ECP5's clock; the same bytes in the same order).
    timeout : int or None
        The link's inter-byte timeout in cycles (default: four byte times).

    Raises
    ------
    TypeError
        If ``divisor`` or ``timeout`` is out of range, ``link_buffers`` is not a bool, or
        as :class:`NetworkCore` raises.
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
                 multipliers="lut", dsp_lane_pairs=0, walk_stages=0, requant_stages=0,
                 fetch_ahead=False, reducer_stage=False, link_buffers=False, timeout=None):
        if not isinstance(link_buffers, bool):
            raise TypeError(f"link_buffers must be a bool, not {link_buffers!r}")
        config = dataclasses.replace(compiled.config, requantizer=requantizer,
                                     memories=memories, multipliers=multipliers,
                                     dsp_lane_pairs=dsp_lane_pairs, walk_stages=walk_stages,
                                     requant_stages=requant_stages, fetch_ahead=fetch_ahead,
                                     reducer_stage=reducer_stage)
        self._core = NetworkCore(config, **compiled.contents)
        self._app = NetworkApp.for_core(self._core, input_words=compiled.input_words,
                                        output_words=compiled.output_words)
        max_reply = max(1 + compiled.output_words * compiled.width * 2, len(self._app.info()))
        self._link = SerialHostLink(divisor=divisor, max_payload=self._app.request_bytes,
                                    max_reply=max_reply, timeout=timeout)
        self._link_buffers = link_buffers
        super().__init__()

    core = property(attrgetter("_core"), doc="The :class:`NetworkCore`.")
    app = property(attrgetter("_app"), doc="The :class:`NetworkApp`.")
    link = property(attrgetter("_link"), doc="The :class:`SerialHostLink`.")

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self._link
        m.submodules.app = app = self._app
        m.submodules.core = core = self._core
        if self._link_buffers:
            # a register slice on each stream: ready from a register (the skid buffer),
            # then valid and payload from registers (the request slots' block RAM output
            # reached the dispatcher's command decode)
            for name, source, sink in (("request", link.app.request, app.host.request),
                                       ("reply", app.host.reply, link.app.reply)):
                shape = source.payload.shape()
                m.submodules[f"{name}_skid"] = skid = SkidBuffer(shape)
                m.submodules[f"{name}_register"] = register = PipeValid(shape)
                wiring.connect(m, source, skid.i)
                wiring.connect(m, skid.o, register.i)
                wiring.connect(m, register.o, sink)
        else:
            wiring.connect(m, link.app, app.host)
        wiring.connect(m, app.inputs, core.inputs)
        wiring.connect(m, core.outputs, app.outputs)
        wiring.connect(m, app.load, core.load)
        m.d.comb += app.fault.eq(core.fault)
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
    """The demo ``model`` (``"cnn"`` or ``"mlp"``, :func:`olmac.flow.demo_data`)
    quantized with the demo's settings on its first ``calibration`` training images,
    compiled for ``width``; returns ``(program, compiled, data)``."""
    from olmac.compiler import compile_for_board
    from olmac.flow import demo_data, quantize

    data = demo_data(model)
    program = quantize(data.model, data.calibration[:calibration])
    return program, compile_for_board(program, width=width), data


def build_network_board(board, compiled, build_dir, *, baud=BOARD_BAUD, requantizer=None,
                        memories=None, walk_stages=None, requant_stages=None,
                        fetch_ahead=None, reducer_stage=None, array_multipliers=None, dsp_lane_pairs=None, multipliers=None,
                        target_mhz=None, seed=1, timeout_s=3600,
                        progress=None):
    """Synthesize, place, route and pack a :class:`NetworkBoard` for ``board``'s UART pins
    at its default clock; returns a :class:`fpga.build.BuildResult` (resources and fmax in
    its report, also written as ``report.json``/``report.md`` into ``build_dir``).
    ``requantizer``, ``memories``, ``walk_stages``, ``requant_stages``, ``fetch_ahead`` and
    ``reducer_stage`` default to the board's (:func:`board_defaults`).

    ``array_multipliers`` is the core's ``multipliers`` option (default:
    :func:`default_array_multipliers`), ``dsp_lane_pairs`` its option of that name
    (default: :func:`default_dsp_lane_pairs`); ``multipliers`` the flow's
    (:func:`fpga.build.build_bitstream`;
    default on iCE40 ``"dsp"``: ``synth_ice40 -dsp`` also puts the sequencer's address
    multiplies into SB_MAC16s, about 550 LUT4 fewer; on ECP5 ``"hybrid"`` with products up to
    16 bits in LUT logic, so only the requantizer's go into MULT18X18Ds). The build is
    stopped after ``timeout_s`` seconds; ``progress`` is as :func:`fpga.build.run_build`'s.

    Raises
    ------
    ValueError
        If ``board`` is not one of :data:`fpga.build.BOARDS`.
    TypeError
        If ``baud`` is not a positive integer or the divisor it gives is out of range, or
        ``timeout_s`` is not a positive number.
    DoesNotFit, BuildFailed
        As :func:`fpga.build.build_bitstream`.
    """
    from .build import _targeted
    spec = _board(board)
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise TypeError(f"Baud rate must be a positive integer, not {baud!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not timeout_s > 0:
        raise TypeError(f"Timeout must be a positive number of seconds, not {timeout_s!r}")
    platform = _targeted(spec.platform, target_mhz)()
    divisor = round(platform.default_clk_frequency / baud)
    defaults = board_defaults(board)
    requantizer = requantizer or defaults["requantizer"]
    memories = memories or defaults["memories"]
    walk_stages = defaults["walk_stages"] if walk_stages is None else walk_stages
    requant_stages = defaults["requant_stages"] if requant_stages is None else requant_stages
    fetch_ahead = defaults["fetch_ahead"] if fetch_ahead is None else fetch_ahead
    reducer_stage = defaults["reducer_stage"] if reducer_stage is None else reducer_stage
    array_multipliers = (array_multipliers
                         or default_array_multipliers(board, compiled.width))
    if dsp_lane_pairs is None:
        dsp_lane_pairs = (default_dsp_lane_pairs(board, compiled.width)
                          if array_multipliers != "packed" else 0)
    top = NetworkBoard(compiled, divisor=divisor, requantizer=requantizer, memories=memories,
                       multipliers=array_multipliers, dsp_lane_pairs=dsp_lane_pairs,
                       walk_stages=walk_stages, requant_stages=requant_stages,
                       fetch_ahead=fetch_ahead, reducer_stage=reducer_stage,
                       link_buffers=default_link_buffers(board))
    env = {**os.environ, **toolchain_env(board)}
    # On ECP5 only the requantizer's wide products (33 × 32 bits) go into MULT18X18Ds: the
    # array's dense and outlier products (≤ 16 bits) would take more than the 156 there are.
    synth_opts, after_read = _synth_options(
        spec.family, multipliers or ("hybrid" if spec.family == "ecp5" else "dsp"),
        narrow_bits=16)
    return run_build(platform, _OnPins(top), build_dir, board=board, family=spec.family,
                     env=env, synth_opts=synth_opts, script_after_read=after_read, seed=seed,
                     timeout_s=timeout_s, progress=progress)


def build_board(board, *, model="cnn", program=None, name=None, width=None, baud=BOARD_BAUD,
                requantizer=None, memories=None, target_mhz=None, build_dir=None,
                timeout_s=3600, progress=None):
    """``olmac board build``: :func:`build_network_board` of ``program`` (an
    :class:`olmac.golden.program.IntegerProgram`, e.g. an artifact of ``olmac quantize``;
    by default the demo ``model``'s, :func:`demo_network`) compiled for ``width``, whose
    memories the compiler sizes to the program. ``width``, ``requantizer`` and
    ``memories`` default to the board's (:func:`board_defaults`). ``build_dir`` defaults to
    ``build/fpga/<board>/board_<name>_w<width>_<requantizer>_<memories>`` of the working
    directory (``name``: the model's, or ``"program"``). ``timeout_s`` and ``progress`` are
    :func:`build_network_board`'s. Returns the
    :class:`fpga.build.BuildResult`; raises what :func:`demo_network`,
    :func:`olmac.compiler.compile_program` and :func:`build_network_board` raise.
    """
    from olmac.compiler import compile_for_board
    defaults = board_defaults(board)
    width = defaults["width"] if width is None else width
    requantizer = requantizer or defaults["requantizer"]
    memories = memories or defaults["memories"]
    if program is None:
        _program, compiled, _data = demo_network(model, width=width)
        name = name or model
    else:
        compiled = compile_for_board(program, width=width)
        name = name or "program"
    build_dir = build_dir or (Path("build") / "fpga" / board
                              / f"board_{name}_w{width}_{requantizer}_{memories}")
    print(f"building the {name} board top for {board} in {build_dir}", flush=True)
    return build_network_board(board, compiled, build_dir, baud=baud, requantizer=requantizer,
                               memories=memories, target_mhz=target_mhz, timeout_s=timeout_s,
                               progress=progress)
