"""Weight orthogonalization: remove a direction from every matrix that writes to the residual stream.

W <- W - r r^T W for the token (and positional) embedding, every W_O and W_out, and
their biases.  The edited model's logits equal those of the hook ablation
(``Ablate(direction)``) up to float error.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.checks import check_finite, check_finite_tensor
from saesteer.io import save_tensors
from saesteer.primitives.intervention import check_direction, unit


def _remove(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Remove r from the last (d_model) axis of w."""
    r = r.to(dtype=w.dtype, device=w.device)
    return w - (w @ r)[..., None] * r


@torch.no_grad()
def orthogonalize_weights(
    model: HookedTransformer,
    direction: torch.Tensor,
    inplace: bool = False,
    reference: Optional[float | torch.Tensor] = None,
) -> HookedTransformer:
    """A model whose residual-stream writers cannot write along ``direction``.

    ``reference``: a float, the first attention block's output bias then writes
    ``reference * r``, so the residual coordinate along r is that constant from
    ``blocks.0.hook_resid_mid`` on; or per-layer coordinates [n_layers] (the
    harmless means of affine ablation), so that the coordinate is ``reference[l]``
    throughout layer l: every token embedding gets ``reference[0] * r`` and block l's
    MLP output bias writes ``(reference[l+1] - reference[l]) * r`` — the exact weight
    form of ``Ablate(direction, mode="affine", reference=reference)``.
    """
    check_direction(direction, model.cfg.d_model)
    r = unit(direction.double())
    n = model.cfg.n_layers
    per_layer = reference is not None and torch.is_tensor(reference) and reference.ndim == 1
    if per_layer and reference.shape != (n,):
        raise ValueError(
            f"orthogonalize_weights: per-layer reference has shape {tuple(reference.shape)}, expected ({n},)"
        )
    if per_layer:
        check_finite_tensor(reference, "orthogonalize_weights reference")
    elif reference is not None:
        check_finite(reference, "orthogonalize_weights reference")
    m = model if inplace else copy.deepcopy(model)
    m.embed.W_E.copy_(_remove(m.embed.W_E.double(), r).to(m.embed.W_E.dtype))
    if hasattr(m, "pos_embed") and hasattr(m.pos_embed, "W_pos"):
        m.pos_embed.W_pos.copy_(_remove(m.pos_embed.W_pos.double(), r).to(m.pos_embed.W_pos.dtype))
    for block in m.blocks:
        attn = block.attn
        attn.W_O.copy_(_remove(attn.W_O.double(), r).to(attn.W_O.dtype))
        attn.b_O.copy_(_remove(attn.b_O.double(), r).to(attn.b_O.dtype))
        if hasattr(block, "mlp"):
            mlp = block.mlp
            mlp.W_out.copy_(_remove(mlp.W_out.double(), r).to(mlp.W_out.dtype))
            mlp.b_out.copy_(_remove(mlp.b_out.double(), r).to(mlp.b_out.dtype))
    if per_layer:
        ref = reference.double()
        m.embed.W_E.copy_((m.embed.W_E.double() + ref[0] * r).to(m.embed.W_E.dtype))
        for l in range(n - 1):
            b = m.blocks[l].mlp.b_out
            b.copy_((b.double() + float(ref[l + 1] - ref[l]) * r).to(b.dtype))
    elif reference is not None:
        b = m.blocks[0].attn.b_O
        b.copy_((b.double() + float(reference) * r).to(b.dtype))
    return m


class OrthogonalizeWeights:
    """Spec form: ``OrthogonalizeWeights(r).apply(model)`` returns the edited copy; ``save`` writes it."""

    def __init__(self, direction: torch.Tensor) -> None:
        self.direction = direction

    def apply(self, model: HookedTransformer) -> HookedTransformer:
        return orthogonalize_weights(model, self.direction)

    @staticmethod
    def save(model: HookedTransformer, path: str | Path, metadata: Optional[dict[str, Any]] = None) -> Path:
        meta = {"kind": "orthogonalized_model", "model": model.cfg.model_name, **(metadata or {})}
        return save_tensors(path, model.state_dict(), meta)
