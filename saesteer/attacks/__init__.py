"""Attacks on refusal (white-box activation / weight / feature edits, prompt jailbreaks, adaptive ones) and their evaluation."""

from saesteer.attacks.base import Attack
from saesteer.attacks.directional import (
    ablation_attack,
    gate_ablation_attack,
    negative_addition_attacks,
    orthogonalized_attack,
)
from saesteer.attacks.evaluate import UNDEFENDED, Defence, attack_success, defence_cost
from saesteer.attacks.features import feature_ablation_attack
from saesteer.attacks.prompts import JAILBREAK_TEMPLATES, suffix_attack, template_attack
from saesteer.attacks.suffix import SuffixResult, suffix_search

__all__ = [
    "Attack",
    "Defence",
    "JAILBREAK_TEMPLATES",
    "SuffixResult",
    "UNDEFENDED",
    "ablation_attack",
    "attack_success",
    "defence_cost",
    "feature_ablation_attack",
    "gate_ablation_attack",
    "negative_addition_attacks",
    "orthogonalized_attack",
    "suffix_attack",
    "suffix_search",
    "template_attack",
]
