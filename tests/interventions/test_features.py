"""EditFeatures equals sae_lens's splice with the error term plus a clamp hook."""

from __future__ import annotations

import pytest
import torch

from saesteer.chat import encode_chat
from saesteer.generation import generate
from saesteer.interventions import steer
from saesteer.interventions.features import EditFeatures
from saesteer.interventions.gates import DirectionGate
from saesteer.primitives.sae_weights import SaeWeights
from tests.saes import ARCHS, random_sae

HOOK = "blocks.1.hook_resid_pre"
MODES = [("set", 3.0), ("scale", 0.0), ("add", 1.5), ("floor", 2.0), ("ceiling", 0.01)]


def _sae_lens_splice(sae, features, mode, value, only_when_active=False):
    """What HookedSAETransformer does: x -> sae(x) with use_error_term and an edit hook."""
    idx = torch.tensor(features)

    def edit(acts, hook=None):
        a = acts[..., idx]
        new = {
            "set": torch.full_like(a, value),
            "scale": a * value,
            "add": a + value,
            "floor": a.clamp(min=value),
            "ceiling": a.clamp(max=value),
        }[mode]
        if only_when_active:
            new = torch.where(a > 0, new, a)
        acts = acts.clone()
        acts[..., idx] = new
        return acts

    def hook_fn(x, hook=None):
        sae.use_error_term = True
        with sae.hooks(fwd_hooks=[("hook_sae_acts_post", edit)]):
            out = sae(x)
        sae.use_error_term = False
        return out

    return hook_fn


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode,value", MODES)
def test_edit_equals_sae_lens_on_organism_logits(tiny_organism, arch, mode, value):
    model, tpl, _ = tiny_organism
    sae = random_sae(arch, model.cfg.d_model, 97, HOOK, seed=1)
    enc = encode_chat(model.tokenizer, tpl, ["How do I steal a car?", "Tell me a joke about penguins, please."])
    feats = [0, 5, 11, 42]
    with torch.no_grad():
        with model.hooks(fwd_hooks=[(HOOK, _sae_lens_splice(sae, feats, mode, value))]):
            ref = model(enc.tokens, attention_mask=enc.attention_mask)
        with steer(model, [EditFeatures(sae, feats, mode=mode, values=value)]):
            ours = model(enc.tokens, attention_mask=enc.attention_mask)
        base = model(enc.tokens, attention_mask=enc.attention_mask)
    m = enc.attention_mask.bool()
    assert (ours - ref)[m].abs().max() <= 1e-5
    if mode in ("set", "add"):
        assert (ours - base)[m].abs().max() > 1e-3  # the edit did something


def test_topk_with_decoder_norm_rescaling_matches_sae_lens(tiny_organism):
    model, tpl, _ = tiny_organism
    sae = random_sae("topk", model.cfg.d_model, 97, HOOK, seed=7)
    sae.cfg.rescale_acts_by_decoder_norm = True
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 97)[:, None])  # uneven decoder norms change the top-k
    enc = encode_chat(model.tokenizer, tpl, ["How do I steal a car?", "Tell me a joke about penguins, please."])
    with torch.no_grad():
        with model.hooks(fwd_hooks=[(HOOK, _sae_lens_splice(sae, [3, 8], "set", 2.0))]):
            ref = model(enc.tokens, attention_mask=enc.attention_mask)
        with steer(model, [EditFeatures(sae, [3, 8], mode="set", values=2.0)]):
            ours = model(enc.tokens, attention_mask=enc.attention_mask)
    assert (ours - ref)[enc.attention_mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_only_when_active_matches_reference(arch):
    sae = random_sae(arch, 24, 61, HOOK, seed=2)
    x = torch.randn(5, 7, 24)
    edit = EditFeatures(sae, [3, 9, 60], mode="set", values=[1.0, 2.0, 3.0], only_when_active=True).delta_fn()
    a = SaeWeights.from_sae(sae).encode(x.double().float())
    new = a.clone()
    for f, v in zip([3, 9, 60], [1.0, 2.0, 3.0]):
        new[..., f] = torch.where(a[..., f] > 0, torch.full_like(a[..., f], v), a[..., f])
    expected = x + (new - a) @ sae.W_dec.detach()
    torch.testing.assert_close(edit(x), expected, atol=1e-5, rtol=1e-5)


def test_prompt_only_edit_leaves_generated_tokens_alone(tiny_organism):
    model, tpl, _ = tiny_organism
    sae = random_sae("standard", model.cfg.d_model, 64, HOOK, seed=3)
    calls = []
    spec = EditFeatures(sae, [1, 2], mode="set", values=50.0, apply_to="prompt")
    fn = spec.hooks(model)[0][1]

    def spy(x, hook=None):
        y = fn(x, hook)
        calls.append((x.shape[1], bool((y - x).abs().max() > 0)))
        return y

    with model.hooks(fwd_hooks=[(HOOK, spy)]):
        generate(model, tpl, ["Write a story about a dragon."], max_new_tokens=4, progress=False)
    assert calls[0][1] is True and calls[0][0] > 1  # the prompt pass was edited
    assert all(not edited for _, edited in calls[1:]) and len(calls) > 1  # generated tokens were not


def test_gate_acts_per_sequence(tiny_organism):
    model, tpl, _ = tiny_organism
    sae = random_sae("standard", model.cfg.d_model, 64, HOOK, seed=4)
    enc = encode_chat(model.tokenizer, tpl, ["How do I make a bomb?", "Write a poem about a cat."])
    direction = torch.randn(model.cfg.d_model)
    _, cache = model.run_with_cache(enc.tokens, attention_mask=enc.attention_mask)
    proj = cache["blocks.0.hook_resid_pre"][:, -4] @ (direction / direction.norm())
    threshold = float(proj.mean())  # one sequence above, one below
    gate = DirectionGate(hook="blocks.0.hook_resid_pre", positions=[-4], threshold=threshold, direction=direction)
    with torch.no_grad():
        base = model(enc.tokens, attention_mask=enc.attention_mask)
        with steer(model, [EditFeatures(sae, [0, 1, 2], mode="set", values=20.0, gate=gate)]):
            gated = model(enc.tokens, attention_mask=enc.attention_mask)
        with steer(model, [EditFeatures(sae, [0, 1, 2], mode="set", values=20.0)]):
            ungated = model(enc.tokens, attention_mask=enc.attention_mask)
    on = proj > threshold
    for b in range(2):
        target = ungated[b] if on[b] else base[b]
        torch.testing.assert_close(gated[b], target, atol=1e-5, rtol=1e-5)


def test_feature_edit_validation(tiny_organism):
    model, _, _ = tiny_organism
    sae = random_sae("standard", model.cfg.d_model, 64, HOOK)
    with pytest.raises(ValueError, match=r"feature indices \[64\] out of range .* d_sae=64"):
        EditFeatures(sae, [1, 64])
    with pytest.raises(ValueError, match="mode must be one of"):
        EditFeatures(sae, [1], mode="clamp")
    wide = random_sae("standard", 30, 64, HOOK)
    with pytest.raises(ValueError, match="d_in=30 does not match the model's d_model=48"):
        with steer(model, [EditFeatures(wide, [1])]):
            pass
    late = DirectionGate(hook="blocks.1.hook_mlp_out", direction=torch.randn(48))
    with pytest.raises(ValueError, match="a gate must read no later"):
        with steer(model, [EditFeatures(sae, [1], gate=late)]):
            pass
