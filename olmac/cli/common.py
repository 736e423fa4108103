"""What every subcommand of ``olmac`` shares: its parser class, the help format and the
one-line usage error."""

import argparse
import importlib
from pathlib import Path

from olmac.spec import ACT_BITS, OUTLIER_BITS, OUTLIER_LANES, WEIGHT_SCHEMES, check_int

__all__ = ["UsageError", "Formatter", "Parser", "Command", "outlier_options",
           "load_array", "output_file", "in_range", "load_program", "load_pixels", "widths",
           "layer_widths", "layer_schemes", "array_options"]


class UsageError(Exception):
    """A bad argument or input file; reported as ``olmac: error: ...`` with exit status 2."""


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; options without one (``None``, or an off
    flag) and required options show none."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the help to read (status 2),
    instead of argparse's usage block and error."""

    def error(self, message):
        self.exit(2, f"olmac: error: {message} (see {self.prog} --help)\n")


class Command(Parser):
    """The parser of a subcommand whose arguments come from its module ``olmac.cli.<module>``.

    The module is imported, and its ``arguments(parser)`` called, only when the subcommand
    is chosen, so ``olmac --help`` and ``olmac --version`` load neither torch nor amaranth.
    ``arguments`` adds the options and sets the default ``run``: a function of the parsed
    arguments that returns the exit status (``None`` for 0) or raises :class:`UsageError`.
    """

    def __init__(self, *args, module=None, **kwargs):
        super().__init__(*args, formatter_class=Formatter, **kwargs)
        self._module = module

    def parse_known_args(self, args=None, namespace=None):
        if self._module is not None:
            importlib.import_module(f"olmac.cli.{self._module}").arguments(self)
            self._module = None
        return super().parse_known_args(args, namespace)



def widths(option: str, text: str) -> tuple[int, int]:
    """``W/A`` as ``(W, A)``, each in 2..8; else a :class:`UsageError` naming ``option``.

    >>> widths("--array-bits", "4/8")
    (4, 8)
    """
    weight, _, act = text.partition("/")
    try:
        pair = (int(weight), int(act))
    except ValueError:
        pair = None
    if pair is None or not all(ACT_BITS[0] <= b <= ACT_BITS[1] for b in pair):
        raise UsageError(f"{option} {text!r}: widths must be W/A, each an integer in "
                         f"{ACT_BITS[0]}..{ACT_BITS[1]} (e.g. 8/8)")
    return pair


def _per_layer(option: str, text: str | None, value) -> dict:
    """``NAME=VALUE[,NAME=VALUE...]`` as a dict, each value read by ``value``."""
    result = {}
    for item in (text or "").split(",") if text else []:
        name, equals, rest = item.partition("=")
        if not equals or not name or not rest:
            raise UsageError(f"{option} {item!r}: expected NAME=VALUE[,NAME=VALUE...] with "
                             f"NAME a layer of the program listing, first or last")
        if name in result:
            raise UsageError(f"{option}: layer {name!r} is given twice")
        result[name] = value(rest)
    return result


def layer_widths(text: str | None) -> dict:
    """``--layer-bits NAME=W/A[,...]`` as ``{NAME: (W, A)}``."""
    return _per_layer("--layer-bits", text, lambda rest: widths("--layer-bits", rest))


def layer_schemes(text: str | None) -> dict:
    """``--layer-scheme NAME=SCHEME[,...]`` as ``{NAME: SCHEME}``."""
    def scheme(rest):
        if rest not in WEIGHT_SCHEMES:
            raise UsageError(f"--layer-scheme: scheme {rest!r} is not one of "
                             f"{', '.join(WEIGHT_SCHEMES)}")
        return rest
    return _per_layer("--layer-scheme", text, scheme)


def array_options(parser, default_help: str):
    """The network core's array, as ``olmac quantize`` checks a program against it and
    ``olmac run``/``olmac demo`` build it: ``--width`` and ``--array-bits``."""
    parser.add_argument("--width", type=int, default=8, help="a width × width MAC array")
    parser.add_argument("--array-bits", help="the array's weight/activation widths W/A; "
                        "wider layers run as several passes; " + default_help)


