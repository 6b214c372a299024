"""A model folder's integrity: ``config.json`` carries a manifest with the SHA-256 of ``model.safetensors``,
whose header carries the digest of config.json's content; both are verified, and JSON values are typed
against the dataclasses they describe, before anything of the folder is used."""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import types
import typing
from collections.abc import Collection
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from napari_spahgc.base.errors import InputError
from napari_spahgc.embed.weights import sha256

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "napari-spahgc model"
#: the key of the safetensors header metadata that holds :func:`config_digest` of config.json
CONFIG_DIGEST_KEY = "config_sha256"
_T = TypeVar("_T")


def config_digest(config: dict) -> str:
    """SHA-256 of config.json's content without its manifest, as canonical JSON."""
    content = {k: v for k, v in config.items() if k != "manifest"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def config_path(folder: Path) -> Path:
    """config.json of a folder that holds both model files, or an error naming the folder."""
    if not folder.exists():
        raise InputError("model folder not found", folder)
    if not folder.is_dir():
        raise InputError("is a file, not a model folder", folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise InputError(f"not a napari-spahgc model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})", folder)
    return folder / CONFIG_FILE


def read_config(path: Path) -> dict:
    """config.json as a JSON object of the model format, or an error naming it (no traceback)."""
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"not valid UTF-8 JSON ({error})", path) from None
    except OSError as error:
        raise InputError(f"cannot read it ({error.strerror})", path) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise InputError("config.json is not a napari-spahgc model description", path)
    return config


def verified_tensors(
    folder: Path, config: dict, mapped: Collection[str] = ()
) -> dict[str, torch.Tensor | np.ndarray]:
    """model.safetensors' tensors, once the file matches config.json's manifest and its header
    records the digest of this very config.json. Those named in ``mapped`` come back as read-only
    numpy memory maps of the verified file, read where they are used: a large bank's expression, of
    which a prediction reads only the retrieved rows, is never whole in memory."""
    expected, path = _manifest_sha256(config, folder), folder / WEIGHTS_FILE
    try:
        actual = sha256(path)
    except OSError as error:
        raise InputError(f"cannot read {WEIGHTS_FILE} ({error.strerror})", folder) from None
    if actual != expected:
        raise InputError(
            f"{WEIGHTS_FILE} does not match its manifest (edited, truncated or replaced)", folder
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(CONFIG_DIGEST_KEY)
            names = set(handle.keys())
            tensors = {key: handle.get_tensor(key) for key in names - set(mapped)}
        tensors |= _memory_maps(path, names & set(mapped))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise InputError(f"cannot read {WEIGHTS_FILE} ({error})", folder) from None
    if recorded != config_digest(config):
        raise InputError(
            f"config.json was edited after the model was saved (its digest differs from the one "
            f"{WEIGHTS_FILE} records)",
            folder,
        )
    return tensors


#: the numpy dtypes of the safetensors dtypes a memory-mapped tensor may have
_MAPPED_DTYPES = {"F16": np.float16, "F32": np.float32}


def _memory_maps(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """Read-only maps of the tensors ``names`` of a safetensors file that safetensors has opened (so
    its header is valid): an 8-byte little-endian header length, then the JSON header with each
    tensor's dtype, shape and byte range in the data that follows it. The kernel is told the rows are
    read at random, so a retrieved row does not bring its neighbours into memory."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(data, "madvise"):  # not on Windows
        data.madvise(mmap.MADV_RANDOM)
    maps = {}
    for name in names:
        dtype, shape, (begin, _) = header[name]["dtype"], header[name]["shape"], header[name]["data_offsets"]
        if dtype not in _MAPPED_DTYPES:
            raise ValueError(f"{name} is {dtype}, not one of {', '.join(_MAPPED_DTYPES)}")
        array = np.frombuffer(data, _MAPPED_DTYPES[dtype], count=math.prod(shape), offset=8 + length + begin)
        maps[name] = array.reshape(shape)
    return maps


def _manifest_sha256(config: dict, folder: Path) -> str:
    """The weights' SHA-256 that config.json's manifest records; folders of earlier versions have none."""
    manifest = config.get("manifest")
    entry = manifest.get(WEIGHTS_FILE) if isinstance(manifest, dict) else None
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(digest, str):
        raise InputError(
            "config.json has no integrity manifest: written by an earlier napari-spahgc version, "
            "without one; train the model again with this version",
            folder,
        )
    return digest


def field_names(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}


def typed(kind: type[_T], values: object, where: str, folder: Path) -> _T:
    """A ``kind`` dataclass from a JSON object; unknown, missing or mistyped entries are an error."""
    if not isinstance(values, dict):
        raise InputError(f"{where} is not a JSON object", folder)
    hints = typing.get_type_hints(kind)
    required = {f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING}
    problems = [f"unknown {k!r}" for k in sorted(set(values) - set(hints))]
    problems += [f"missing {k!r}" for k in sorted(required - set(values))]
    names = {k: hint.__name__ if isinstance(hint, type) else str(hint) for k, hint in hints.items()}
    problems += [
        f"{k}={values[k]!r:.60} is not {names[k]}"
        for k in sorted(set(values) & set(hints))
        if not matches(values[k], hints[k])
    ]
    if not problems:
        try:
            return kind(**values)
        except (TypeError, ValueError) as error:  # a dataclass's own check
            problems.append(str(error))
    raise InputError(f"{where}: {'; '.join(problems)}", folder)


def matches(value: object, hint: Any) -> bool:
    """Whether a parsed JSON value has the declared type (an int passes as a float, a bool as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(matches(item, args[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)
