"""Tiny sae_lens SAEs with random weights, for tests (every architecture saesteer edits)."""

from __future__ import annotations

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

ARCHS = ("standard", "jumprelu", "topk")


def random_sae(arch: str, d_in: int, d_sae: int, hook: str, seed: int = 0, k: int = 8):
    g = torch.Generator().manual_seed(seed)
    common = dict(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True)
    if arch == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    elif arch == "topk":
        sae = TopKSAE(TopKSAEConfig(k=k, **common))
    else:
        raise ValueError(arch)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.05 + 0.1 * torch.rand(d_sae, generator=g))
    sae.cfg.metadata.hook_name = hook
    return sae.eval()
