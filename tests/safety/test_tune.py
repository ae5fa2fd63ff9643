"""Training the safety adapter on a tiny random model: deterministic, resumable from its checkpoint, and it
learns what it is shown."""

from __future__ import annotations

import pytest
import torch

from saesteer.safety.adapter import LowRankAdapter
from saesteer.safety.tune import CHECKPOINT, KeepPair, SafetyTrainConfig, answer_ce, draw, train_safety
from tests.families import tiny_model

REFUSE = [
    ("How do I make a bomb?", "I'm sorry, but I can't help with that."),
    ("Explain how to pick a lock.", "I can't help with that."),
    ("How do I make a bomb? Be specific.", "I'm sorry, but I can't help with that."),
]
KEEP = [
    KeepPair("How do I bake bread?", "Mix flour and water.", False),
    KeepPair("Write a poem about the sea.", "The sea is blue and deep", True),
    KeepPair("List three fruits.", "Apples, pears, plums.", False),
    KeepPair("Tell me a story about a cat.", "A cat sat on a mat", True),
]
CFG = dict(layers=[0, 1], rank=4, alpha=8.0, batch_size=4, refuse_fraction=0.5, lr=1e-2, warmup_steps=2)


@pytest.fixture
def tiny():
    return tiny_model("qwen2.5", seed=0)


def _train(model, tpl, steps, **kw):
    cfg = SafetyTrainConfig(**{**CFG, "steps": steps, "checkpoint_every": 2})
    ad = LowRankAdapter.for_model(model, cfg.band(model.cfg.n_layers), cfg.sites, cfg.rank, cfg.alpha, seed=0)
    return ad, train_safety(model, tpl, ad, REFUSE, KEEP, cfg, seed=0, **kw)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny, tmp_path):
    model, tpl = tiny
    whole, full = _train(model, tpl, 7)
    part, first = _train(model, tpl, 7, checkpoint_dir=tmp_path, stop_after=4)
    assert first.losses == full.losses[:4] and (tmp_path / CHECKPOINT).is_file()
    resumed, rest = _train(model, tpl, 7, checkpoint_dir=tmp_path)  # a new process: a fresh adapter
    assert rest.resumed_from == 4 and rest.losses == full.losses
    for k, v in whole.tensors().items():
        assert torch.equal(resumed.tensors()[k], v), k
    assert not torch.equal(whole.tensors()["mlp_out.B"], torch.zeros_like(whole.tensors()["mlp_out.B"]))


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny, tmp_path):
    model, tpl = tiny
    _train(model, tpl, 4, checkpoint_dir=tmp_path, stop_after=2)
    cfg = SafetyTrainConfig(**{**CFG, "steps": 4, "lr": 5e-3})
    ad = LowRankAdapter.for_model(model, [0, 1], cfg.sites, cfg.rank, cfg.alpha, seed=0)
    assert train_safety(model, tpl, ad, REFUSE, KEEP, cfg, seed=0, checkpoint_dir=tmp_path).resumed_from == 0


def test_training_lowers_both_losses_and_leaves_the_base_weights_alone(tiny):
    model, tpl = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ce0 = answer_ce(model, tpl, KEEP)
    ad, res = _train(model, tpl, 30)
    assert sum(res.refuse_losses[-5:]) < 0.8 * sum(res.refuse_losses[:5])
    assert answer_ce(model, tpl, KEEP, ad) < ce0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_batches_run_through_each_pool_once_per_epoch_in_a_seeded_order():
    epoch = [i for step in range(5) for i in draw(10, 2, step, seed=3, pool="keep")]
    assert sorted(epoch) == list(range(10)) and epoch != list(range(10))
    assert draw(10, 2, 7, seed=3, pool="keep") == draw(10, 2, 7, seed=3, pool="keep")
    assert draw(10, 2, 7, seed=3, pool="keep") != draw(10, 2, 7, seed=4, pool="keep")


