"""Artifacts on disk: safetensors + JSON metadata, written atomically.

Every artifact saesteer writes (organism, direction, SAE ranking, edited weights,
activation caches) is a ``.safetensors`` file whose header carries a JSON metadata
string, optionally mirrored in a side ``.json`` file for humans.  Writes go to a
temporary file in the same directory and are ``os.replace``-d into place, so an
interrupted run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, torch zip archives


class ArtifactError(ValueError):
    """A file on disk is not the artifact that was expected."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    sidecar: bool = True,
) -> Path:
    """Save tensors as safetensors with JSON metadata in the header (and a ``.json`` sidecar)."""
    path = Path(path)
    meta = dict(metadata or {})
    header = {"saesteer": json.dumps(meta, default=_json_default)}
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=header)
    if sidecar:
        write_json(path.with_suffix(".json"), meta)
    return path


def load_tensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors artifact and its metadata; never unpickles.

    Raises ArtifactError with a one-line message on a missing, truncated,
    corrupted or pickled file.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"); its first byte can be 0x80 too
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"
    if not looks_safetensors and (head[:1] == PICKLE_MAGIC[0] or head[:4] == PICKLE_MAGIC[1]):
        raise ArtifactError(
            f"{path} looks like a pickle/torch.save file; saesteer only reads safetensors "
            "(convert it with safetensors.torch.save_file if you created it)"
        )
    try:
        tensors = load_file(str(path), device=str(device))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is not a readable safetensors file (truncated or corrupted?): {exc}") from None
    meta: dict[str, Any] = {}
    if "saesteer" in header:
        try:
            meta = json.loads(header["saesteer"])
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: metadata header is not valid JSON: {exc}") from None
    return tensors, meta


def hash_strings(items: list[str] | tuple[str, ...]) -> str:
    """A short stable hash of a list of strings (for data provenance in metadata)."""
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """The user's cache dir for saesteer (``$SAESTEER_CACHE`` or ``~/.cache/saesteer``)."""
    root = os.environ.get("SAESTEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "saesteer"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def json_ready(v: Any) -> Any:
    """NaN / inf -> None, recursively (metrics.json stays valid JSON and equal to what the job returns)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    if isinstance(v, dict):
        return {k: json_ready(x) for k, x in v.items()}
    return v
