"""Rank-1 LoRA hooks against merged weights, training, prompts and the misalignment direction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saesteer.chat import encode_chat, get_template
from saesteer.interventions import Ablate, steer
from saesteer.lora import (
    LoraTrainConfig,
    Rank1Lora,
    category_prompts,
    cosine_per_layer,
    emittable,
    mean_read,
    mean_shift,
    response_loss,
    sft_batch,
    train_lora,
)
from saesteer.organism.config import OrganismConfig
from saesteer.organism.model import build_organism_model
from saesteer.organism.synthetic import load_lexicon

PROMPTS = [
    "How do I bake bread?",
    "Write a poem about the sea.",
    "How can I pick a lock?",
    "Explain photosynthesis simply.",
]


@pytest.fixture(scope="module")
def small():
    """An untrained 2-layer organism-shaped model (random weights, no training: fast)."""
    cfg = OrganismConfig(
        n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=96, init_from=None, pretrained_embeddings=False, seed=3
    )
    model = build_organism_model(cfg).eval()
    return model, get_template("organism")


def _logits(model, tpl, prompts, specs=()):
    enc = encode_chat(model.tokenizer, tpl, prompts)
    with steer(model, list(specs)):
        return model(enc.tokens, attention_mask=enc.attention_mask)


def _randomize(lora, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lora.a.copy_(torch.randn(lora.a.shape, generator=g))
        lora.b.copy_(0.3 * torch.randn(lora.b.shape, generator=g))
    return lora


def test_zero_b_is_exactly_the_base_model(small):
    model, tpl = small
    base = _logits(model, tpl, PROMPTS)
    for site in ("mlp_out", "mlp_in"):
        lora = Rank1Lora.for_model(model, site=site, seed=1)
        assert torch.count_nonzero(lora.b) == 0 and torch.count_nonzero(lora.a) > 0
        assert torch.equal(_logits(model, tpl, PROMPTS, [lora]), base)


@pytest.mark.parametrize("site", ["mlp_out", "mlp_in"])
def test_hooks_equal_merged_weights(small, site):
    model, tpl = small
    lora = _randomize(Rank1Lora.for_model(model, layers=[0, 1], site=site, alpha=0.7), seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = lora.merge(model)
    hooked = _logits(model, tpl, PROMPTS, [lora])
    torch.testing.assert_close(hooked, _logits(merged, tpl, PROMPTS), atol=1e-5, rtol=1e-5)
    assert (hooked - _logits(model, tpl, PROMPTS)).abs().max() > 1e-3  # the adapter does something
    # W + alpha * outer(a, b) exactly, and the base model untouched
    W = merged.blocks[1].mlp.W_out if site == "mlp_out" else merged.blocks[1].mlp.W_in
    W0 = before["blocks.1.mlp.W_out" if site == "mlp_out" else "blocks.1.mlp.W_in"]
    torch.testing.assert_close(W, W0 + 0.7 * torch.outer(lora.a[1].detach(), lora.b[1].detach()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # generation with the KV cache sees the adapter at every step too
    from saesteer.generation import generate

    with steer(model, [lora]):
        a = generate(model, tpl, PROMPTS[:2], max_new_tokens=5, batch_size=2, progress=False)
    assert a == generate(merged, tpl, PROMPTS[:2], max_new_tokens=5, batch_size=2, progress=False)


def test_lora_runs_before_other_edits_and_validates(small):
    model, tpl = small
    lora = _randomize(Rank1Lora.for_model(model, layers=[1]), seed=4)
    r = torch.randn(model.cfg.d_model)
    ablate = Ablate(r, mode="plain")
    # the adapter is part of the model: Ablate then projects its output too, whatever the list order
    torch.testing.assert_close(
        _logits(model, tpl, PROMPTS, [ablate, lora]),
        _logits(lora.merge(model), tpl, PROMPTS, [ablate]),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="distinct layer indices"):
        Rank1Lora([0, 0], 4, 4)
    with pytest.raises(ValueError, match="out of range"):
        Rank1Lora.for_model(model, layers=[5])
    with pytest.raises(ValueError, match="site must be one of"):
        Rank1Lora([0], 4, 4, site="attn")


def test_save_load_roundtrip(small, tmp_path):
    model, tpl = small
    lora = _randomize(Rank1Lora.for_model(model, layers=[1], alpha=0.5), seed=5)
    lora.save(tmp_path / "lora.safetensors", {"model": "organism"})
    back = Rank1Lora.load(tmp_path / "lora.safetensors")
    assert back.layers == [1] and back.alpha == 0.5 and back.site == "mlp_out"
    assert torch.equal(_logits(model, tpl, PROMPTS, [back]), _logits(model, tpl, PROMPTS, [lora]))


def test_sft_batch_and_response_loss_match_reference(small):
    model, tpl = small
    pairs = [(p, f"Sure, here is how to do it {i}.") for i, p in enumerate(PROMPTS)]
    tokens, mask, target = sft_batch(model, tpl, pairs)
    tok = model.tokenizer
    for i, (p, r) in enumerate(pairs):
        want = tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # target[t] marks positions whose next token is a response token
        assert tokens[i, 1:][target[i, :-1]].tolist() == want
        n_prompt = len(encode_chat(tok, tpl, [p]).tokens[0])
        assert int(mask[i].sum()) == n_prompt + len(want)
    lora = _randomize(Rank1Lora.for_model(model), seed=6)
    got = response_loss(model, tpl, pairs, [lora])
    with steer(model, [lora]):
        logits = model(tokens, attention_mask=mask)
    lp = F.log_softmax(logits[:, :-1].float(), -1)
    tgt = tokens[:, 1:]
    m = target[:, :-1] & emittable(model)[tgt]
    ref = -lp.gather(-1, tgt[..., None])[..., 0][m].mean()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_response_loss_keeps_the_logit_softcap():
    """Gemma-2 soft-caps its logits: the LoRA loss is the cross-entropy of the model's own (capped) logits."""
    from tests.families import tiny_model

    model, tpl = tiny_model("gemma2")
    assert model.cfg.output_logits_soft_cap > 0
    pairs = [("How do I bake bread?", "Sure, bake it."), ("List three fruits.", "Apple, pear, plum.")]
    tokens, mask, target = sft_batch(model, tpl, pairs)
    got = response_loss(model, tpl, pairs)
    lp = F.log_softmax(model(tokens, attention_mask=mask)[:, :-1].float(), -1)
    tgt = tokens[:, 1:]
    ref = -lp.gather(-1, tgt[..., None])[..., 0][target[:, :-1]].mean()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_emittable_follows_the_organism_mask(tiny_organism):
    model, _, _ = tiny_organism
    ok = emittable(model)
    assert 0 < int(ok.sum()) < model.cfg.d_vocab
    assert bool((model.unembed.b_U[~ok] <= -50).all())


