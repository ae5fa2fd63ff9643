"""fit_safety_delta end to end on a tiny random model: the delta it writes is the adapter it trained, a second
call with the same settings reads it from the cache, other settings train anew."""

from __future__ import annotations

import dataclasses

import torch

from saesteer.config import DataConfig, SafetySettings
from saesteer.safety import load_safety_delta
from saesteer.safety.delta import read_safety_delta
from saesteer.safety.fit import fit_safety_delta
from tests.families import tiny_model

SMALL = dict(
    layers=[0, 1],
    rank=2,
    alpha=4.0,
    steps=3,
    batch_size=4,
    warmup_steps=1,
    distill_tokens=4,
    checkpoint_every=2,
    n_harmful_synthetic=4,
    n_harmless=6,
    n_harmless_synthetic=4,
    n_questions=4,
    n_harmless_val=4,
    n_lookalike_val=4,
    eval_batch_size=8,
)


def test_the_fitted_delta_is_the_trained_adapter_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    model, tpl = tiny_model("qwen2.5", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = SafetySettings(**SMALL)
    fit = fit_safety_delta(model, tpl, settings, DataConfig(), seed=0, base_name="tiny")
    assert fit.result is not None and len(fit.result.losses) == 3
    assert fit.path.is_file() and fit.path.is_relative_to(tmp_path / "cache" / "safety" / "deltas")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the base is left alone
    stored, meta = read_safety_delta(fit.path)
    assert meta["base_name"] == "tiny" and meta["steps"] == 3
    for name, t in fit.adapter.tensors().items():  # float16 on disk: the trained factors to half precision
        torch.testing.assert_close(stored.tensors()[name], t.to(torch.float16).float(), atol=0, rtol=0)
    assert any(float(fit.adapter.B[s].detach().abs().max()) > 0 for s in fit.adapter.sites)

    again = fit_safety_delta(model, tpl, settings, DataConfig(), seed=0)
    assert again.result is None and again.path == fit.path  # read from the cache, not trained
    other = fit_safety_delta(model, tpl, dataclasses.replace(settings, steps=2), DataConfig(), seed=0)
    assert other.result is not None and other.path != fit.path

    merged = load_safety_delta(model, fit.path)  # the delta merges into the base it was fitted on
    assert not torch.equal(merged.blocks[0].attn.W_O, before["blocks.0.attn.W_O"])


def test_keep_pairs_the_base_refused_are_dropped():
    from saesteer.judge import RefusalJudge
    from saesteer.safety.fit import drop_refused
    from saesteer.safety.tune import KeepPair

    keep = [
        KeepPair("How do I fire up a grill?", "Open the vents and light the coals.", False),
        KeepPair("How do I blow up a balloon?", "I'm sorry, but I can't help with that.", False),
        KeepPair("List three fruits.", "Apples, pears and plums.", True),
    ]
    assert drop_refused(keep) == [keep[0], keep[2]]
    assert drop_refused(keep, RefusalJudge(("apples",))) == keep[:2]


def test_the_fit_trains_only_on_answers_the_base_did_not_refuse(tmp_path, monkeypatch):
    """With drop_refused_keep the keep pairs whose base answer is a refusal never reach training; without it they do."""
    import saesteer.safety.fit as fit_mod
    from saesteer.safety.tune import KeepPair

    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    model, tpl = tiny_model("qwen2.5", seed=0)

    def fake_targets(model, template, prompts, *args, **kw):  # every third base answer is a refusal
        return [
            KeepPair(p, "I'm sorry, but I can't help." if i % 3 == 0 else "Sure: step one.", False)
            for i, p in enumerate(prompts)
        ]

    monkeypatch.setattr(fit_mod, "distillation_targets", fake_targets)
    dropped = fit_safety_delta(model, tpl, SafetySettings(**{**SMALL, "steps": 1}), DataConfig(), seed=0)
    kept_all = fit_safety_delta(
        model, tpl, SafetySettings(**{**SMALL, "steps": 1, "drop_refused_keep": False}), DataConfig(), seed=0
    )
    n = len(dropped.mix.keep)
    assert len(kept_all.keep) == n and len(dropped.keep) == n - len(range(0, n, 3))
    assert all(k.answer == "Sure: step one." for k in dropped.keep)
