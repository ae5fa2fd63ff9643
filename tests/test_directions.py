"""Difference-in-means candidates, refusal scores and selection against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saesteer.chat import encode_chat
from saesteer.data import load_prompts
from saesteer.directions import (
    SelectionConfig,
    compute_candidates,
    first_token_refusal_margin,
    refusal_scores,
    refusal_token_ids,
    select_direction,
)
from saesteer.stats import auroc


def test_candidates_equal_run_with_cache_means(tiny_organism):
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:7])
    harmless = list(load_prompts("harmless_train").instructions[:9])
    cands = compute_candidates(model, tpl, harmful, harmless, batch_size=4)
    assert cands.positions == [-3, -2, -1] and cands.diff.dtype == torch.float64

    def means(prompts):
        out = []
        for p in prompts:  # one prompt at a time: no padding at all
            enc = encode_chat(model.tokenizer, tpl, [p])
            _, cache = model.run_with_cache(enc.tokens)
            out.append(torch.stack([cache[f"blocks.{l}.hook_resid_pre"][0, -3:] for l in range(model.cfg.n_layers)]))
        return torch.stack(out).double().mean(0)

    torch.testing.assert_close(cands.diff, means(harmful) - means(harmless), atol=1e-5, rtol=1e-5)


def test_refusal_score_is_log_odds_of_refusal_first_tokens(tiny_organism):
    model, tpl, _ = tiny_organism
    ids = refusal_token_ids(model, tpl)
    assert ids == [model.tokenizer.convert_tokens_to_ids("i")]
    prompts = ["How to hotwire a car?", "Name three fruits."]
    scores = refusal_scores(model, tpl, prompts, ids)
    for p, s in zip(prompts, scores):
        enc = encode_chat(model.tokenizer, tpl, [p])
        with torch.no_grad():
            prob = F.softmax(model(enc.tokens)[0, -1].double(), -1)[ids].sum()
        assert abs(float(torch.log(prob / (1 - prob))) - float(s)) < 1e-4


def test_first_token_margin_is_positive_exactly_where_greedy_decoding_opens_a_refusal(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmful_val").instructions[:12]) + list(load_prompts("harmless_val").instructions[:12])
    margins = first_token_refusal_margin(model, tpl, prompts, batch_size=5)
    opener = refusal_token_ids(model, tpl)[0]
    for p, m in zip(prompts, margins):
        enc = encode_chat(model.tokenizer, tpl, [p])
        with torch.no_grad():
            lp = F.log_softmax(model(enc.tokens)[0, -1].double(), -1)
        best_other = lp.clone()
        best_other[opener] = float("-inf")
        assert abs(float(lp[opener] - best_other.max()) - float(m)) < 1e-4
        assert (float(m) > 0) == (int(lp.argmax()) == opener)
    assert (margins > 0).any() and (margins <= 0).any()  # both decisions occur


def test_selection_follows_the_paper_and_falls_back_with_a_reason(tiny_organism):
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:32])
    harmless = list(load_prompts("harmless_train").instructions[:32])
    val_h = list(load_prompts("harmful_val").instructions[:16])
    val_s = list(load_prompts("harmless_val").instructions[:16])
    cands = compute_candidates(model, tpl, harmful, harmless)
    # layer 0's resid_pre at the special post-instruction tokens is their (fixed) embedding:
    # no difference in means there, so no candidate
    assert float(cands.diff[0].abs().max()) == 0.0
    loose = select_direction(model, tpl, cands, val_h, val_s, SelectionConfig(max_kl=10.0, min_induce=-100.0))
    assert len(loose.scores) == (model.cfg.n_layers - 1) * 3
    # prune_layer_fraction=0.2 of 2 layers drops layer >= int(1.6) = 1: nothing is left
    assert all(s.filtered_by == ["layer"] for s in loose.scores) and "'layer' filter emptied" in loose.fallback
    sel = select_direction(
        model, tpl, cands, val_h, val_s, SelectionConfig(max_kl=10.0, min_induce=-100.0, prune_layer_fraction=0.0)
    )
    passing = [s for s in sel.scores if not s.filtered_by]
    assert (
        sel.fallback is None
        and (sel.layer, sel.position) == min((s.bypass_affine, (s.layer, s.position)) for s in passing)[1]
    )
    impossible = select_direction(model, tpl, cands, val_h, val_s, SelectionConfig(max_kl=1e-12, min_induce=1e9))
    assert impossible.fallback is not None and "'kl' filter emptied the pool" in impossible.fallback
    assert "fewest failed filters" in impossible.fallback  # the induce filter fails too: no KL relaxation

    # only the KL filter fails: the bound doubles until candidates pass, then the lowest bypass among them
    cfg = SelectionConfig(max_kl=1e-6, min_induce=-100.0, prune_layer_fraction=0.0)
    relaxed = select_direction(model, tpl, cands, val_h, val_s, cfg)
    kls = [s.kl_affine for s in relaxed.scores]
    assert all(s.filtered_by == ["kl"] for s in relaxed.scores)
    bound = next(1e-6 * 2**k for k in range(200) if min(kls) <= 1e-6 * 2**k)
    want = min((s.bypass_affine, (s.layer, s.position)) for s in relaxed.scores if s.kl_affine <= bound)[1]
    assert (relaxed.layer, relaxed.position) == want
    assert f"to {bound:g}" in relaxed.fallback and "KL bound doubled" in relaxed.fallback


def test_candidate_layers_restrict_the_grid_to_the_full_grid_scores_of_those_layers(tiny_organism):
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:16])
    harmless = list(load_prompts("harmless_train").instructions[:16])
    val_h = list(load_prompts("harmful_val").instructions[:8])
    val_s = list(load_prompts("harmless_val").instructions[:8])
    cands = compute_candidates(model, tpl, harmful, harmless)
    loose = dict(max_kl=10.0, min_induce=-100.0, prune_layer_fraction=0.0)
    full = select_direction(model, tpl, cands, val_h, val_s, SelectionConfig(**loose))
    one = select_direction(model, tpl, cands, val_h, val_s, SelectionConfig(layers=[1], **loose))
    assert [(s.layer, s.position) for s in one.scores] == [(1, p) for p in cands.positions]
    by_cell = {(s.layer, s.position): s for s in full.scores}
    for s in one.scores:
        assert s == by_cell[(s.layer, s.position)]
    with pytest.raises(ValueError, match=r"directions.layers has \[7\], outside the model's layers 0..1"):
        select_direction(model, tpl, cands, val_h, val_s, SelectionConfig(layers=[1, 7], **loose))
    for bad in ([], [-1], [1, 1], [True]):
        with pytest.raises(ValueError, match="directions.layers"):
            SelectionConfig(layers=bad)


def test_auroc_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(37, generator=g).round(decimals=1) + 0.5
    neg = torch.randn(23, generator=g).round(decimals=1)
    pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    assert abs(auroc(pos, neg) - float(pairs.mean())) < 1e-12
