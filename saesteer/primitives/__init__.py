"""Primitives: the intervention protocol, hook order, the generation phase and SAE weights.

The bottom layer of saesteer: it imports nothing of saesteer's but :mod:`saesteer.checks`.
"""

from saesteer.primitives.hooks import HookFn, hook_order
from saesteer.primitives.intervention import Intervention, check_direction, unit
from saesteer.primitives.phase import APPLY_TO, PHASE, ApplyTo, check_apply_to, phase, token_phase
from saesteer.primitives.sae_weights import SaeWeights

__all__ = [
    "APPLY_TO",
    "PHASE",
    "ApplyTo",
    "HookFn",
    "Intervention",
    "SaeWeights",
    "check_apply_to",
    "check_direction",
    "hook_order",
    "phase",
    "token_phase",
    "unit",
]
