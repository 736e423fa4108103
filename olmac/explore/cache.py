"""Results by content: a point's key hashes everything its measurements read (its
parameters, the measurements, the data sizes, olmac's version and the model's source), so a
re-run sweep reuses every point whose inputs are unchanged (docs/explore.md)."""

import hashlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["point_key", "Cache"]


def point_key(point: dict, spec) -> str:
    """The SHA-256 (hex) of ``point`` as ``spec`` measures it."""
    inputs = {"point": point, "measure": spec.measure, "model": spec.model_source,
              "calibration_images": spec.calibration_images,
              "test_images": spec.test_images,
              "rtl_images": spec.rtl_images if "rtl" in spec.measure else None}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


class Cache:
    """One JSON file of measurements per key under ``directory``, each written whole (to a
    temporary file, then renamed) so an interrupted sweep never leaves half an entry."""

    def __init__(self, directory: Path | str):
        self._directory = Path(directory)

    def get(self, key: str) -> dict | None:
        """The measurements stored under ``key``, or ``None``."""
        try:
            return json.loads((self._directory / f"{key}.json").read_text())
        except FileNotFoundError:
            return None

    def put(self, key: str, measurements: dict) -> None:
        """Store ``measurements`` under ``key``."""
        self._directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self._directory, suffix=".tmp",
                                         delete=False) as file:
            json.dump(measurements, file)
        os.replace(file.name, self._directory / f"{key}.json")
