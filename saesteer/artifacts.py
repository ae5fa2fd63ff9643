"""Where saesteer caches what it computes, and how each cached artifact is keyed.

Every cached artifact lives at ``cache_dir()/<kind>/<key>`` (:func:`artifact_path`), where ``kind`` is one
of :data:`KINDS` and ``key`` is :func:`cache_key` of everything that determines the artifact: its settings,
the model's weight fingerprint, the prompt data's hashes and a version that changes with the code that
computes it.  Two runs that would compute the same artifact share it; anything else gets a new key.

Artifacts themselves are safetensors plus JSON, written atomically (:mod:`saesteer.io`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from saesteer.io import cache_dir, hash_strings

__all__ = ["KINDS", "artifact_dir", "artifact_path", "cache_key"]

#: The kinds of cached artifacts, each a folder of ``cache_dir()``.
KINDS: dict[str, str] = {
    "organism": "trained organisms (model.safetensors + organism.json)",
    "organism_finetunes": "organisms fine-tuned to spread refusal over dormant backups",
    "models": "downloaded model files and their float32 conversions",
    "directions": "selected refusal directions with their candidate scores",
    "responses": "greedy responses used as SAE training text",
    "sae": "fitted SAEs with their checkpoints",
    "activations": "collected activation tensors",
    "pipeline": "pipeline stages' run folders, reused when nothing they depend on changed",
    "safety": "safety tuning: the base model's answers, training checkpoints and fitted deltas",
}


def cache_key(*parts: Any) -> str:
    """A 16-hex-digit key of ``parts``: strings as they are, anything else as sorted-key JSON."""
    return hash_strings([p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str) for p in parts])


def artifact_dir(kind: str) -> Path:
    """``cache_dir()/kind``; ``kind`` must be one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; expected one of {sorted(KINDS)}")
    return cache_dir() / kind


def artifact_path(kind: str, key: str, root: Optional[Path] = None) -> Path:
    """``root/key``, by default ``cache_dir()/kind/key`` (:func:`artifact_dir`)."""
    return (root if root is not None else artifact_dir(kind)) / key
