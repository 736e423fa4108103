"""What every subcommand of ``olmac`` shares: its parser class, the help format and the
one-line usage error."""

import argparse
import importlib

from olmac.spec import ACT_BITS, OUTLIER_BITS, OUTLIER_LANES, WEIGHT_SCHEMES

__all__ = ["UsageError", "Formatter", "Command", "outlier_options", "load_program",
           "load_pixels", "widths", "layer_widths", "layer_schemes", "array_options"]


class UsageError(Exception):
    """A bad argument or input file; reported as ``olmac: error: ...`` with exit status 2."""


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; options without one (``None``, or an off
    flag) and required options show none."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Command(argparse.ArgumentParser):
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


def load_program(directory):
    """The integer program artifact in ``directory`` (``--program``), or a
    :class:`UsageError`."""
    from olmac.golden import artifact
    try:
        return artifact.load(directory)
    except artifact.ArtifactError as error:
        raise UsageError(str(error)) from None


def load_pixels(program, path):
    """The integer pixels of ``program`` in the ``.npy`` file ``path`` (``--inputs``), as
    ``N × input_shape`` int64, or a :class:`UsageError`."""
    import numpy as np
    import torch
    from olmac.network import check_pixels
    try:
        return check_pixels(program, torch.from_numpy(np.load(path)))
    except (TypeError, ValueError) as error:
        raise UsageError(f"--inputs ({path}): {error}") from None
