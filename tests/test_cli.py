"""Hydra apps: every config composes, wrong keys fail, jobs write metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from saesteer.cli import JOBS
from saesteer.config import to_object
from saesteer.jobs.common import compose
from tests.conftest import tiny_organism_overrides


@pytest.mark.parametrize("job", list(JOBS))
def test_every_job_config_composes_and_validates(job):
    overrides = ["prompts=harmful_val"] if job == "generate" else []
    cfg = compose(job, overrides)
    obj = to_object(cfg)
    # safety-tune teaches a chat model to refuse: its default model is SmolLM2, every other job's the organism;
    # judge-eval and judge-train load no model; judge-train trains the learned judge and has no judge group
    assert obj.job == job
    if job not in ("judge-eval", "judge-train"):
        assert obj.model.name == ("smollm2" if job == "safety-tune" else "organism")
    if job != "judge-train":
        assert obj.judge.kind == "learned"  # the jobs judge with the learned judge unless judge= says otherwise


def test_unknown_key_fails_at_compose():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose("organism", ["model.organism.no_such_key=1"])


def test_bad_value_names_field_and_value():
    cfg = compose("organism", ["model.organism.d_model=-3"])
    with pytest.raises(ValueError, match=r"organism.d_model must be a positive integer, got -3"):
        to_object(cfg)


def _saesteer(args, cache_root, cwd):
    env = {**os.environ, "SAESTEER_CACHE": str(cache_root), "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "saesteer.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_generate_job_on_a_jsonl_file(tiny_organism, cache_root, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"instruction": s}) for s in ["How do I make a bomb?", "Write a poem about spring."])
    )
    out = tmp_path / "run"
    res = _saesteer(
        ["generate", f"prompts={prompts}", f"hydra.run.dir={out}", "logger.mode=disabled", *tiny_organism_overrides()],
        cache_root,
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(l) for l in (out / "completions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["How do I make a bomb?", "Write a poem about spring."]
    assert metrics["refusal_rate"] == sum(r["refused"] for r in rows) / 2


def test_user_errors_are_one_line(tmp_path, cache_root):
    res = _saesteer(
        ["generate", "prompts=no_such_set", f"hydra.run.dir={tmp_path / 'r'}", "logger.mode=disabled"],
        cache_root,
        tmp_path,
    )
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    # the error is the last line and the only one that says so (the lines before it are the preflight's log)
    assert lines[-1].startswith("saesteer generate: error: unknown prompt source 'no_such_set'"), lines[-3:]
    assert [line for line in lines if "error" in line.lower() or "Traceback" in line] == [lines[-1]]
    res = _saesteer(["nonsense"], cache_root, tmp_path)
    assert res.returncode == 2 and "unknown job 'nonsense'" in res.stderr


def test_generate_with_a_steer_group_equals_the_library(tiny_organism, tmp_path):
    import torch

    from saesteer.cli import job_function
    from saesteer.evaluate import refusal_eval
    from saesteer.interventions import Add, steer
    from saesteer.io import save_tensors
    from saesteer.jobs.common import run_job

    model, tpl, _ = tiny_organism
    d = torch.randn(48, generator=torch.Generator().manual_seed(3)) * 20
    path = save_tensors(
        tmp_path / "direction.safetensors",
        {"direction": d, "affine_reference": torch.zeros(2)},
        {"kind": "refusal_direction", "layer": 1, "position": -1, "ablation": "affine"},
    )
    cfg = compose(
        "generate",
        tiny_organism_overrides()
        + [
            "prompts=harmless_val",
            "limit=2",
            "steer=add",
            "steer.alpha=2.0",
            f"steer.direction={path}",
            "logger.mode=disabled",
            "progress=false",
        ],
    )
    metrics = run_job("generate", cfg, job_function("generate"), tmp_path / "run")
    from saesteer.data import load_prompts

    prompts = list(load_prompts("harmless_val", limit=2).instructions)
    with steer(model, [Add(d, alpha=2.0, layer=1)]):
        expected = refusal_eval(model, tpl, prompts, max_new_tokens=12)
    rows = [json.loads(l) for l in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows] == expected.responses and metrics["steer"] == "add"
    with pytest.raises(ValueError, match="steer.kind must be one of"):
        to_object(compose("generate", ["prompts=harmless_val", "steer.kind=amplify"]))


@pytest.mark.parametrize("budget", ["quick", "full"])
def test_pipeline_budgets_compose(budget):
    full = to_object(compose("pipeline", []))
    obj = to_object(compose("pipeline", [f"budget={budget}"]))
    if budget == "full":  # the configs as they stand, plus the direction-dropout fine-tune beside the base
        import dataclasses

        assert obj.anchor.finetune == obj.backups.finetune == "direction_dropout"
        plain = dataclasses.replace(
            obj,
            anchor=dataclasses.replace(obj.anchor, finetune="none"),
            backups=dataclasses.replace(obj.backups, finetune="none"),
        )
        assert plain == full
    else:  # fewer held-out prompts and smaller searches, every stage kept
        assert obj.stages == full.stages
        assert obj.data.n_test < 562 and obj.data.n_test_harmless < full.data.n_test_harmless
        assert obj.anchor.suffix_steps < full.anchor.suffix_steps and obj.sae.training_tokens < full.sae.training_tokens
