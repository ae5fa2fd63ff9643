"""Gates: decide per sequence, from the prompt, whether an intervention acts.

A gate reads the residual stream at one hook, at chosen prompt positions (negative
offsets: the prompt is left-padded, so -1 is the last post-instruction token), and
compares a score with a threshold:

- ``DirectionGate``: mean projection on a unit direction (e.g. the harmfulness
  direction at t_inst);
- ``FeatureGate``: the summed activations of SAE features (e.g. harm-sensor features).

The decision (one value per sequence in the batch, 0 or 1) is made while the prompt
is read and kept for the generated tokens of the same ``generate`` call.  A gate must
read at a hook that runs no later than the edit it gates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from saesteer.generation import PHASE


def hook_order(name: str) -> tuple[int, int]:
    """(layer, sub-position) of a hook in the forward pass, for ordering checks."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return (-1, 0) if "embed" in name else (10**6, 0)
    sub = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "hook_mlp_out": 3, "hook_resid_post": 4}
    return int(parts[1]), sub.get(parts[-1], 2)


@dataclass
class Gate:
    """Base gate: ``decide(x)`` -> [batch] in {0, 1}; state kept across a generate call."""

    hook: str
    positions: Sequence[int] = (-1,)
    threshold: float = 0.0
    invert: bool = False  # act when the score is BELOW the threshold
    _state: Optional[torch.Tensor] = field(default=None, init=False, repr=False)

    def score(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        """Forward hook at ``self.hook``: decide on the prompt pass, keep for decoding."""
        if PHASE.get() == "prompt":
            s = self.score(x[:, list(self.positions)].float()).mean(-1)
            decided = (s < self.threshold) if self.invert else (s > self.threshold)
            self._state = decided.to(x.dtype)
        return x

    def value(self, batch: int, device, dtype) -> torch.Tensor:
        if self._state is None or self._state.shape[0] != batch:
            raise RuntimeError(f"gate at {self.hook} has no decision for this batch (does its hook run before the edit?)")
        return self._state.to(device=device, dtype=dtype)


@dataclass
class DirectionGate(Gate):
    direction: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.direction is None or self.direction.ndim != 1:
            raise ValueError("DirectionGate needs a 1-d direction")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        u = (self.direction / self.direction.norm()).to(device=x.device, dtype=x.dtype)
        return x @ u


@dataclass
class FeatureGate(Gate):
    """Sum of SAE feature activations (ReLU / JumpReLU encoders, only the gate's columns)."""

    sae: object = None
    features: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.sae is None or not self.features:
            raise ValueError("FeatureGate needs an SAE and at least one feature")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        from saesteer.interventions.features import SaeWeights

        w = SaeWeights.from_sae(self.sae)
        return w.encode_columns(x, list(self.features)).sum(-1)
