"""The worked examples in the docstrings of the golden model, the demo models, the sweeps'
report and driver (and the port codec) still hold."""

import doctest
import importlib
import pkgutil

import pytest

from olmac import golden, models

MODULES = sorted([info.name for package in (golden, models)
                  for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
                 + ["olmac.flow", "olmac.sim.codec", "olmac.explore.report",
                    "olmac.explore.driver"])


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    """Every ``>>>`` example of the module prints what its docstring says."""
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
