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


def searched_setup(tiny_organism, hook: str, **search_cfg):
    """(model, template, a random 40-feature SAE at ``hook``, 10 harmful and 12 harmless train prompts, a random
    direction, the feature search's scores with ``search_cfg``): the feature-search tests' shared fixture."""
    from saesteer.data import load_prompts
    from saesteer.search import SearchConfig, search_features

    model, tpl, _ = tiny_organism
    sae = random_sae("standard", model.cfg.d_model, 40, hook, seed=5)
    harmful = list(load_prompts("harmful_train").instructions[:10])
    harmless = list(load_prompts("harmless_train").instructions[:12])
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    scores = search_features(model, tpl, sae, direction, harmful, harmless, SearchConfig(**search_cfg))
    return model, tpl, sae, harmful, harmless, direction, scores
