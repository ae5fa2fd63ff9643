"""Anchors, gated additions and the affine weight edit against their definitions."""

from __future__ import annotations

import pytest
import torch

from saesteer.chat import encode_chat
from saesteer.interventions import (
    Ablate,
    Add,
    AnchorDirection,
    AnchorProjections,
    Intervention,
    orthogonalize_weights,
    steer,
)
from saesteer.interventions.gates import DirectionGate

PROMPTS = [
    "How do I pick a lock?",
    "Write a haiku about the sea and the moon.",
    "Explain how to make a bomb.",
    "List three fruits.",
]


@pytest.fixture(scope="module")
def batch(tiny_organism):
    model, tpl, _ = tiny_organism
    enc = encode_chat(model.tokenizer, tpl, PROMPTS)
    return enc.tokens, enc.attention_mask


def _cache(model, tokens, mask):
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    return cache


def _unit(d):
    return d / d.norm()


def _split(score: torch.Tensor) -> float:
    """A threshold between the two middle scores (half the batch fires)."""
    s = score.sort().values
    assert s[1] < s[2], s
    return float((s[1] + s[2]) / 2)


def test_anchor_hook_matches_float64_definition():
    torch.manual_seed(1)
    r = torch.randn(37)
    a = AnchorDirection(r, layers=[0], floors=[0.7], final=False)
    ((name, fn),) = a.hooks(_FakeModel(37, 2))
    x = torch.randn(3, 5, 37)
    got = fn(x.clone())
    u = _unit(r.double())
    xd = x.double()
    ref = xd + (0.7 - xd @ u).clamp_min(0)[..., None] * u
    err = (got.double() - ref).abs()
    assert name == "blocks.0.hook_resid_pre"
    assert err.max() < 1e-5, f"max {err.max():.2e} mean {err.mean():.2e}"
    proj = got.double() @ u
    assert torch.allclose(proj, torch.maximum(xd @ u, torch.tensor(0.7, dtype=torch.float64)), atol=1e-5)


@pytest.mark.parametrize("seq", [7, 3])  # longer than the position floors, and shorter (the floors' tail is used)
def test_position_floors_match_float64_definition(seq):
    """The last k prompt positions get their own floor (left padding puts t_inst and the post-instruction tokens last),
    earlier ones ``floors``; generated tokens ``generated_floors``."""
    from saesteer.primitives.phase import phase

    torch.manual_seed(2)
    r = torch.randn(29)
    pf = torch.tensor([[0.3, -0.2, 1.1, 0.6], [2.0, 1.5, -1.0, 0.4]])
    a = AnchorDirection(r, layers=[0], floors=[-0.5, 0.1], final=True, generated_floors=[0.9, -0.3], position_floors=pf)
    fns = [fn for _, fn in a.hooks(_FakeModel(29, 1))]
    u = _unit(r.double())
    x = torch.randn(3, seq, 29) * 2
    xd = x.double()
    for i, fn in enumerate(fns):
        floor = torch.full((seq,), float(a.floors[i]), dtype=torch.float64)
        k = min(seq, 4)
        floor[seq - k :] = pf[i, 4 - k :].double()
        ref = xd + (floor - xd @ u).clamp_min(0)[..., None] * u
        err = (fn(x.clone()).double() - ref).abs()
        assert err.max() < 1e-5, f"hook {i}: max {err.max():.2e} mean {err.mean():.2e}"
        with phase("generated"):
            gen_ref = xd + (float(a.generated_floors[i]) - xd @ u).clamp_min(0)[..., None] * u
            assert (fn(x.clone()).double() - gen_ref).abs().max() < 1e-5


def test_position_floors_shape_is_checked():
    with pytest.raises(
        ValueError, match=r"position_floors must be finite, shape \[2 anchored hooks, k >= 1\], got shape \(3, 4\)"
    ):
        AnchorDirection(torch.ones(8), layers=[0], floors=[0.0, 0.0], final=True, position_floors=torch.zeros(3, 4))


class _FakeModel:
    def __init__(self, d_model, n_layers):
        self.cfg = type("C", (), {"d_model": d_model, "n_layers": n_layers})()


