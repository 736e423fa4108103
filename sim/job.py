"""A GEMM job for the RTL backend: configuration, operands and where to put the results.

The pytest runner, the CLI and the benchmarks write a job; the cocotb testbench
(:mod:`sim.gemm_tb`) reads it inside the simulator process.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["EngineConfig", "GemmCase", "Job", "JOB_ENV"]

#: Environment variable through which the simulator process finds its job file.
JOB_ENV = "OLMAC_JOB"


@dataclass(frozen=True)
class EngineConfig:
    """Parameters of one generated :class:`hw.GemmEngine`."""
    lanes: int
    cols: int
    act_bits: int
    weight_bits: int
    act_signed: bool
    max_k: int
    out_bits: int | None = None
    out_signed: bool = True
    act_outlier_lanes: int = 0
    weight_outlier_lanes: int = 0
    act_outlier_bits: int = 16
    weight_outlier_bits: int = 16
    act_outlier_slots: int | None = None
    weight_outlier_slots: int | None = None
    out_outlier_bits: int | None = None
    plane_shift_bits: int = 0
    max_plane_shift: int | None = None
    codebook: dict | None = None

    @property
    def name(self):
        """A file-name-safe identifier, unique per configuration."""
        act = f"{'s' if self.act_signed else 'u'}{self.act_bits}"
        out = "acc" if self.out_bits is None else \
            f"{'s' if self.out_signed else 'u'}{self.out_bits}"
        name = f"l{self.lanes}c{self.cols}_a{act}_w{self.weight_bits}_k{self.max_k}_{out}"
        if self.act_outlier_lanes:
            name += (f"_ao{self.act_outlier_lanes}b{self.act_outlier_bits}"
                     f"s{self.act_outlier_slots or self.lanes}")
        if self.weight_outlier_lanes:
            name += (f"_wo{self.weight_outlier_lanes}b{self.weight_outlier_bits}"
                     f"s{self.weight_outlier_slots or self.lanes}")
        if self.out_outlier_bits:
            name += f"_oo{self.out_outlier_bits}"
        if self.plane_shift_bits:
            name += f"_ps{self.plane_shift_bits}m{self.max_plane_shift}"
        if self.codebook:
            book = self.codebook
            name += (f"_cb{book['idx_bits']}{'z' if book.get('zero') else ''}"
                     f"e{book['entry_bits']}{book.get('granularity', 'layer')[0]}"
                     f"{book.get('subgroups', 1)}")
        return name


@dataclass
class GemmCase:
    """One GEMM: ``acts`` (M×K), ``weights`` (K×N, or P×K×N planes with ``plane_shifts``
    (P-1)×N, §8; for a codebook engine, golden's decode of the SYQ ``codes`` (N×K) and
    ``tables``, docs/codebooks.md) and, for a requantizing engine, the
    per-channel ``bias``, ``multiplier``, ``shift`` (length N), ``relu`` and, with output
    outliers (§7), the layer's ``outlier_threshold``."""
    acts: np.ndarray
    weights: np.ndarray
    bias: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None
    relu: bool = False
    outlier_threshold: int | None = None
    plane_shifts: np.ndarray | None = None
    codes: np.ndarray | None = None
    tables: np.ndarray | None = None


@dataclass
class Job:
    """Everything one simulator run needs. ``pause_probability`` randomizes ``valid`` on
    every input and ``ready`` on the output; ``check`` makes the testbench's scoreboard
    compare every output vector with the golden model as it arrives."""
    config: EngineConfig
    cases: list[GemmCase]
    pause_probability: float = 0.0
    seed: int = 0
    check: bool = True
    label: str = "job"
    results: list[np.ndarray] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for index, case in enumerate(self.cases):
            for name in ("acts", "weights", "bias", "multiplier", "shift", "plane_shifts",
                         "codes", "tables"):
                value = getattr(case, name)
                if value is not None:
                    arrays[f"{index}_{name}"] = np.asarray(value, dtype=np.int64)
        np.savez(directory / f"{self.label}.npz", **arrays)
        manifest = {
            "config": asdict(self.config),
            "relu": [case.relu for case in self.cases],
            "outlier_threshold": [case.outlier_threshold for case in self.cases],
            "pause_probability": self.pause_probability,
            "seed": self.seed,
            "check": self.check,
            "label": self.label,
        }
        path = directory / f"{self.label}.json"
        path.write_text(json.dumps(manifest, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "Job":
        manifest = json.loads(path.read_text())
        arrays = np.load(path.with_suffix(".npz"))
        cases = []
        for index, (relu, threshold) in enumerate(zip(manifest["relu"],
                                                      manifest["outlier_threshold"])):
            get = lambda name: arrays[f"{index}_{name}"] if f"{index}_{name}" in arrays else None
            cases.append(GemmCase(get("acts"), get("weights"), get("bias"), get("multiplier"),
                                  get("shift"), relu, threshold, get("plane_shifts"),
                                  get("codes"), get("tables")))
        return cls(EngineConfig(**manifest["config"]), cases, manifest["pause_probability"],
                   manifest["seed"], manifest["check"], manifest["label"])

    def save_results(self, path: Path):
        np.savez(path.with_suffix(".results.npz"),
                 **{str(index): result for index, result in enumerate(self.results)})
        path.with_suffix(".stats.json").write_text(json.dumps(self.stats, indent=1))

    def load_results(self, path: Path):
        results = np.load(path.with_suffix(".results.npz"))
        self.results = [results[str(index)] for index in range(len(self.cases))]
        self.stats = json.loads(path.with_suffix(".stats.json").read_text())
