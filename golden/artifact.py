"""The integer program as a versioned artifact on disk (docs/program.md §14).

An artifact is a directory with two files: ``program.json``, the manifest (format name,
version, input, values, ops with their attributes and tensor references, output, and
checksums), and ``program.npz``, every tensor in the smallest integer dtype of its
declared format. ``load`` validates everything and raises ``ArtifactError`` naming the op,
field or tensor; a file that was truncated, tampered with or written by a newer writer is
refused, never half-read. ``save`` then ``load`` gives back an equal program.
"""

import hashlib
import json
import zipfile
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import torch

from .program import OPS, ActOutliers, IntegerProgram, ProgramError, Value, tensor_specs

__all__ = ["FORMAT", "VERSION", "MANIFEST_FILE", "TENSORS_FILE", "ArtifactError", "save",
           "load", "manifest_checksum"]

#: The ``format`` field of every manifest.
FORMAT = "olmac-integer-program"
#: The version this module writes and the only one it reads (§14).
VERSION = 4
MANIFEST_FILE = "program.json"
TENSORS_FILE = "program.npz"

_PAIRS = ("kernel", "stride", "padding")
_TOP_FIELDS = ("format", "version", "tensors_file", "input", "values", "ops", "output",
               "manifest_sha256")
_INPUT_FIELDS = ("shape", "pixel_min", "pixel_max", "pixel_scale", "real_inputs",
                 "input_order")
_VALUE_FIELDS = ("shape", "bits", "signed", "scale", "outliers")
_OUTLIER_FIELDS = ("bits", "word_values", "block_words", "slots")
_REF_FIELDS = ("key", "shape", "dtype", "sha256")


