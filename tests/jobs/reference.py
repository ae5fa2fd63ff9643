"""Per-prompt references for the jobs' refusal and ASR figures.

Each reference applies an edit rebuilt by hand from a job's saved artifacts, generates
greedily for one prompt at a time (no padding, no batching) and judges each answer, with
its prompt, by the jobs' default refusal judge (the ``judge`` group's default): a job's
figure must equal the share it gives.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

from saesteer.generation import generate
from saesteer.interventions import Intervention, steer
from saesteer.judge import judge_responses

Build = Callable[[], Sequence[Intervention]]


def job_judge():
    """The judge a job uses unless ``judge=`` says otherwise."""
    from saesteer.config import JudgeConfig

    return JudgeConfig().build()


def per_prompt_answers(model, template, prompts: Sequence[str], build: Build, max_new_tokens: int) -> list[str]:
    """Greedy answers, per prompt: ``build()``'s interventions (fresh ones per prompt: gates keep state) on the
    model, one prompt generated at a time."""
    assert prompts, "a reference needs prompts"
    out = []
    for p in prompts:
        with steer(model, list(build())):
            (answer,) = generate(model, template, [p], max_new_tokens=max_new_tokens, batch_size=1, progress=False)
        out.append(answer)
    return out


def judged(answers: Sequence[str], prompts: Sequence[str], judge=None) -> list[bool]:
    """Refused or not, per answer to its prompt, by ``judge`` (default: :func:`job_judge`)."""
    judge = judge or job_judge()
    return [judge_responses(judge, [a], [p])[0][0] for a, p in zip(answers, prompts)]


def outcomes(answers: Sequence[str], prompts: Sequence[str], judge=None) -> list[str]:
    """refusal / compliance / incoherent, per answer to its prompt, by ``judge`` (default: :func:`job_judge`)."""
    judge = judge or job_judge()
    return [judge_responses(judge, [a], [p])[1][0] for a, p in zip(answers, prompts)]


def per_prompt_refusals(
    model, template, prompts: Sequence[str], build: Build, max_new_tokens: int, judge=None
) -> list[bool]:
    """Refused or not, per prompt, by ``judge`` (default: :func:`job_judge`): :func:`per_prompt_answers`, judged."""
    return judged(per_prompt_answers(model, template, prompts, build, max_new_tokens), prompts, judge)


def per_prompt_successes(
    model, template, prompts: Sequence[str], build: Build, max_new_tokens: int, judge=None
) -> list[bool]:
    """An attack's success per prompt: the answer judged a coherent compliance (neither refused nor incoherent)."""
    judge = judge or job_judge()
    answers = per_prompt_answers(model, template, prompts, build, max_new_tokens)
    return [judge_responses(judge, [a], [p])[1][0] == "compliance" for a, p in zip(answers, prompts)]


def share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags)


def load_role(data_cfg, role: str) -> list[str]:
    """The instructions of a data role, limited as the data config says (the prompts a job reads)."""
    import importlib

    for module in ("saesteer.data", "saesteer.jobs.common"):  # load_role moved from the jobs to saesteer.data
        load = getattr(importlib.import_module(module), "load_role", None)
        if load is not None:
            return list(load(data_cfg, role).instructions)
    raise ImportError("no load_role in saesteer.data or saesteer.jobs.common")


def no_edit() -> list[Intervention]:
    return []


def ranking_csv(path: Path) -> tuple[list[int], list[int], dict[int, dict[str, str]]]:
    """(refusal ranking, signed ranking, row per feature) of a ``ranking.csv`` written by FeatureScores.write_csv."""
    with open(path, newline="") as fh:
        rows = {int(r["feature"]): r for r in csv.DictReader(fh)}

    def order(col: str) -> list[int]:
        ranked = [(int(r[col]), f) for f, r in rows.items() if r.get(col, "") != ""]
        ranks = sorted(r for r, _ in ranked)
        assert ranks == list(range(len(ranks))), f"{path}: {col} is not 0..n-1"
        return [f for _, f in sorted(ranked)]

    return order("rank"), order("signed_rank"), rows


def cached_sae(cfg, loaded, layer: int):
    """The SAE a job fitted at ``blocks.{layer}.hook_resid_pre``, from the session's cache (fails if the SAE stage
    would have to fit a new one)."""
    import dataclasses

    from saesteer.config import TrainSaeJobConfig
    from saesteer.io import cache_dir
    from saesteer.primitives.sae_weights import SaeWeights
    from saesteer.stages import sae_stage

    hook = f"blocks.{layer}.hook_resid_pre"
    tcfg = TrainSaeJobConfig(
        seed=cfg.seed,
        progress=False,
        model=cfg.model,
        data=cfg.data,
        eval=cfg.eval,
        logger=cfg.logger,
        sae=dataclasses.replace(cfg.sae, hook=hook),
    )
    before = sorted((cache_dir() / "sae").iterdir())
    sae = sae_stage(tcfg, loaded, None, layer)
    assert sorted((cache_dir() / "sae").iterdir()) == before, (
        "the SAE stage fitted a new SAE instead of reusing the job's"
    )
    assert SaeWeights.from_sae(sae).hook_name == hook
    return sae
