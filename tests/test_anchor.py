"""Anchor calibration on the tiny organism: floors are the stated quantile, the gate is orthogonal to r."""

from __future__ import annotations

import pytest
import torch

from saesteer.activations import collect_activations
from saesteer.anchor import AnchorArtifact, AnchorCalibration, calibrate_anchor
from saesteer.data import load_prompts


@pytest.fixture(scope="module")
def calibrated(tiny_organism):
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:40])
    harmful_val = list(load_prompts("harmful_val").instructions[:20])
    harmless = list(load_prompts("harmless_train").instructions[:80])
    harmless_val = list(load_prompts("harmless_val").instructions[:20])
    torch.manual_seed(3)
    r = torch.randn(model.cfg.d_model)
    cfg = AnchorCalibration(quantile=0.3, generated_quantile=0.2, layers=[1], final=True, gate_fpr=0.1)
    art = calibrate_anchor(model, tpl, r, 1, harmful, harmful_val, harmless, harmless_val, cfg)
    return model, tpl, art, r, harmful, harmless


def _position_projections(model, tpl, prompts, r, hooks, n_last):
    """Brute force: one unpadded prompt at a time, projections on unit r at its last ``n_last`` positions: [n, n_hooks, n_last]."""
    from saesteer.chat import encode_chat

    u = (r / r.norm()).double()
    out = []
    for p in prompts:
        _, cache = model.run_with_cache(encode_chat(model.tokenizer, tpl, [p]).tokens)
        out.append(torch.stack([cache[h][0, -n_last:].double() @ u for h in hooks]))
    return torch.stack(out)


def test_floors_are_the_quantile_of_harmful_projections_per_position(calibrated):
    """floor_positions="post" (default): a floor per position from t_inst to the last token; earlier tokens get t_inst's."""
    model, tpl, art, r, harmful, _ = calibrated
    proj = _position_projections(
        model, tpl, harmful, r, ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"], len(art.gate_positions)
    )
    expect = torch.quantile(proj, 0.3, dim=0)  # [2 hooks, t_inst .. -1]
    assert art.position_floors.shape == (2, 4)
    assert torch.allclose(art.position_floors.double(), expect, atol=1e-4), (art.position_floors, expect)
    assert torch.equal(art.floors, art.position_floors[:, 0])
    assert art.anchor(gated=False).position_floors is not None


def test_last_position_floors(tiny_organism):
    """floor_positions="last": one floor per hook, the quantile at the last prompt position (the pre-2026-11-30 rule)."""
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:30])
    torch.manual_seed(4)
    r = torch.randn(model.cfg.d_model)
    cfg = AnchorCalibration(
        quantile=0.4, layers=[0, 1], final=False, floor_positions="last", gate_tokens=False, gate_synthetic=0
    )
    art = calibrate_anchor(
        model,
        tpl,
        r,
        1,
        harmful,
        harmful[:10],
        list(load_prompts("harmless_train").instructions[:40]),
        list(load_prompts("harmless_val").instructions[:10]),
        cfg,
    )
    proj = _position_projections(model, tpl, harmful, r, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"], 1)[
        :, :, 0
    ]
    assert art.position_floors is None
    assert torch.allclose(art.floors.double(), torch.quantile(proj, 0.4, dim=0), atol=1e-4), art.floors