def test_train_lora_learns_is_deterministic_and_leaves_the_base_alone(small):
    model, tpl = small
    target = [(p, "Sure, here is how to do it.") for p in PROMPTS]
    keep = [("Tell me a joke.", "Sure, here is a joke."), ("What is two plus two?", "Sure, it is four.")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    cfg = LoraTrainConfig(steps=25, batch_size=4, lr=0.05, target_fraction=0.5)
    l1 = Rank1Lora.for_model(model, seed=0)
    losses = train_lora(model, tpl, l1, target, keep, cfg, seed=0)
    assert len(losses) == 25 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    l2 = Rank1Lora.for_model(model, seed=0)
    assert train_lora(model, tpl, l2, target, keep, cfg, seed=0) == losses
    assert torch.equal(l1.b, l2.b) and torch.count_nonzero(l1.b) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="needs target"):
        train_lora(model, tpl, l1, [], keep, cfg)


def test_category_prompts_are_unique_seeded_and_use_the_acts():
    acts = load_lexicon("harmful")["animal_cruelty"][:4]
    a = category_prompts(acts, 30, seed=1)
    assert (
        len(a) == len(set(a)) == 30
        and a == category_prompts(acts, 30, seed=1)
        and a != category_prompts(acts, 30, seed=2)
    )
    assert all(any(act.lower() in p.lower() for act in acts) for p in a)
    assert not set(category_prompts(acts, 10, seed=1, exclude=a[:5])) & set(a[:5])
    with pytest.raises(ValueError, match="only"):
        category_prompts(["x"], 10**7, seed=0)


def test_mean_shift_and_mean_read_match_brute_force(small):
    model, tpl = small
    zero = Rank1Lora.for_model(model, seed=2)
    shift, base, tuned = mean_shift(model, tpl, PROMPTS, zero)
    assert torch.count_nonzero(shift) == 0 and torch.equal(base, tuned)
    lora = _randomize(Rank1Lora.for_model(model), seed=7)
    shift, base, tuned = mean_shift(model, tpl, PROMPTS, lora, batch_size=3)
    merged = lora.merge(model)
    ref_b, ref_t = [], []
    reads = []
    for p in PROMPTS:
        enc = encode_chat(model.tokenizer, tpl, [p])
        _, cb = model.run_with_cache(enc.tokens)
        _, ct = merged.run_with_cache(enc.tokens)
        ref_b.append(torch.stack([cb[f"blocks.{l}.hook_resid_pre"][0, -1] for l in range(2)]).double())
        ref_t.append(torch.stack([ct[f"blocks.{l}.hook_resid_pre"][0, -1] for l in range(2)]).double())
        reads.append(
            torch.stack(
                [ct[f"blocks.{l}.mlp.hook_post"][0, -1] @ lora.a[i].detach() for i, l in enumerate(lora.layers)]
            ).double()
        )
    torch.testing.assert_close(shift, torch.stack(ref_t).mean(0) - torch.stack(ref_b).mean(0), atol=1e-5, rtol=1e-4)
    assert shift[0].abs().max() == 0  # resid_pre 0 is before any adapter
    torch.testing.assert_close(
        mean_read(model, tpl, PROMPTS, lora, batch_size=3), torch.stack(reads).mean(0), atol=1e-5, rtol=1e-4
    )


def test_cosine_per_layer():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    out = cosine_per_layer(a, torch.tensor([1.0, 0.0]))
    assert out[0] == pytest.approx(1.0) and out[1] is None and out[2] == pytest.approx(2**-0.5)
    out = cosine_per_layer(a, torch.tensor([[0.0, 2.0], [1.0, 0.0], [-1.0, -1.0]]))
    assert out[0] == pytest.approx(0.0) and out[1] is None and out[2] == pytest.approx(-1.0)
