"""One point of a sweep, as a Dask worker measures it (:func:`measure_point`): quantize the
model with the point's settings, then take each measurement the spec asks for by calling
the flow's own functions (:func:`olmac.flow.quantize`, :func:`run_integer`,
:func:`olmac.compiler.compile_program`, :func:`olmac.network.run_rtl`,
:func:`olmac.fpga.synth.synthesize`, :func:`olmac.fpga.board.build_network_board`).
"""

import dataclasses
import functools
import importlib
import time
from pathlib import Path

__all__ = ["measure_point"]


@functools.cache
def _digits():
    from olmac.models.digits import load_digits_split
    return load_digits_split()


@functools.cache
def _model(model: str):
    """The float model and whether it takes ``N×1×8×8`` images (the demo CNN) rather
    than flat ``N×64`` rows; loaded once per worker process."""
    from olmac.flow import DEMO_MODELS, demo_data
    if model in DEMO_MODELS:
        data = demo_data(model)
        return data.model, data.images.dim() == 4
    module_name, _, attribute = model.partition(":")
    built = getattr(importlib.import_module(module_name), attribute)()
    return built, getattr(built, "takes_images", False)


def _inputs(x, images: bool):
    from olmac.models.digits import as_images
    return as_images(x) if images else x


def _accuracy(logits, labels) -> float:
    return float((logits.argmax(1) == labels).double().mean() * 100)


def _core(compiled, point):
    """The network core of ``compiled`` with the point's requantizer, memories and
    multipliers."""
    from olmac.hw.network import NetworkCore
    config = dataclasses.replace(compiled.config, requantizer=point["requantizer"],
                                 memories=point["memories"], multipliers=point["multipliers"])
    return NetworkCore(config, **compiled.contents)


def _synth(compiled, point) -> dict:
    """Yosys's cell counts of the point's network core for its board's family, with the
    board's platform (so ``dsp``/``packed`` multipliers are its DSP primitives) and the
    board build's default of multiplies in DSP blocks (``-dsp`` on iCE40)."""
    from olmac.fpga.build import BOARDS
    from olmac.fpga.synth import synthesize
    board = BOARDS[point["board"]]
    result = synthesize(_core(compiled, point), family=board.family,
                        platform=board.platform(),
                        extra_args=("-dsp",) if board.family == "ice40" else ())
    return {"luts": result.luts, "flip_flops": result.flip_flops, "dsps": result.dsps,
            "brams": result.brams}


def _pnr(compiled, point, work_dir: Path) -> dict:
    from olmac.fpga.board import build_network_board
    result = build_network_board(point["board"], compiled, work_dir / "pnr",
                                 requantizer=point["requantizer"], memories=point["memories"],
                                 array_multipliers=point["multipliers"])
    report = result.report
    return {"fmax_mhz": report.fmax_mhz, "board_luts": report.luts,
            "board_logic": report.logic.used, "board_dsps": report.dsps.used,
            "board_brams": report.brams.used}


def measure_point(point: dict, settings: dict, work_dir: str) -> dict:
    """Measure ``point`` (a dict of :data:`olmac.explore.spec.AXES` values) as ``settings``
    say (``model``, ``measure``, ``calibration_images``, ``test_images``, ``rtl_images``);
    place-and-route builds go under ``work_dir``, the RTL model into the build cache
    (:mod:`olmac.sim.cache`). Returns the measurements as
    a flat dict (``accuracy_percent``, ``memory_bits``, ``rtl_bit_exact``,
    ``cycles_per_image``, ``luts``, ``flip_flops``, ``dsps``, ``brams``, ``fmax_mhz``,
    ``images_per_second``, ``seconds``: those the measurements give).

    Raises whatever the flow raises for a point it refuses (a scheme the core does not
    run, a program that does not fit, a failed build); the driver records it.
    """
    import torch
    from olmac.flow import quantize
    from olmac.golden.program import run_integer, to_pixels
    from olmac.models.training import one_thread
    started = time.monotonic()
    measure = settings["measure"]
    work_dir = Path(work_dir)
    split = _digits()
    model, images = _model(settings["model"])
    calibration = _inputs(split.x_train[:settings["calibration_images"]], images)
    test_x = split.x_test[:settings["test_images"]]
    labels = split.y_test[:settings["test_images"]]
    result = {}
    # each worker runs one point per thread: more torch threads would only fight them
    with one_thread(), torch.no_grad():
        program = quantize(model, calibration, act_bits=point["act_bits"],
                           weight_bits=point["weight_bits"], scheme=point["scheme"],
                           highway=point["highway"],
                           outlier_ratio=point.get("outlier_ratio", 1 / 64))
        pixels = to_pixels(_inputs(test_x, images))
        golden = run_integer(program, pixels)
    result["accuracy_percent"] = _accuracy(golden, labels)
    result["test_images"] = len(labels)
    if set(measure) - {"golden"}:  # every other measurement reads the compiled core
        from olmac.compiler import compile_program
        from olmac.network import memory_bits
        compiled = compile_program(program, width=point["width"])
        result["memory_bits"] = sum(memory_bits(compiled).values())
    if "rtl" in measure:
        from olmac.network import run_rtl
        count = settings["rtl_images"]
        rtl = run_rtl(program, pixels[:count], width=point["width"],
                      core_options={name: point[name]
                                    for name in ("requantizer", "memories", "multipliers")})
        result["rtl_mismatching_images"] = int((rtl.logits != golden[:count]).any(1).sum())
        result["rtl_bit_exact"] = result["rtl_mismatching_images"] == 0
        result["cycles_per_image"] = rtl.cycles_per_image
    if "synth" in measure:
        result.update(_synth(compiled, point))
    if "pnr" in measure:
        result.update(_pnr(compiled, point, work_dir))
        if "cycles_per_image" in result:
            result["images_per_second"] = result["fmax_mhz"] * 1e6 / result["cycles_per_image"]
    result["seconds"] = time.monotonic() - started
    return result
