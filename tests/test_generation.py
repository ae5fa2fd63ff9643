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
