"""The sweep on Dask (:func:`explore`): one task per point on a ``LocalCluster`` of this
machine or on the scheduler at ``scheduler``, results written to the table as they arrive,
a failed point recorded with its error while the rest go on, and the report at the end
(or at Ctrl-C, with what is done)."""

import csv
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache, point_key
from .point import measure_point
from .report import write_report
from .spec import AXES, Spec, expand

__all__ = ["COLUMNS", "ExploreResult", "point_label", "explore"]

#: The table's columns: the point, its status, its measurements, then the error.
COLUMNS = ("id", "label", "status", *AXES, "accuracy_percent", "test_images", "memory_bits",
           "rtl_bit_exact", "rtl_mismatching_images", "cycles_per_image", "luts",
           "flip_flops", "dsps", "brams", "fmax_mhz", "board_luts", "board_logic",
           "board_dsps", "board_brams", "images_per_second", "seconds", "cached", "error")

#: Short names of the axes in point labels.
_SHORT = {"act_bits": "a", "weight_bits": "w", "multipliers": "", "requantizer": "",
          "memories": "", "board": ""}
_SCHEMES = {"value_aware": "va", "mmse": "mmse", "multi_tensor": "mt", "syq": "syq"}


@dataclass(frozen=True)
class ExploreResult:
    """A finished sweep: its rows (as in ``results.jsonl``), how many points were computed
    on the cluster, taken from the cache, and failed, and where the table and report lie."""
    rows: list
    computed: int
    cached: int
    failed: int
    out_dir: Path


def point_label(point: dict, varying) -> str:
    """A short name of ``point`` from the axes in ``varying`` (those with more than one
    value), e.g. ``a4 w8 va r0.0156 4x4``; ``default`` when nothing varies.

    >>> point_label({"act_bits": 4, "scheme": "mmse", "highway": False}, ["act_bits",
    ...             "scheme", "highway"])
    'a4 mmse no-highway'
    """
    parts = []
    for axis in varying:
        if axis not in point:
            continue
        value = point[axis]
        if axis == "highway":
            parts.append("highway" if value else "no-highway")
        elif axis == "scheme":
            parts.append(_SCHEMES.get(value, value))
        elif axis == "outlier_ratio":
            parts.append(f"r{value:.3g}")
        elif axis == "width":
            parts.append(f"{value}x{value}")
        else:
            parts.append(f"{_SHORT[axis]}{value}")
    return " ".join(parts) or "default"


