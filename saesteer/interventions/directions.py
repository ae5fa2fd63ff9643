"""Direction interventions: Ablate (plain / affine) and Add, as hook specs.

Semantics (DESIGN.md):
- plain ablation of unit r: x <- x - (x.r) r at resid_pre, attn_out and mlp_out of
  every layer, every position (prompt and generated tokens);
- affine ablation: the same at attn_out / mlp_out, and at resid_pre of layer l the
  coordinate is set to a reference value mu_l (the harmless mean; ACE, Marshall et
  al. 2024): x <- x - (x.r - mu_l) r;
- addition: x <- x + alpha * v at resid_pre of one layer (every position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.checks import check_choice, check_finite, check_finite_tensor, choices
from saesteer.primitives.hooks import HookFn, hook_order
from saesteer.primitives.intervention import (
    Intervention,
    check_direction,
    check_positions,
    check_spec_direction,
    out_of_range,
    unit,
)
from saesteer.primitives.phase import PHASE, check_apply_to, token_phase

WRITE_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def _project_out(direction: torch.Tensor, reference: Optional[float] = None) -> HookFn:
    def fn(x: torch.Tensor, hook: object = None) -> torch.Tensor:
        r = direction.to(device=x.device, dtype=x.dtype)
        coef = x @ r
        if reference is not None:
            coef = coef - reference
        return x - coef[..., None] * r

    return fn


#: How a direction is ablated: ``plain`` (its coordinate set to 0) or ``affine`` (set to the harmless mean, ACE).
AblationMode = Literal["plain", "affine"]
ABLATION_MODES: tuple[str, ...] = choices(AblationMode)


@dataclass
class Ablate(Intervention):
    """Directional ablation at every layer (``mode='plain'``) or affine (``mode='affine'``).

    ``reference``: per-layer target coordinates for affine ablation, shape [n_layers].
    ``layers``: restrict to these layers (default all).
    """

    direction: torch.Tensor
    mode: AblationMode = "plain"
    reference: Optional[torch.Tensor] = None
    layers: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        check_choice(self.mode, AblationMode, "Ablate.mode")
        if self.mode == "affine" and self.reference is None:
            raise ValueError("Ablate(mode='affine') needs reference= (the harmless-mean coordinate per layer)")
        check_spec_direction(self.direction, "Ablate.direction")
        if self.reference is not None:
            if not torch.is_tensor(self.reference):
                self.reference = torch.as_tensor(self.reference, dtype=torch.float32)
            check_finite_tensor(self.reference, "Ablate.reference")

    def validate(self, model: HookedTransformer) -> None:
        check_direction(self.direction, model.cfg.d_model)
        if self.reference is not None and self.reference.shape != (model.cfg.n_layers,):
            raise ValueError(
                f"Ablate.reference has shape {tuple(self.reference.shape)}, expected ({model.cfg.n_layers},)"
            )

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        r = unit(self.direction.float())
        layers = range(model.cfg.n_layers) if self.layers is None else self.layers
        out: list[tuple[str, HookFn]] = []
        plain = _project_out(r)
        for layer in layers:
            for name in WRITE_HOOKS:
                if name == "hook_resid_pre" and self.mode == "affine":
                    out.append((f"blocks.{layer}.{name}", _project_out(r, float(self.reference[layer]))))
                else:
                    out.append((f"blocks.{layer}.{name}", plain))
        return out


@dataclass
class AblateAt(Intervention):
    """Directional ablation at one hook point only, every position: x <- x - (x.r - mu) r with
    ``reference`` mu (affine; None = 0, plain).  The one-layer ceiling of what an edit of an
    SAE at that hook can do along r (the search job reports it beside ``Ablate`` at every layer)."""

    direction: torch.Tensor
    hook: str
    reference: Optional[float] = None

    def __post_init__(self) -> None:
        check_spec_direction(self.direction, "AblateAt.direction")
        if self.reference is not None:
            check_finite(self.reference, "AblateAt.reference")

    def validate(self, model: HookedTransformer) -> None:
        check_direction(self.direction, model.cfg.d_model)
        if self.hook not in model.hook_dict:
            raise ValueError(f"AblateAt hook {self.hook!r} does not exist in this model")

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        ref = None if self.reference is None else float(self.reference)
        return [(self.hook, _project_out(unit(self.direction.float()), ref))]


@dataclass
class Add(Intervention):
    """Activation addition x <- x + alpha * direction at ``blocks.{layer}.hook_resid_pre``."""

    direction: torch.Tensor
    alpha: float = 1.0
    layer: int = 0
    positions: Optional[Sequence[int]] = None  # None = every position (prompt and generated)
    gate: Optional[Any] = None  # a saesteer.interventions.gates.Gate: add only where it fires (CAST)
    apply_to: str = "both"  # prompt tokens, generated tokens or both

    def __post_init__(self) -> None:
        check_apply_to(self.apply_to, "Add.apply_to")
        check_spec_direction(self.direction, "Add.direction")
        check_finite(self.alpha, "Add.alpha")
        self.positions = check_positions(self.positions, "Add.positions")

    def validate(self, model: HookedTransformer) -> None:
        check_direction(self.direction, model.cfg.d_model)
        if not 0 <= self.layer < model.cfg.n_layers:
            raise ValueError(f"Add.layer={self.layer} out of range for a model with {model.cfg.n_layers} layers")
        bad = [] if self.positions is None else out_of_range(self.positions, model.cfg.n_ctx)
        if bad:
            raise ValueError(
                f"Add.positions {bad} out of range for the model's context of n_ctx={model.cfg.n_ctx} tokens; "
                f"expected positions in -{model.cfg.n_ctx}..{model.cfg.n_ctx - 1}"
            )

    def prepass_gates(self, model: HookedTransformer) -> list:
        """A gate read later than the addition decides in ``steer``'s pre-pass over the prompt (CAST with the anchor's gate)."""
        if self.gate is None:
            return []

        return [self.gate] if hook_order(self.gate.hook) > hook_order(self.hook_name) else []

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        v = self.direction.float() * self.alpha
        positions = None if self.positions is None else list(self.positions)
        gate = self.gate

        apply_to = self.apply_to

        def fn(x: torch.Tensor, hook: object = None) -> torch.Tensor:
            if (gate is not None and PHASE.get() == "gate") or (apply_to != "both" and token_phase() != apply_to):
                return x
            d = v.to(device=x.device, dtype=x.dtype)
            if gate is not None:
                d = gate.value(x.shape[0], x.device, x.dtype)[:, None, None] * d
            if positions is None:
                return x + d
            bad = out_of_range(positions, x.shape[1])
            if bad:
                n = x.shape[1]
                raise ValueError(
                    f"Add.positions {bad} out of range for a {token_phase()}-token pass of {n} token(s) at {self.hook_name}; "
                    f"expected positions in -{n}..{n - 1} (negative positions count from the end)"
                )
            x = x.clone()
            x[:, positions] += d
            return x

        out: list[tuple[str, HookFn]] = [] if gate is None else gate.read_hooks()
        return out + [(self.hook_name, fn)]
