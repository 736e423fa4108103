"""The shape the hardware code keeps: small parts, and no warnings silenced by hand."""

import ast
import importlib
from pathlib import Path

import pytest

#: The longest ``elaborate`` a block may have: past this it is several components.
MAX_ELABORATE_LINES = 150
PARTS = ("olmac.hw", "olmac.sim", "olmac.fpga")


def _sources(part):
    return sorted(Path(importlib.import_module(part).__path__[0]).rglob("*.py"))


def elaborate_lengths(source: str) -> dict[str, int]:
    """Lines of each ``elaborate`` method in ``source``, by ``Class.elaborate`` name."""
    lengths = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "elaborate":
                    lengths[f"{node.name}.elaborate"] = item.end_lineno - item.lineno + 1
    return lengths


def test_elaborate_lengths_are_measured():
    """The measure itself: a three-line method counts three lines, its class names it."""
    source = "class A:\n    def elaborate(self, platform):\n        m = 1\n        return m\n"
    assert elaborate_lengths(source) == {"A.elaborate": 3}


@pytest.mark.parametrize("path", _sources("olmac.hw"), ids=lambda path: path.name)
def test_no_long_elaborate(path):
    """No ``elaborate`` in hw/ is longer than :data:`MAX_ELABORATE_LINES`."""
    long = {name: lines for name, lines in elaborate_lengths(path.read_text()).items()
            if lines > MAX_ELABORATE_LINES}
    assert not long, f"{path}: {long}"


@pytest.mark.parametrize("part", PARTS)
def test_nothing_silences_unused_elaboratable(part):
    """hw/, sim/ and fpga/ read layouts from configurations instead of building components
    they do not use, so none of them silences Amaranth's UnusedElaboratable warning."""
    offenders = [str(path) for path in _sources(part)
                 if "UnusedElaboratable" in path.read_text() or "_MustUse__" in path.read_text()]
    assert not offenders
