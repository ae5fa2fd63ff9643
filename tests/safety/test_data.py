"""The safety fine-tune's mix: the roles and counts asked for, refusals from the list, and no held-out prompt
(test sets, validation sets) or near-copy of one among the training prompts."""

from __future__ import annotations

import pytest

from saesteer.config import DataConfig
from saesteer.data import load_prompts
from saesteer.organism.corpus import _words, near_duplicate
from saesteer.safety.data import REFUSALS, build_mix, held_out_prompts
from saesteer.safety.tune import SafetyTrainConfig

COUNTS = dict(n_harmful_synthetic=60, n_harmless=80, n_harmless_synthetic=40, n_questions=30, n_harmless_val=20)


@pytest.fixture(scope="module")
def mix():
    return build_mix(DataConfig(), n_lookalike_val=16, seed=0, **COUNTS)


def test_the_mix_has_each_role_and_the_counts_asked_for(mix):
    c = mix.counts()
    assert c["refuse"] == c["harmful_train"] + c["harmful_synthetic"]
    assert c["keep"] == c["harmless_train"] + c["harmless_synthetic"] + c["questions"]
    harmful_train = len(load_prompts("harmful_train"))
    assert 0.9 * harmful_train <= c["harmful_train"] < harmful_train  # near-copies of test prompts dropped
    assert 0.9 * 60 <= c["harmful_synthetic"] <= 60
    assert 0.9 * 80 <= c["harmless_train"] <= 80
    assert 0.9 * 40 <= c["harmless_synthetic"] <= 40 and 0.9 * 30 <= c["questions"] <= 30
    assert c["val_harmful_val"] == len(load_prompts("harmful_val"))
    assert (c["val_harmless_val"], c["val_lookalike_val"]) == (20, 16)
    assert {r for _, r in mix.refuse} <= set(REFUSALS) and len({r for _, r in mix.refuse}) > 3
    assert set(load_prompts("harmful_train").instructions) & {p for p, _ in mix.refuse}
    assert set(load_prompts("harmless_train").instructions) & set(mix.keep)


def test_no_training_prompt_is_held_out_or_a_near_copy_of_one(mix):
    train = [p for p, _ in mix.refuse] + list(mix.keep)
    assert len(set(train)) == len(train)
    held = held_out_prompts(DataConfig()) + [p for v in mix.val.values() for p in v]
    assert not set(train) & set(held)
    held_words = [_words(h) for h in held]
    for p in train:
        w = _words(p)
        assert not any(near_duplicate(w, h) for h in held_words), p


def test_the_mix_is_seeded(mix):
    assert build_mix(DataConfig(), n_lookalike_val=16, seed=0, **COUNTS) == mix
    other = build_mix(DataConfig(), n_lookalike_val=16, seed=1, **COUNTS)
    assert other.keep != mix.keep and other.val["lookalike_val"] != mix.val["lookalike_val"]


def test_the_job_settings_are_the_library_settings_plus_the_mix():
    from saesteer.config import SafetySettings, compose, to_object

    cfg = to_object(compose("safety-tune", ["safety.rank=8", "safety.n_questions=0"]))
    assert isinstance(cfg.safety, SafetySettings) and isinstance(cfg.safety, SafetyTrainConfig)
    assert (cfg.safety.rank, cfg.safety.n_questions, cfg.model.name) == (8, 0, "smollm2")
    with pytest.raises(Exception, match="safety.n_harmless"):
        to_object(compose("safety-tune", ["safety.n_harmless=0"]))


def test_the_lookalike_validation_set_does_not_depend_on_the_training_counts():
    small = build_mix(DataConfig(), n_lookalike_val=16, seed=0, **COUNTS)
    bigger = build_mix(
        DataConfig(), n_lookalike_val=16, seed=0, **{**COUNTS, "n_harmless_synthetic": 80, "n_questions": 40}
    )
    assert bigger.val == small.val
    assert not set(bigger.keep) & set(bigger.val["lookalike_val"])


def test_the_lexicons_pick_the_synthetic_requests_and_the_held_out_look_alikes():
    from saesteer.config import SafetySettings
    from saesteer.organism.synthetic import synthetic_prompts

    counts = {**COUNTS, "n_harmless_synthetic": 60}
    mix = build_mix(DataConfig(), n_lookalike_val=16, seed=0, lexicon="broad", val_lexicon="extended", **counts)
    broad = set(synthetic_prompts("harmless", 60, seed=0, lexicon="broad"))
    base = set(synthetic_prompts("harmless", 60, seed=0))
    kept = set(mix.keep)
    assert len(kept & broad) >= 0.9 * 60 and not (kept & base) - broad
    assert set(synthetic_prompts("harmful", 60, seed=0, lexicon="broad")) >= {p for p, _ in mix.refuse} - set(
        load_prompts("harmful_train").instructions
    )
    val = set(mix.val["lookalike_val"])
    assert set(synthetic_prompts("harmless", 8, seed=1000, lexicon="extended")) <= val
    assert not kept & val
    with pytest.raises(ValueError, match=r"safety.val_lexicon must be one of \['base', 'broad', 'extended'\], got 'x'"):
        SafetySettings(val_lexicon="x")
