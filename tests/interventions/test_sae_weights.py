"""SaeWeights, the oracle of the feature-edit and search tests, equals sae_lens on the same weights."""

from __future__ import annotations

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from saesteer.primitives.sae_weights import SaeWeights
from tests.saes import ARCHS, random_sae

D_IN, D_SAE = 24, 96


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_equals_sae_lens(arch, apply_b_dec):
    sae = random_sae(arch, D_IN, D_SAE, "blocks.0.hook_resid_pre", seed=3)
    sae.cfg.apply_b_dec_to_input = apply_b_dec
    w = SaeWeights.from_sae(sae)
    x = _x()
    with torch.no_grad():
        ref = sae.encode(x)
    ours = w.encode(x)
    assert int((ref > 0).sum()) > 0.05 * ref.numel()  # enough features fire for the comparison to mean something
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the decoder side the edits use: x_hat = a @ W_dec + b_dec
        torch.testing.assert_close(ours @ w.W_dec + w.b_dec, sae.decode(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_encode_columns_equals_sae_lens_columns(arch):
    sae = random_sae(arch, D_IN, D_SAE, "blocks.0.hook_resid_pre", seed=4)
    feats = [0, 7, 50, 95]
    with torch.no_grad():
        ref = sae.encode(_x(2))[..., feats]
    torch.testing.assert_close(SaeWeights.from_sae(sae).encode_columns(_x(2), feats), ref, atol=1e-5, rtol=1e-5)


def test_topk_with_decoder_norm_rescaling_folds_to_the_same_activations_and_reconstruction():
    g = torch.Generator().manual_seed(5)
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5)
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g) * (0.2 + torch.rand(D_SAE, 1, generator=g)))
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(D_IN, generator=g))
    w = SaeWeights.from_sae(sae.eval())
    x = _x(3)
    with torch.no_grad():
        ref_recon = sae.decode(sae.encode(x))
    ours = w.encode(x)
    assert torch.equal((ours > 0).sum(-1) <= 6, torch.ones_like(ours[..., 0], dtype=torch.bool))
    torch.testing.assert_close(ours @ w.W_dec + w.b_dec, ref_recon, atol=1e-5, rtol=1e-5)