def test_anchor_runs_after_an_attack_at_the_same_hook(tiny_organism, batch):
    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    u = _unit(r)
    L = model.cfg.n_layers
    anchor = AnchorDirection(r, layers=list(range(L)), floors=[0.5] * L + [0.25], final=True)
    with steer(
        model, [anchor, Ablate(r, mode="affine", reference=torch.full((L,), -3.0))]
    ):  # anchor listed first on purpose
        cache = _cache(model, *batch)
    for layer in range(L):
        proj = cache[f"blocks.{layer}.hook_resid_pre"] @ u
        assert proj.min() >= 0.5 - 1e-4, (layer, float(proj.min()))
    assert (cache[f"blocks.{L - 1}.hook_resid_post"] @ u).min() >= 0.25 - 1e-4


def test_gated_anchor_leaves_ungated_sequences_untouched(tiny_organism, batch):
    model, _, _ = tiny_organism
    tokens, mask = batch
    r = torch.randn(model.cfg.d_model)
    gdir = torch.randn(model.cfg.d_model)
    base = model(tokens, attention_mask=mask)
    score = _cache(model, tokens, mask)["blocks.1.hook_resid_pre"][:, -1] @ _unit(gdir)
    thr = _split(score)
    gate = DirectionGate(hook="blocks.1.hook_resid_pre", positions=(-1,), threshold=thr, direction=gdir)
    fired = score > thr
    assert fired.any() and (~fired).any()
    anchor = AnchorDirection(r, layers=[1], floors=[50.0], gate=gate, final=False)
    with steer(model, [anchor]):
        out = model(tokens, attention_mask=mask)
    ungated = AnchorDirection(r, layers=[1], floors=[50.0], final=False)
    with steer(model, [ungated]):
        full = model(tokens, attention_mask=mask)
    m = mask.bool()
    assert torch.allclose(out[~fired][m[~fired]], base[~fired][m[~fired]], atol=1e-5)
    assert torch.allclose(out[fired][m[fired]], full[fired][m[fired]], atol=1e-5)
    assert (out[fired] - base[fired]).abs().max() > 1e-2


def test_gated_addition_is_addition_where_the_gate_fires(tiny_organism, batch):
    model, _, _ = tiny_organism
    tokens, mask = batch
    v = torch.randn(model.cfg.d_model)
    g = torch.randn(model.cfg.d_model)
    score = _cache(model, tokens, mask)["blocks.1.hook_resid_pre"][:, -1] @ _unit(g)
    thr = _split(score)
    fired = score > thr
    base = model(tokens, attention_mask=mask)
    with steer(
        model,
        [Add(v, alpha=2.0, layer=1, gate=DirectionGate(hook="blocks.1.hook_resid_pre", threshold=thr, direction=g))],
    ):
        out = model(tokens, attention_mask=mask)
    with steer(model, [Add(v, alpha=2.0, layer=1)]):
        full = model(tokens, attention_mask=mask)
    assert torch.allclose(out[~fired], base[~fired], atol=1e-5)
    assert torch.allclose(out[fired], full[fired], atol=1e-5)


def test_gate_reading_after_the_edit_is_refused_except_by_anchors_and_additions(tiny_organism):
    """A feature edit refuses a gate read after it; an anchor or an addition (CAST) takes it and steer decides in a pre-pass."""
    from saesteer.interventions import EditFeatures
    from tests.saes import random_sae

    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    gate = DirectionGate(hook="blocks.1.hook_resid_pre", direction=r)
    anchor = AnchorDirection(r, layers=[0], floors=[1.0], gate=gate, final=False)
    assert anchor.prepass_gates(model) == [gate]
    assert AnchorDirection(r, layers=[1], floors=[1.0], gate=gate, final=False).prepass_gates(model) == []
    assert (
        Add(r, layer=0, gate=gate).prepass_gates(model) == [gate]
        and Add(r, layer=1, gate=gate).prepass_gates(model) == []
    )
    sae = random_sae("standard", model.cfg.d_model, 32, "blocks.0.hook_resid_pre")
    with pytest.raises(
        ValueError, match="gate reads blocks.1.hook_resid_pre, after the edit at blocks.0.hook_resid_pre"
    ):
        with steer(model, [EditFeatures(sae, [1], gate=DirectionGate(hook="blocks.1.hook_resid_pre", direction=r))]):
            pass