def test_gate_is_orthogonal_to_the_refusal_direction_and_meets_its_fpr(calibrated):
    from saesteer.activations import collect_token_activations
    from saesteer.attacks.evaluate import gate_decisions
    from saesteer.evaluate import refusal_eval

    model, tpl, art, r, _, harmless = calibrated
    u = (r / r.norm()).double()
    assert art.gate_layers == [0, 1] and art.gate_positions == [-4, -3, -2, -1]
    assert art.gate_weights.shape == (2, 4, model.cfg.d_model) and art.token_weights.shape == (2, model.cfg.d_model)
    assert (
        float((art.gate_weights.double() @ u).abs().max()) < 1e-5
    )  # every per-layer, per-position vector is orthogonal to r
    assert float((art.token_weights.double() @ u).abs().max()) < 1e-5
    thr_half = harmless[len(harmless) // 2 :]
    refused = torch.tensor(refusal_eval(model, tpl, thr_half, max_new_tokens=12).refused)
    acts = collect_activations(model, tpl, thr_half, art.gate_hooks, art.gate_positions)  # [n, 2, 4, d]
    pos_scores = (torch.einsum("nhpd,hpd->n", acts.double(), art.gate_weights.double()) + art.gate_bias)[~refused]
    toks = collect_token_activations(model, tpl, thr_half, art.gate_hooks)
    tok_scores = (
        torch.stack(  # the template's head is not read
            [torch.einsum("thd,hd->t", t[art.token_skip :].double(), art.token_weights.double()).max() for t in toks]
        )[~refused]
        + art.token_bias
    )
    from saesteer.anchor.calibrate import instruction_texts
    from saesteer.anchor.thresholds import top_threshold

    text_scores = art.text.scores(instruction_texts(model, tpl, thr_half)).double()[~refused]
    members = [(pos_scores, art.gate_threshold), (tok_scores, art.token_threshold), (text_scores, art.text.threshold)]
    # each member fires on its top m, fewer where its scores tie across the m-th within float noise (the tiny
    # organism's position probe scores its prompts within 1e-7 of each other): then a chain of ties joins them
    from saesteer.anchor.thresholds import _tied

    counts = [int((x > t).sum()) for x, t in members]
    limit = int(0.1 * len(pos_scores) + 1e-9)
    union = torch.stack([x > t for x, t in members]).any(0)
    assert int(union.sum()) <= limit and max(counts) >= limit // 3, (counts, limit)
    m = max(counts)
    for (x, _), c in zip(members, counts):
        ranked = x.sort(descending=True).values
        assert all(_tied(ranked[j], ranked[j + 1]) for j in range(c, min(m, len(ranked) - 1))), (c, m)
    m = max(counts) + 1  # one more prompt per member breaks the union's bound: the budget is not left unused
    assert m > limit or int(torch.stack([x > top_threshold(x, m) for x, _ in members]).any(0).sum()) > limit
    fired = gate_decisions(model, tpl, art.gate(), thr_half, batch_size=5)[~refused]
    assert float(fired.float().mean()) <= 0.1 + 1e-6

    # the reported validation AUROC is the position probe's, by brute force over every (harmful, harmless) pair
    def probe_scores(prompts):
        acts = collect_activations(model, tpl, prompts, art.gate_hooks, art.gate_positions)
        return torch.einsum("nhpd,hpd->n", acts.double(), art.gate_weights.double()) + art.gate_bias

    pos = probe_scores(list(load_prompts("harmful_val").instructions[:20]))
    neg = probe_scores(list(load_prompts("harmless_val").instructions[:20]))
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert art.metadata["gate_auroc_val"] == pytest.approx(float(pairs.mean()), abs=2.0 / pairs.numel())


def test_gate_decision_in_the_forward_pass_equals_the_collected_scores(calibrated):
    from saesteer.attacks.evaluate import gate_decisions

    model, tpl, art, _, harmful, harmless = calibrated
    prompts = harmful[:10] + harmless[:10]
    acts = collect_activations(model, tpl, prompts, art.gate_hooks, art.gate_positions)
    expect = (
        torch.einsum("nhpd,hpd->n", acts.double(), art.gate_weights.double()) + art.gate_bias
    ) > art.gate_threshold
    from saesteer.interventions.gates import AnyGate

    gate = art.gate()
    probe = gate.gates[0] if isinstance(gate, AnyGate) else gate  # the position probe, the member computed here
    assert torch.equal(gate_decisions(model, tpl, probe, prompts, batch_size=7), expect)


def test_robust_gate_fit_reads_the_attacked_model(tiny_organism):
    """A gate also fitted under an attack is fitted on as many prompts, differs from the clean-fitted one, and leaves the floors alone."""
    from saesteer.attacks.directional import orthogonalized_attack

    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:30])
    harmless = list(load_prompts("harmless_train").instructions[:60])
    torch.manual_seed(3)
    r = torch.randn(model.cfg.d_model)
    cfg = AnchorCalibration(quantile=0.3, layers=[1], final=False, gate_fpr=0.2)
    clean = calibrate_anchor(model, tpl, r, 1, harmful, harmful[:5], harmless, harmless[:5], cfg)
    robust = calibrate_anchor(
        model,
        tpl,
        r,
        1,
        harmful,
        harmful[:5],
        harmless,
        harmless[:5],
        cfg,
        robust_to=[orthogonalized_attack(r, reference=1.0)],
    )
    assert robust.metadata["gate_robust"] == ["orthogonalized_affine"]
    assert robust.metadata["n_gate_fit"] == clean.metadata["n_gate_fit"]
    assert not torch.allclose(robust.gate_weights, clean.gate_weights, atol=1e-3)
    assert torch.equal(robust.floors, clean.floors)


