"""``saesteer safety-tune`` end to end on a tiny random model: figures before and after, the CE ratio recomputed
from the saved delta, the report, and a second run that reuses the cached base answers and checkpoint."""

from __future__ import annotations

import copy
import json

import pytest

from saesteer.config import compose, to_object
from saesteer.judge import RefusalJudge
from saesteer.models import LoadedModel
from saesteer.safety.data import build_mix
from saesteer.safety.delta import load_safety_delta
from saesteer.safety.tune import answer_ce, answers_with_cut
from saesteer.tracking import Tracker
from tests.families import tiny_model

OVERRIDES = [
    "safety.layers=[0,1]",
    "safety.rank=4",
    "safety.steps=4",
    "safety.batch_size=4",
    "safety.checkpoint_every=2",
    "safety.n_harmful_synthetic=8",
    "safety.n_harmless=8",
    "safety.n_harmless_synthetic=4",
    "safety.n_questions=4",
    "safety.n_harmless_val=6",
    "safety.n_lookalike_val=4",
    "safety.n_harmful_test=6",
    "safety.n_harmless_test=6",
    "safety.distill_tokens=4",
    "safety.eval_tokens=4",
    "progress=false",
]


@pytest.fixture
def job(monkeypatch, tmp_path):
    from saesteer.jobs import safety_tune

    monkeypatch.setenv("SAESTEER_CACHE", str(tmp_path / "cache"))
    model, tpl = tiny_model("qwen2.5", seed=0)
    monkeypatch.setattr(
        safety_tune, "load_model", lambda cfg, progress=True: LoadedModel(copy.deepcopy(model), tpl, "tiny", {})
    )
    return safety_tune, model, tpl


def test_the_job_reports_every_figure_before_and_after_from_the_saved_delta(job, tmp_path):
    safety_tune, model, tpl = job
    cfg = to_object(compose("safety-tune", OVERRIDES))
    m = safety_tune.run(cfg, tmp_path / "run", Tracker())
    for name in safety_tune.EVAL_SETS:
        assert 0.0 <= m[f"{name}_refusal_base"] <= 1.0 and 0.0 <= m[f"{name}_refusal"] <= 1.0
    assert (m["n_harmful_test"], m["n_harmless_test"], m["n_overrefusal"], m["n_lookalike_val"]) == (6, 6, 91, 4)
    assert m["steps"] == 4 and m["layers"] == [0, 1] and m["resumed_from"] == 0
    assert m["direction_dropout"] == 0.0 and m["n_cut_steps"] == 0

    # the figures again, from the delta file the job wrote merged into the base
    mix = build_mix(
        cfg.data, n_harmful_synthetic=8, n_harmless=8, n_harmless_synthetic=4, n_questions=4, n_harmless_val=6,
        n_lookalike_val=4, seed=0,
    )  # fmt: skip
    sets = safety_tune.eval_prompts(cfg, mix)  # the job's own mix: the same seed and sizes
    tuned = load_safety_delta(copy.deepcopy(model), tmp_path / "run" / safety_tune.DELTA_NAME)
    judge = RefusalJudge()
    for name in ("harmful_test", "overrefusal"):
        base = [p.answer for p in answers_with_cut(model, tpl, sets[name], 4)]
        after = [p.answer for p in answers_with_cut(tuned, tpl, sets[name], 4)]
        assert m[f"{name}_refusal_base"] == round(judge.refusal_rate(base), 4)
        assert m[f"{name}_refusal"] == round(judge.refusal_rate(after), 4)
    ref = answers_with_cut(model, tpl, sets["harmless_test"], 4)
    assert m["harmless_test_ce_base"] == pytest.approx(answer_ce(model, tpl, ref), abs=1e-4)
    assert m["harmless_test_ce"] == pytest.approx(answer_ce(tuned, tpl, ref), abs=1e-4)
    assert m["harmless_test_ce_ratio"] == pytest.approx(m["harmless_test_ce"] / m["harmless_test_ce_base"], abs=1e-3)

    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Example answers" in report and sets["harmful_test"][0][:40] in report
    header = json.loads((tmp_path / "run" / "safety_delta.json").read_text())
    assert header["base_name"] == "tiny" and header["adapter"]["rank"] == 4

    again = safety_tune.run(cfg, tmp_path / "run2", Tracker())  # same settings: the finished checkpoint is reused
    assert again["resumed_from"] == 4
    assert {k: v for k, v in again.items() if "seconds" not in k and k != "resumed_from"} == {
        k: v for k, v in m.items() if "seconds" not in k and k != "resumed_from"
    }


def test_the_job_trains_with_the_direction_cut(job, tmp_path):
    safety_tune, _, _ = job
    over = [
        "safety.direction_dropout=0.5",
        "safety.dropout_start=1",
        "safety.dropout_every=2",
        "safety.dropout_prompts=3",
    ]
    cfg = to_object(compose("safety-tune", OVERRIDES + over))
    m = safety_tune.run(cfg, tmp_path / "run", Tracker())
    assert m["direction_dropout"] == 0.5
    assert m["n_cut_steps"] == sum(cfg.safety.cuts(s, cfg.seed) for s in range(4))
