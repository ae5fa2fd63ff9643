"""The embedding-space attack: its reported loss is the objective of its own attack, and the search lowers it."""

from __future__ import annotations

import pytest
import torch

from saesteer.attacks import UNDEFENDED, attack_success
from saesteer.attacks.embedding import embedding_search
from saesteer.attacks.suffix import word_vocabulary
from saesteer.data import load_prompts
from saesteer.directions import refusal_token_ids
from saesteer.evaluate import last_position_logprobs, refusal_eval
from saesteer.interventions import steer


def _objective(model, tpl, attack, prompts) -> float:
    with steer(model, list(attack.interventions)):
        lp = last_position_logprobs(model, tpl, attack.prompts(prompts))
    return float(torch.logsumexp(lp[:, refusal_token_ids(model, tpl)], -1).mean())


def test_embedding_search_lowers_the_refusal_objective(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmful_train").instructions[:8])
    kw = dict(n_tokens=3, batch_size=8, lr=0.5, radius=1.0, progress=False)
    start = embedding_search(model, tpl, prompts, steps=1, **kw)  # the first step's loss: the seeded start
    res = embedding_search(model, tpl, prompts, steps=12, **kw)
    att = res.attack()
    # the reported loss is that of the attack as evaluated (all 8 prompts are in every batch)
    assert _objective(model, tpl, att, prompts) == pytest.approx(res.loss, abs=1e-4)
    assert res.history[0] == pytest.approx(start.loss, abs=1e-6)
    assert res.loss < start.loss - 0.05
    # every vector within radius x the largest token-embedding norm
    assert float(res.embeddings.norm(dim=-1).max()) <= float(model.embed.W_E.norm(dim=-1).max()) * (1 + 1e-5)
    assert res.placeholder == int(word_vocabulary(model.tokenizer)[0])
    # the attack's ASR is the refusal eval of its prompts with the soft suffix written in
    harmful = list(load_prompts("harmful_val").instructions[:10])
    with steer(model, list(att.interventions)):
        ref = refusal_eval(model, tpl, att.prompts(harmful), max_new_tokens=6)
    assert attack_success(model, tpl, att, UNDEFENDED, harmful, max_new_tokens=6) == pytest.approx(ref.compliance_rate)


def test_embedding_search_optimizes_against_interventions_and_an_extra_term(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmful_train").instructions[:6])
    kw = dict(n_tokens=2, steps=3, batch_size=6, progress=False)
    plain = embedding_search(model, tpl, prompts, **kw)
    shifted = embedding_search(model, tpl, prompts, extra=lambda: torch.full((6,), 2.0), **kw)
    # a constant extra term shifts every loss and leaves the gradient, hence the path, as it is
    assert torch.allclose(torch.tensor(shifted.history) - 2.0, torch.tensor(plain.history), atol=1e-5)
    assert torch.allclose(shifted.embeddings, plain.embeddings, atol=1e-6)


def test_embedding_search_rejects_bad_settings(tiny_organism):
    model, tpl, _ = tiny_organism
    with pytest.raises(ValueError, match="needs at least one instruction"):
        embedding_search(model, tpl, [], progress=False)
    with pytest.raises(ValueError, match=r"lr and radius must be positive and finite, got 0.1, -1"):
        embedding_search(model, tpl, ["Do X."], radius=-1, progress=False)