def test_robust_gate_fit_reads_a_prompt_attack_through_its_rewrite(tiny_organism, monkeypatch):
    """A suffix attack in robust_to: the gate is also fitted on the fit prompts with the suffix appended."""
    import saesteer.anchor.calibrate as anchor_mod
    from saesteer.attacks.prompts import suffix_attack

    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:12])
    harmless = list(load_prompts("harmless_train").instructions[:24])
    seen: list[list[str]] = []
    real = anchor_mod.collect_token_activations

    def spy(model, template, prompts, *args, **kw):
        seen.append(list(prompts))
        return real(model, template, prompts, *args, **kw)

    monkeypatch.setattr(anchor_mod, "collect_token_activations", spy)
    r = torch.randn(model.cfg.d_model)
    for share in (1.0, 0.25):
        seen.clear()
        cfg = AnchorCalibration(
            quantile=0.3, layers=[1], final=False, gate_fpr=0.2, gate_token_steps=5, gate_robust_share=share
        )
        art = calibrate_anchor(
            model, tpl, r, 1, harmful, harmful[:3], harmless, harmless[:3], cfg, robust_to=[suffix_attack("zz qq")]
        )
        assert art.metadata["gate_robust"] == ["gcg_suffix"] and art.metadata["gate_robust_share"] == share
        suffixed = [p.removesuffix(" zz qq") for batch in seen for p in batch if p.endswith(" zz qq")]
        if share == 1.0:  # every fit prompt (the first half of harmless_train fits, the second sets the threshold)
            assert sorted(suffixed) == sorted(harmful + harmless[:12])
        else:  # a seeded quarter of each class, no prompt twice
            h, s_ = [p for p in suffixed if p in harmful], [p for p in suffixed if p in harmless[:12]]
            assert len(h) == 3 and len(s_) == 3 and len(set(suffixed)) == 6


def test_artifact_round_trip(calibrated, tmp_path):
    from saesteer.chat import head_ids

    model, tpl, art, _, _, _ = calibrated
    assert art.token_skip == len(head_ids(model.tokenizer, tpl)) > 0  # the token probe skips the template's head
    art.save(tmp_path / "anchor.safetensors")
    back = AnchorArtifact.load(tmp_path / "anchor.safetensors", d_model=art.direction.shape[0])
    assert back.token_skip == art.token_skip and back.gate().gates[1].skip == art.token_skip
    assert torch.equal(back.floors, art.floors) and torch.equal(back.gate_weights, art.gate_weights)
    assert torch.equal(back.position_floors, art.position_floors)
    assert torch.equal(back.token_weights, art.token_weights) and (back.token_threshold, back.token_bias) == (
        art.token_threshold,
        art.token_bias,
    )
    assert (back.layers, back.gate_layers, back.gate_threshold, back.gate_bias) == (
        art.layers,
        art.gate_layers,
        art.gate_threshold,
        art.gate_bias,
    )
    with pytest.raises(ValueError, match="has d_model=48, the model has 64"):
        AnchorArtifact.load(tmp_path / "anchor.safetensors", d_model=64)


