"""The wheel installs one top-level package, ``olmac``, with the repository's folders in it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
#: What the wheel is built from: the package folders and the project's metadata.
SOURCES = ("olmac", "golden", "hw", "sim", "fpga", "pyproject.toml", "README.md")


def test_wheel_has_one_top_level_package(tmp_path):
    """A wheel built from a copy of the sources holds only ``olmac/`` and its metadata, its
    ``top_level.txt`` names ``olmac`` alone, and each folder of the design is a subpackage."""
    source = tmp_path / "source"
    for name in SOURCES:
        copy = shutil.copytree if (REPOSITORY / name).is_dir() else shutil.copy
        copy(REPOSITORY / name, source / name,
             **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree
                else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", str(source), "-w", str(tmp_path)],
                   check=True, capture_output=True)
    wheel, = tmp_path.glob("olmac-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level, = [name for name in names if name.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["olmac"]
    assert {name.split("/")[0] for name in names} == {"olmac", top_level.split("/")[0]}
    for part in ("golden", "hw", "sim", "fpga"):
        assert f"olmac/{part}/__init__.py" in names
