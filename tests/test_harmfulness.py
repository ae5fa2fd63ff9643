"""Harmfulness vs refusal on the tiny organism, against one unpadded float64 pass per prompt."""

from __future__ import annotations

import pytest
import torch

from saesteer.chat import encode_chat
from saesteer.data import load_prompts
from saesteer.harmfulness import (
    behavioural_refusal_directions,
    detector_auroc,
    fit_harm_detector,
    t_inst_position,
)

HARMFUL = list(load_prompts("harmful_train").instructions[:12])
HARMLESS = list(load_prompts("harmless_train").instructions[:12])


def _brute_force_acts(model, tpl, prompts, position):
    """[n, n_layers, d_model] float64 resid_pre at ``position``, one unpadded prompt at a time."""
    out = []
    for p in prompts:
        _, cache = model.run_with_cache(encode_chat(model.tokenizer, tpl, [p]).tokens)
        out.append(
            torch.stack(
                [cache[f"blocks.{layer}.hook_resid_pre"][0, position].double() for layer in range(model.cfg.n_layers)]
            )
        )
    return torch.stack(out)


def _last_instruction_token(model, tpl, prompt):
    """Negative offset of the instruction's last token in the formatted prompt, found by matching its tokens."""
    tokens = encode_chat(model.tokenizer, tpl, [prompt]).tokens[0].tolist()
    inst = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(tokens) - len(inst) + 1) if tokens[i : i + len(inst)] == inst]
    assert len(starts) == 1, (prompt, tokens, inst)
    return starts[0] + len(inst) - 1 - len(tokens)


def test_t_inst_is_the_last_instruction_token(tiny_organism):
    model, tpl, _ = tiny_organism
    for p in HARMFUL[:4] + HARMLESS[:4]:
        assert t_inst_position(model, tpl) == _last_instruction_token(model, tpl, p)


def test_detector_centroids_directions_and_scores_equal_brute_force(tiny_organism):
    model, tpl, _ = tiny_organism
    det, directions = fit_harm_detector(model, tpl, HARMFUL, HARMLESS, batch_size=5)
    pos = t_inst_position(model, tpl)
    hm, hl = _brute_force_acts(model, tpl, HARMFUL, pos), _brute_force_acts(model, tpl, HARMLESS, pos)
    torch.testing.assert_close(det.harmful_centroid.double(), hm.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(det.harmless_centroid.double(), hl.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(directions.double(), hm.mean(0) - hl.mean(0), atol=1e-4, rtol=1e-4)

    def cos(a, b):
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    held_out = list(load_prompts("harmful_val").instructions[:6])
    acts = _brute_force_acts(model, tpl, held_out, pos)
    expect = (cos(acts, hm.mean(0)[None]) - cos(acts, hl.mean(0)[None])).mean(-1)
    torch.testing.assert_close(det.score(model, tpl, held_out, batch_size=4).double(), expect, atol=1e-4, rtol=1e-4)

    # AUROC: the share of (harmful, harmless) pairs the detector orders right, ties counting one half
    neg_prompts = list(load_prompts("harmless_val").instructions[:6])
    s_pos, s_neg = det.score(model, tpl, held_out), det.score(model, tpl, neg_prompts)
    pairs = (s_pos[:, None] > s_neg[None]).double() + 0.5 * (s_pos[:, None] == s_neg[None]).double()
    assert detector_auroc(det, model, tpl, held_out, neg_prompts) == pytest.approx(float(pairs.mean()), abs=1e-9)


def test_behavioural_refusal_direction_is_refused_minus_complied_mean(tiny_organism):
    model, tpl, _ = tiny_organism
    prompts = HARMFUL[:6] + HARMLESS[:6]
    refused = [True] * 4 + [False] * 2 + [True] * 1 + [False] * 5  # any labelling: the function takes it as given
    got = behavioural_refusal_directions(model, tpl, prompts, refused, batch_size=5)
    acts = _brute_force_acts(model, tpl, prompts, -1)
    r = torch.tensor(refused)
    torch.testing.assert_close(got.double(), acts[r].mean(0) - acts[~r].mean(0), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="refused and complied"):
        behavioural_refusal_directions(model, tpl, prompts, [True] * len(prompts))
