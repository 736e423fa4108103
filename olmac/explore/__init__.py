"""Design-space exploration (``olmac explore``, docs/explore.md): which widths, scheme,
outlier ratio, array width, multipliers and board give the best accuracy for the LUTs, the
memory and the clock one has.

A sweep is a TOML file (``spec``: :func:`load_spec`, its points :func:`expand`); each point
is one Dask task (``point``: :func:`measure_point`, calling the flow's own functions) whose
result is cached by content (``cache``); the driver (``driver``: :func:`explore`) runs the
tasks on a ``LocalCluster`` or an existing scheduler and writes ``results.jsonl`` and
``results.csv`` as they arrive, and the report (``report``) draws the Pareto fronts.
"""

from .cache import Cache, point_key
from .driver import COLUMNS, ExploreResult, explore, point_label
from .point import measure_point
from .report import PLOTS, pareto_front, write_report
from .spec import (AXES, MEASUREMENTS, UNSUPPORTED_AXES, Spec, SpecError, expand, load_spec,
                   parse_spec)

__all__ = ["AXES", "MEASUREMENTS", "UNSUPPORTED_AXES", "Spec", "SpecError", "load_spec",
           "parse_spec", "expand", "measure_point", "point_key", "Cache", "COLUMNS",
           "ExploreResult", "point_label", "explore", "PLOTS", "pareto_front", "write_report"]
