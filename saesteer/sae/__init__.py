"""SAEs on residual streams: fit through sae_lens, load (disk or registry), measure quality.

``saesteer.sae.config`` is light; the rest imports sae_lens, so it is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from saesteer.sae.config import ARCHITECTURES, SaeConfig

__all__ = ["ARCHITECTURES", "SaeConfig", "FitResult", "build_token_dataset", "fit_sae", "load_sae", "sae_quality"]

_LAZY = {
    "FitResult": "saesteer.sae.fit",
    "build_token_dataset": "saesteer.sae.fit",
    "fit_sae": "saesteer.sae.fit",
    "load_sae": "saesteer.sae.load",
    "sae_quality": "saesteer.sae.quality",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saesteer.sae' has no attribute {name!r}")
