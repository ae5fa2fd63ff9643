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
    cfg = AnchorCalibration(quantile=0.3, layers=[1], final=True, gate_fpr=0.1)
    art = calibrate_anchor(model, tpl, r, 1, harmful, harmful_val, harmless, harmless_val, cfg)
    return model, tpl, art, r, harmful, harmless


def test_floors_are_the_quantile_of_harmful_projections(calibrated):
    model, tpl, art, r, harmful, _ = calibrated
    acts = collect_activations(model, tpl, harmful, ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"], [-1])[:, :, 0]
    proj = acts.double() @ (r / r.norm()).double()
    expect = torch.quantile(proj, 0.3, dim=0)
    assert torch.allclose(art.floors.double(), expect, atol=1e-4), (art.floors, expect)


def test_gate_is_orthogonal_to_the_refusal_direction_and_meets_its_fpr(calibrated):
    model, tpl, art, r, _, harmless = calibrated
    assert abs(float(art.gate_direction @ (r / r.norm()))) < 1e-5
    assert abs(float(art.gate_direction.norm()) - 1.0) < 1e-5
    assert art.gate_layer in (0, 1)
    thr_half = harmless[len(harmless) // 2 :]
    acts = collect_activations(model, tpl, thr_half, [art.gate_hook], art.gate_positions)[:, 0]
    assert art.gate_positions == [-4, -3, -2, -1]
    fpr = float(((acts @ art.gate_direction).mean(-1) > art.gate_threshold).float().mean())
    assert fpr <= 0.1 + 1e-6
    assert len(art.metadata["gate_auroc_val_by_layer"]) == 2


def test_artifact_round_trip(calibrated, tmp_path):
    _, _, art, _, _, _ = calibrated
    art.save(tmp_path / "anchor.safetensors")
    back = AnchorArtifact.load(tmp_path / "anchor.safetensors", d_model=art.direction.shape[0])
    assert torch.equal(back.floors, art.floors) and torch.equal(back.gate_direction, art.gate_direction)
    assert (back.layers, back.gate_layer, back.gate_threshold) == (art.layers, art.gate_layer, art.gate_threshold)
    with pytest.raises(ValueError, match="has d_model=48, the model has 64"):
        AnchorArtifact.load(tmp_path / "anchor.safetensors", d_model=64)


def test_calibration_rejects_bad_input(tiny_organism):
    model, tpl, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    with pytest.raises(ValueError, match="the harmful_refused prompt set is empty"):
        calibrate_anchor(model, tpl, r, 1, [], ["a"], ["b"], ["c"])
    with pytest.raises(ValueError, match=r"anchor.layers \[5\] out of range"):
        calibrate_anchor(model, tpl, r, 1, ["a"], ["a"], ["b"], ["c"], AnchorCalibration(layers=[5]))
    with pytest.raises(ValueError, match="anchor.quantile must be in"):
        AnchorCalibration(quantile=1.5)


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
        projs.append(torch.stack([cache[h][0, -len(ids):] @ u for h in hooks], 1))
    expect = torch.quantile(torch.cat(projs).double(), 0.3, dim=0)
    assert torch.allclose(art.generated_floors.double(), expect, atol=1e-3), (art.generated_floors, expect)


def test_anchor_uses_generated_floors_while_decoding(tiny_organism):
    from saesteer.generation import phase
    from saesteer.interventions import AnchorDirection

    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    u = r / r.norm()
    a = AnchorDirection(r, layers=[0], floors=[2.0], generated_floors=[-1.0], final=False)
    (_, fn), = a.hooks(model)
    x = torch.randn(2, 3, model.cfg.d_model) - 5 * u
    assert torch.allclose(fn(x) @ u, torch.full((2, 3), 2.0), atol=1e-4)
    with phase("generated"):
        assert torch.allclose(fn(x) @ u, torch.full((2, 3), -1.0), atol=1e-4)