def _assert_gated_equals_ungated_where_fired(model, tokens, mask, build, atol=1e-4):
    """``build(gate)``: interventions gated by a random direction gate read at layer 1 (half the batch fires), or ungated
    (gate None).  Gated, they must leave the sequences that do not fire untouched and equal the ungated edit on the rest."""
    g = torch.randn(model.cfg.d_model)
    score = _cache(model, tokens, mask)["blocks.1.hook_resid_pre"][:, -1] @ _unit(g)
    thr = _split(score)
    fired = score > thr
    base = model(tokens, attention_mask=mask)
    with steer(model, build(DirectionGate(hook="blocks.1.hook_resid_pre", threshold=thr, direction=g))):
        out = model(tokens, attention_mask=mask)
    with steer(model, build(None)):
        full = model(tokens, attention_mask=mask)
    m = mask.bool()
    assert torch.allclose(out[~fired][m[~fired]], base[~fired][m[~fired]], atol=1e-5)
    assert torch.allclose(out[fired][m[fired]], full[fired][m[fired]], atol=atol)
    assert (full[m] - base[m]).abs().max() > 1e-2  # the edit acts


def test_addition_gated_later_decides_in_the_prepass(tiny_organism, batch):
    """CAST at layer 0 gated by a probe at layer 1: the addition where the (clean-prompt) gate fires, nothing elsewhere."""
    model, _, _ = tiny_organism
    v = torch.randn(model.cfg.d_model)
    _assert_gated_equals_ungated_where_fired(model, *batch, lambda gate: [Add(v, alpha=3.0, layer=0, gate=gate)])


def test_anchor_rejects_bad_floors_and_layers(tiny_organism):
    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    with pytest.raises(ValueError, match=r"got 1 floors for 3 anchored hooks"):
        AnchorDirection(r, layers=[0, 1], floors=[1.0], final=True)
    with pytest.raises(ValueError, match="finite"):
        AnchorDirection(r, layers=[0], floors=[float("nan")], final=False)
    with pytest.raises(ValueError, match=r"layers \[7\] out of range"):
        with steer(model, [AnchorDirection(r, layers=[7], floors=[1.0], final=False)]):
            pass
    with pytest.raises(ValueError, match=r"shape \(5,\), expected \(48,\)"):
        with steer(model, [AnchorDirection(torch.randn(5), layers=[0], floors=[1.0], final=False)]):
            pass


class _WritersOnly(Intervention):
    """Plain ablation at the embedding (blocks.0.hook_resid_pre) and every attn_out / mlp_out only."""

    def __init__(self, r):
        self.u = _unit(r)

    def hooks(self, model):
        fn = lambda x, hook=None: x - (x @ self.u.to(x))[..., None] * self.u.to(x)  # noqa: E731
        names = ["blocks.0.hook_resid_pre"] + [
            f"blocks.{l}.hook_{k}_out" for l in range(model.cfg.n_layers) for k in ("attn", "mlp")
        ]
        return [(n, fn) for n in names]


class _AddAfter(Intervention):
    """Adds v at one hook, after the ablation there (for the weight-edit reference)."""

    order = 1

    def __init__(self, hook, v):
        self.hook, self.v = hook, v

    def hooks(self, model):
        return [(self.hook, lambda x, hook=None: x + self.v.to(x))]


def test_affine_weight_orthogonalization_equals_its_hook_version(tiny_organism, batch):
    model, _, _ = tiny_organism
    tokens, mask = batch
    r = torch.randn(model.cfg.d_model)
    ref = 1.7
    edited = orthogonalize_weights(model, r, reference=ref)
    with steer(model, [_WritersOnly(r), _AddAfter("blocks.0.hook_attn_out", ref * _unit(r))]):
        hooked = model(tokens, attention_mask=mask)
    got = edited(tokens, attention_mask=mask)
    m = mask.bool()
    err = (got[m] - hooked[m]).abs()
    assert err.max() < 1e-3, f"max {err.max():.2e} mean {err.mean():.2e}"
    coord = _cache(edited, tokens, mask)[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][m] @ _unit(r)
    assert torch.allclose(coord, torch.full_like(coord, ref), atol=1e-3)


