"""The intervention protocol: a spec that expands into TransformerLens forward hooks, and the checks
every spec runs on its directions and positions."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.checks import check_finite_tensor
from saesteer.primitives.hooks import HookFn


def unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        raise ValueError(f"direction must be finite and non-zero, got norm {float(n)}")
    return v / n


def check_direction(direction: torch.Tensor, d_model: int, what: str = "direction") -> None:
    if direction.ndim != 1 or direction.shape[0] != d_model:
        raise ValueError(f"{what} has shape {tuple(direction.shape)}, expected ({d_model},) for this model's d_model")
    check_finite_tensor(direction, what)


def check_spec_direction(direction: Any, what: str) -> None:
    """A spec's direction when it is built: a tensor of finite values (its size is checked against the model in ``validate``)."""
    if not torch.is_tensor(direction):
        raise TypeError(f"{what} is {type(direction).__name__}; expected a 1-d torch.Tensor of d_model values")
    check_finite_tensor(direction, what)


def check_positions(positions: Optional[Sequence[int]], what: str) -> Optional[list[int]]:
    """Token positions as a list of ints (negative: from the end), or None."""
    if positions is None:
        return None
    if isinstance(positions, (int, str, bytes)) or not hasattr(positions, "__iter__"):
        raise TypeError(f"{what}={positions!r}; expected a list of int token positions or None")
    out = list(positions)
    bad = [p for p in out if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
    if bad:
        raise TypeError(f"{what}={out!r} holds non-integers {bad[:5]}; expected a list of int token positions")
    return [int(p) for p in out]


def out_of_range(positions: Sequence[int], length: int) -> list[int]:
    """The positions that do not index a sequence of ``length`` tokens (negative ones count from the end)."""
    return [p for p in positions if not -length <= p < length]


class Intervention:
    """A spec that expands into TransformerLens forward hooks ``(hook_name, fn)``."""

    #: interventions with a higher order run later at the same hook point (anchors run last)
    order: int = 0

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepass_gates(self, model: HookedTransformer) -> list:
        """Gates that decide later than this edit acts (``steer`` runs a pre-pass over the prompt for them)."""
        return []

    def validate(self, model: HookedTransformer) -> None:
        pass
