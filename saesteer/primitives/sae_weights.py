"""The tensors and semantics of an sae_lens SAE that feature edits, gates and searches need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class SaeWeights:
    """The tensors and semantics of an sae_lens SAE that feature edits need."""

    architecture: str  # standard | jumprelu | topk
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor  # [d_in]
    apply_b_dec_to_input: bool
    threshold: Optional[torch.Tensor] = None  # jumprelu [d_sae]
    k: Optional[int] = None  # topk
    hook_name: Optional[str] = None

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @classmethod
    def from_sae(cls, sae: Any) -> SaeWeights:
        cached = getattr(sae, "_saesteer_weights", None)
        if cached is not None:
            return cached
        cfg = sae.cfg
        arch = (
            cfg.architecture()
            if callable(getattr(cfg, "architecture", None))
            else str(getattr(cfg, "architecture", "standard"))
        )
        norm = getattr(cfg, "normalize_activations", "none")
        if norm not in (None, "none"):
            raise ValueError(
                f"SAE uses normalize_activations={norm!r}; fold the normalization first (sae.fold_activation_norm_scaling_factor)"
            )
        if arch not in ("standard", "jumprelu", "topk"):
            raise ValueError(f"feature edits support standard, jumprelu and topk SAEs, got architecture {arch!r}")
        hook = getattr(getattr(cfg, "metadata", None), "hook_name", None) or getattr(cfg, "hook_name", None)
        W_enc, b_enc, W_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach()
        if arch == "topk" and getattr(cfg, "rescale_acts_by_decoder_norm", False):
            # sae_lens: acts = topk(h * |W_dec[f]|), decode (acts / |W_dec[f]|) @ W_dec; folding the
            # norms into copies gives the same activations and reconstruction with plain TopK.
            n = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
        w = cls(
            arch,
            W_enc,
            b_enc,
            W_dec,
            sae.b_dec.detach(),
            bool(getattr(cfg, "apply_b_dec_to_input", True)),
            sae.threshold.detach() if arch == "jumprelu" else None,
            int(cfg.k) if arch == "topk" else None,
            hook,
        )
        try:
            sae._saesteer_weights = w
        except AttributeError:  # pragma: no cover
            pass
        return w

    def encode_columns(self, x: torch.Tensor, features: Sequence[int]) -> torch.Tensor:
        """Activations of ``features`` only (ReLU / JumpReLU): [..., |F|]."""
        if self.architecture == "topk":
            raise ValueError("a TopK SAE needs the full encode to know membership; use encode()")
        idx = torch.as_tensor(list(features), device=self.W_enc.device)
        xin = x - self.b_dec.to(x) if self.apply_b_dec_to_input else x
        h = xin @ self.W_enc[:, idx].to(x) + self.b_enc[idx].to(x)
        a = h.relu()
        if self.threshold is not None:
            a = a * (h > self.threshold[idx].to(x))
        return a

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Full encode [..., d_sae] (reference semantics of sae_lens)."""
        xin = x - self.b_dec.to(x) if self.apply_b_dec_to_input else x
        h = xin @ self.W_enc.to(x) + self.b_enc.to(x)
        if self.architecture == "topk":
            vals, idx = h.topk(self.k, dim=-1)
            return torch.zeros_like(h).scatter(-1, idx, vals.relu())
        a = h.relu()
        if self.threshold is not None:
            a = a * (h > self.threshold.to(x))
        return a
