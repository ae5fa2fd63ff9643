"""Completion cross-entropy reads the completion as generation does: prompt tokens, then generated tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saesteer.chat import encode_chat
from saesteer.evaluate import completion_nll
from saesteer.interventions import Add, steer

PROMPTS = [
    "How do I pick a lock?",
    "List three fruits.",
    "Write a haiku about the sea and the moon.",
    "Explain how to make a bomb.",
]
COMPLETIONS = ["i can't help with that.", "apple, pear", "", "sure: first you take the sea and the moon and"]


def _reference(model, tpl, add=None, where: str = "both") -> tuple[float, int]:
    """One prompt at a time, prompt + completion in one unpadded pass; ``add`` = (layer, vector) added at the
    prompt's positions, the completion's, or both."""
    tok = model.tokenizer
    total, count = 0.0, 0
    for p, c in zip(PROMPTS, COMPLETIONS):
        ids = tok(c, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        prompt = encode_chat(tok, tpl, [p]).tokens
        T = prompt.shape[1]
        tokens = torch.cat([prompt, torch.tensor([ids])], 1)
        hooks = []
        if add is not None:
            layer, v = add
            span = {"prompt": slice(0, T), "generated": slice(T, None), "both": slice(0, None)}[where]

            def fn(x, hook, span=span, v=v):
                x = x.clone()
                x[:, span] += v
                return x

            hooks = [(f"blocks.{layer}.hook_resid_pre", fn)]
        with model.hooks(fwd_hooks=hooks), torch.no_grad():
            logits = model(tokens).double()
        lp = F.log_softmax(logits[0, T - 1 : -1], -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        total += float(-lp.sum())
        count += len(ids)
    return total, count


def test_completion_nll_matches_one_unpadded_pass_per_prompt(tiny_organism):
    model, tpl, _ = tiny_organism
    total, count = completion_nll(model, tpl, PROMPTS, COMPLETIONS, batch_size=3)  # padded batches, the cache
    ref_total, ref_count = _reference(model, tpl)
    assert count == ref_count
    assert total == pytest.approx(ref_total, rel=1e-4), (total, ref_total)


@pytest.mark.parametrize("apply_to", ["generated", "prompt", "both"])
def test_completion_nll_applies_edits_to_the_tokens_they_name(tiny_organism, apply_to):
    """An edit on generated tokens only acts on the completion, one on prompt tokens only on the prompt."""
    model, tpl, _ = tiny_organism
    torch.manual_seed(5)
    v = torch.randn(model.cfg.d_model) * 20
    with steer(model, [Add(v, alpha=1.0, layer=1, apply_to=apply_to)]):
        total, count = completion_nll(model, tpl, PROMPTS, COMPLETIONS, batch_size=4)
    ref_total, ref_count = _reference(model, tpl, add=(1, v), where=apply_to)
    plain, _ = _reference(model, tpl)
    assert count == ref_count
    assert total == pytest.approx(ref_total, rel=1e-4), (total, ref_total)
    assert abs(ref_total - plain) > 2e-3 * plain  # the edit changes the figure, so the test can tell where it acted


def test_kl_divergence_equals_torch_distributions_in_float64():
    from saesteer.evaluate import kl_divergence

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 50, generator=g) * 3, torch.randn(6, 50, generator=g) * 3
    base, new = F.log_softmax(a, -1), F.log_softmax(b, -1)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=a.double()), torch.distributions.Categorical(logits=b.double())
    ).mean()
    assert float(ref) > 0.5  # far apart: a wrong direction or a missing term would show
    assert kl_divergence(base, new) == pytest.approx(float(ref), rel=1e-5)
    assert kl_divergence(new, base) != pytest.approx(float(ref), rel=1e-2)  # KL(base || new), not the reverse
    assert kl_divergence(base, base) == pytest.approx(0.0, abs=1e-7)


def test_kl_divergence_ignores_tokens_the_base_never_predicts():
    from saesteer.evaluate import kl_divergence

    base = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))  # -inf on the last token
    new = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert kl_divergence(base, new) == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-6)