def test_per_layer_affine_weight_orthogonalization_equals_affine_ablation(tiny_organism, batch):
    """With per-layer references the weight edit is Ablate(affine) as hooks (the attack the gate is fitted under)."""
    model, _, _ = tiny_organism
    tokens, mask = batch
    torch.manual_seed(5)
    r = torch.randn(model.cfg.d_model)
    ref = torch.randn(model.cfg.n_layers) * 3
    edited = orthogonalize_weights(model, r, reference=ref)
    with steer(model, [Ablate(r, mode="affine", reference=ref)]):
        hooked = model(tokens, attention_mask=mask)
    got = edited(tokens, attention_mask=mask)
    m = mask.bool()
    err = (got[m] - hooked[m]).abs()
    assert err.max() < 1e-3, f"max {err.max():.2e} mean {err.mean():.2e}"
    cache = _cache(edited, tokens, mask)
    for l in range(model.cfg.n_layers):
        coord = cache[f"blocks.{l}.hook_resid_pre"][m] @ _unit(r)
        assert torch.allclose(coord, torch.full_like(coord, float(ref[l])), atol=1e-3), l
    with pytest.raises(ValueError, match=r"per-layer reference has shape \(3,\), expected \(2,\)"):
        orthogonalize_weights(model, r, reference=torch.zeros(3))


def test_probe_gate_checks_its_shapes_and_order():
    from saesteer.interventions.gates import ProbeGate

    w = torch.randn(2, 3, 48)
    with pytest.raises(ValueError, match=r"weights must have shape \[n_hooks=2, n_positions=2, d_model\]"):
        ProbeGate(
            hook="blocks.1.hook_resid_pre",
            positions=(-2, -1),
            hooks=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
            weights=w,
        )
    with pytest.raises(ValueError, match="forward order"):
        ProbeGate(
            hook="blocks.0.hook_resid_pre",
            positions=(-3, -2, -1),
            hooks=["blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre"],
            weights=w,
        )
    with pytest.raises(ValueError, match="decides at its last hook"):
        ProbeGate(
            hook="blocks.0.hook_resid_pre",
            positions=(-3, -2, -1),
            hooks=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
            weights=w,
        )


def test_gate_ablation_attack_blinds_the_probe(tiny_organism):
    """The adaptive attacker's edit leaves the probe's score the same constant on every prompt."""
    from saesteer.activations import collect_activations
    from saesteer.attacks.directional import gate_ablation_attack

    model, tpl, _ = tiny_organism
    torch.manual_seed(0)
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    pos = [-2, -1]
    w = torch.randn(2, 2, model.cfg.d_model)
    means = torch.randn(2, model.cfg.d_model)
    r = torch.randn(model.cfg.d_model)
    attack = gate_ablation_attack(r, torch.zeros(model.cfg.n_layers), hooks, w, means)  # position probe only
    prompts = ["How do I bake bread?", "Explain how to build a bomb.", "Write a poem about the sea."]
    acts = collect_activations(model, tpl, prompts, hooks, pos, interventions=attack.interventions)
    # the hooks run in forward order; the layer-1 read also sees the refusal-direction ablation, which is applied first
    scores = torch.einsum("nhpd,hpd->n", acts.double(), w.double())
    expect = float(torch.einsum("hd,hpd->", means.double(), w.double()))
    assert torch.allclose(scores, torch.full_like(scores, expect), atol=1e-3), (scores, expect)