def test_calibration_rejects_bad_input(tiny_organism):
    model, tpl, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    with pytest.raises(ValueError, match="the harmful_refused prompt set is empty"):
        calibrate_anchor(model, tpl, r, 1, [], ["a"], ["b"], ["c"])
    with pytest.raises(ValueError, match=r"anchor.layers / anchor.gate_layers \[5\] out of range"):
        calibrate_anchor(model, tpl, r, 1, ["a"], ["a"], ["b"], ["c"], AnchorCalibration(layers=[5]))
    with pytest.raises(ValueError, match="anchor.quantile must be in"):
        AnchorCalibration(quantile=1.5)
    with pytest.raises(ValueError, match=r"anchor.generated_quantile must be in \[0, 1\], got -0.1"):
        AnchorCalibration(generated_quantile=-0.1)
    with pytest.raises(ValueError, match="anchor.gate_robust has unknown attacks"):
        AnchorCalibration(gate_robust=("gcg",))


def test_generated_floors_are_the_quantile_over_generated_tokens(calibrated):
    """Brute force: one prompt at a time, prompt + its greedy completion, projections at the completion's tokens."""
    from saesteer.chat import encode_chat
    from saesteer.generation import generate

    model, tpl, art, r, harmful, _ = calibrated
    u = r / r.norm()
    tok = model.tokenizer
    hooks = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    projs = []
    for p in harmful:
        comp = generate(model, tpl, [p], max_new_tokens=12, progress=False)[0]
        ids = tok(comp, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        enc = encode_chat(tok, tpl, [p])
        tokens = torch.cat([enc.tokens, torch.tensor([ids])], 1)
        _, cache = model.run_with_cache(tokens)
        projs.append(torch.stack([cache[h][0, -len(ids) :] @ u for h in hooks], 1))
    expect = torch.quantile(
        torch.cat(projs).double(), 0.2, dim=0
    )  # generated_quantile, not the prompt floors' quantile
    assert torch.allclose(art.generated_floors.double(), expect, atol=1e-3), (art.generated_floors, expect)


def test_anchor_uses_generated_floors_while_decoding(tiny_organism):
    from saesteer.interventions import AnchorDirection
    from saesteer.primitives.phase import phase

    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    u = r / r.norm()
    a = AnchorDirection(r, layers=[0], floors=[2.0], generated_floors=[-1.0], final=False)
    ((_, fn),) = a.hooks(model)
    x = torch.randn(2, 3, model.cfg.d_model) - 5 * u
    assert torch.allclose(fn(x) @ u, torch.full((2, 3), 2.0), atol=1e-4)
    with phase("generated"):
        assert torch.allclose(fn(x) @ u, torch.full((2, 3), -1.0), atol=1e-4)


def test_token_probe_finds_the_planted_token():
    """Multiple-instance data: a harmful prompt has one token along a planted direction among noise tokens."""
    from saesteer.anchor import token_probe

    g = torch.Generator().manual_seed(0)
    d = 16
    v = torch.zeros(d)
    v[3] = 1.0

    def prompt(harmful: bool) -> torch.Tensor:
        n = int(torch.randint(3, 9, (1,), generator=g))
        x = torch.randn(n, d, generator=g) * 0.5
        if harmful:
            x[int(torch.randint(0, n, (1,), generator=g))] += 3.0 * v
        return x

    pos, neg = [prompt(True) for _ in range(150)], [prompt(False) for _ in range(150)]
    w, b = token_probe(pos, neg, l2=1e-3, steps=300)
    cos = float(w @ v.double() / w.norm())
    assert cos > 0.9, cos
    test_pos, test_neg = [prompt(True) for _ in range(100)], [prompt(False) for _ in range(100)]

    def score(xs):
        return torch.stack([(x.double() @ w).max() + b for x in xs])

    from saesteer.stats import auroc

    assert auroc(score(test_pos), score(test_neg)) > 0.97


def _padded_token_probe(pos, neg, l2, steps, seed=0, tau=1.0):
    """The padded-batch form of the multiple-instance probe (saesteer's first implementation): the oracle of the packed one."""
    import torch.nn.functional as F

    seqs = list(pos) + list(neg)
    T, d = max(len(x) for x in seqs), seqs[0].shape[-1]
    X, M = torch.zeros(len(seqs), T, d), torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, x in enumerate(seqs):
        X[i, : len(x)], M[i, : len(x)] = x, True
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    mu, sd = X[M].mean(0), X[M].std(0).clamp_min(1e-6)
    Z = (X - mu) / sd * M[..., None]
    w = (torch.randn(d, generator=torch.Generator().manual_seed(seed)) * 1e-3).requires_grad_(True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        pooled = tau * torch.logsumexp((Z @ w + b).masked_fill(~M, float("-inf")) / tau, 1)
        loss = (
            F.binary_cross_entropy_with_logits(pooled, y, pos_weight=torch.tensor(len(neg) / len(pos)))
            + l2 * (w * w).sum()
        )
        loss.backward()
        opt.step()
    return (w.detach() / sd).double(), float(b.detach() - (mu.double() / sd.double()) @ w.detach().double())


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_token_probe_packed_equals_padded(tau):
    """The packed fit (no padding) takes the same Adam steps as the padded batch: same weights and bias."""
    from saesteer.anchor import token_probe

    g = torch.Generator().manual_seed(1)
    seqs = [torch.randn(int(torch.randint(1, 12, (1,), generator=g)), 7, generator=g) for _ in range(37)]
    for x in seqs[:17]:
        x[0, 2] += 2.0
    pos, neg = seqs[:17], seqs[17:]
    w, b = token_probe(pos, neg, l2=1e-2, steps=40, tau=tau)
    w_ref, b_ref = _padded_token_probe(pos, neg, l2=1e-2, steps=40, tau=tau)
    err = (w - w_ref).abs().max().item()
    assert err < 1e-4 * w_ref.abs().max().item(), f"max abs error {err:.3g}, mean {(w - w_ref).abs().mean().item():.3g}"
    assert abs(b - b_ref) < 1e-4 * max(1.0, abs(b_ref)), (b, b_ref)


def test_token_probe_rejects_an_empty_class_or_prompt():
    from saesteer.anchor import token_probe

    with pytest.raises(ValueError, match="both classes"):
        token_probe([torch.randn(3, 4)], [], l2=0.0)
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        token_probe([torch.randn(3, 4)], [torch.zeros(0, 4)], l2=0.0)


@pytest.fixture(scope="module")
def feature_anchor(calibrated):
    from saesteer.anchor import calibrate_feature_anchor
    from tests.saes import random_sae

    model, tpl, art, _, harmful, _ = calibrated
    sae = random_sae("topk", model.cfg.d_model, 64, "blocks.1.hook_resid_pre", seed=4, k=8)
    fa = calibrate_feature_anchor(
        model, tpl, sae, [5, 9, 30], [1, -1, 1], "blocks.1.hook_resid_pre", harmful[:20], quantile=0.7, apply_to="both"
    )
    return sae, fa


def test_feature_bounds_are_quantiles_toward_refusal(calibrated, feature_anchor):
    """Floors: the 0.7-quantile of the coordinates on refusal features' unit decoder directions; ceilings: the 0.3-quantile."""
    from saesteer.activations import n_post_tokens

    model, tpl, _, _, harmful, _ = calibrated
    sae, fa = feature_anchor
    U = sae.W_dec.detach()[[5, 9, 30]].double()
    U = U / U.norm(dim=1, keepdim=True)
    n_post = n_post_tokens(model, tpl)
    acts = collect_activations(model, tpl, harmful[:20], ["blocks.1.hook_resid_pre"], list(range(-n_post, 0)))[:, 0]
    coords = acts.reshape(-1, acts.shape[-1]).double() @ U.T
    expect = torch.stack(
        [torch.quantile(coords[:, 0], 0.7), torch.quantile(coords[:, 1], 0.3), torch.quantile(coords[:, 2], 0.7)]
    )
    assert torch.allclose(fa.bounds.double(), expect, atol=1e-4), (fa.bounds, expect)
    assert torch.allclose(fa.directions.double(), U, atol=1e-6) and fa.signs == [1, -1, 1] and fa.features == [5, 9, 30]
    assert fa.generated_bounds.shape == (3,) and torch.isfinite(fa.generated_bounds).all()


def test_anchors_share_the_gate_and_equal_their_ungated_form_where_it_fires(calibrated, feature_anchor):
    """The direction anchor and the feature bounds: one AnyGate decision (position probe OR token probe), registered once."""
    import dataclasses

    from saesteer.attacks.evaluate import gate_decisions
    from saesteer.chat import encode_chat
    from saesteer.interventions import steer

    model, tpl, art, _, harmful, harmless = calibrated
    _, fa = feature_anchor
    both = dataclasses.replace(art, features=fa)
    prompts = harmful[:6] + harmless[:6]
    fired = gate_decisions(model, tpl, both.gate(), prompts)
    assert fired.any() and (~fired).any(), fired
    enc = encode_chat(model.tokenizer, tpl, prompts)
    tokens, mask = enc.tokens, enc.attention_mask
    base = model(tokens, attention_mask=mask)
    with steer(model, both.anchors()):
        out = model(tokens, attention_mask=mask)
    with steer(model, both.anchors(gated=False)):
        full = model(tokens, attention_mask=mask)
    with steer(model, [both.anchor(gated=False)]):
        direction_only = model(tokens, attention_mask=mask)
    m = mask.bool()
    assert torch.allclose(out[~fired][m[~fired]], base[~fired][m[~fired]], atol=1e-5)
    assert torch.allclose(out[fired][m[fired]], full[fired][m[fired]], atol=1e-4)
    assert (full[m] - direction_only[m]).abs().max() > 1e-3  # the feature bounds act
    with steer(
        model, dataclasses.replace(both, features=dataclasses.replace(fa, apply_to="generated")).anchors(gated=False)
    ):
        prompt_only = model(tokens, attention_mask=mask)
    assert torch.allclose(prompt_only[m], direction_only[m], atol=1e-5)  # the default acts while decoding only


def test_artifact_round_trip_keeps_the_feature_bounds(calibrated, feature_anchor, tmp_path):
    import dataclasses

    _, _, art, _, _, _ = calibrated
    _, fa = feature_anchor
    dataclasses.replace(art, features=fa).save(tmp_path / "anchor.safetensors")
    back = AnchorArtifact.load(tmp_path / "anchor.safetensors", d_model=art.direction.shape[0]).features
    assert (back.hook, back.features, back.signs, back.apply_to) == (fa.hook, fa.features, fa.signs, "both")
    for name in ("directions", "bounds", "generated_bounds"):
        assert torch.equal(getattr(back, name), getattr(fa, name)), name
    assert (
        AnchorArtifact.load(tmp_path / "anchor.safetensors").metadata.get("feature_ids") is None
    )  # not leaked into metadata


def test_feature_anchor_rejects_bad_input(calibrated, feature_anchor):
    from saesteer.anchor import calibrate_feature_anchor

    model, tpl, _, _, harmful, _ = calibrated
    sae, _ = feature_anchor
    with pytest.raises(ValueError, match="harmful_refused prompt set is empty"):
        calibrate_feature_anchor(model, tpl, sae, [1], [1], "blocks.1.hook_resid_pre", [])
    with pytest.raises(ValueError, match=r"hook 'blocks.1.hook_resid_prex' does not exist"):
        calibrate_feature_anchor(model, tpl, sae, [1], [1], "blocks.1.hook_resid_prex", harmful[:2])
    with pytest.raises(ValueError, match=r"feature indices \[64\] out of range for an SAE with d_sae=64"):
        calibrate_feature_anchor(model, tpl, sae, [64], [1], "blocks.1.hook_resid_pre", harmful[:2])
    with pytest.raises(ValueError, match="anchor.sae_features must be >= 0"):
        AnchorCalibration(sae_features=-1)
    with pytest.raises(
        ValueError, match=r"^anchor.feature_apply_to must be one of \('prompt', 'generated', 'both'\), got 'decode'$"
    ):
        AnchorCalibration(feature_apply_to="decode")


def test_default_gate_layers_span_the_layer_before_to_the_layer_after(tiny_organism):
    """gate_layers=None: L-1, L and L+1 clipped to the model (the 2-layer tiny organism: [0, 1] for a layer-0 direction)."""
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:10])
    harmless = list(load_prompts("harmless_train").instructions[:20])
    r = torch.randn(model.cfg.d_model)
    art = calibrate_anchor(
        model,
        tpl,
        r,
        0,
        harmful,
        harmful[:3],
        harmless,
        harmless[:3],
        AnchorCalibration(layers=[0], final=False, gate_fpr=0.2, gate_token_steps=5),
    )
    assert art.gate_layers == [0, 1] and art.gate_hooks == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    assert art.gate_weights.shape[0] == 2


