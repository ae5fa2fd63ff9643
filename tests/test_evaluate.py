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


def test_scale_at_kl_finds_the_scale_a_grid_search_finds(tiny_organism):
    from saesteer.evaluate import kl_divergence, last_position_logprobs, scale_at_kl

    model, tpl, _ = tiny_organism
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    v = 2.0 * v / v.norm()

    def build(s):
        return [Add(v, alpha=s, layer=1)]

    base = last_position_logprobs(model, tpl, PROMPTS)

    def kl_at(s):
        with steer(model, build(s)):
            return kl_divergence(base, last_position_logprobs(model, tpl, PROMPTS))

    grid = [0.25 * i for i in range(1, 41)]  # the brute-force reference: KL on a grid of scales
    kls = [kl_at(s) for s in grid]
    assert all(b >= a for a, b in zip(kls, kls[1:]))  # KL grows with the scale here, as the bisection assumes
    target = kls[13]  # at s = 3.5
    s, kl = scale_at_kl(model, tpl, PROMPTS, build, target, steps=12)
    assert s == pytest.approx(3.5, abs=0.01) and kl == pytest.approx(target, rel=0.01)
    assert kl == pytest.approx(kl_at(s), rel=1e-6)
    # a target beyond the largest scale's KL: the largest scale
    s, kl = scale_at_kl(model, tpl, PROMPTS, build, kls[-1] * 10, max_scale=10.0)
    assert s == 10.0 and kl == pytest.approx(kls[-1], rel=1e-6)
    with pytest.raises(ValueError, match=r"target_kl must be a number >= 0, got -1"):
        scale_at_kl(model, tpl, PROMPTS, build, -1.0)