class _Table:
    """``results.jsonl`` and ``results.csv`` under ``directory``, begun afresh; each row is
    appended in one write and flushed, so an interrupted sweep leaves whole rows only."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(directory / "results.jsonl", "w")
        self._csv = open(directory / "results.csv", "w", newline="")
        self._write(self._csv, self._csv_line(dict(zip(COLUMNS, COLUMNS))))

    @staticmethod
    def _write(file, text):
        file.write(text)
        file.flush()
        os.fsync(file.fileno())

    @staticmethod
    def _csv_line(row):
        text = io.StringIO()
        csv.writer(text).writerow(["" if row.get(column) is None else row[column]
                                   for column in COLUMNS])
        return text.getvalue()

    def append(self, row: dict) -> None:
        self._write(self._jsonl, json.dumps(row) + "\n")
        self._write(self._csv, self._csv_line(row))

    def close(self):
        self._jsonl.close()
        self._csv.close()

    def rows(self) -> list[dict]:
        """The rows written, read back from ``results.jsonl``."""
        with open(self._jsonl.name) as file:
            return [json.loads(line) for line in file]


def _client(scheduler, workers):
    """A Dask client of the scheduler at ``scheduler``, or of a new ``LocalCluster`` of
    ``workers`` one-thread worker processes; returns ``(client, cluster or None)``."""
    from dask.distributed import Client, LocalCluster
    if scheduler is not None:
        return Client(scheduler), None
    # ":0": any free port for the scheduler's HTTP server (and dashboard, where bokeh is
    # installed), so two sweeps on one machine do not contend for Dask's 8787
    # silence_logs: the nannies' warnings when a busy worker is slow to stop at the end
    # would follow the summary; a worker lost mid-sweep shows as a failed row anyway
    cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                           processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _error(future) -> str:
    error = future.exception()
    return f"{type(error).__name__}: {error}"


def explore(spec: Spec, *, scheduler: str | None = None, workers: int | None = None,
            out_dir: Path | str | None = None, progress: bool = True) -> ExploreResult:
    """Measure every point of ``spec`` on Dask and write the table and the report under
    ``out_dir`` (default ``build/explore/<spec name>`` of the working directory).

    Points found in the cache (``out_dir/cache``) are written at once; the others are one
    task each on the cluster: a new ``LocalCluster`` of ``workers`` processes (default: one
    per core), or the running scheduler at ``scheduler`` (``tcp://HOST:PORT``), whose
    workers must have olmac installed and write their builds under ``out_dir/work``
    relative to their own working directory. A point that raises is a ``failed`` row with
    its error (and is not cached); the sweep goes on. On Ctrl-C the outstanding tasks are
    cancelled, the report drawn from the rows done, and ``KeyboardInterrupt`` raised again.
    """
    from dask.distributed import as_completed
    from tqdm import tqdm
    out_dir = Path(out_dir) if out_dir is not None else Path("build") / "explore" / spec.name
    points = expand(spec)
    varying = [axis for axis, values in spec.axes.items() if len(values) > 1]
    settings = {"model": spec.model, "measure": spec.measure,
                "calibration_images": spec.calibration_images,
                "test_images": spec.test_images, "rtl_images": spec.rtl_images}
    cache = Cache(out_dir / "cache")
    keyed = [(point, point_key(point, spec)) for point in points]
    stored = {key: cache.get(key) for _point, key in keyed}
    pending = {key: point for point, key in keyed if stored[key] is None}
    # connect before touching the table: an unreachable scheduler leaves the last one as is
    client, cluster = _client(scheduler, workers) if pending else (None, None)
    table = _Table(out_dir)
    bar = tqdm(total=len(points), desc=f"olmac explore {spec.name}", unit="point",
               disable=not progress, file=sys.stderr)
    counts = {"computed": 0, "cached": len(points) - len(pending), "failed": 0}

    def record(point, key, status, measurements, error, cached):
        row = {"id": key[:12], "label": point_label(point, varying), "status": status,
               **point, **measurements, "cached": cached, "error": error}
        table.append(row)
        bar.update()
        return row

    futures = {}
    try:
        for point, key in keyed:
            if stored[key] is not None:
                record(point, key, "ok", stored[key], "", True)
        if pending:
            futures = {client.submit(measure_point, point, settings,
                                     str(out_dir / "work" / key[:16]),
                                     key=f"olmac-explore-{key}", retries=0): key
                       for key, point in pending.items()}
            bar.set_postfix(running=min(len(futures), sum(client.nthreads().values())),
                            failed=0)
            for done, future in enumerate(as_completed(futures), start=1):
                key = futures[future]
                counts["computed"] += 1
                if future.status == "finished":
                    measurements = future.result()
                    cache.put(key, measurements)
                    record(pending[key], key, "ok", measurements, "", False)
                else:
                    counts["failed"] += 1
                    row = record(pending[key], key, "failed", {}, _error(future), False)
                    bar.write(f"failed: {row['label']}: {row['error'].splitlines()[0]}")
                bar.set_postfix(running=min(len(futures) - done,
                                            sum(client.nthreads().values())),
                                failed=counts["failed"])
    except KeyboardInterrupt:
        if futures:
            client.cancel(list(futures))
        raise
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        bar.close()
        table.close()
        # the table is the record: an interrupt between two writes leaves it whole rows
        rows = table.rows()
        write_report(out_dir, spec.name, rows)
    return ExploreResult(rows=rows, out_dir=out_dir, **counts)
