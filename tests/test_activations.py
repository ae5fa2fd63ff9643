"""Activation collection: streamed means equal per-prompt activations; the disk cache reuses and checks."""

from __future__ import annotations

import torch

from saesteer.activations import ActivationCache, collect_activations, mean_activations, resid_hooks
from saesteer.data import load_prompts


def test_streamed_means_equal_mean_of_collected(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmless_val").instructions[:11])
    hooks = resid_hooks(model)
    per = collect_activations(model, tpl, prompts, hooks, [-4, -1], batch_size=3)
    assert per.shape == (11, model.cfg.n_layers, 2, model.cfg.d_model)
    means = mean_activations(model, tpl, prompts, hooks, [-4, -1], batch_size=5)
    torch.testing.assert_close(means, per.double().mean(0), atol=1e-6, rtol=1e-6)


def test_disk_cache_reuses_and_rejects_another_model(tiny_organism, tmp_path, monkeypatch):
    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmful_val").instructions[:6])
    cache = ActivationCache(tmp_path)
    first = cache.get_or_compute(model, tpl, prompts, ["blocks.1.hook_resid_pre"], [-1])
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    calls = []
    import saesteer.activations as acts

    monkeypatch.setattr(acts, "mean_activations", lambda *a, **k: calls.append(1) or torch.zeros(1))
    again = cache.get_or_compute(model, tpl, prompts, ["blocks.1.hook_resid_pre"], [-1])
    assert calls == [] and torch.equal(first, again)  # loaded, not recomputed
    # a file whose metadata names another model is not trusted
    meta = cache.key(model, ["blocks.1.hook_resid_pre"], [-1], prompts, "mean")
    from saesteer.io import save_tensors

    save_tensors(files[0], {"activations": torch.ones(3)}, {**meta, "model_fingerprint": "someone-else"}, sidecar=False)
    recomputed = cache.get_or_compute(model, tpl, prompts, ["blocks.1.hook_resid_pre"], [-1])
    assert calls == [1] and recomputed.shape == (1,)
