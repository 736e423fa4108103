"""A sweep's description (docs/explore.md): a TOML file read by :func:`load_spec`, every
field checked with a one-line :class:`SpecError` naming it and its allowed values, and its
points (:func:`expand`): the cartesian product of the axes, each point keeping only the
parameters its measurements read.
"""

import importlib
import inspect
import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import olmac
from olmac.spec import ACT_BITS, WEIGHT_BITS

__all__ = ["SpecError", "Spec", "AXES", "MEASUREMENTS", "UNSUPPORTED_AXES", "load_spec",
           "parse_spec", "expand"]

#: What a point can measure: ``golden`` accuracy on the digits test split (always taken),
#: ``memory`` (the compiled core's on-chip memory bits), ``rtl`` (a bit-exact check of the
#: first ``rtl_images`` images on Verilator, and cycles per image), ``synth`` (Yosys
#: LUT4/FF/DSP/BRAM of the network core for the board's family) and ``pnr`` (place and route
#: of the network board: fmax).
MEASUREMENTS = ("golden", "memory", "rtl", "synth", "pnr")

#: The axes a spec may sweep, with the demo's value as default and the measurements that
#: read each (a point drops the axes none of its measurements reads, so that they neither
#: multiply the points nor change the cache key).
AXES = {
    "act_bits": (4, MEASUREMENTS),
    "weight_bits": (4, MEASUREMENTS),
    "scheme": ("value_aware", MEASUREMENTS),
    "outlier_ratio": (1 / 64, MEASUREMENTS),
    "highway": (True, MEASUREMENTS),
    "width": (4, ("memory", "rtl", "synth", "pnr")),
    "multipliers": ("lut", ("rtl", "synth", "pnr")),
    "requantizer": ("serial", ("rtl", "synth", "pnr")),
    "memories": ("narrow", ("rtl", "synth", "pnr")),
    "board": ("icebreaker", ("synth", "pnr")),
}

#: Axes the issue names that the flow does not vary today, and why.
UNSUPPORTED_AXES = {
    "outlier_lanes": "the compiler gives a value-aware network exactly one weight-outlier "
                     "lane (sweep outlier_ratio instead)",
}

#: The top-level fields of a spec.
_FIELDS = {"name", "model", "measure", "calibration_images", "test_images", "rtl_images",
           "axes"}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SpecError(ValueError):
    """A field of a spec is missing, unknown or out of range; the message is one line that
    names the field and its allowed values."""


@dataclass(frozen=True)
class Spec:
    """A checked sweep: its name, model, data sizes, measurements and the values of each
    axis (every axis of :data:`AXES`, defaults filled in)."""
    name: str
    model: str
    measure: tuple[str, ...]
    calibration_images: int | None
    test_images: int | None
    rtl_images: int
    axes: dict
    #: What identifies the model's weights for the cache: olmac's version and the model's
    #: name, plus the source of a model module of the user's own.
    model_source: str


def _choices(name, value, allowed):
    if value not in allowed:
        raise SpecError(f"{name} must be one of {', '.join(map(repr, allowed))}, not "
                        f"{value!r}")
    return value


def _integer(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f"≥ {low}"
        raise SpecError(f"{name} must be an integer {allowed}, not {value!r}")
    return value


def _axis_value(name, value):
    """One value of axis ``name``, checked against what the flow accepts."""
    from olmac.fpga.build import BOARDS
    from olmac.golden.program import SCHEMES
    from olmac.hw.multipliers import MODES
    from olmac.hw.network import MEMORY_STYLES, REQUANTIZERS
    field = f"axes.{name}"
    if name == "act_bits":
        return _integer(field, value, *ACT_BITS)
    if name == "weight_bits":
        return _integer(field, value, *WEIGHT_BITS)
    if name == "width":
        return _integer(field, value, 1, 64)
    if name == "outlier_ratio":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise SpecError(f"{field} must be a number in (0, 1), not {value!r}")
        return float(value)
    if name == "highway":
        if not isinstance(value, bool):
            raise SpecError(f"{field} must be true or false, not {value!r}")
        return value
    return _choices(field, value, {"scheme": SCHEMES, "multipliers": MODES,
                                   "requantizer": REQUANTIZERS, "memories": MEMORY_STYLES,
                                   "board": tuple(BOARDS)}[name])


def _model_source(model):
    """The cache's reading of ``model``: a demo name, or ``module:callable`` with the
    module's source (so an edited model is a new model)."""
    from olmac.flow import DEMO_MODELS
    if not isinstance(model, str):
        raise SpecError(f"model must be a string ({', '.join(DEMO_MODELS)} or "
                        f"'module:callable'), not {model!r}")
    if model in DEMO_MODELS:
        return f"olmac {olmac.__version__} demo {model}"
    module_name, _, attribute = model.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"model must be one of {', '.join(DEMO_MODELS)} or "
                        f"'module:callable', not {model!r}")
    try:
        module = importlib.import_module(module_name)
        getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise SpecError(f"model {model!r} cannot be loaded: {error}") from None
    return f"olmac {olmac.__version__} {model}\n{inspect.getsource(module)}"