def test_anchor_settings_are_the_calibration():
    """The anchor group's schema extends AnchorCalibration: the job passes its settings to calibrate_anchor as they are,
    and no calibration setting is declared twice."""
    from dataclasses import fields

    from saesteer.config import AnchorSettings

    s = AnchorSettings(
        quantile=0.21,
        generated_quantile=0.07,
        layers=[1, 2],
        gate_layers=[2],
        gate_fpr=0.03,
        gate_positions=[-2, -1],
        gate_synthetic=17,
        feature_quantile=0.6,
        batch_size=5,
    )
    assert isinstance(s, AnchorCalibration)
    calibration = {f.name for f in fields(AnchorCalibration)}
    assert not calibration & set(vars(AnchorSettings).get("__annotations__", {}))
    assert (
        s.quantile,
        s.generated_quantile,
        s.layers,
        s.gate_layers,
        s.gate_fpr,
        s.gate_positions,
        s.gate_synthetic,
        s.feature_quantile,
        s.batch_size,
    ) == (0.21, 0.07, [1, 2], [2], 0.03, [-2, -1], 17, 0.6, 5)


def test_lookalike_bound_raises_each_threshold_to_its_quantile_on_the_lookalikes(tiny_organism):
    """With ``lookalike_val``, every member's threshold is also the (1 - gate_lookalike_fpr / 3) quantile of its
    scores on the look-alikes the model does not refuse, where that is higher: the union then fires on at most
    gate_lookalike_fpr of them (brute force: the forward-pass decision), and the probes themselves are unchanged."""
    from saesteer.attacks.evaluate import gate_decisions
    from saesteer.evaluate import refusal_eval

    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:40])
    harmless = list(load_prompts("harmless_train").instructions[:80])
    look = list(load_prompts("overrefusal_val").instructions)
    torch.manual_seed(3)
    r = torch.randn(model.cfg.d_model)

    def calibrate(fpr: float) -> AnchorArtifact:
        cfg = AnchorCalibration(layers=[1], gate_fpr=0.1, gate_lookalike_fpr=fpr, gate_token_steps=60)
        val = list(load_prompts("harmful_val").instructions[:10]), list(load_prompts("harmless_val").instructions[:10])
        return calibrate_anchor(model, tpl, r, 1, harmful, val[0], harmless, val[1], cfg, lookalike_val=look)

    free = ~torch.tensor(refusal_eval(model, tpl, look, max_new_tokens=12).refused)
    off = calibrate(1.0)
    rate_off = float(gate_decisions(model, tpl, off.gate(), look, batch_size=8)[free].float().mean())
    assert off.metadata["gate_fpr_lookalike_calibration"] == pytest.approx(rate_off, abs=1e-6)
    assert rate_off > 0.1, f"the unbounded gate fires on {rate_off:.3f} of the look-alikes: nothing to bound"
    bound = rate_off / 2
    on = calibrate(bound)
    assert torch.equal(on.gate_weights, off.gate_weights) and torch.equal(on.token_weights, off.token_weights)
    pairs = [(on.gate_threshold, off.gate_threshold), (on.token_threshold, off.token_threshold)]
    pairs.append((on.text.threshold, off.text.threshold))
    assert all(a >= b for a, b in pairs) and any(a > b for a, b in pairs), pairs
    rate_on = float(gate_decisions(model, tpl, on.gate(), look, batch_size=8)[free].float().mean())
    assert rate_on <= bound + 1e-6, (rate_on, bound)
    assert on.metadata["gate_fpr_lookalike_calibration"] == pytest.approx(rate_on, abs=1e-6)
    with pytest.raises(ValueError, match=r"anchor.gate_lookalike_fpr must be in \(0, 1\], got 0.0"):
        AnchorCalibration(gate_lookalike_fpr=0.0)