def outlier_options(parser):
    """The outlier multipliers and widths of a MAC array (docs/semantics.md §6), as
    ``olmac gemm`` and ``olmac build`` take them."""
    kinds = {"act": "activation", "weight": "weight"}
    for kind, noun in kinds.items():
        parser.add_argument(f"--{kind}-outlier-lanes", type=int, default=0,
                            help=f"{noun}-outlier multipliers, {OUTLIER_LANES[0]}.."
                                 f"{OUTLIER_LANES[1]}")
    for kind, noun in kinds.items():
        parser.add_argument(f"--{kind}-outlier-bits", type=int, default=OUTLIER_BITS[1],
                            help=f"{noun} outlier width, above the {noun} width, up to "
                                 f"{OUTLIER_BITS[1]}")


#: The first bytes of every .npy file (numpy.lib.format).
NPY_MAGIC = b"\x93NUMPY"


def load_array(name: str, path: str, *, real: bool = False, dims=None):
    """The array of the ``.npy`` file ``path`` given as option ``name``: int64, or, with
    ``real``, float64 when it holds floats; with ``dims`` dimensions (any if ``None``).

    Raises :class:`UsageError` naming the option and the file for a missing or unreadable
    file, a text/CSV/pickle/``.npz`` file (no ``.npy`` header), and an array that is not integers (or, with
    ``real``, real numbers): booleans, complex, object, strings, records, ``uint64``
    beyond int64.
    """
    import numpy as np
    expected = "integers or real numbers" if real else "integers"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC:
            what = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file"
            raise UsageError(f"{name} ({path}) is {what}; give one array saved with "
                             f"numpy.save")
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{name}: no file {path}") from None
    except UsageError:
        raise
    except Exception as error:  # numpy's and the OS's errors alike
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UsageError(f"{name} ({path}) is not a readable .npy array of {expected}: "
                         f"{reason}") from None
    if dims is not None and array.ndim not in dims:
        raise UsageError(f"{name} ({path}) must be a {' or '.join(f'{d}-D' for d in dims)} "
                         f"array, not shape {array.shape}")
    kind = array.dtype.kind
    if kind == "f" and real:
        return array.astype(np.float64)
    if kind not in "iu":
        raise UsageError(f"{name} ({path}) must hold {expected}, not {array.dtype}")
    if kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise UsageError(f"{name} ({path}): {int(array.max())} is beyond int64")
    return array.astype(np.int64)


def output_file(name: str, path: str, suffix: str = ".npy") -> Path:
    """``path`` (option ``name``) if a file ending in ``suffix`` can be written there: its
    folder exists and it is not itself a folder. Checked before any work is done."""
    target = Path(path)
    if target.suffix != suffix:
        raise UsageError(f"{name} ({path}) must end in {suffix}")
    if not target.parent.is_dir():
        raise UsageError(f"{name} ({path}): the folder {target.parent} does not exist")
    if target.is_dir():
        raise UsageError(f"{name} ({path}) is a folder, not a {suffix} file")
    return target


def in_range(name: str, value, bounds) -> None:
    """Raise :class:`UsageError` unless the integer ``value`` of option ``name`` lies in
    ``bounds`` (inclusive)."""
    try:
        check_int(name, value, bounds)
    except TypeError as error:
        raise UsageError(str(error)) from None


def load_program(directory):
    """The integer program artifact in ``directory`` (``--program``), or a
    :class:`UsageError` naming the option and the directory."""
    from olmac.golden import artifact
    try:
        return artifact.load(directory)
    except artifact.ArtifactError as error:
        raise UsageError(f"--program ({directory}): {error}") from None


def load_pixels(program, path):
    """The integer pixels of ``program`` from the ``.npy`` file ``path`` (``--inputs``), as
    ``N × input_shape`` int64: checked integer pixels, or, for a program with real inputs,
    real values quantized by the host rule of docs/program.md §13; or a
    :class:`UsageError`."""
    import torch
    from olmac.golden.program import quantize_inputs
    from olmac.network import check_pixels
    inputs = torch.from_numpy(load_array("--inputs", path, real=True))
    if inputs.dtype.is_floating_point and not program.real_inputs:
        raise UsageError(f"--inputs ({path}) must hold integer pixels {program.pixel_min}.."
                         f"{program.pixel_max}, not {inputs.dtype}; a model for real inputs "
                         f"is quantized with --real-inputs")
    try:
        if program.real_inputs:
            return quantize_inputs(program, inputs)
        return check_pixels(program, inputs)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--inputs ({path}): {error}") from None
