"""The worked examples in the docstrings of the golden model, the demo models (and the
port codec) still hold."""

import doctest
import importlib
import pkgutil

import pytest

from olmac import golden

MODULES = sorted([info.name for info in pkgutil.walk_packages(golden.__path__, "olmac.golden.")]
                 + ["olmac.sim.codec"])


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    """Every ``>>>`` example of the module prints what its docstring says."""
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
