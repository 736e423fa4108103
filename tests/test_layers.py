"""olmac's parts import one way, in layers, and the reference never reads the hardware.

The layer order is written here once (and drawn in the README's "What is where"): a module
may import its own part and any part of a lower layer, nothing else. ``golden`` and ``hw``
share a layer, so neither can import the other: the bit-exact check is only worth something
if the reference and the hardware are two independent readings of docs/semantics.md.
Imports inside functions count as much as those at the top of a module.
"""

import ast
import importlib
from pathlib import Path

import pytest

#: Each part of olmac and its layer; a module belongs to the longest part its name starts with.
LAYERS = {
    "olmac": 0,            # the package itself: its version only
    "olmac.spec": 0,       # limits, widths, protocol constants: plain data
    "olmac.golden": 1,     # the bit-exact integer reference and the quantizers
    "olmac.hw": 1,         # the Amaranth generators
    "olmac.models": 2,     # float demo models, data, the training loop, studies
    "olmac.compiler": 2,   # integer program → the network core's configuration and memories
    "olmac.host_link": 2,  # the host side of the UART link
    "olmac.flow": 3,       # a demo or user model through quantization
    "olmac.budget": 3,     # per-layer widths under a bits or kbit budget, by sensitivity
    "olmac.sim": 4,        # cocotb on Verilator
    "olmac.formal": 4,     # SymbiYosys proofs of the hardware blocks
    "olmac.fpga": 4,       # board tops, synthesis, place and route
    "olmac.network": 5,    # whole networks on golden or the RTL
    "olmac.gemm": 5,       # one GEMM on golden or the RTL
    "olmac.board": 5,      # the board client
    "olmac.explore": 6,    # design-space sweeps on Dask
    "olmac.cli": 7,        # the command line, one module per subcommand
}


def part_of(module: str) -> str:
    """The part of ``module`` in :data:`LAYERS` (the longest matching name).

    Raises
    ------
    KeyError
        If ``module`` is in no part: a new module must be given a layer here.
    """
    for length in range(module.count(".") + 1, 0, -1):
        name = ".".join(module.split(".")[:length])
        if name in LAYERS:
            return name
    raise KeyError(module)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every olmac module ``source`` (the text of ``module``) imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            # `from olmac import golden` imports the part olmac.golden
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if f"{base}.{alias.name}" in LAYERS)
    return {name for name in found if name == "olmac" or name.startswith("olmac.")}


def violations(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that go up a layer or across to another part of its layer."""
    own = part_of(module)
    bad = []
    for name in sorted(imports):
        other = part_of(name)
        if other == own or other == "olmac" and name == "olmac":
            continue
        if LAYERS[other] >= LAYERS[own]:
            bad.append(f"{module} imports {name} ({other}: layer {LAYERS[other]}, "
                       f"{own}: layer {LAYERS[own]})")
    return bad


def package_modules():
    """(module name, file) for every module of the installed olmac package."""
    roots = {"olmac": None, "olmac.golden": None, "olmac.hw": None, "olmac.sim": None,
             "olmac.fpga": None}
    for name in roots:
        roots[name] = Path(importlib.import_module(name).__path__[0])
    for name, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([name, *parts]), path


MODULES = list(package_modules())


def test_every_module_has_a_layer():
    """Each module of the package belongs to a part with a layer."""
    missing = []
    for name, _ in MODULES:
        try:
            part_of(name)
        except KeyError:
            missing.append(name)
    assert not missing, f"modules without a layer in LAYERS: {missing}"


@pytest.mark.parametrize("name, path", MODULES, ids=[name for name, _ in MODULES])
def test_imports_go_down(name, path):
    """No module imports a higher layer, or another part of its own layer."""
    imports = imported_modules(path.read_text(), name, path.name == "__init__.py")
    assert not violations(name, imports), "\n".join(violations(name, imports))


@pytest.mark.parametrize("name, source, bad", [
    ("olmac.hw.mac_array", "def f():\n    from olmac.golden.integer import gemm\n",
     "olmac.golden.integer"),
    ("olmac.golden.program", "from olmac import hw\n", "olmac.hw"),
    ("olmac.sim.runner", "import olmac.cli\n", "olmac.cli"),
    ("olmac.hw.network.core", "from ...spec import X\nfrom ...compiler import Y\n",
     "olmac.compiler"),
])
def test_checker_catches_a_wrong_import(name, source, bad):
    """The checker itself: an import inside a function, one across golden/hw, one upward and a
    relative one upward are each reported (so the layer test can fail)."""
    found = violations(name, imported_modules(source, name, False))
    assert len(found) == 1 and f"imports {bad} " in found[0]


def test_no_path_from_file():
    """Paths to build/ and caches are passed in or relative to the working directory, never
    found from a module's own location (which breaks outside an editable install)."""
    offenders = [name for name, path in MODULES if "Path(__file__)" in path.read_text()]
    assert not offenders
