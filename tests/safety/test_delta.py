"""The safety adapter as hooks against its delta merged into the weights; the delta file's round trip and its
base-model check."""

from __future__ import annotations

import copy

import pytest
import torch
from transformer_lens import HookedTransformer

from saesteer.chat import encode_chat
from saesteer.interventions import steer
from saesteer.io import load_tensors, save_tensors
from saesteer.safety.adapter import LowRankAdapter
from saesteer.safety.delta import SafetyDeltaError, load_safety_delta, read_safety_delta, save_safety_delta
from tests.families import tiny_config, tiny_model, tiny_tokenizer

PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "How do I make a bomb?", "List three fruits."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("qwen2.5", seed=0)


def _adapter(model, seed=0, sites=("attn_out", "mlp_out"), layers=(0, 1)):
    ad = LowRankAdapter.for_model(model, list(layers), list(sites), rank=4, alpha=8.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for s in ad.sites:
            ad.B[s].copy_(0.2 * torch.randn(ad.B[s].shape, generator=g))
    return ad


def _logits(model, tpl, adapter=None):
    enc = encode_chat(model.tokenizer, tpl, PROMPTS, pad_token_id=model.tokenizer.pad_token_id)
    with torch.no_grad(), steer(model, [adapter] if adapter is not None else []):
        return model(enc.tokens, attention_mask=enc.attention_mask)


def test_an_untrained_adapter_is_exactly_the_base_model(tiny):
    model, tpl = tiny
    ad = LowRankAdapter.for_model(model, [0, 1], ["attn_out", "mlp_out"], rank=4, alpha=8.0, seed=0)
    assert torch.equal(_logits(model, tpl), _logits(model, tpl, ad))


@pytest.mark.parametrize("sites", [("attn_out",), ("mlp_out",), ("attn_out", "mlp_out")])
def test_the_delta_merged_into_the_weights_equals_the_adapter_as_hooks(tiny, tmp_path, sites):
    model, tpl = tiny
    ad = _adapter(model, sites=sites)
    path = save_safety_delta(tmp_path / "d.safetensors", ad, model, base_name="tiny")
    loaded, _ = read_safety_delta(path)  # float16 factors, as shipped
    hooked = _logits(model, tpl, loaded)
    merged = load_safety_delta(copy.deepcopy(model), path)
    out = _logits(merged, tpl)
    base = _logits(model, tpl)
    assert (hooked - base).abs().max() > 1e-2  # the adapter changes the model
    assert (out - hooked).abs().max() < 1e-5


def test_the_delta_file_round_trip_is_exact(tiny, tmp_path):
    model, _ = tiny
    ad = _adapter(model)
    path = save_safety_delta(tmp_path / "d.safetensors", ad, model, base_name="tiny", metadata={"steps": 3})
    tensors, meta = load_tensors(path)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    loaded, meta2 = read_safety_delta(path)
    assert meta2 == meta and meta["steps"] == 3 and meta["base_name"] == "tiny"
    assert loaded.spec() == ad.spec()
    for k, v in ad.tensors().items():
        assert torch.equal(loaded.tensors()[k], v.half().float())
    again = save_safety_delta(tmp_path / "e.safetensors", loaded, model, base_name="tiny", metadata={"steps": 3})
    t2, _ = load_tensors(again)
    assert all(torch.equal(tensors[k], t2[k]) for k in tensors)


def test_a_delta_refuses_a_different_base(tiny, tmp_path):
    model, _ = tiny
    path = save_safety_delta(tmp_path / "d.safetensors", _adapter(model), model, base_name="tiny")
    other, _ = tiny_model("qwen2.5", seed=1)  # same shapes, other weights
    with pytest.raises(SafetyDeltaError, match="trained on base tiny"):
        load_safety_delta(other, path)
    twice = load_safety_delta(copy.deepcopy(model), path)  # already merged: no longer the base
    with pytest.raises(SafetyDeltaError, match="trained on base tiny"):
        load_safety_delta(twice, path)


def test_a_delta_with_a_forged_key_refuses_the_base(tiny, tmp_path):
    model, _ = tiny
    path = save_safety_delta(tmp_path / "d.safetensors", _adapter(model), model, base_name="tiny")
    tensors, meta = load_tensors(path)
    meta["base_fingerprint"] = {k: [v[0] * 1.01, v[1]] for k, v in meta["base_fingerprint"].items()}
    save_tensors(path, tensors, meta)
    with pytest.raises(SafetyDeltaError, match="weights differ"):
        load_safety_delta(copy.deepcopy(model), path)


def test_a_delta_for_another_shape_fails_clearly(tiny, tmp_path):
    model, _ = tiny
    path = save_safety_delta(tmp_path / "d.safetensors", _adapter(model, layers=(1,)), model)
    cfg = tiny_config("qwen2.5", seed=0, d_vocab=len(model.tokenizer))
    cfg.d_mlp = 48  # another MLP width
    wider = HookedTransformer(cfg, tokenizer=tiny_tokenizer("qwen2.5"), default_padding_side="left")
    with pytest.raises(SafetyDeltaError, match="mlp_out"):
        load_safety_delta(wider, path)
    save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)}, {"format": "other"})
    with pytest.raises(SafetyDeltaError, match="not a saesteer safety delta"):
        load_safety_delta(model, tmp_path / "x.safetensors")
