"""What every subcommand of ``olmac`` shares: its parser class, the help format and the
one-line usage error."""

import argparse
import importlib

__all__ = ["UsageError", "Formatter", "Command"]


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