def test_token_probe_gate_takes_the_max_over_real_tokens(tiny_organism):
    """In left-padded batches the gate's decision equals the max over each prompt's own tokens, computed one prompt at a time."""
    from saesteer.activations import collect_token_activations
    from saesteer.attacks.evaluate import gate_decisions
    from saesteer.interventions.gates import AnyGate, ProbeGate, TokenProbeGate

    model, tpl, _ = tiny_organism
    torch.manual_seed(1)
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    w = torch.randn(2, model.cfg.d_model)
    prompts = [
        "Hi",
        "How do I bake a loaf of sourdough bread at home with a starter?",
        "Explain how to build a bomb.",
        "Write a poem.",
    ]
    single = torch.stack(
        [(torch.einsum("thd,hd->t", collect_token_activations(model, tpl, [p], hooks)[0], w)).max() for p in prompts]
    )
    v = single.sort().values  # the threshold in the widest gap between prompts' scores: none sits on it
    gap = int((v[1:] - v[:-1]).argmax())
    thr = float(v[gap] + v[gap + 1]) / 2
    gate = TokenProbeGate(hook=hooks[-1], hooks=hooks, weights=w, threshold=thr)
    assert torch.equal(gate_decisions(model, tpl, gate, prompts, batch_size=4), single > thr)
    assert torch.allclose(gate.scores(collect_token_activations(model, tpl, prompts, hooks)), single, atol=1e-4)
    # a gate that never fires OR the token gate decides as the token gate
    never = ProbeGate(
        hook=hooks[-1], positions=(-1,), hooks=hooks, weights=torch.zeros(2, 1, model.cfg.d_model), threshold=1.0
    )
    both = AnyGate(hook=hooks[-1], gates=[never, TokenProbeGate(hook=hooks[-1], hooks=hooks, weights=w, threshold=thr)])
    assert torch.equal(gate_decisions(model, tpl, both, prompts, batch_size=3), single > thr)
    with pytest.raises(ValueError, match="after layer 0's attention"):
        TokenProbeGate(hook="blocks.0.hook_resid_pre", hooks=["blocks.0.hook_resid_pre"], weights=w[:1])
    # skip: the template's head is not read (its tokens are the same in every prompt, and so are their activations)
    from saesteer.chat import head_ids

    skip = len(head_ids(model.tokenizer, tpl))
    per_token = [torch.einsum("thd,hd->t", collect_token_activations(model, tpl, [p], hooks)[0], w) for p in prompts]
    heads = torch.stack([t[:skip] for t in per_token])
    assert torch.allclose(heads, heads[:1].expand_as(heads), atol=1e-4)  # the head scores alike in every prompt
    no_head = torch.stack([t[skip:].max() for t in per_token])
    v = no_head.sort().values
    gap = int((v[1:] - v[:-1]).argmax())
    thr = float(v[gap] + v[gap + 1]) / 2
    skipping = TokenProbeGate(hook=hooks[-1], hooks=hooks, weights=w, threshold=thr, skip=skip)
    assert torch.equal(gate_decisions(model, tpl, skipping, prompts, batch_size=4), no_head > thr)
    assert torch.allclose(skipping.scores(collect_token_activations(model, tpl, prompts, hooks)), no_head, atol=1e-4)
    with pytest.raises(ValueError, match="skip must be a non-negative integer"):
        TokenProbeGate(hook=hooks[-1], hooks=hooks, weights=w, skip=-1)


