"""The build cache of compiled Verilator models (sim/cache.py) and ``olmac cache``: a model
is built once per distinct input, found again without a build, kept within its size and
removed by ``clean``. A stand-in build function writes the files a Verilator build would."""

import os
import threading
import time

import pytest

from olmac.cli import main
from olmac.sim import cache
from olmac.sim.cache import cached_model, cache_dir, cache_size, clean_cache

pytestmark = pytest.mark.filterwarnings("error")


class _Build:
    """Writes a fake simulator binary and an intermediate object, counting its calls."""

    def __init__(self, size=1000):
        self.calls = 0
        self.size = size

    def __call__(self, folder, paths):
        self.calls += 1
        assert all(path.parent == folder and path.exists() for path in paths)
        (folder / "top").write_bytes(b"\0" * self.size)
        (folder / "Vtop__ALL.o").write_bytes(b"\0" * 10 * self.size)


def test_second_run_of_the_same_verilog_does_not_build(tmp_path):
    build = _Build()
    sources = {"top.v": "module top; endmodule\n"}
    model, seconds = cached_model(sources, "top", build, root=tmp_path)
    again, seconds_again = cached_model(dict(sources), "top", build, root=tmp_path)
    assert (again, seconds_again, build.calls) == (model, 0.0, 1)
    assert sorted(path.name for path in model.iterdir()) == ["top", "top.v"]  # objects gone


def test_a_second_process_asking_during_a_build_waits_for_it(tmp_path):
    """While one caller builds a model, another caller of the same model (here a thread,
    an open file of its own like a second pytest-xdist worker) waits for that build and
    gets its folder; nothing is built twice."""
    building = threading.Event()
    build = _Build()

    def slow_build(folder, paths):
        building.set()
        time.sleep(0.5)  # the second caller arrives meanwhile
        build(folder, paths)

    sources = {"top.v": "module top; endmodule\n"}
    results = []
    first = threading.Thread(target=lambda: results.append(
        cached_model(sources, "top", slow_build, root=tmp_path)))
    first.start()
    building.wait()
    second = cached_model(sources, "top", slow_build, root=tmp_path)
    first.join()
    assert build.calls == 1
    assert second == (results[0][0], 0.0) and (second[0] / "top").exists()


@pytest.mark.parametrize("change", ["source", "args", "ports", "toplevel"])
def test_any_change_of_the_build_inputs_builds_another_model(tmp_path, change):
    build = _Build()
    base = dict(sources={"top.v": "module top; endmodule\n"}, toplevel="top",
                build_args=("-O3",), ports=("clk",))
    other = dict(base)
    other.update({"source": {"sources": {"top.v": "module top; wire a; endmodule\n"}},
                  "args": {"build_args": ("-O2",)}, "ports": {"ports": ("rst",)},
                  "toplevel": {"toplevel": "top2"}}[change])
    first, _ = cached_model(base.pop("sources"), base.pop("toplevel"), build, root=tmp_path,
                            **base)
    second, _ = cached_model(other.pop("sources"), other.pop("toplevel"), _Build(),
                             root=tmp_path, **other)
    assert first != second and first.exists() and second.exists()


def test_clean_removes_least_recently_used_first(tmp_path):
    models = []
    for index in range(3):
        model, _ = cached_model({"top.v": f"// {index}\n"}, "top", _Build(), root=tmp_path)
        os.utime(model, (1000 + index, 1000 + index))
        models.append(model)
    os.utime(models[0], (2000, 2000))  # used again: now the newest
    assert cache_size(tmp_path) == (3, 3 * 1005)
    assert clean_cache(tmp_path, keep_bytes=2 * 1005) == (1, 1005)
    assert [model.exists() for model in models] == [True, False, True]
    assert clean_cache(tmp_path) == (2, 2 * 1005)
    assert cache_size(tmp_path) == (0, 0)


def test_clean_removes_builds_left_by_killed_processes(tmp_path):
    stale, fresh = (tmp_path / "verilator" / name for name in (".abc-old", ".abc-new"))
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
    os.utime(stale, (1000, 1000))
    clean_cache(tmp_path)
    assert (stale.exists(), fresh.exists()) == (False, True)


def test_cache_outgrowing_its_cap_drops_the_oldest(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "MAX_CACHE_BYTES", 2500)
    first, _ = cached_model({"top.v": "// 1\n"}, "top", _Build(), root=tmp_path)
    os.utime(first, (1000, 1000))
    cached_model({"top.v": "// 2\n"}, "top", _Build(), root=tmp_path)
    cached_model({"top.v": "// 3\n"}, "top", _Build(), root=tmp_path)
    assert not first.exists() and cache_size(tmp_path)[0] == 2


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("OLMAC_CACHE", raising=False)
    assert cache_dir() == cache.Path("build") / "cache"
    monkeypatch.setenv("OLMAC_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_cli_cache_info_and_clean(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OLMAC_CACHE", str(tmp_path))
    cached_model({"top.v": "// 1\n"}, "top", _Build(), root=tmp_path)
    main(["cache"])
    assert capsys.readouterr().out == f"olmac: 1 models (0.0 MiB) in {tmp_path}\n"
    main(["cache", "clean"])
    assert capsys.readouterr().out == f"olmac: removed 1 models (0.0 MiB) from {tmp_path}\n"
    assert cache_size(tmp_path) == (0, 0)
