"""SAE refusal-feature bypass: the attacker sets the top-k features to bypass values.

With the search's defaults (signed ranking, harmless means) that turns refusal
features down and comply features up, the feature-level analogue of affine
ablation; values 0 on refusal features is the plain zero ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from saesteer.attacks.base import Attack
from saesteer.interventions.features import EditFeatures


def feature_ablation_attack(
    sae: Any,
    features: Sequence[int],
    hook: Optional[str] = None,
    values: float | Sequence[float] = 0.0,
    name: str = "sae_feature_ablation",
) -> Attack:
    feats = list(features)
    how = (
        "set to 0"
        if not isinstance(values, (list, tuple)) and float(values) == 0.0
        else "set to bypass values (harmless means)"
    )
    return Attack(
        name,
        "features",
        [EditFeatures(sae, feats, mode="set", values=values, hook=hook)],
        description=f"top-{len(feats)} SAE features {how} (error term kept)",
    )
