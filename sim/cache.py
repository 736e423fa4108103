"""One cache of compiled Verilator models, keyed by a hash of everything that goes into the
build (the Verilog text, the top module, the visible ports, the Verilator arguments and
versions, the CPU), so a second run of the same generated Verilog never rebuilds (docs/network.md
§16).

The cache lives in ``$OLMAC_CACHE`` or, by default, ``build/cache`` of the working
directory; each model is a folder ``verilator/<key>`` holding only the simulator binary,
its sources and the build log (the intermediate objects are deleted: about 6 MB a model
instead of about 145 MB). Least recently used models are removed once the cache outgrows
:data:`MAX_CACHE_BYTES`; ``olmac cache clean`` removes them all.
"""

import fcntl
import hashlib
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

__all__ = ["CACHE_ENV", "MAX_CACHE_BYTES", "cache_dir", "cache_key", "cached_model",
           "cache_size", "clean_cache"]

CACHE_ENV = "OLMAC_CACHE"
#: Least recently used models are removed beyond this size.
MAX_CACHE_BYTES = 2 << 30
_KEEP = (".v", ".vlt", ".cpp", ".log")
#: A private build folder this old (seconds) belongs to a process that died.
_STALE = 3600


def cache_dir() -> Path:
    """``$OLMAC_CACHE`` if set, else ``build/cache`` (relative to the working directory)."""
    return Path(os.environ.get(CACHE_ENV) or Path("build") / "cache")


def _host_cpu() -> str:
    """The CPU's model and instruction-set flags (Linux), else its architecture: a model
    built with ``-march=native`` must not run from a cache shared with another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return "\n".join(sorted({line for line in lines
                              if line.startswith(("model name", "flags", "Features"))}))


def cache_key(sources: dict[str, str], toplevel: str, build_args, ports) -> str:
    """The hash of a build's inputs: 24 hex digits."""
    digest = hashlib.sha256()
    for part in (toplevel, *build_args, "\0", *ports, version("verilator"), version("cocotb"),
                 _host_cpu()):
        digest.update(part.encode() + b"\0")
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return digest.hexdigest()[:24]


def _models(root: Path) -> list[Path]:
    folder = root / "verilator"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def cache_size(root: Path | None = None) -> tuple[int, int]:
    """``(models, bytes)`` in the cache."""
    models = [model for model in _models(root or cache_dir()) if not model.name.startswith(".")]
    return len(models), sum(map(_size, models))


def clean_cache(root: Path | None = None, *, keep_bytes: int = 0) -> tuple[int, int]:
    """Remove the least recently used models until the cache holds at most ``keep_bytes``;
    returns ``(models, bytes)`` removed. Private build folders older than an hour (left
    by a build whose process was killed) go too."""
    root = root or cache_dir()
    for private in _models(root):  # builds whose process was killed
        if private.name.startswith(".") and private.stat().st_mtime < time.time() - _STALE:
            shutil.rmtree(private, ignore_errors=True)
    models = [model for model in _models(root) if not model.name.startswith(".")]
    models.sort(key=lambda model: model.stat().st_mtime, reverse=True)
    sizes = [_size(model) for model in models]
    total, removed, freed = sum(sizes), 0, 0
    for model, size in reversed(list(zip(models, sizes))):  # oldest first
        if total <= keep_bytes:
            break
        shutil.rmtree(model, ignore_errors=True)
        total, removed, freed = total - size, removed + 1, freed + size
    return removed, freed


def cached_model(sources: dict[str, str], toplevel: str, build, *, build_args=(),
                 ports=(), root: Path | None = None) -> tuple[Path, float]:
    """The folder of the compiled model of ``sources`` (file name → text), building it
    first with ``build(folder, source_paths)`` if the cache does not hold it. Returns the
    folder and the seconds spent building (0 when it was cached).

    A build runs in a private folder that is renamed into place when it succeeds, and
    holds a lock on its key (``locks/<key>``): a second process asking for the same model
    meanwhile (pytest-xdist workers) waits for that build and uses its model instead of
    building it again.
    """
    root = (root or cache_dir()).resolve()
    key = cache_key(sources, toplevel, build_args, ports)
    model = root / "verilator" / key
    if (model / toplevel).exists():
        os.utime(model)  # most recently used
        return model, 0.0
    for folder in ("verilator", "locks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    with open(root / "locks" / key, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (model / toplevel).exists():  # built by the process that held the lock
            return model, 0.0
        return model, _build_model(sources, toplevel, build, model, root)


def _build_model(sources, toplevel, build, model, root) -> float:
    """Build into a private folder and rename it to ``model``; returns the seconds."""
    started = time.monotonic()
    private = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=root / "verilator"))
    try:
        paths = []
        for name, text in sources.items():
            (private / name).write_text(text)
            paths.append(private / name)
        build(private, paths)
        for entry in list(private.iterdir()):
            if entry.name != toplevel and entry.suffix not in _KEEP:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        private.rename(model)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    clean_cache(root, keep_bytes=MAX_CACHE_BYTES)
    return time.monotonic() - started
