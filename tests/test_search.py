"""Feature search statistics against per-prompt float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saesteer.chat import encode_chat
from saesteer.directions import refusal_token_ids
from saesteer.primitives.sae_weights import SaeWeights
from saesteer.search import SearchConfig, search_features
from saesteer.stats import auroc
from tests.saes import searched_setup

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def setup(tiny_organism):
    return searched_setup(tiny_organism, HOOK, min_active_fraction=0.0, n_top_prompts=2, batch_size=4)


def _per_prompt(model, tpl, sae, prompts, positions):
    w = SaeWeights.from_sae(sae)
    out = []
    for p in prompts:
        enc = encode_chat(model.tokenizer, tpl, [p])
        _, cache = model.run_with_cache(enc.tokens)
        x = cache[HOOK][0, positions].double()
        xin = x - w.b_dec.double()
        a = (xin @ w.W_enc.double() + w.b_enc.double()).relu()
        out.append(a.mean(0))
    return torch.stack(out)


def test_contrast_statistics_match_reference(setup):
    model, tpl, sae, harmful, harmless, direction, scores = setup
    ah = _per_prompt(model, tpl, sae, harmful, scores.positions)
    al = _per_prompt(model, tpl, sae, harmless, scores.positions)
    torch.testing.assert_close(scores.harmful_mean, ah.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.mean_diff, ah.mean(0) - al.mean(0), atol=1e-5, rtol=1e-4)
    pooled = ((len(harmful) - 1) * ah.var(0) + (len(harmless) - 1) * al.var(0)) / (len(harmful) + len(harmless) - 2)
    d = (ah.mean(0) - al.mean(0)) / (pooled.sqrt() + 1e-8)
    torch.testing.assert_close(scores.effect_size, d, atol=1e-3, rtol=1e-3)
    exact = torch.tensor([auroc(ah[:, f], al[:, f]) for f in range(ah.shape[1])], dtype=torch.float64)
    top = scores.ranking[:20]
    rest = [f for f in range(40) if f not in top]
    # the top features get the exact AUROC; the others the histogram screen (pairs in one bin count 1/2)
    torch.testing.assert_close(scores.auroc[top], exact[top], atol=1e-9, rtol=0)
    assert (scores.auroc[rest] - exact[rest]).abs().max() <= 0.1
    cos = F.cosine_similarity(sae.W_dec.detach().double(), direction.double()[None], dim=-1)
    torch.testing.assert_close(scores.cosine, cos, atol=1e-6, rtol=1e-6)


def test_attribution_is_activation_times_gradient(setup):
    model, tpl, sae, harmful, _, _, scores = setup
    w = SaeWeights.from_sae(sae)
    ids = refusal_token_ids(model, tpl)
    pos = scores.positions
    for f in [0, 7, 21]:
        total = 0.0
        for p in harmful:
            enc = encode_chat(model.tokenizer, tpl, [p])
            t = torch.zeros((), requires_grad=True)

            def hook(x, hook=None, t=t, f=f):
                a = w.encode(x[:, pos].detach())[..., f]  # [1, P]
                x = x.clone()
                x[:, pos] = x[:, pos] + t * a[..., None] * w.W_dec[f]
                return x

            with model.hooks(fwd_hooks=[(HOOK, hook)]):
                logits = model(enc.tokens)
            prob = F.softmax(logits[0, -1].float(), -1)[ids].sum().clamp(1e-6, 1 - 1e-6)
            (g,) = torch.autograd.grad(torch.log(prob) - torch.log1p(-prob), t)
            total += float(g)
        assert abs(total / len(harmful) - float(scores.attribution[f])) <= 1e-4 * max(1.0, abs(total))


def test_ranking_respects_activity_filter_and_order(setup):
    model, tpl, sae, harmful, harmless, direction, _ = setup
    strict = search_features(
        model, tpl, sae, direction, harmful, harmless, SearchConfig(min_active_fraction=0.5, n_top_prompts=0)
    )
    assert all(bool(strict.eligible[f]) for f in strict.ranking)
    assert set(strict.ranking) == {f for f in range(40) if strict.active_fraction[f] >= 0.5}
    combined = [float(strict.combined[f]) for f in strict.ranking]
    assert combined == sorted(combined, reverse=True)
    with pytest.raises(ValueError, match=r"direction has shape \(5,\), expected \(48,\)"):
        search_features(model, tpl, sae, torch.randn(5), harmful, harmless)
    assert SearchConfig().weights == {"cosine": 1.0, "effect_size": 1.0, "attribution": 1.0}  # weight 0: left out
    assert SearchConfig(weight_cosine=0.0, weight_auroc=2.0).weights == {
        "effect_size": 1.0,
        "auroc": 2.0,
        "attribution": 1.0,
    }
    with pytest.raises(TypeError, match="weight_vibes"):
        SearchConfig(weight_vibes=2.0)


def test_ranking_csv_lists_every_feature(setup, tmp_path):
    scores = setup[-1]
    path = scores.write_csv(tmp_path / "ranking.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("feature,rank,combined,cosine") and len(lines) == 41
    assert int(lines[1].split(",")[0]) == scores.ranking[0]


def _coordinate(model, tpl, prompts, positions, direction):
    u = direction.double() / direction.double().norm()
    vals = []
    for p in prompts:
        enc = encode_chat(model.tokenizer, tpl, [p])
        _, cache = model.run_with_cache(enc.tokens)
        vals.append((cache[HOOK][0, positions].double() @ u).mean())
    return float(torch.stack(vals).mean())


def test_direction_coordinates_and_bypass_values_match_reference(setup):
    model, tpl, sae, harmful, harmless, direction, scores = setup
    assert scores.harmful_coordinate == pytest.approx(
        _coordinate(model, tpl, harmful, scores.positions, direction), abs=1e-4
    )
    assert scores.harmless_coordinate == pytest.approx(
        _coordinate(model, tpl, harmless, scores.positions, direction), abs=1e-4
    )
    al = _per_prompt(model, tpl, sae, harmless, scores.positions)
    feats = [3, 0, 17]
    assert scores.bypass_values(feats, "zero") == [0.0, 0.0, 0.0]
    torch.testing.assert_close(
        torch.tensor(scores.bypass_values(feats, "harmless_mean"), dtype=torch.float64),
        al.mean(0)[feats],
        atol=1e-5,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="ablation must be one of"):
        scores.bypass_values(feats, "mean")


def test_signed_ranking_orders_by_magnitude_and_filters_by_the_class_it_points_to(setup):
    model, tpl, sae, harmful, harmless, direction, _ = setup
    strict = search_features(
        model, tpl, sae, direction, harmful, harmless, SearchConfig(min_active_fraction=0.5, n_top_prompts=0)
    )
    ah = _per_prompt(model, tpl, sae, harmful, strict.positions)
    al = _per_prompt(model, tpl, sae, harmless, strict.positions)
    act_h, act_l = (ah > 0).double().mean(0), (al > 0).double().mean(0)
    torch.testing.assert_close(strict.harmless_active_fraction, act_l)
    score = strict.signed_score
    # the signed score is the combined score, unmasked
    for f in strict.ranking:
        assert float(score[f]) == float(strict.combined[f])
    expected = {f for f in range(40) if (act_h[f] >= 0.5 if score[f] >= 0 else act_l[f] >= 0.5)}
    assert set(strict.signed_ranking) == expected
    mags = [abs(float(score[f])) for f in strict.signed_ranking]
    assert mags == sorted(mags, reverse=True)
    refusal, comply = [f for f in expected if score[f] >= 0], [f for f in expected if score[f] < 0]
    assert refusal and comply  # both signs are present on this fixture
    assert strict.top(len(expected), signed=True) == strict.signed_ranking
    assert strict.top(2) == strict.ranking[:2]
    with pytest.raises(ValueError, match="pass the activity filter"):
        strict.top(41, signed=True)
