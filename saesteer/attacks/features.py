"""SAE refusal-feature ablation: the attacker zeroes the top-k refusal features."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from saesteer.attacks.base import Attack
from saesteer.interventions.features import EditFeatures


def feature_ablation_attack(sae: Any, features: Sequence[int], hook: Optional[str] = None) -> Attack:
    feats = list(features)
    return Attack("sae_feature_ablation", "features", [EditFeatures(sae, feats, mode="set", values=0.0, hook=hook)],
                  description=f"top-{len(feats)} SAE refusal features set to 0 (error term kept)")