def parse_spec(values: dict, *, default_name: str = "explore") -> Spec:
    """Check the fields of a spec (the TOML file as a dict) and fill in the defaults.

    Raises
    ------
    SpecError
        If a field is unknown, missing or has a value outside its allowed values.
    """
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise SpecError(f"{unknown[0]} is not a spec field; the fields are "
                        f"{', '.join(sorted(_FIELDS))}")
    name = values.get("name", default_name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(f"name must be letters, digits, '_', '-' or '.', not {name!r}")
    if "model" not in values:
        from olmac.flow import DEMO_MODELS
        raise SpecError(f"model is required: {', '.join(DEMO_MODELS)} or 'module:callable'")
    model = values["model"]
    source = _model_source(model)
    measure = values.get("measure", ["golden"])
    if isinstance(measure, str) or not isinstance(measure, list):
        raise SpecError(f"measure must be a list of {', '.join(MEASUREMENTS)}, not {measure!r}")
    for item in measure:
        _choices("measure", item, MEASUREMENTS)
    measure = tuple(item for item in MEASUREMENTS if item == "golden" or item in measure)
    sizes = {}
    for field in ("calibration_images", "test_images"):
        value = values.get(field)
        sizes[field] = None if value is None else _integer(field, value, 1)
    rtl_images = _integer("rtl_images", values.get("rtl_images", 20), 1)
    axes_table = values.get("axes", {})
    if not isinstance(axes_table, dict):
        raise SpecError(f"axes must be a table of axis = value or [values], not "
                        f"{axes_table!r}")
    axes = {}
    for axis in axes_table:
        if axis in UNSUPPORTED_AXES:
            raise SpecError(f"axes.{axis} is not supported: {UNSUPPORTED_AXES[axis]}")
        if axis not in AXES:
            raise SpecError(f"axes.{axis} is not an axis; the axes are {', '.join(AXES)}")
    for axis, (default, _readers) in AXES.items():
        given = axes_table.get(axis, [default])
        given = given if isinstance(given, list) else [given]
        if not given:
            raise SpecError(f"axes.{axis} must hold at least one value")
        axes[axis] = tuple(dict.fromkeys(_axis_value(axis, value) for value in given))
    return Spec(name=name, model=model, measure=measure, rtl_images=rtl_images, axes=axes,
                model_source=source, **sizes)


def load_spec(path: Path | str) -> Spec:
    """Read and check the TOML spec at ``path``; its name defaults to the file's stem.

    Raises
    ------
    SpecError
        If the file cannot be read, is not TOML, or a field is wrong (:func:`parse_spec`).
    """
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise SpecError(f"spec {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"spec {path} is not TOML: {error}") from None
    return parse_spec(values, default_name=path.stem)


def expand(spec: Spec) -> list[dict]:
    """The points of ``spec``: every combination of its axes' values, each as a dict of the
    parameters its measurements read (``outlier_ratio`` only for ``value_aware``), without
    repeats, in the order of the axes."""
    points = []
    for combination in itertools.product(*spec.axes.values()):
        point = {axis: value for (axis, value) in zip(spec.axes, combination)
                 if any(reader in spec.measure for reader in AXES[axis][1])}
        if point["scheme"] != "value_aware":
            del point["outlier_ratio"]
        if point not in points:
            points.append(point)
    return points
