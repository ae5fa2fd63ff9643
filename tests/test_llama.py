"""Hugging Face Llama -> HookedTransformer (saesteer.llama): tiny random LlamaForCausalLMs converted, their logits
compared with transformers' own forward pass, with and without left padding."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from saesteer.llama import LlamaConversionError, hooked_config_from_hf, hooked_from_hf

VOCAB = 101


def _llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A tiny random Llama (2 layers, d_model 64, 4 heads, 2 key-value heads, RoPE base 100000, tied embeddings),
    its norm weights moved away from 1 so that a norm applied wrongly shows in the logits."""
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _ids_and_mask(seed: int = 1, batch: int = 4, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids; rows 0 and 1 left-padded by 5 and 2 positions (pad id 0), rows 2 and 3 unpadded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in ((0, 5), (1, 2)):
        ids[row, :n_pad] = 0
        mask[row, :n_pad] = 0
    return ids, mask


def test_the_config_follows_the_hf_config():
    cfg = hooked_config_from_hf(_llama().config, n_ctx=32)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_key_value_heads, cfg.d_mlp) == (
        2,
        64,
        4,
        16,
        2,
        128,
    )
    assert (cfg.d_vocab, cfg.n_ctx, cfg.rotary_dim, cfg.rotary_base, cfg.eps) == (VOCAB, 32, 16, 100000.0, 1e-5)
    assert (cfg.normalization_type, cfg.positional_embedding_type, cfg.act_fn) == ("RMS", "rotary", "silu")
    assert cfg.gated_mlp and cfg.final_rms and not cfg.rotary_adjacent_pairs and not cfg.default_prepend_bos
    assert hooked_config_from_hf(_llama().config).n_ctx == 64  # default: max_position_embeddings
    assert hooked_config_from_hf(_llama(num_key_value_heads=4).config).n_key_value_heads is None  # plain attention


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_key_value_heads": 4},  # no grouped-query attention
        {"num_key_value_heads": 1, "tie_word_embeddings": False},
        {"rope_theta": 10000.0, "hidden_act": "gelu"},
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            }
        },
    ],
    ids=["gqa-tied", "mha", "mqa-untied", "base10k-gelu", "llama3-rope"],
)
def test_logits_equal_transformers(overrides):
    hf = _llama(**overrides)
    ht = hooked_from_hf(hf)
    assert not ht.training
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        ref_plain, got_plain = hf(ids[2:]).logits, ht(ids[2:])
        ref, got = hf(ids, attention_mask=mask).logits, ht(ids, attention_mask=mask)
        alone = hf(ids[0:1, 5:]).logits  # row 0 without its padding
    assert ref_plain.abs().max() > 0.1  # logits of a real size, not all ~0
    assert torch.allclose(got_plain, ref_plain, atol=1e-4, rtol=0)
    real = mask.bool()
    assert (got - ref)[real].abs().max() < 1e-4
    assert (got[0, 5:] - alone[0]).abs().max() < 1e-4  # left padding shifts no position
    if hf.config.tie_word_embeddings:
        assert torch.equal(ht.W_U, ht.W_E.T) and ht.W_U.data_ptr() != ht.W_E.data_ptr()  # copies, never shared


def test_hooks_read_the_residual_stream_transformers_computes():
    hf = _llama()
    ht = hooked_from_hf(hf)
    ids, _ = _ids_and_mask()
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
        _, cache = ht.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_pre"))
    for layer in range(2):
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer], atol=1e-5, rtol=0)


def test_float64_and_a_context_cap():
    hf = _llama().double()
    ht = hooked_from_hf(hf, dtype=torch.float64, n_ctx=16)
    assert ht.cfg.n_ctx == 16 and ht.W_E.dtype == torch.float64
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        ref, got = hf(ids, attention_mask=mask).logits, ht(ids, attention_mask=mask)
    assert (got - ref)[mask.bool()].abs().max() < 1e-6  # transformers computes the rotary tables in float32


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention_bias": True}, "attention_bias / mlp_bias"),
        ({"head_dim": 32}, "head_dim=32"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
    ],
)
def test_unsupported_llamas_are_refused(overrides, message):
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, **overrides
    )
    with pytest.raises(LlamaConversionError, match=message):
        hooked_config_from_hf(cfg)


def test_other_architectures_are_refused():
    from transformers import GPT2Config

    with pytest.raises(LlamaConversionError, match="expected a Llama config.*'gpt2'"):
        hooked_config_from_hf(GPT2Config())
