"""The safety delta on disk: a trained adapter's factors in float16 safetensors, with a JSON header that names
the base model it was trained on.

The header holds a *fingerprint* of the base weights (for the embedding and each adapted matrix: the sum of
absolute values and the sum of squares, in float64) and ``base_key``, a short hash of it.  Loading checks the
fingerprint of the model at hand against the stored one (relative tolerance :data:`FINGERPRINT_RTOL`), so a
delta never merges silently into a different base (another model, another checkpoint, a model that already has
the delta merged, a half-precision copy).

    model = load_safety_delta(model)            # the bundled delta, merged in place
    model = load_safety_delta(model, "d.safetensors")
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.io import load_tensors, save_tensors
from saesteer.safety.adapter import LowRankAdapter

log = logging.getLogger(__name__)

FORMAT = "saesteer-safety-delta"
VERSION = 1
#: the largest relative difference between a model's fingerprint and the delta's at which the delta still loads
FINGERPRINT_RTOL = 1e-4
#: the bundled delta (SmolLM2-135M-Instruct), under saesteer/resources/safety
BUNDLED_NAME = "smollm2_safety_delta.safetensors"


class SafetyDeltaError(ValueError):
    """A safety delta cannot be applied: wrong base model, wrong shapes, or not a safety delta."""


def bundled_delta_path() -> Path:
    """Path of the bundled safety delta."""
    return Path(str(importlib.resources.files("saesteer") / "resources" / "safety" / BUNDLED_NAME))


def _base_matrices(model: HookedTransformer, layers: list[int], sites: list[str]) -> list[tuple[str, torch.Tensor]]:
    out = [("W_E", model.W_E)]
    for l in layers:
        if "attn_out" in sites:
            out.append((f"blocks.{l}.attn.W_O", model.blocks[l].attn.W_O))
        if "mlp_out" in sites:
            out.append((f"blocks.{l}.mlp.W_out", model.blocks[l].mlp.W_out))
    return out


@torch.no_grad()
def base_fingerprint(model: HookedTransformer, layers: list[int], sites: list[str]) -> dict[str, list[float]]:
    """Name -> [sum |W|, sum W^2] (float64) of the embedding and each matrix the adapter edits."""
    out = {}
    for name, W in _base_matrices(model, layers, sites):
        w = W.detach().double()
        out[name] = [float(w.abs().sum()), float((w * w).sum())]
    return out


def fingerprint_key(fingerprint: dict[str, list[float]]) -> str:
    """A short hash of a fingerprint (values to 4 significant digits): the base model's name in the header."""
    text = json.dumps({k: [float(f"{v:.4g}") for v in vs] for k, vs in sorted(fingerprint.items())})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_key(model: HookedTransformer) -> str:
    """The fingerprint key of the whole model (embedding, every W_O and W_out): what caches of its answers are
    keyed by."""
    return fingerprint_key(base_fingerprint(model, list(range(model.cfg.n_layers)), ["attn_out", "mlp_out"]))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the base model's weights file, recorded for provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_safety_delta(
    path: str | Path,
    adapter: LowRankAdapter,
    base: HookedTransformer,
    *,
    base_name: str = "",
    base_file_sha256: Optional[str] = None,
    metadata: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``adapter``'s factors as float16 with a header naming ``base`` (its fingerprint) and ``metadata``."""
    fp = base_fingerprint(base, adapter.layers, adapter.sites)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "adapter": adapter.spec(),
        "base_name": base_name,
        "base_key": fingerprint_key(fp),
        "base_fingerprint": fp,
        "base_file_sha256": base_file_sha256,
        **(metadata or {}),
    }
    tensors = {k: v.to(torch.float16) for k, v in adapter.tensors().items()}
    return save_tensors(Path(path), tensors, header)


def read_safety_delta(path: str | Path) -> tuple[LowRankAdapter, dict[str, Any]]:
    """(the adapter, in float32, built from the file's float16 factors; the header)."""
    tensors, meta = load_tensors(Path(path))
    if meta.get("format") != FORMAT:
        raise SafetyDeltaError(f"{path} is not a saesteer safety delta (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise SafetyDeltaError(f"{path}: safety delta version {meta.get('version')!r}; this saesteer reads {VERSION}")
    adapter = LowRankAdapter.from_spec(meta["adapter"])
    try:
        adapter.load_tensors({k: v.float() for k, v in tensors.items()})
    except ValueError as exc:
        raise SafetyDeltaError(f"{path}: {exc}") from None
    return adapter, meta


def check_base(model: HookedTransformer, meta: dict[str, Any], where: str = "the safety delta") -> None:
    """Raise SafetyDeltaError unless ``model``'s weights match the base fingerprint in ``meta``."""
    spec = meta["adapter"]
    if not all(0 <= int(l) < model.cfg.n_layers for l in spec["layers"]):
        raise SafetyDeltaError(
            f"{where} edits layers {spec['layers']}; this model has {model.cfg.n_layers} layers "
            f"(the delta was trained on base {meta.get('base_name') or '?'} key {meta.get('base_key')})"
        )
    stored = meta["base_fingerprint"]
    have = base_fingerprint(model, [int(l) for l in spec["layers"]], list(spec["sites"]))
    if set(stored) != set(have):
        raise SafetyDeltaError(f"{where}: fingerprint names {sorted(stored)[:3]}... differ from the model's")
    worst, worst_name = 0.0, ""
    for name, vals in stored.items():
        for a, b in zip(vals, have[name]):
            rel = abs(a - b) / max(abs(a), 1e-12)
            if rel > worst:
                worst, worst_name = rel, name
    if worst > FINGERPRINT_RTOL:
        raise SafetyDeltaError(
            f"{where} was trained on base {meta.get('base_name') or '?'} (key {meta.get('base_key')}); this model's "
            f"weights differ (key {fingerprint_key(have)}, {worst_name} off by {worst:.2e} relative). Load the base "
            "model it was made for, in float32, without the delta already merged"
        )


def load_safety_delta(model: HookedTransformer, path: str | Path | None = None) -> HookedTransformer:
    """Merge the safety delta at ``path`` (default: the bundled one) into ``model``'s weights in place, after
    checking that ``model`` is the base it was trained on; returns ``model``."""
    path = bundled_delta_path() if path is None else Path(path)
    adapter, meta = read_safety_delta(path)
    try:
        adapter.validate(model)
    except ValueError as exc:
        raise SafetyDeltaError(f"{path}: {exc}") from None
    check_base(model, meta, where=f"safety delta {path}")
    adapter.merge_into(model)
    log.info(
        "merged safety delta %s (rank %d, layers %s) into base %s", path, adapter.rank, adapter.layers, meta["base_key"]
    )
    return model
