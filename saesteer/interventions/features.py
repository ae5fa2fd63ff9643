"""SAE feature edits with the error term kept (O'Brien et al. 2024 style clamping).

With a = encode(x), an edit that changes features F to new values a'_F gives
``x' = x + gate * sum_{f in F} (a'_f - a_f) W_dec[f]`` (DESIGN.md).  This is exactly
sae_lens's splice with ``use_error_term=True`` plus a clamp hook, at the cost of
|F| encoder columns for ReLU / JumpReLU SAEs (a full encode for TopK).  The
arithmetic runs in ``saesteer.kernels``: Triton on CUDA tensors, torch elsewhere.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.interventions.gates import Gate
from saesteer.kernels import MODES, sparse_feature_edit, topk_feature_edit
from saesteer.primitives.hooks import hook_order
from saesteer.primitives.intervention import Intervention
from saesteer.primitives.phase import PHASE, check_apply_to, token_phase
from saesteer.primitives.sae_weights import SaeWeights


def check_features(features: Sequence[int], d_sae: int) -> list[int]:
    feats = [int(f) for f in features]
    if not feats:
        raise ValueError("EditFeatures needs at least one feature index, got []")
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"feature indices {bad[:5]} out of range for an SAE with d_sae={d_sae}")
    return feats


@dataclass
class EditFeatures(Intervention):
    """Edit SAE features at the SAE's hook: modes set / scale / add / floor / ceiling.

    ``values``: one number for every feature or one per feature.  ``apply_to``: prompt
    tokens, generated tokens or both (clamping generated tokens too can make text
    degenerate).  ``gate``: act only on sequences the gate selects.  ``along``: keep only the
    edit's component along this direction, ``x' = x + ((x_edited - x) . u) u`` with u the unit
    ``along`` (the features' decoder coordinate on u moves; the rest of x stays).
    """

    sae: Any
    features: Sequence[int]
    mode: str = "set"
    values: float | Sequence[float] = 0.0
    only_when_active: bool = False
    apply_to: str = "both"
    gate: Optional[Gate] = None
    hook: Optional[str] = None  # defaults to the SAE's own hook name
    along: Optional[torch.Tensor] = None  # [d_in]: keep only the edit's component along it

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"EditFeatures.mode must be one of {MODES}, got {self.mode!r}")
        check_apply_to(self.apply_to, "EditFeatures.apply_to")
        self._w = SaeWeights.from_sae(self.sae)
        self.features = check_features(self.features, self._w.d_sae)
        n = len(self.features)
        v = self.values
        scalar = isinstance(v, numbers.Real) or (torch.is_tensor(v) and v.ndim == 0)
        vals = [float(v)] * n if scalar else [float(x) for x in v]
        if len(vals) != n:
            raise ValueError(f"EditFeatures got {len(vals)} values for {n} features")
        bad = [(f, x) for f, x in zip(self.features, vals) if not math.isfinite(x)]
        if bad:
            name = type(self).__name__
            if scalar:
                raise ValueError(f"{name}.values={vals[0]}; expected a finite number")
            raise ValueError(
                f"{name}.values has NaN/inf for feature(s) {[f for f, _ in bad[:5]]}: {[x for _, x in bad[:5]]}; "
                f"expected finite numbers"
            )
        self._values = torch.tensor(vals)
        idx = torch.tensor(self.features)
        w = self._w
        self._cols = (
            w.W_enc[:, idx].contiguous(),
            w.b_enc[idx].contiguous(),
            w.W_dec[idx].contiguous(),
            None if w.threshold is None else w.threshold[idx].contiguous(),
        )
        self._idx = idx
        self._along = None
        if self.along is not None:
            u = torch.as_tensor(self.along).detach().float().cpu()
            norm = float(u.norm()) if u.shape == (w.d_in,) else float("nan")
            if u.shape != (w.d_in,) or not math.isfinite(norm) or norm == 0.0:
                raise ValueError(
                    f"EditFeatures.along must be a finite nonzero vector of shape ({w.d_in},), "
                    f"got shape {tuple(u.shape)} and norm {norm}"
                )
            self._along = u / norm

    @property
    def hook_name(self) -> str:
        name = self.hook or self._w.hook_name
        if not name:
            raise ValueError("EditFeatures needs hook= (the SAE's metadata names no hook)")
        return name

    def validate(self, model: HookedTransformer) -> None:
        if self._w.d_in != model.cfg.d_model:
            raise ValueError(f"SAE d_in={self._w.d_in} does not match the model's d_model={model.cfg.d_model}")
        if self.hook_name not in model.hook_dict:
            raise ValueError(f"SAE hook {self.hook_name!r} does not exist in this model")
        if self.gate is not None and hook_order(self.gate.hook) > hook_order(self.hook_name):
            raise ValueError(
                f"gate reads {self.gate.hook}, after the edit at {self.hook_name}; a gate must read no later than what it gates"
            )

    def delta_fn(self):
        """The edit as a function x -> x' (no phase or gate logic): for kernels and tests."""
        w = self._w
        W_enc_F, b_enc_F, W_dec_F, thr_F = self._cols
        b_dec = w.b_dec if w.apply_b_dec_to_input else None
        along = self._along

        def fn(x: torch.Tensor, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
            if along is None:
                return edit(x, gate)
            u = along.to(x)
            return x + ((edit(x, gate) - x) @ u)[..., None] * u

        def edit(x: torch.Tensor, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
            dev = x.device
            kw = dict(mode=self.mode, values=self._values.to(dev), only_when_active=self.only_when_active, gate=gate)
            bd = None if b_dec is None else b_dec.to(dev)
            if w.architecture == "topk":
                return topk_feature_edit(
                    x,
                    w.W_enc.to(dev),
                    w.b_enc.to(dev),
                    w.W_dec.to(dev),
                    k=w.k,
                    features=self._idx.to(dev),
                    b_dec=bd,
                    **kw,
                )
            return sparse_feature_edit(
                x,
                W_enc_F.to(dev),
                b_enc_F.to(dev),
                W_dec_F.to(dev),
                b_dec=bd,
                threshold_F=None if thr_F is None else thr_F.to(dev),
                **kw,
            )

        return fn

    def hooks(self, model: HookedTransformer):
        edit = self.delta_fn()
        gate = self.gate
        apply_to = self.apply_to

        def fn(x: torch.Tensor, hook=None) -> torch.Tensor:
            if (gate is not None and PHASE.get() == "gate") or (apply_to != "both" and token_phase() != apply_to):
                return x
            g = None
            if gate is not None:
                g = gate.value(x.shape[0], x.device, x.dtype)[:, None].expand(x.shape[0], x.shape[1]).reshape(-1)
            return edit(x, g)

        out = []
        if gate is not None:
            out.extend(gate.read_hooks())
        out.append((self.hook_name, fn))
        return out
