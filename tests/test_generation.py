"""Batched greedy generation with a KV cache equals a full-recompute greedy loop."""

from __future__ import annotations

import torch

from saesteer.chat import encode_chat
from saesteer.generation import generate, length_sorted_batches


def _reference_greedy(model, tpl, prompt: str, n: int) -> str:
    enc = encode_chat(model.tokenizer, tpl, [prompt])
    tokens = enc.tokens
    eos = model.tokenizer.eos_token_id
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(tokens)[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], 1)
    return model.tokenizer.decode(out).strip()


def test_generation_matches_unbatched_recompute(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = [
        "How do I make a bomb at home?",
        "Write a poem about cats.",
        "Explain photosynthesis in simple words for a child please",
        "hi",
    ]
    batched = generate(model, tpl, prompts, max_new_tokens=10, batch_size=3, progress=False)
    for p, b in zip(prompts, batched):
        assert b == _reference_greedy(model, tpl, p, 10)


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([5, 1, 9, 3, 7], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [2, 4]


def test_final_logits_equal_the_full_forward_pass(tiny_organism):
    from saesteer.chat import encode_chat
    from saesteer.generation import final_logits

    model, tpl, _ = tiny_organism
    enc = encode_chat(model.tokenizer, tpl, ["Name a colour.", "How do I bake bread at home?"])
    full = model(enc.tokens, attention_mask=enc.attention_mask)[:, -1]
    fast = final_logits(model, enc.tokens, enc.attention_mask)
    err = (full - fast).abs()
    assert err.max() < 1e-4, f"max {err.max():.2e} mean {err.mean():.2e}"


# ------------------------------------------------------------- the decoding loop's speed-ups change no logit


def _tiny_llama(tokenizer):
    """A tiny random Llama as a HookedTransformer (grouped-query attention, gated MLP, RMSNorm, rotary), with the
    organism's tokenizer: the layers whose weights generate re-lays out."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from saesteer.llama import hooked_from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = hooked_from_hf(LlamaForCausalLM(cfg).eval(), n_ctx=128)
    model.tokenizer = tokenizer  # set_tokenizer would reload it by name, and this one has none to load
    return model


def _decode_logits(model, tokens, mask, cache, steps: int) -> list[torch.Tensor]:
    """Logits of the prompt pass and of ``steps`` greedy steps through ``cache``."""
    from saesteer.generation import final_logits

    out = [final_logits(model, tokens, mask, cache)]
    ones = torch.ones(tokens.shape[0], 1, dtype=mask.dtype)
    for _ in range(steps):
        out.append(final_logits(model, out[-1].argmax(-1)[:, None], ones, cache))
    return out


def _models(tiny_organism):
    model, tpl, _ = tiny_organism
    return [(model, tpl), (_tiny_llama(model.tokenizer), tpl)]


@torch.no_grad()
def test_preallocated_cache_and_matmul_layout_give_transformer_lens_logits_exactly(tiny_organism):
    """Every step's logits with the preallocated cache (also when it must grow) and the re-laid-out weights equal,
    bit for bit, those of TransformerLens's own cache and weights."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from saesteer.generation import matmul_layout, preallocated_cache

    for model, tpl in _models(tiny_organism):
        enc = encode_chat(model.tokenizer, tpl, ["Name a colour.", "How do I bake bread at home please?"])
        B = enc.tokens.shape[0]
        want = _decode_logits(
            model, enc.tokens, enc.attention_mask, TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", B), 5
        )
        for capacity in (enc.tokens.shape[1] + 5, 3):  # room for every step; too small, grown twice
            cache = preallocated_cache(model, B, capacity)
            got = _decode_logits(model, enc.tokens, enc.attention_mask, cache, 5)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert cache[0].past_keys.shape[1] == enc.tokens.shape[1] + 5
        with matmul_layout(model) as n:
            assert n > 0
            got = _decode_logits(model, enc.tokens, enc.attention_mask, preallocated_cache(model, B, 64), 5)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_matmul_layout_puts_the_original_weights_back(tiny_organism, monkeypatch):
    """Inside the block the weights hold the same values in their matmul layout; after it the same parameter
    objects hold their original tensors (storage, strides), also after an error; more bytes than
    MAX_RELAYOUT_BYTES: nothing is re-laid out."""
    import pytest

    import saesteer.generation as G

    model = _tiny_llama(tiny_organism[0].tokenizer)
    before = {k: (p, p.data_ptr(), p.stride(), p.detach().clone()) for k, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), G.matmul_layout(model) as n:
        assert n == 2 * 7 + 1  # W_Q, _W_K, _W_V, W_O, W_gate, W_in, W_out of both layers, and W_U
        mlp = model.blocks[0].mlp
        assert mlp.W_in.T.is_contiguous() and model.unembed.W_U.T.is_contiguous()
        assert all(torch.equal(p, before[k][3]) for k, p in model.named_parameters())
        raise RuntimeError("boom")
    after = {k: (p, p.data_ptr(), p.stride()) for k, p in model.named_parameters()}
    assert after == {k: v[:3] for k, v in before.items()}
    monkeypatch.setattr(G, "MAX_RELAYOUT_BYTES", 1000)
    with G.matmul_layout(model) as n:
        assert n == 0 and not model.blocks[0].mlp.W_in.T.is_contiguous()


def test_generation_of_a_llama_matches_unbatched_recompute(tiny_organism):
    """The re-laid-out path (grouped-query attention, gated MLP) generates what a full-recompute loop does."""
    _, tpl, _ = tiny_organism
    model = _tiny_llama(tiny_organism[0].tokenizer)
    prompts = ["Write a poem about cats.", "hi", "Explain photosynthesis in simple words for a child please"]
    batched = generate(model, tpl, prompts, max_new_tokens=8, batch_size=2, progress=False)
    assert batched == [_reference_greedy(model, tpl, p, 8) for p in prompts]


def test_hooks_see_every_pass_with_its_phase(tiny_organism):
    """Hooks attached around generate act on the prompt pass and on every generated token, the phase set; an edit
    of generated tokens only changes the answer from its second token on."""
    from saesteer.primitives.phase import token_phase

    model, tpl, _ = tiny_organism
    prompt = ["Write a poem about cats."]
    seen = []

    def record(x, hook):
        seen.append((token_phase(), x.shape[1]))

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", record)]):
        plain = generate(model, tpl, prompt, max_new_tokens=4, progress=False)
    n_prompt = encode_chat(model.tokenizer, tpl, prompt).tokens.shape[1]
    assert seen == [("prompt", n_prompt)] + [("generated", 1)] * 3

    def shove(x, hook):
        return x + 50.0 * model.W_E[model.tokenizer.pad_token_id] if token_phase() == "generated" else x

    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with model.hooks(fwd_hooks=[(last, shove)]):
        edited = [generate(model, tpl, prompt, max_new_tokens=n, progress=False) for n in (1, 4)]
    assert edited[0] == generate(model, tpl, prompt, max_new_tokens=1, progress=False)  # read from the prompt pass
    assert edited[1] != plain
