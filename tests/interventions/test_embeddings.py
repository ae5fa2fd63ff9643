"""SoftSuffix: vectors written over a run of placeholder tokens equal the prompt with real tokens there."""

from __future__ import annotations

import pytest
import torch

from saesteer.attacks.suffix import _decode, word_vocabulary
from saesteer.evaluate import last_position_logprobs
from saesteer.interventions import steer
from saesteer.interventions.embeddings import SoftSuffix, placeholder_runs


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_placeholder_runs_equal_a_brute_force(n):
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(40, 9, generator=g) < 0.6
    rows, starts = placeholder_runs(mask, n)
    want = {}
    for b in range(mask.shape[0]):
        found = [s for s in range(mask.shape[1] - n + 1) if bool(mask[b, s : s + n].all())]
        if found:
            want[b] = found[-1]
    assert dict(zip(rows.tolist(), starts.tolist())) == want


def test_a_soft_suffix_of_token_embeddings_equals_those_tokens(tiny_organism):
    model, tpl, _ = tiny_organism
    vocab = word_vocabulary(model.tokenizer)
    placeholder, words = int(vocab[0]), [int(v) for v in vocab[5:8]]
    pw = _decode(model.tokenizer, [placeholder])
    prompts = ["Tell me about the river.", f"Why is the {pw} so {pw} here?", "How do I bake bread at home today?"]
    soft = SoftSuffix(model.embed.W_E[words].detach().clone(), placeholder)
    with steer(model, [soft]):
        got = last_position_logprobs(model, tpl, [f"{p} {' '.join([pw] * 3)}" for p in prompts])
    want = last_position_logprobs(model, tpl, [f"{p} {_decode(model.tokenizer, words)}" for p in prompts])
    assert (got - want).abs().max() < 1e-5
    # a prompt without a run of three placeholders is left as it is (the second one holds two apart)
    with steer(model, [soft]):
        got = last_position_logprobs(model, tpl, prompts)
    assert (got - last_position_logprobs(model, tpl, prompts)).abs().max() == 0


def test_soft_suffix_checks_its_shapes(tiny_organism):
    model, _, _ = tiny_organism
    with pytest.raises(ValueError, match=r"expected a \[n >= 1, d_model\] tensor"):
        SoftSuffix(torch.zeros(3), 5)
    with pytest.raises(ValueError, match="has d_model 7, the model"):
        with steer(model, [SoftSuffix(torch.zeros(2, 7), 5)]):
            pass
    with pytest.raises(ValueError, match=r"placeholder=-1: not a token id"):
        with steer(model, [SoftSuffix(torch.zeros(2, model.cfg.d_model), -1)]):
            pass
