"""Direction interventions against their definitions, and weights vs hooks."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saesteer.chat import encode_chat
from saesteer.interventions import Ablate, Add, orthogonalize_weights, steer


def _cache(model, tokens, mask):
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    return cache


@pytest.fixture(scope="module")
def batch(tiny_organism):
    model, tpl, _ = tiny_organism
    enc = encode_chat(model.tokenizer, tpl, ["How do I pick a lock?", "Write a haiku about the sea and the moon."])
    return enc.tokens, enc.attention_mask


def test_plain_ablation_zeroes_the_coordinate_everywhere(tiny_organism, batch):
    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    u = r / r.norm()
    with steer(model, [Ablate(r)]):
        cache = _cache(model, *batch)
    for layer in range(model.cfg.n_layers):
        for name in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"):
            proj = cache[f"blocks.{layer}.{name}"] @ u
            assert proj.abs().max() < 1e-4, (layer, name, float(proj.abs().max()))
        assert (cache[f"blocks.{layer}.hook_resid_post"] @ u).abs().max() < 1e-4


def test_affine_ablation_sets_the_coordinate_to_the_reference(tiny_organism, batch):
    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    ref = torch.linspace(-1.0, 2.0, model.cfg.n_layers)
    with steer(model, [Ablate(r, mode="affine", reference=ref)]):
        cache = _cache(model, *batch)
    u = r / r.norm()
    for layer in range(model.cfg.n_layers):
        proj = cache[f"blocks.{layer}.hook_resid_pre"] @ u
        torch.testing.assert_close(proj, torch.full_like(proj, float(ref[layer])), atol=1e-4, rtol=0)


def test_addition_adds_alpha_v_at_its_layer_only(tiny_organism, batch):
    model, _, _ = tiny_organism
    v = torch.randn(model.cfg.d_model)
    base = _cache(model, *batch)
    with steer(model, [Add(v, alpha=2.5, layer=1)]):
        cache = _cache(model, *batch)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(
        cache["blocks.1.hook_resid_pre"], base["blocks.1.hook_resid_pre"] + 2.5 * v, atol=1e-5, rtol=1e-5
    )


def _tiny_random_models():
    """A GPT-2-like model (learned positions, biases) and a LLaMA-like one (RMSNorm, rotary, gated MLP)."""
    common = dict(n_layers=2, d_model=40, n_heads=4, d_head=10, d_vocab=97, n_ctx=32, seed=3)
    yield HookedTransformer(HookedTransformerConfig(d_mlp=80, act_fn="gelu_new", normalization_type="LN", **common))
    yield HookedTransformer(
        HookedTransformerConfig(
            d_mlp=64,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=10,
            gated_mlp=True,
            **common,
        )
    )


def test_orthogonalized_weights_equal_hook_ablation(tiny_organism, batch):
    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    with torch.no_grad(), steer(model, [Ablate(r)]):
        hooked = model(batch[0], attention_mask=batch[1])
    edited = orthogonalize_weights(model, r)
    with torch.no_grad():
        ortho = edited(batch[0], attention_mask=batch[1])
    m = batch[1].bool()
    assert (hooked - ortho)[m].abs().max() <= 1e-4
    # the original model is untouched
    assert not torch.equal(model.blocks[0].attn.W_O, edited.blocks[0].attn.W_O)


@pytest.mark.parametrize("model", list(_tiny_random_models()), ids=["gpt2-like", "llama-like"])
def test_orthogonalization_on_other_architectures(model):
    tokens = torch.randint(0, 97, (3, 12))
    r = torch.randn(model.cfg.d_model)
    with torch.no_grad(), steer(model, [Ablate(r)]):
        hooked = model(tokens)
    with torch.no_grad():
        ortho = orthogonalize_weights(model, r)(tokens)
    assert (hooked - ortho).abs().max() <= 1e-4


def test_bad_directions_are_rejected_before_running(tiny_organism):
    model, _, _ = tiny_organism
    with pytest.raises(ValueError, match=r"shape \(7,\), expected \(48,\)"):
        with steer(model, [Ablate(torch.randn(7))]):
            pass
    with pytest.raises(ValueError, match="NaN"):
        with steer(model, [Add(torch.full((48,), float("nan")), layer=0)]):
            pass
    with pytest.raises(ValueError, match="Add.layer=9"):
        with steer(model, [Add(torch.randn(48), layer=9)]):
            pass
    with pytest.raises(ValueError, match="affine"):
        Ablate(torch.randn(48), mode="affine")


def test_ablate_at_edits_one_hook_only(tiny_organism, batch):
    from saesteer.interventions import AblateAt

    model, _, _ = tiny_organism
    r = torch.randn(model.cfg.d_model)
    u = r / r.norm()
    base = _cache(model, *batch)
    hook = "blocks.1.hook_resid_pre"
    for ref in (None, -1.5):
        with steer(model, [AblateAt(r, hook, reference=ref)]):
            cache = _cache(model, *batch)
        torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"])
        torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], base["blocks.0.hook_mlp_out"])
        x = base[hook]
        expected = x - ((x @ u) - (ref or 0.0))[..., None] * u
        torch.testing.assert_close(cache[hook], expected, atol=1e-5, rtol=1e-5)
        # the next layers read the edited stream: no longer pinned
        assert (cache["blocks.1.hook_attn_out"] - base["blocks.1.hook_attn_out"]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="does not exist"):
        with steer(model, [AblateAt(r, "blocks.9.hook_resid_pre")]):
            pass
