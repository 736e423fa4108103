"""A GEMM job for the RTL backend: configuration, operands and where to put the results.

The pytest runner, the CLI and the benchmarks write a job; the cocotb testbench
(:mod:`sim.gemm_tb`) reads it inside the simulator process.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from olmac import golden
from olmac.golden.mmse import combine_plane_accumulators
from olmac.hw import GemmEngine

__all__ = ["GemmCase", "golden_result", "Job", "JOB_ENV"]

#: Environment variable through which the simulator process finds its job file.
JOB_ENV = "OLMAC_JOB"


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


def golden_result(config: GemmEngine.Config, case: GemmCase):
    """What the engine ``config`` describes must output for ``case``: §2/§3 on the
    recombined tensors (§6: the reference of a layer with outliers is the exact GEMM of
    dense + sparse), planes combined by §8, split by §7 when the engine extracts output
    outliers. Returns ``(dense, outliers or None)``, each M×N."""
    planes = case.weights if case.weights.ndim == 3 else case.weights[None]
    accs = torch.stack([golden.gemm(
        torch.from_numpy(case.acts), torch.from_numpy(plane),
        act_bits=config.act_bits, act_signed=config.act_signed,
        weight_bits=config.weight_bits,
        act_outlier_bits=config.act_outlier_bits if config.act_outlier_lanes else None,
        weight_outlier_bits=config.weight_outlier_bits if config.weight_outlier_lanes else None)
        for plane in planes])
    acc = accs[0] if case.plane_shifts is None else \
        combine_plane_accumulators(accs, torch.from_numpy(case.plane_shifts))
    if config.out_bits is None:
        return acc.numpy(), None
    y = golden.requantize_round_half_up(
        acc, torch.from_numpy(case.bias), torch.from_numpy(case.multiplier),
        torch.from_numpy(case.shift), out_bits=config.out_outlier_bits or config.out_bits,
        out_signed=config.out_signed, relu=case.relu)
    if config.out_outlier_bits is None:
        return y.numpy(), None
    dense, outliers = golden.split_output_outliers(y, case.outlier_threshold,
                                                   out_bits=config.out_bits,
                                                   out_signed=config.out_signed)
    return dense.numpy(), outliers.numpy()


@dataclass
class Job:
    """Everything one simulator run needs. ``pause_probability`` randomizes ``valid`` on
    every input and ``ready`` on the output; ``check`` makes the testbench's scoreboard
    compare every output vector with the golden model as it arrives."""
    config: GemmEngine.Config
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
        return cls(GemmEngine.Config(**manifest["config"]), cases, manifest["pause_probability"],
                   manifest["seed"], manifest["check"], manifest["label"])

    def save_results(self, path: Path):
        np.savez(path.with_suffix(".results.npz"),
                 **{str(index): result for index, result in enumerate(self.results)})
        path.with_suffix(".stats.json").write_text(json.dumps(self.stats, indent=1))

    def load_results(self, path: Path):
        results = np.load(path.with_suffix(".results.npz"))
        self.results = [results[str(index)] for index in range(len(self.cases))]
        self.stats = json.loads(path.with_suffix(".stats.json").read_text())