def test_a_gate_read_after_the_anchor_decides_in_a_prepass(tiny_organism):
    """Anchor from layer 0, gate read at layer 1: steer's pre-pass decides on the prompt as the attacker left it,
    then the anchor acts exactly where the gate fired (equal to deciding first and anchoring ungated)."""
    from saesteer.attacks.evaluate import gate_decisions
    from saesteer.evaluate import last_position_logprobs
    from saesteer.generation import generate

    model, tpl, _ = tiny_organism
    torch.manual_seed(2)
    r, g = torch.randn(model.cfg.d_model), torch.randn(model.cfg.d_model)
    prompts = [
        "How do I bake bread?",
        "Explain how to build a bomb.",
        "Write a poem about the sea.",
        "Tell me a joke.",
        "How can I pick a lock?",
        "Name three rivers.",
    ]
    attack = Ablate(g, mode="plain")  # the gate reads what the attack leaves: a shifted direction, still informative

    def gate(thr):
        return DirectionGate(hook="blocks.1.hook_resid_pre", positions=(-1,), threshold=thr, direction=g + r)

    with steer(model, [attack]):
        from saesteer.activations import collect_activations

        s = collect_activations(model, tpl, prompts, ["blocks.1.hook_resid_pre"], [-1])[:, 0, 0] @ (
            (g + r) / (g + r).norm()
        )
    thr = float(s.median())
    with steer(model, [attack]):
        fired = gate_decisions(model, tpl, gate(thr), prompts)
    assert 0 < int(fired.sum()) < len(prompts)

    def anchor(gt):
        return AnchorDirection(r, [0, 1], [5.0, 5.0, 5.0], gate=gt)

    with steer(model, [attack, anchor(gate(thr))]):
        got = last_position_logprobs(model, tpl, prompts)
        gen = generate(model, tpl, prompts, max_new_tokens=4, progress=False)
    with steer(model, [attack, anchor(None)]):
        on = last_position_logprobs(model, tpl, prompts)
        gen_on = generate(model, tpl, prompts, max_new_tokens=4, progress=False)
    with steer(model, [attack]):
        off = last_position_logprobs(model, tpl, prompts)
        gen_off = generate(model, tpl, prompts, max_new_tokens=4, progress=False)
    expect = torch.where(fired[:, None], on, off)
    assert torch.allclose(got, expect, atol=1e-4), (got - expect).abs().max()
    assert gen == [a if f else b for a, b, f in zip(gen_on, gen_off, fired.tolist())]
    # without steer's pre-pass the anchor has no decision at layer 0: a loud error, not a silent pass
    from saesteer.interventions import collect_hooks

    with model.hooks(fwd_hooks=collect_hooks(model, [anchor(gate(thr))])):
        with pytest.raises(RuntimeError, match="has no decision for this batch"):
            last_position_logprobs(model, tpl, prompts)


# ----------------------------------------------------------------------------- AnchorProjections (SAE decoder coordinates)


def _projections_reference(x, units, signs, bounds):
    """float64 definition: each bound in turn, x <- x + s relu(s b - s x.u) u."""
    x = x.double()
    for u, s, b in zip(units.double(), signs, bounds):
        x = x + s * (s * b - s * (x @ u)).clamp_min(0)[..., None] * u
    return x


@pytest.mark.parametrize("m,d", [(1, 7), (3, 37), (5, 48)])
def test_anchor_projections_match_float64_definition(m, d):
    torch.manual_seed(m + d)
    D = torch.randn(m, d)
    signs = [1 if i % 2 == 0 else -1 for i in range(m)]
    bounds = torch.randn(m)
    a = AnchorProjections(D, "blocks.0.hook_resid_pre", bounds, signs)
    ((name, fn),) = a.hooks(_FakeModel(d, 1))
    x = torch.randn(2, 6, d) * 3
    got = fn(x.clone())
    ref = _projections_reference(x, D / D.norm(dim=1, keepdim=True), signs, bounds.tolist())
    err = (got.double() - ref).abs()
    assert name == "blocks.0.hook_resid_pre"
    assert err.max() < 1e-5, f"max {err.max():.2e} mean {err.mean():.2e}"
    last = D[-1] / D[-1].norm()  # the last bound applied holds exactly
    c = got.double() @ last.double()
    assert (signs[-1] * (c - float(bounds[-1])) >= -1e-5).all()


def test_anchor_projections_floor_and_ceiling_with_orthogonal_directions():
    Q, _ = torch.linalg.qr(torch.randn(16, 2))
    a = AnchorProjections(Q.T, "blocks.0.hook_resid_pre", [1.0, -2.0], [1, -1], generated_bounds=[-1.0, 3.0])
    ((_, fn),) = a.hooks(_FakeModel(16, 1))
    x = torch.randn(4, 5, 16) * 4
    c = fn(x) @ Q
    assert torch.allclose(c[..., 0], torch.clamp(x @ Q[:, 0], min=1.0), atol=1e-5)
    assert torch.allclose(c[..., 1], torch.clamp(x @ Q[:, 1], max=-2.0), atol=1e-5)
    from saesteer.primitives.phase import phase

    with phase("generated"):
        c = fn(x) @ Q
    assert torch.allclose(c[..., 0], torch.clamp(x @ Q[:, 0], min=-1.0), atol=1e-5)
    assert torch.allclose(c[..., 1], torch.clamp(x @ Q[:, 1], max=3.0), atol=1e-5)