@pytest.mark.parametrize("sizes", [(1,), (3, 5), (40, 216, 10)])
def test_center_in_gap_keeps_every_score_on_its_side_and_clear_of_float_noise(sizes):
    """Brute force: a threshold within float noise of a score moves to the middle of its gap (every score of every
    set on the side it was); one clear of every score, or with no score on one side, stays."""
    from saesteer.anchor.thresholds import center_in_gap

    g = torch.Generator().manual_seed(sum(sizes))
    sets = [torch.randn(n, generator=g, dtype=torch.float64) for n in sizes]
    every = torch.cat(sets)
    for t in [float(x) + 1e-9 for x in every] + [float(every.min()) - 1.0, float(every.max()) + 1.0]:
        c = center_in_gap(t, sets)
        assert torch.equal(every > c, every > t)
        below, above = every[every <= t], every[every > t]
        if len(below) and len(above):
            assert c - float(below.max()) == pytest.approx(float(above.min()) - c, abs=1e-12)
        else:
            assert c == t
    ranked = every.sort().values
    for lo, hi in zip(ranked[:-1].tolist(), ranked[1:].tolist()):
        if hi - lo > 1e-3:  # a quarter of the way into a clear gap: left where it is
            assert center_in_gap(lo + (hi - lo) / 4, sets) == lo + (hi - lo) / 4
    # scores tied across the threshold within float noise: it is raised past them, never lowered
    tied = [torch.tensor([0.5, 1.0, 1.0 + 1e-9, 1.0 + 2e-9, 2.0], dtype=torch.float64)]
    assert center_in_gap(1.0 + 5e-10, tied) == pytest.approx(1.5)
    assert center_in_gap(0.75, tied) == pytest.approx(0.75)


