"""Anchors: keep the refusal activation from being pushed down on harmful inputs.

``AnchorDirection`` raises the coordinate of the residual stream along the unit
refusal direction r to a floor wherever it fell below it::

    x <- x + g * relu(floor_l - x.r) * r

at ``blocks.{l}.hook_resid_pre`` of each anchored layer (and, optionally, the last
layer's ``hook_resid_post``), every position.  ``g`` is a per-sequence gate decided
from the prompt by a harm detector that is *not* the refusal direction (e.g. the
harmfulness direction at t_inst, made orthogonal to r so that removing r cannot
blind it).  ``AnchorFeatures`` is the same idea on SAE features: the ``floor`` mode
of :class:`~saesteer.interventions.features.EditFeatures`.

``AnchorProjections`` bounds the coordinates along several unit directions at one
hook, a floor (sign +1) or a ceiling (sign -1) each::

    x <- x + g * s_i * relu(s_i * b_i - s_i * x.u_i) * u_i      (i = 1..m, in order)

With the decoder directions of an SAE's refusal features (floors) and comply features
(ceilings) it is the feature anchor that holds against a feature-space attacker
(``from_sae``): a TopK SAE's activations are sparse, so a floor on the activation
itself is 0 at most tokens (its calibration quantile is 0) and the attacker's
decoder-direction push is left in place, while the coordinate x.W_dec[f] is dense.

Both have ``order = 100``: ``steer`` runs them after every other edit at the same
hook point, so an attacker's ablation or subtraction at that hook is undone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.interventions.features import EditFeatures
from saesteer.interventions.gates import Gate
from saesteer.primitives.hooks import HookFn, hook_order
from saesteer.primitives.intervention import Intervention, check_direction, check_spec_direction, unit
from saesteer.primitives.phase import PHASE, check_apply_to, token_phase

ANCHOR_ORDER = 100


def anchor_hooks(model: HookedTransformer, layers: Sequence[int], final: bool) -> list[str]:
    """The hook names an anchor over ``layers`` writes to."""
    names = [f"blocks.{l}.hook_resid_pre" for l in layers]
    if final:
        names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    return names


@dataclass
class AnchorDirection(Intervention):
    """x <- x + gate * relu(floor - x.r) r at each anchored hook.

    ``floors``: one value per anchored hook (``len(layers)`` plus one when ``final``).
    ``gate``: ``None`` anchors every sequence (unconditional).
    """

    direction: torch.Tensor
    layers: Sequence[int]
    floors: torch.Tensor | Sequence[float]
    gate: Optional[Gate] = None
    final: bool = True
    apply_to: str = "both"  # prompt tokens, generated tokens or both
    generated_floors: Optional[torch.Tensor | Sequence[float]] = None  # floors while decoding (default: ``floors``)
    # [n_anchored_hooks, k]: prompt-token floors of the last k positions (t_inst and the post-instruction tokens, which the
    # left-padded prompt puts last); earlier prompt tokens get ``floors``.  None: ``floors`` at every prompt position
    position_floors: Optional[torch.Tensor] = None
    order: int = field(default=ANCHOR_ORDER, init=False)

    def __post_init__(self) -> None:
        check_spec_direction(self.direction, "AnchorDirection.direction")
        self.layers = [int(l) for l in self.layers]
        if not self.layers:
            raise ValueError("AnchorDirection needs at least one layer, got layers=[]")
        self.floors = torch.as_tensor(self.floors, dtype=torch.float32).flatten()
        n = len(self.layers) + int(self.final)
        if self.floors.numel() != n:
            raise ValueError(
                f"AnchorDirection got {self.floors.numel()} floors for {n} anchored hooks (layers={self.layers}, final={self.final})"
            )
        if not torch.isfinite(self.floors).all():
            raise ValueError(f"AnchorDirection floors must be finite, got {self.floors.tolist()}")
        if self.generated_floors is not None:
            self.generated_floors = torch.as_tensor(self.generated_floors, dtype=torch.float32).flatten()
            if self.generated_floors.shape != self.floors.shape or not torch.isfinite(self.generated_floors).all():
                raise ValueError(
                    f"AnchorDirection.generated_floors must be {self.floors.numel()} finite values, got {self.generated_floors.tolist()}"
                )
        if self.position_floors is not None:
            self.position_floors = torch.as_tensor(self.position_floors, dtype=torch.float32)
            pf = self.position_floors
            if pf.ndim != 2 or pf.shape[0] != n or pf.shape[1] == 0 or not torch.isfinite(pf).all():
                raise ValueError(
                    f"AnchorDirection.position_floors must be finite, shape [{n} anchored hooks, k >= 1], got shape {tuple(pf.shape)}"
                )
        check_apply_to(self.apply_to, "AnchorDirection.apply_to")

    def validate(self, model: HookedTransformer) -> None:
        check_direction(self.direction, model.cfg.d_model, "anchor direction")
        bad = [l for l in self.layers if not 0 <= l < model.cfg.n_layers]
        if bad:
            raise ValueError(f"AnchorDirection layers {bad} out of range for a model with {model.cfg.n_layers} layers")

    def prepass_gates(self, model: HookedTransformer) -> list[Gate]:
        """The gate, when it decides later than the first anchored hook: ``steer`` then runs a pre-pass over the prompt."""
        if self.gate is None:
            return []
        first = min(hook_order(h) for h in self.hook_names(model))
        return [self.gate] if hook_order(self.gate.hook) > first else []

    def hook_names(self, model: HookedTransformer) -> list[str]:
        return anchor_hooks(model, self.layers, self.final)

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        r = unit(self.direction.float())
        gate = self.gate
        out: list[tuple[str, HookFn]] = []
        if gate is not None:
            out.extend(gate.read_hooks())
        gen = self.floors if self.generated_floors is None else self.generated_floors
        pos = [None] * len(self.floors) if self.position_floors is None else list(self.position_floors)
        for name, floor, gen_floor, pos_floor in zip(self.hook_names(model), self.floors.tolist(), gen.tolist(), pos):
            out.append((name, _floor_fn(r, floor, gate, self.apply_to, gen_floor, pos_floor)))
        return out


def _prompt_floors(
    floor: float, position_floors: Optional[torch.Tensor], seq: int, x: torch.Tensor
) -> torch.Tensor | float:
    """The floor of each prompt position: ``floor``, with ``position_floors`` on the last positions."""
    if position_floors is None:
        return floor
    k = min(seq, position_floors.numel())
    out = torch.full((seq,), floor, device=x.device, dtype=x.dtype)
    out[seq - k :] = position_floors[position_floors.numel() - k :].to(device=x.device, dtype=x.dtype)
    return out


def _floor_fn(
    r: torch.Tensor,
    floor: float,
    gate: Optional[Gate],
    apply_to: str = "both",
    generated_floor: Optional[float] = None,
    position_floors: Optional[torch.Tensor] = None,
) -> HookFn:
    generated_floor = floor if generated_floor is None else generated_floor

    def fn(x: torch.Tensor, hook: object = None) -> torch.Tensor:
        if PHASE.get() == "gate":  # the gates' pre-pass reads the prompt as the attacker left it
            return x
        phase = token_phase()
        if apply_to != "both" and phase != apply_to:
            return x
        floor_now = generated_floor if phase == "generated" else _prompt_floors(floor, position_floors, x.shape[1], x)
        u = r.to(device=x.device, dtype=x.dtype)
        lift = (floor_now - x @ u).clamp_min(0.0)  # [batch, pos]
        if gate is not None:
            lift = lift * gate.value(x.shape[0], x.device, x.dtype)[:, None]
        return x + lift[..., None] * u

    return fn


@dataclass
class AnchorProjections(Intervention):
    """Floors (sign +1) and ceilings (sign -1) on x.u_i at one hook, applied in order.

    ``directions``: [m, d_model] (made unit); ``bounds``: [m] on prompt tokens;
    ``generated_bounds``: [m] on generated tokens (default ``bounds``); ``signs``: m of +1 / -1.
    """

    directions: torch.Tensor
    hook: str
    bounds: torch.Tensor | Sequence[float]
    signs: Sequence[int]
    gate: Optional[Gate] = None
    generated_bounds: Optional[torch.Tensor | Sequence[float]] = None
    apply_to: str = "both"
    gate_read: bool = True  # False: another intervention registers this gate's read hooks (one decision shared by both)
    order: int = field(default=ANCHOR_ORDER, init=False)

    def __post_init__(self) -> None:
        if self.directions.ndim != 2 or self.directions.shape[0] == 0:
            raise ValueError(
                f"AnchorProjections.directions must be [m, d_model] with m >= 1, got shape {tuple(self.directions.shape)}"
            )
        norms = self.directions.float().norm(dim=1)
        if not (torch.isfinite(self.directions).all() and (norms > 0).all()):
            raise ValueError("AnchorProjections.directions must be finite and non-zero")
        self._units = self.directions.float() / norms[:, None]
        m = self.directions.shape[0]
        self.signs = [int(s) for s in self.signs]
        if len(self.signs) != m or any(s not in (1, -1) for s in self.signs):
            raise ValueError(
                f"AnchorProjections.signs must be {m} values of +1 (floor) or -1 (ceiling), got {self.signs}"
            )
        self.bounds = torch.as_tensor(self.bounds, dtype=torch.float32).flatten()
        gen = (
            self.bounds
            if self.generated_bounds is None
            else torch.as_tensor(self.generated_bounds, dtype=torch.float32).flatten()
        )
        for name, b in (("bounds", self.bounds), ("generated_bounds", gen)):
            if b.numel() != m or not torch.isfinite(b).all():
                raise ValueError(f"AnchorProjections.{name} must be {m} finite values, got {b.tolist()}")
        self.generated_bounds = gen
        check_apply_to(self.apply_to, "AnchorProjections.apply_to")

    @property
    def units(self) -> torch.Tensor:
        """The unit directions [m, d_model] (float32)."""
        return self._units

    @classmethod
    def from_sae(
        cls, sae: Any, features: Sequence[int], signs: Sequence[int], bounds, hook: Optional[str] = None, **kw
    ) -> AnchorProjections:
        """Bounds on the coordinates along the decoder directions W_dec[f] of ``features``."""
        from saesteer.interventions.features import check_features
        from saesteer.primitives.sae_weights import SaeWeights

        w = SaeWeights.from_sae(sae)
        feats = check_features(features, w.d_sae)
        name = hook or w.hook_name
        if not name:
            raise ValueError("AnchorProjections.from_sae needs hook= (the SAE's metadata names no hook)")
        return cls(w.W_dec[feats].detach().float(), name, bounds, signs, **kw)

    def validate(self, model: HookedTransformer) -> None:
        if self.directions.shape[1] != model.cfg.d_model:
            raise ValueError(
                f"AnchorProjections directions have d={self.directions.shape[1]}, the model's d_model is {model.cfg.d_model}"
            )

    def prepass_gates(self, model: HookedTransformer) -> list[Gate]:
        if self.gate is None:
            return []
        return [self.gate] if hook_order(self.gate.hook) > hook_order(self.hook) else []

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        units, signs, gate, apply_to = self.units, self.signs, self.gate, self.apply_to
        bounds, gen_bounds = self.bounds.tolist(), self.generated_bounds.tolist()

        def fn(x: torch.Tensor, hook: object = None) -> torch.Tensor:
            if PHASE.get() == "gate":
                return x
            phase = token_phase()
            if apply_to != "both" and phase != apply_to:
                return x
            bs = gen_bounds if phase == "generated" else bounds
            g = None if gate is None else gate.value(x.shape[0], x.device, x.dtype)[:, None]
            U = units.to(device=x.device, dtype=x.dtype)
            for i, (s, b) in enumerate(zip(signs, bs)):
                u = U[i]
                lift = (s * b - s * (x @ u)).clamp_min(0.0)  # [batch, pos]
                if g is not None:
                    lift = lift * g
                x = x + (s * lift)[..., None] * u
            return x

        out: list[tuple[str, HookFn]] = list(gate.read_hooks()) if gate is not None and self.gate_read else []
        return out + [(self.hook, fn)]


class AnchorFeatures(EditFeatures):
    """Floor SAE features: a_f <- max(a_f, floor_f), error term kept, run after other edits."""

    order = ANCHOR_ORDER

    def __init__(
        self,
        sae: Any,
        features: Sequence[int],
        floors: float | Sequence[float],
        gate: Optional[Gate] = None,
        apply_to: str = "both",
        hook: Optional[str] = None,
    ) -> None:
        super().__init__(sae, features, mode="floor", values=floors, gate=gate, apply_to=apply_to, hook=hook)