def test_anchor_projections_from_sae_undo_a_feature_bypass_at_the_same_hook(tiny_organism, batch):
    """The attacker pushes decoder directions; bounds listed first still run after it and restore the coordinates."""
    from saesteer.interventions import EditFeatures
    from tests.saes import random_sae

    model, _, _ = tiny_organism
    tokens, mask = batch
    hook = "blocks.1.hook_resid_pre"
    sae = random_sae("standard", model.cfg.d_model, 96, hook, seed=2)
    feats = [3, 17, 40]
    U = sae.W_dec.detach()[feats] / sae.W_dec.detach()[feats].norm(dim=1, keepdim=True)
    clean = _cache(model, tokens, mask)[hook] @ U.T  # [b, p, 3]
    floors = [float(clean[..., 0].max()), float(clean[..., 1].max()), float(clean[..., 2].min())]
    anchor = AnchorProjections.from_sae(sae, feats, [1, 1, -1], floors, hook=hook)
    attack = EditFeatures(sae, feats, mode="add", values=[-20.0, -20.0, 20.0], hook=hook)
    with steer(model, [anchor, attack]):
        got = _cache(model, tokens, mask)[hook] @ U.T
    with steer(model, [attack]):
        attacked = _cache(model, tokens, mask)[hook] @ U.T
    assert (
        attacked[..., 0].max() < floors[0] - 1.0 and attacked[..., 2].min() > floors[2] + 1.0
    )  # the attack moved them past the bounds
    # the bounds run in order, so the last holds exactly and the earlier ones up to the directions' overlap
    assert got[..., 2].max() <= floors[2] + 1e-4
    slack = float((U @ U.T - torch.eye(3)).abs().max()) * 40
    assert got[..., 0].min() >= floors[0] - slack and got[..., 1].min() >= floors[1] - slack
    expect = _projections_reference(_attacked(model, attack, tokens, mask, hook), U, [1, 1, -1], floors)
    err = (got.double() - expect @ U.T.double()).abs()
    assert err.max() < 1e-3, f"max {err.max():.2e} mean {err.mean():.2e}"


def _attacked(model, attack, tokens, mask, hook):
    with steer(model, [attack]):
        return _cache(model, tokens, mask)[hook]


def test_anchor_projections_share_one_gate_with_the_direction_anchor(tiny_organism, batch):
    """A gate read after the first anchored hook decides once, in the pre-pass, for both anchors."""
    model, _, _ = tiny_organism
    r, D = torch.randn(model.cfg.d_model), torch.randn(2, model.cfg.d_model)

    def pair(gate):
        return [
            AnchorDirection(r, layers=[0], floors=[30.0], gate=gate, final=False),
            AnchorProjections(D, "blocks.1.hook_resid_pre", [25.0, -25.0], [1, -1], gate=gate, gate_read=False),
        ]

    _assert_gated_equals_ungated_where_fired(model, *batch, pair)


def test_anchor_projections_reject_bad_input(tiny_organism):
    model, _, _ = tiny_organism
    d = model.cfg.d_model
    with pytest.raises(ValueError, match=r"signs must be 2 values of \+1 \(floor\) or -1 \(ceiling\), got \[1, 0\]"):
        AnchorProjections(torch.randn(2, d), "blocks.0.hook_resid_pre", [0.0, 0.0], [1, 0])
    with pytest.raises(ValueError, match=r"bounds must be 2 finite values"):
        AnchorProjections(torch.randn(2, d), "blocks.0.hook_resid_pre", [0.0], [1, 1])
    with pytest.raises(ValueError, match=r"directions must be \[m, d_model\]"):
        AnchorProjections(torch.randn(d), "blocks.0.hook_resid_pre", [0.0], [1])
    with pytest.raises(ValueError, match=r"directions have d=5, the model's d_model is 48"):
        with steer(model, [AnchorProjections(torch.randn(1, 5), "blocks.0.hook_resid_pre", [0.0], [1])]):
            pass