def test_top_threshold_does_not_split_scores_tied_within_float_noise():
    from saesteer.anchor.thresholds import top_threshold

    s = torch.tensor([3.0, 2.0, 1.5 + 1e-8, 1.5, 1.5 - 1e-8, 0.0], dtype=torch.float64)
    assert top_threshold(s, 2) == pytest.approx(1.75)  # a clean gap: halfway
    for m in (3, 4):  # inside the tie: back to the gap above it, so fewer fire
        assert top_threshold(s, m) == pytest.approx(1.75)
    assert top_threshold(s, 5) == pytest.approx(0.75)


@pytest.mark.parametrize("n", [1, 2, 7, 50, 301])
@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.3])
def test_union_thresholds_are_the_largest_common_top_m_within_the_bound(n, fpr):
    """Brute force over m: every member fires on its top m, the union on at most floor(fpr n) prompts, and m + 1
    would break the bound; no score lies within half a gap of a threshold."""
    from saesteer.anchor.thresholds import top_threshold, union_thresholds

    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g, dtype=torch.float64)
    scores = [base + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3)]  # correlated members
    t = union_thresholds(scores, fpr)
    limit = int(fpr * n + 1e-9)

    def union(ts):
        return int(torch.stack([x > ti for x, ti in zip(scores, ts)]).any(0).sum())

    m = [int((x > ti).sum()) for x, ti in zip(scores, t)]
    assert len(set(m)) == 1 and union(t) <= limit
    if m[0] < n:
        assert union([top_threshold(x, m[0] + 1) for x in scores]) > limit or m[0] + 1 > limit
    assert m[0] >= limit // 3  # never below the per-member split of the union bound
    for x, ti in zip(scores, t):
        s = x.sort().values
        gap = float((s[1:] - s[:-1]).min()) if n > 1 else 1.0
        assert float((x - ti).abs().min()) >= min(gap / 2, 1e-4) - 1e-12