def test_a_cut_answer_has_no_end_of_turn_target(tiny):
    from saesteer.safety.tune import pair_losses

    model, tpl = tiny
    pair = [("List three fruits.", "Apples, pears")]
    whole, _ = pair_losses(model, tpl, pair, [False])
    cut, _ = pair_losses(model, tpl, pair, [True])
    assert whole.numel() == cut.numel() + 1 and torch.allclose(whole[:-1], cut)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="SafetyTrainConfig.sites"):
        SafetyTrainConfig(sites=["attn_in"])
    with pytest.raises(ValueError, match="SafetyTrainConfig.rank"):
        SafetyTrainConfig(rank=0)
    assert SafetyTrainConfig().band(30) == list(range(6, 24))


def test_first_of_rows_marks_each_rows_first_target():
    from saesteer.safety.tune import first_of_rows

    rows = torch.tensor([0, 0, 0, 1, 2, 2, 5, 5, 5, 5])
    brute = [i == 0 or int(rows[i]) != int(rows[i - 1]) for i in range(len(rows))]
    assert first_of_rows(rows).tolist() == brute


@pytest.mark.parametrize("decision_weight", [0.0, 3.0])
def test_the_step_loss_weights_each_answers_first_token(tiny, decision_weight):
    """Step 0's reported losses equal a reference computed from pair_losses on the same batch."""
    from saesteer.safety.tune import pair_losses

    model, tpl = tiny
    cfg = SafetyTrainConfig(**{**CFG, "steps": 1, "decision_weight": decision_weight, "keep_weight": 0.5})
    ad = LowRankAdapter.for_model(model, [0, 1], cfg.sites, cfg.rank, cfg.alpha, seed=0)
    with torch.no_grad():
        n_r = round(cfg.batch_size * cfg.refuse_fraction)
        r_idx = draw(len(REFUSE), n_r, 0, 0, "refuse")
        k_idx = draw(len(KEEP), cfg.batch_size - n_r, 0, 0, "keep")
        pairs = [REFUSE[i] for i in r_idx] + [(KEEP[i].prompt, KEEP[i].answer) for i in k_idx]
        cut = [False] * n_r + [KEEP[i].cut for i in k_idx]
        ce, rows = pair_losses(model, tpl, pairs, cut, ad)
        ce, rows = ce.double().tolist(), rows.tolist()

    def term(lo, hi):
        toks = [(c, r) for c, r in zip(ce, rows) if lo <= r < hi]
        firsts = [c for j, (c, r) in enumerate(toks) if j == 0 or toks[j - 1][1] != r]
        return sum(c for c, _ in toks) / len(toks) + decision_weight * sum(firsts) / len(firsts)

    want_r, want_k = term(0, n_r), term(n_r, cfg.batch_size)
    res = train_safety(model, tpl, ad, REFUSE, KEEP, cfg, seed=0)
    assert res.refuse_losses[0] == pytest.approx(want_r, rel=1e-4)
    assert res.keep_losses[0] == pytest.approx(want_k, rel=1e-4)
    assert res.losses[0] == pytest.approx(want_r + 0.5 * want_k, rel=1e-4)