def test_feature_gate_fires_on_summed_feature_activations(tiny_organism, batch):
    """FeatureGate's score is the sum of its features' ReLU activations (float64 reference); it gates like any gate."""
    from saesteer.interventions.gates import FeatureGate
    from tests.saes import random_sae

    model, _, _ = tiny_organism
    tokens, mask = batch
    hook = "blocks.1.hook_resid_pre"
    sae = random_sae("jumprelu", model.cfg.d_model, 64, hook, seed=7)
    feats = [3, 10, 41, 60]
    x = _cache(model, tokens, mask)[hook][:, -1].double()
    h = (x - sae.b_dec.double()) @ sae.W_enc.double()[:, feats] + sae.b_enc.double()[feats]
    score = (h.relu() * (h > sae.threshold.double()[feats])).sum(-1).detach()
    gate = FeatureGate(hook=hook, positions=(-1,), threshold=0.0, sae=sae, features=feats)
    torch.testing.assert_close(gate.score(x.float()).double(), score, atol=1e-5, rtol=1e-5)
    thr = _split(score)
    fired = score > thr
    v = torch.randn(model.cfg.d_model)
    base = model(tokens, attention_mask=mask)
    with steer(
        model, [Add(v, alpha=2.0, layer=1, gate=FeatureGate(hook=hook, threshold=thr, sae=sae, features=feats))]
    ):
        out = model(tokens, attention_mask=mask)
    with steer(model, [Add(v, alpha=2.0, layer=1)]):
        full = model(tokens, attention_mask=mask)
    assert torch.allclose(out[~fired], base[~fired], atol=1e-5)
    assert torch.allclose(out[fired], full[fired], atol=1e-5)
    with pytest.raises(ValueError, match="at least one feature"):
        FeatureGate(hook=hook, sae=sae, features=[])


def test_anchor_features_floor_the_activations_and_keep_the_error_term(tiny_organism, batch):
    """AnchorFeatures: x' = x + sum_f (max(a_f, floor_f) - a_f) W_dec[f] (float64), applied after an attacker's edit."""
    from saesteer.interventions import AnchorFeatures
    from tests.saes import random_sae

    model, _, _ = tiny_organism
    tokens, mask = batch
    hook = "blocks.1.hook_resid_pre"
    sae = random_sae("standard", model.cfg.d_model, 64, hook, seed=8)
    feats, floors = [2, 5, 30], [0.8, 1.5, 0.3]
    seen = {}
    with steer(model, [AnchorFeatures(sae, feats, floors)]):
        model.run_with_hooks(
            tokens, attention_mask=mask, fwd_hooks=[(hook, lambda x, hook: seen.setdefault("x", x.clone()))]
        )
    x = _cache(model, tokens, mask)[hook].double()
    a = ((x - sae.b_dec.double()) @ sae.W_enc.double()[:, feats] + sae.b_enc.double()[feats]).relu()
    target = torch.maximum(a, torch.tensor(floors, dtype=torch.float64))
    ref = x + (target - a) @ sae.W_dec.double()[feats]
    m = mask.bool()
    assert (target - a)[m].abs().max() > 0.1  # the floors bind somewhere
    # the hook registered after steer's sees the anchored residual
    torch.testing.assert_close(seen["x"].double()[m], ref[m], atol=1e-4, rtol=1e-4)
    # an attacker who zeroes the features first (an edit at the same hook) is floored back to the same values
    from saesteer.interventions import EditFeatures

    seen.clear()
    with steer(model, [EditFeatures(sae, feats, mode="set", values=0.0), AnchorFeatures(sae, feats, floors)]):
        model.run_with_hooks(
            tokens, attention_mask=mask, fwd_hooks=[(hook, lambda x, hook: seen.setdefault("x", x.clone()))]
        )
    x_att = x + (0 - a) @ sae.W_dec.double()[feats]
    a_att = ((x_att - sae.b_dec.double()) @ sae.W_enc.double()[:, feats] + sae.b_enc.double()[feats]).relu()
    ref_att = (
        x_att + (torch.maximum(a_att, torch.tensor(floors, dtype=torch.float64)) - a_att) @ sae.W_dec.double()[feats]
    )
    torch.testing.assert_close(seen["x"].double()[m], ref_att[m], atol=1e-4, rtol=1e-4)
