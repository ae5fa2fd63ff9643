"""Logits from final residuals, unembedding only the tokens a model can emit.

A model whose unembedding has all-zero columns (the organism zeroes ``W_U`` outside its
output vocabulary and sets ``b_U`` to a masked logit there) gives those tokens the
constant logit ``b_U[t]`` whatever the residual.  :func:`logits` computes ``h @ W_U``
only over the other columns and fills the rest with ``b_U``: the same logits as
``model.unembed`` (exactly on the constant columns; up to matmul summation order on
the others) at a fraction of the cost when the vocabulary is large and the model small
(``scripts/bench_generation.py`` measures it).
"""

from __future__ import annotations

from typing import Optional

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities import apply_softcap

#: below this share of live columns the restricted product is used
MAX_LIVE_SHARE = 0.75

#: the restricted weights are kept on the unembedding module itself, so they die with the model
_ATTR = "_saesteer_restricted"


def _key(model: HookedTransformer) -> tuple:
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    return (W_U.data_ptr(), W_U._version, b_U.data_ptr(), b_U._version, W_U.device, W_U.dtype)


@torch.no_grad()
def _restricted(
    model: HookedTransformer,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(live ids, W_U[:, live], b_U[live]), or Nones when restricting would not pay; cached per weights version."""
    key = _key(model)
    hit = getattr(model.unembed, _ATTR, None)
    if hit is not None and hit[0] == key:
        return hit[1:]
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    live = (W_U != 0).any(0).nonzero()[:, 0]
    if live.numel() > MAX_LIVE_SHARE * W_U.shape[1]:
        entry = (key, None, None, None)
    else:
        entry = (key, live, W_U[:, live].contiguous(), b_U[live].contiguous())
    setattr(model.unembed, _ATTR, entry)
    return entry[1:]


def reset(model: HookedTransformer) -> None:
    """Forget the model's restricted weights (they are recomputed on the next call)."""
    model.unembed.__dict__.pop(_ATTR, None)


def emittable(model: HookedTransformer) -> torch.Tensor:
    """[d_vocab_out] bool: tokens whose logit depends on the input or is not masked off (b_U > -50 where W_U is zero);
    every token of an ordinary model."""
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    return ~((W_U == 0).all(0) & (b_U <= -50))


def unembed(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """``model.unembed(resid)`` for normalized final residuals ``[..., d_model]`` -> ``[..., d_vocab_out]``.

    Differentiable in ``resid``; when gradients must reach ``W_U`` itself the full product is used."""
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    if torch.is_grad_enabled() and (W_U.requires_grad or b_U.requires_grad):
        return model.unembed(resid)
    live, W_live, b_live = _restricted(model)
    if live is None:
        return model.unembed(resid)
    part = resid @ W_live.to(resid.dtype) + b_live.to(resid.dtype)
    return b_U.to(resid.dtype).expand(*resid.shape[:-1], b_U.shape[0]).index_copy(-1, live, part)


def logits(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """Logits from final-block residuals ``[..., d_model]`` as ``HookedTransformer.forward`` computes them
    (final norm, unembedding, logit soft-cap)."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return apply_softcap(unembed(model, resid), model.cfg.output_logits_soft_cap)