class ArtifactError(ValueError):
    """An artifact cannot be loaded; the message says which file, op, field or tensor."""


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 (hex) of the manifest without its ``manifest_sha256`` field, serialized as
    canonical JSON (sorted keys, no spaces, ASCII)."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def save(program: IntegerProgram, directory: Path | str) -> Path:
    """Write ``program`` as ``directory/program.json`` + ``directory/program.npz``
    (created or overwritten) and return the manifest's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    ops = []
    for index, op in enumerate(program.ops):
        entry = {"kind": op.KIND}
        entry.update({name: _jsonable(value) for name, value in op.attributes().items()})
        specs = tensor_specs(op)
        references = {}
        for name, tensor in op.tensors().items():
            key = f"op{index}.{name}"
            array = tensor.detach().cpu().numpy().astype(specs[name].dtype)
            arrays[key] = array
            references[name] = {"key": key, "shape": list(array.shape),
                                "dtype": str(array.dtype), "sha256": _digest(array)}
        entry["tensors"] = references
        ops.append(entry)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "tensors_file": TENSORS_FILE,
        "input": {"shape": list(program.input_shape), "pixel_min": program.pixel_min,
                  "pixel_max": program.pixel_max, "pixel_scale": program.pixel_scale,
                  "real_inputs": program.real_inputs,
                  "input_order": list(program.input_order)},
        "values": {name: {"shape": list(value.shape), "bits": value.bits,
                          "signed": value.signed, "scale": value.scale,
                          "outliers": None if value.outliers is None else
                          {name: getattr(value.outliers, name) for name in _OUTLIER_FIELDS}}
                   for name, value in program.values.items()},
        "ops": ops,
        "output": program.output,
    }
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    with open(directory / TENSORS_FILE, "wb") as handle:
        np.savez(handle, **arrays)
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="ascii")
    return path


def _fields(where: str, entry, required, optional=()) -> dict:
    """``entry`` as a dict holding every ``required`` field and no unknown one."""
    if not isinstance(entry, dict):
        raise ArtifactError(f"{where} must be a JSON object, not {type(entry).__name__}")
    for name in required:
        if name not in entry:
            raise ArtifactError(f"{where}: missing field '{name}'")
    for name in entry:
        if name not in required and name not in optional:
            raise ArtifactError(f"{where}: unknown field '{name}'")
    return entry


def _shape(where: str, field_name: str, value) -> tuple[int, ...]:
    if not (isinstance(value, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise ArtifactError(f"{where}: field '{field_name}' must be a list of non-negative "
                            f"integers, not {value!r}")
    return tuple(value)


def _read_manifest(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"artifact manifest '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ArtifactError(f"artifact manifest '{path}' cannot be read: {error}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"artifact manifest '{path.name}' is not valid JSON: "
                            f"{error}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"artifact manifest '{path.name}' must be a JSON object, not "
                            f"{type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"artifact format must be {FORMAT!r}, not "
                            f"{manifest.get('format')!r}")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(f"artifact version must be an integer, not {version!r}")
    if version > VERSION:
        raise ArtifactError(f"artifact version {version} is newer than this reader "
                            f"(version {VERSION}); update olmac to load it")
    if version != VERSION:
        raise ArtifactError(f"artifact version {version} is not supported; this reader "
                            f"reads version {VERSION} only")
    return _fields("artifact manifest", manifest, _TOP_FIELDS)


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            if not zipfile.is_zipfile(handle):
                raise ArtifactError(f"artifact tensors '{path.name}' is not a complete .npz "
                                    f"(zip) archive")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise ArtifactError(f"artifact tensors '{path}' does not exist") from None
    except ArtifactError:
        raise
    except Exception as error:  # zipfile, zlib, numpy and OS errors alike
        raise ArtifactError(f"artifact tensors '{path.name}' cannot be read (truncated or "
                            f"not an .npz archive): {type(error).__name__}: {error}") from None


def _value(name, entry) -> Value:
    where = f"artifact value '{name}'"
    entry = _fields(where, entry, _VALUE_FIELDS)
    outliers = entry["outliers"]
    if outliers is not None:
        outliers = ActOutliers(**_fields(f"{where}: field 'outliers'", outliers,
                                         _OUTLIER_FIELDS))
    return Value(_shape(where, "shape", entry["shape"]), entry["bits"], entry["signed"],
                 entry["scale"], outliers)


def _op(index: int, entry, arrays: dict, used: set):
    """One op from its manifest entry and the arrays; records the keys it reads."""
    if not isinstance(entry, dict):
        raise ArtifactError(f"artifact op {index} must be a JSON object")
    kind = entry.get("kind")
    if not isinstance(kind, str) or kind not in OPS:
        raise ArtifactError(f"artifact op {index}: field 'kind' must be one of "
                            f"{', '.join(OPS)}, not {kind!r}")
    cls = OPS[kind]
    where = f"artifact op {index} ({kind} {entry.get('name')!r})"
    tensor_fields = {f.name for f in fields(cls) if f.metadata.get("tensor")}
    attributes = [f for f in fields(cls) if not f.metadata.get("tensor")]
    required = ["kind", "tensors"] + [f.name for f in attributes if _required(f)]
    optional = [f.name for f in attributes if not _required(f)]
    entry = _fields(where, entry, required, optional)
    kwargs = {}
    for f in attributes:
        value = entry.get(f.name)
        if (f.name in _PAIRS or f.name == "parts") and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    references = entry["tensors"]
    if not isinstance(references, dict):
        raise ArtifactError(f"{where}: field 'tensors' must be a JSON object")
    for name, reference in references.items():
        if name not in tensor_fields:
            raise ArtifactError(f"{where}: unknown tensor '{name}'")
        reference = _fields(f"{where}: tensor '{name}'", reference, _REF_FIELDS)
        key = reference["key"]
        if not isinstance(key, str) or key not in arrays:
            raise ArtifactError(f"{where}: tensor '{name}' (key {key!r}) is missing from "
                                f"{TENSORS_FILE}")
        array = arrays[key]
        used.add(key)
        if str(array.dtype) != reference["dtype"]:
            raise ArtifactError(f"{where}: tensor '{name}' is stored as {array.dtype}, but "
                                f"the manifest declares {reference['dtype']}")
        declared = _shape(f"{where}: tensor '{name}'", "shape", reference["shape"])
        if array.shape != declared:
            raise ArtifactError(f"{where}: tensor '{name}' has shape {array.shape}, expected "
                                f"{declared}")
        if array.dtype.kind == "f":
            kwargs[name] = torch.from_numpy(array.astype(np.float64))
        elif array.dtype.kind in "iu":
            kwargs[name] = torch.from_numpy(array.astype(np.int64))
        else:
            raise ArtifactError(f"{where}: tensor '{name}' has dtype {array.dtype}, not an "
                                f"integer or float dtype")
    return cls(**kwargs), references


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def load(directory: Path | str) -> IntegerProgram:
    """Read and validate the artifact in ``directory`` (§14).

    Checks, in order: the manifest parses as JSON; ``format`` and ``version``; every
    required field is present and none is unknown; the tensor archive reads; every tensor
    reference is present with its declared dtype and shape; the program's rules (§9: types,
    shapes, ranges of every integer against its declared width); the storage dtype of
    each tensor; the SHA-256 of every tensor and of the manifest.

    Raises
    ------
    ArtifactError
        On any failure, naming the file, op, field or tensor.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory / MANIFEST_FILE)
    if manifest["tensors_file"] != TENSORS_FILE:
        raise ArtifactError(f"artifact manifest: field 'tensors_file' must be "
                            f"{TENSORS_FILE!r}, not {manifest['tensors_file']!r}")
    header = _fields("artifact manifest: field 'input'", manifest["input"],
                     _INPUT_FIELDS)
    values = manifest["values"]
    if not isinstance(values, dict):
        raise ArtifactError("artifact manifest: field 'values' must be a JSON object")
    values = {name: _value(name, entry) for name, entry in values.items()}
    if not isinstance(manifest["ops"], list):
        raise ArtifactError("artifact manifest: field 'ops' must be a JSON list")
    arrays = _read_tensors(directory / TENSORS_FILE)
    used: set[str] = set()
    built = [_op(index, entry, arrays, used) for index, entry in enumerate(manifest["ops"])]
    unused = sorted(set(arrays) - used)
    if unused:
        raise ArtifactError(f"artifact tensors: {TENSORS_FILE} holds {unused[0]!r}, which no "
                            f"op references")
    try:
        program = IntegerProgram(
            _shape("artifact manifest: field 'input'", "shape", header["shape"]),
            header["pixel_max"], header["pixel_scale"], values,
            tuple(op for op, _ in built), manifest["output"], pixel_min=header["pixel_min"],
            real_inputs=header["real_inputs"], input_order=_shape(
                "artifact manifest: field 'input'", "input_order", header["input_order"]))
    except ProgramError as error:
        raise ArtifactError(f"artifact {error}") from None
    for index, (op, references) in enumerate(built):
        specs = tensor_specs(op)
        for name, reference in references.items():
            if reference["dtype"] != specs[name].dtype:
                raise ArtifactError(f"artifact {op.label(index)}: tensor '{name}' is stored as "
                                    f"{reference['dtype']}, expected {specs[name].dtype}")
            if _digest(arrays[reference["key"]]) != reference["sha256"]:
                raise ArtifactError(f"artifact {op.label(index)}: tensor '{name}' does not "
                                    f"match its sha256 (modified after it was written)")
    if manifest_checksum(manifest) != manifest["manifest_sha256"]:
        raise ArtifactError("artifact manifest does not match its manifest_sha256 (modified "
                            "after it was written)")
    return program
