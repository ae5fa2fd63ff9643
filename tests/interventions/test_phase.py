"""Edits limited to prompt or generated tokens, and gated edits, act the same under saesteer's ``generate``,
TransformerLens's ``model.generate`` and a hand-written decoding loop; a loop that cannot tell the phases
apart raises instead of silently treating generated tokens as prompt."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from saesteer.chat import encode_chat
from saesteer.generation import generate
from saesteer.interventions import Add, steer
from saesteer.interventions.gates import DirectionGate
from saesteer.primitives.phase import PHASE

PROMPTS = ["How do I pick a lock?", "List three fruits.", "Explain how to make a bomb."]
N_NEW = 6


def _decode(model, ids: list[int]) -> str:
    eos = model.tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return model.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _tl_generate(model, tpl, prompt: str, use_cache: bool = True) -> str:
    tokens = encode_chat(model.tokenizer, tpl, [prompt]).tokens
    out = model.generate(
        tokens, max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False, verbose=False, use_past_kv_cache=use_cache
    )
    return _decode(model, out[0, tokens.shape[1] :].tolist())


def _hand_loop(model, tpl, prompt: str, use_cache: bool = True) -> str:
    tokens = encode_chat(model.tokenizer, tpl, [prompt]).tokens
    new: list[int] = []
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1) if use_cache else None
    with torch.no_grad():
        logits = model(tokens, past_kv_cache=cache)[:, -1]
        for _ in range(N_NEW - 1):
            nxt = int(logits.argmax(-1))
            new.append(nxt)
            if cache is not None:
                logits = model(torch.tensor([[nxt]]), past_kv_cache=cache)[:, -1]
            else:
                logits = model(torch.cat([tokens, torch.tensor([new])], 1))[:, -1]
        new.append(int(logits.argmax(-1)))
    return _decode(model, new)


def _edits(model, kind: str):
    g = torch.Generator().manual_seed(11)
    v = torch.randn(model.cfg.d_model, generator=g) * 4
    if kind == "generated":
        return [Add(v, alpha=3.0, layer=1, apply_to="generated")]
    if kind == "prompt":
        return [Add(v, alpha=3.0, layer=1, apply_to="prompt")]
    # CAST at layer 0 gated by a direction read at layer 1: decided in the gate pre-pass
    gate = DirectionGate(
        hook="blocks.1.hook_resid_pre", threshold=-1e9, direction=torch.randn(model.cfg.d_model, generator=g)
    )
    return [Add(v, alpha=3.0, layer=0, gate=gate)]


@pytest.mark.parametrize("kind", ["generated", "prompt", "gated"])
@pytest.mark.parametrize("loop", [_tl_generate, _hand_loop], ids=["model.generate", "hand_loop"])
def test_other_decoding_loops_equal_saesteer_generate(tiny_organism, kind, loop):
    model, tpl, _ = tiny_organism
    plain = [loop(model, tpl, p) for p in PROMPTS]
    with steer(model, _edits(model, kind)):
        ref = generate(model, tpl, PROMPTS, max_new_tokens=N_NEW, batch_size=1, progress=False)
        got = [loop(model, tpl, p) for p in PROMPTS]
    assert got == ref
    assert got != plain, "the edit must change the greedy completions for this test to mean anything"
    assert PHASE.get() is None  # nothing leaks out of the forward passes


@pytest.mark.parametrize("kind", ["generated", "prompt", "gated"])
@pytest.mark.parametrize("loop", [_tl_generate, _hand_loop], ids=["model.generate", "hand_loop"])
def test_decoding_without_a_cache_raises_for_phase_dependent_edits(tiny_organism, kind, loop):
    model, tpl, _ = tiny_organism
    with steer(model, _edits(model, kind)), pytest.raises(RuntimeError, match="no key-value cache"):
        loop(model, tpl, PROMPTS[0], use_cache=False)
    assert PHASE.get() is None


def test_decoding_without_a_cache_is_fine_for_edits_on_every_token(tiny_organism):
    model, tpl, _ = tiny_organism
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(12))
    with steer(model, [Add(v, alpha=3.0, layer=1)]):
        ref = generate(model, tpl, PROMPTS[:1], max_new_tokens=N_NEW, progress=False)
        assert [_hand_loop(model, tpl, PROMPTS[0], use_cache=False)] == ref
        assert [_tl_generate(model, tpl, PROMPTS[0], use_cache=False)] == ref


def test_a_copy_made_while_steering_runs_its_own_forward(tiny_organism):
    import copy

    model, tpl, _ = tiny_organism
    tokens = encode_chat(model.tokenizer, tpl, PROMPTS[:1]).tokens
    with torch.no_grad():
        base = model(tokens)
        with steer(model, _edits(model, "prompt")):
            twin = copy.deepcopy(model)
            with torch.no_grad():
                twin.blocks[0].attn.W_O.zero_()  # the copy differs from the model; its forward must be its own
            assert not torch.allclose(twin(tokens), model(tokens))
    assert "forward" not in vars(model)
    torch.testing.assert_close(model(tokens), base)