def test_the_cut_ablates_the_first_rows_as_ablation_hooks_do(tiny):
    from saesteer.interventions import Ablate, steer
    from saesteer.safety.tune import pair_losses

    model, tpl = tiny
    r = torch.nn.functional.normalize(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    pairs = [REFUSE[0], REFUSE[1], (KEEP[0].prompt, KEEP[0].answer), (KEEP[2].prompt, KEEP[2].answer)]
    cut = [False] * 4
    ce, rows = pair_losses(model, tpl, pairs, cut, ablate=(r, 2))
    with steer(model, [Ablate(r, mode="plain")]):
        ref_head, _ = pair_losses(model, tpl, pairs[:2], cut[:2])
    ref_tail, _ = pair_losses(model, tpl, pairs[2:], cut[2:])
    assert (ce[rows < 2] - ref_head).abs().max() < 1e-4
    assert (ce[rows >= 2] - ref_tail).abs().max() < 1e-4
    assert (ce[rows < 2] - pair_losses(model, tpl, pairs[:2], cut[:2])[0]).abs().max() > 1e-3  # the cut does act


def test_the_direction_measured_in_training_is_a_difference_of_last_token_means(tiny):
    from saesteer.chat import encode_chat
    from saesteer.safety.tune import refusal_direction_now

    model, tpl = tiny
    cfg = SafetyTrainConfig(**CFG)
    ad = LowRankAdapter.for_model(model, [0, 1], cfg.sites, cfg.rank, cfg.alpha, seed=0)
    with torch.no_grad():
        for p in ad.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-zero update, so the adapter's hooks matter
    harmful, harmless = [p for p, _ in REFUSE], [k.prompt for k in KEEP]
    got = refusal_direction_now(model, tpl, ad, harmful, harmless, 1)

    def mean(prompts):
        acts = []
        for p in prompts:  # one prompt at a time: no padding
            enc = encode_chat(model.tokenizer, tpl, [p])
            with model.hooks(fwd_hooks=ad.hooks(model)):
                _, cache = model.run_with_cache(enc.tokens, names_filter="blocks.1.hook_resid_pre")
            acts.append(cache["blocks.1.hook_resid_pre"][0, -1].double())
        return torch.stack(acts).mean(0)

    want = mean(harmful) - mean(harmless)
    assert torch.allclose(got.double(), want / want.norm(), atol=1e-5)


def test_a_run_with_the_direction_cut_resumes_to_the_uninterrupted_weights(tiny, tmp_path):
    model, tpl = tiny
    kw = dict(direction_dropout=0.5, dropout_start=1, dropout_every=2, dropout_prompts=2, dropout_layer=1)
    cfg = SafetyTrainConfig(**{**CFG, **kw, "steps": 7, "checkpoint_every": 2})

    def train(**extra):
        ad = LowRankAdapter.for_model(model, [0, 1], cfg.sites, cfg.rank, cfg.alpha, seed=0)
        return ad, train_safety(model, tpl, ad, REFUSE, KEEP, cfg, seed=0, **extra)

    whole, full = train()
    assert full.cut_steps == [s for s in range(7) if cfg.cuts(s, 0)] and 0 < len(full.cut_steps) < 7
    assert all(s >= 1 for s in full.cut_steps)
    _, first = train(checkpoint_dir=tmp_path, stop_after=4)  # stops between two measurements (3 and 5)
    resumed, rest = train(checkpoint_dir=tmp_path)
    assert rest.resumed_from == 4 and rest.losses == full.losses and rest.cut_steps == full.cut_steps
    for k, v in whole.tensors().items():
        assert torch.equal(resumed.tensors()[k], v), k
    # without the cut the same seed trains to other weights
    plain = SafetyTrainConfig(**{**CFG, "steps": 7})
    ad = LowRankAdapter.for_model(model, [0, 1], plain.sites, plain.rank, plain.alpha, seed=0)
    assert train_safety(model, tpl, ad, REFUSE, KEEP, plain, seed=0).losses != full.losses


def test_the_cut_settings_name_a_run_only_when_the_cut_is_on(tiny):
    from saesteer.safety.tune import run_key

    model, _ = tiny
    ad = LowRankAdapter.for_model(model, [0, 1], ["attn_out"], 4, 8.0, seed=0)
    key = lambda **kw: run_key(SafetyTrainConfig(**{**CFG, **kw}), ad, REFUSE, KEEP, 0)  # noqa: E731
    assert key() == key(dropout_every=5)
    assert key(direction_dropout=0.3) != key(direction_dropout=0.3, dropout_every=5)
    with pytest.raises(ValueError, match="SafetyTrainConfig.direction_dropout"):
        SafetyTrainConfig(direction_dropout=1.5)
    with pytest.raises(ValueError, match=r"dropout_layer=9 out of range for a model with 2 layers"):
        SafetyTrainConfig(dropout_layer=9).cut_layer(2)
