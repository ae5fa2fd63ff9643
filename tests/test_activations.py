"""Activation collection: streamed means equal per-prompt activations; the disk cache reuses and checks."""

from __future__ import annotations

import torch

from saesteer.activations import ActivationCache, collect_activations, mean_activations, resid_hooks, stop_layer
from saesteer.data import load_prompts


def test_streamed_means_equal_mean_of_collected(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmless_val").instructions[:11])
    hooks = resid_hooks(model)
    per = collect_activations(model, tpl, prompts, hooks, [-4, -1], batch_size=3)
    assert per.shape == (11, model.cfg.n_layers, 2, model.cfg.d_model)
    means = mean_activations(model, tpl, prompts, hooks, [-4, -1], batch_size=5)
    torch.testing.assert_close(means, per.double().mean(0), atol=1e-6, rtol=1e-6)


def test_stop_layer_skips_only_what_no_hook_needs(tiny_organism):
    model, _, _ = tiny_organism
    n = model.cfg.n_layers
    assert stop_layer(model, ["blocks.0.hook_resid_pre"]) == 1
    assert stop_layer(model, ["hook_embed", f"blocks.{n - 1}.hook_resid_post"]) == n  # every block, no unembedding
    assert stop_layer(model, [f"blocks.{n - 1}.hook_resid_post", "ln_final.hook_normalized"]) is None
    assert stop_layer(model, ["hook_embed"]) is None


def test_collection_that_stops_early_equals_the_full_forward(tiny_organism):
    """Activations at the last block (read without the unembedding) and at ln_final equal a full run_with_cache."""
    from saesteer.chat import encode_chat

    model, tpl, _ = tiny_organism
    prompts = list(load_prompts("harmless_val").instructions[:5])
    n = model.cfg.n_layers
    hooks = [f"blocks.{n - 1}.hook_resid_post", f"blocks.{n - 1}.hook_resid_pre"]
    got = collect_activations(model, tpl, prompts, hooks, [-1], batch_size=5)
    both = collect_activations(model, tpl, prompts, hooks + ["ln_final.hook_normalized"], [-1], batch_size=5)
    for i, p in enumerate(prompts):
        enc = encode_chat(model.tokenizer, tpl, [p], pad_token_id=model.tokenizer.pad_token_id)
        _, cache = model.run_with_cache(enc.tokens)
        want = torch.stack([cache[h][0, -1] for h in hooks])
        torch.testing.assert_close(got[i, :, 0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(both[i, 2, 0], cache["ln_final.hook_normalized"][0, -1], atol=1e-5, rtol=1e-5)


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


def test_fingerprint_sees_an_edit_of_any_weight(tiny_organism):
    import copy

    from saesteer.activations import model_fingerprint

    model, _, _ = tiny_organism
    edited = copy.deepcopy(model)
    assert model_fingerprint(edited) == model_fingerprint(model)
    with torch.no_grad():
        edited.blocks[0].mlp.W_out[0, 0] += 1.0  # the first element is in every strided sample
    assert model_fingerprint(edited) != model_fingerprint(model)
