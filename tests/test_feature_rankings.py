"""Feature rankings for a bypass edit: the edit attribution against autograd, the orders against their rules,
greedy selection against a brute-force search at each step, the refusal-vs-k curve against direct evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saesteer.chat import encode_chat
from saesteer.directions import refusal_scores, refusal_token_ids
from saesteer.evaluate import kl_divergence, last_position_logprobs, refusal_eval
from saesteer.feature_rankings import (
    CurvePoint,
    feature_edit,
    greedy_selection,
    k_at_bypass,
    predicted_drop,
    ranked_features,
    refusal_vs_k,
)
from saesteer.interventions import steer
from saesteer.interventions.features import EditFeatures
from saesteer.primitives.sae_weights import SaeWeights
from tests.saes import searched_setup

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def setup(tiny_organism):
    model, tpl, sae, harmful, harmless, _, scores = searched_setup(
        tiny_organism, HOOK, min_active_fraction=0.1, n_top_prompts=0, batch_size=4
    )
    return model, tpl, sae, harmful, harmless, scores


@pytest.mark.parametrize("edit", ["harmless_mean", "harmless_mean_along_r"])
def test_edit_attribution_is_the_derivative_of_the_edit(setup, edit):
    model, tpl, sae, harmful, _, scores = setup
    w = SaeWeights.from_sae(sae)
    ids = refusal_token_ids(model, tpl)
    pos = scores.positions
    values = scores.harmless_mean.double()
    drop = predicted_drop(scores, edit)
    u = scores.direction
    for f in [0, 7, 21]:
        # the edit's direction in the residual stream: W_dec[f], or its component along r
        step = w.W_dec[f] if edit == "harmless_mean" else (w.W_dec[f] @ u) * u
        total = 0.0
        for p in harmful:
            enc = encode_chat(model.tokenizer, tpl, [p])
            t = torch.zeros((), requires_grad=True)

            def hook(x, hook=None, t=t, f=f, step=step):  # a_f -> a_f + t (v_f - a_f) at the searched positions
                a = w.encode(x[:, pos].detach())[..., f]
                x = x.clone()
                x[:, pos] = x[:, pos] + t * (float(values[f]) - a)[..., None] * step
                return x

            with model.hooks(fwd_hooks=[(HOOK, hook)]):
                logits = model(enc.tokens)
            prob = F.softmax(logits[0, -1].float(), -1)[ids].sum().clamp(1e-6, 1 - 1e-6)
            (g,) = torch.autograd.grad(torch.log(prob) - torch.log1p(-prob), t)
            total += float(g)
        want = -total / len(harmful)  # the drop: minus the derivative along the edit
        assert abs(want) > 1e-6  # the feature moves the score: the comparison has something to compare
        assert abs(want - float(drop[f])) <= 1e-4 * max(1.0, abs(want)), f
    assert torch.equal(scores.edit_attribution(torch.zeros(40)), scores.attribution)


def test_the_along_r_edit_moves_the_stream_only_along_r(setup):
    model, tpl, sae, harmful, _, scores = setup
    feats = ranked_features(scores, "cosine", "harmless_mean")[:3]
    full, along = (feature_edit(sae, scores, feats, e, "both") for e in ("harmless_mean", "harmless_mean_along_r"))
    x = torch.randn(5, 7, model.cfg.d_model)
    u = scores.direction.double()
    d_full = full.delta_fn()(x).double() - x.double()
    d_along = along.delta_fn()(x).double() - x.double()
    torch.testing.assert_close(d_along, (d_full @ u)[..., None] * u, atol=1e-5, rtol=1e-5)
    assert float(d_along.norm()) > 1e-3
    with pytest.raises(ValueError, match=r"EditFeatures.along must be a finite nonzero vector of shape \(\d+,\)"):
        EditFeatures(sae, feats, along=torch.zeros(3))


def test_each_ranking_orders_the_features_by_its_rule(setup):
    scores = setup[-1]
    t = scores.min_active_fraction
    for ranking, signal in (("cosine", scores.cosine), ("contrast", scores.effect_size)):
        zero = ranked_features(scores, ranking, "zero")
        want = sorted(
            (f for f in range(40) if scores.active_fraction[f] >= t and signal[f] > 0), key=lambda f: -float(signal[f])
        )
        assert zero == want
        both = ranked_features(scores, ranking, "harmless_mean", signed=True)
        want = sorted(
            (
                f
                for f in range(40)
                if signal[f] != 0
                and (scores.active_fraction[f] if signal[f] > 0 else scores.harmless_active_fraction[f]) >= t
            ),
            key=lambda f: -abs(float(signal[f])),
        )
        assert both == want and any(signal[f] < 0 for f in both)  # comply features are in the signed order
        assert ranked_features(scores, ranking, "harmless_mean", signed=False) == zero
    drop = scores.edit_attribution(scores.harmless_mean)
    attr = ranked_features(scores, "attribution", "harmless_mean")
    assert [float(drop[f]) for f in attr] == sorted((float(drop[f]) for f in attr), reverse=True)
    assert all(drop[f] > 0 for f in attr)
    drop = predicted_drop(scores, "harmless_mean_along_r")
    attr = ranked_features(scores, "attribution", "harmless_mean_along_r")
    assert attr and [float(drop[f]) for f in attr] == sorted((float(drop[f]) for f in attr), reverse=True)
    assert set(attr) == {
        f
        for f in range(40)
        if drop[f] > 0
        and (scores.active_fraction[f] if scores.mean_diff[f] >= 0 else scores.harmless_active_fraction[f]) >= t
    }
    assert ranked_features(scores, "cosine", "harmless_mean_along_r") == ranked_features(
        scores, "cosine", "harmless_mean"
    )
    assert (
        ranked_features(scores, "combined", "zero", signed=False)[:3]
        == [f for f in scores.ranking if scores.combined[f] > 0][:3]
    )
    with pytest.raises(ValueError, match="greedy_selection"):
        ranked_features(scores, "greedy", "zero")
    with pytest.raises(ValueError, match="ranking"):
        ranked_features(scores, "vibes", "zero")


def test_greedy_selection_takes_the_brute_force_best_at_each_step(setup):
    model, tpl, sae, harmful, _, scores = setup
    ids = refusal_token_ids(model, tpl)
    pool = ranked_features(scores, "attribution", "harmless_mean")[:5]
    res = greedy_selection(model, tpl, sae, scores, harmful, pool, 3, refusal_ids=ids, batch_size=4)

    def score(features):  # built by hand: set to the harmless means at the SAE's hook
        spec = EditFeatures(
            sae, features, mode="set", values=[float(scores.harmless_mean[f]) for f in features], hook=HOOK
        )
        return float(refusal_scores(model, tpl, harmful, ids, interventions=[spec], batch_size=3).mean())

    chosen = []
    for step in range(3):
        cands = {f: score(chosen + [f]) for f in pool if f not in chosen}
        best = min(cands, key=cands.get)
        assert res.features[step] == best
        assert res.scores[step] == pytest.approx(cands[best], abs=1e-6)
        chosen.append(best)
    assert res.baseline == pytest.approx(float(refusal_scores(model, tpl, harmful, ids, batch_size=4).mean()), abs=1e-6)
    with pytest.raises(ValueError, match=r"k=6 must be between 1 and the pool's size 5"):
        greedy_selection(model, tpl, sae, scores, harmful, pool, 6, refusal_ids=ids)


def test_refusal_vs_k_evaluates_each_prefix(setup):
    model, tpl, sae, harmful, harmless, scores = setup
    order = ranked_features(scores, "cosine", "zero")[:3]
    pts = refusal_vs_k(
        model, tpl, sae, scores, {("cosine", "zero"): order}, [1, 3, 99], harmful, harmless, max_new_tokens=4
    )
    assert [(p.k, p.features) for p in pts] == [(1, order[:1]), (3, order)]  # k = 99 is longer than the order
    spec = EditFeatures(sae, order, mode="set", values=[0.0] * 3, hook=HOOK)
    with steer(model, [spec]):
        rate = refusal_eval(model, tpl, harmful, max_new_tokens=4).rate
        edited = last_position_logprobs(model, tpl, harmless)
    assert pts[1].refusal == pytest.approx(rate)
    assert pts[1].kl == pytest.approx(kl_divergence(last_position_logprobs(model, tpl, harmless), edited), abs=1e-6)


def test_k_at_bypass_is_the_smallest_k_within_both_bounds():
    pts = [
        CurvePoint("cosine", "zero", 2, [], 0.05, 0.5),  # refusal low but KL too high
        CurvePoint("cosine", "harmless_mean", 4, [], 0.08, 0.05),
        CurvePoint("cosine", "zero", 8, [], 0.02, 0.01),
        CurvePoint("greedy", "zero", 1, [], 0.5, 0.0),
    ]
    assert k_at_bypass(pts, "cosine") == 4
    assert k_at_bypass(pts, "greedy") is None
    assert k_at_bypass(pts, "cosine", max_kl=1.0) == 2


def test_the_curve_settings_reject_unknown_rankings_edits_and_ks():
    from saesteer.config import SearchJobSettings

    with pytest.raises(ValueError, match=r"search.curve_rankings has unknown entries \['vibes'\]"):
        SearchJobSettings(curve_rankings=["cosine", "vibes"])
    with pytest.raises(ValueError, match=r"search.curve_edits has unknown entries \['half'\]"):
        SearchJobSettings(curve_edits=["half"])
    with pytest.raises(ValueError, match=r"search.curve_ks must hold positive ints, got \[0\]"):
        SearchJobSettings(curve_ks=[1, 0])
