"""Fit a safety delta end to end: the training mix, the base model's own answers, the adapter's training and the
float16 delta on disk.  What ``model=smollm2_safe model.retrain=true`` and ``saesteer safety-tune`` run.

The result is cached: the delta lives under ``cache_dir()/safety/deltas/<run key>`` and the training checkpoints
under ``cache_dir()/safety/runs/<run key>`` (an interrupted fit resumes), keyed by the training settings, the
adapter, the data and the seed (:func:`saesteer.safety.tune.run_key`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from transformer_lens import HookedTransformer

from saesteer.artifacts import artifact_dir
from saesteer.chat import ChatTemplate
from saesteer.judge import RefusalJudge
from saesteer.safety.adapter import LowRankAdapter
from saesteer.safety.data import SafetyMix, build_mix
from saesteer.safety.delta import model_key, save_safety_delta
from saesteer.safety.tune import KeepPair, TrainResult, distillation_targets, run_key, train_safety

log = logging.getLogger(__name__)

DELTA_NAME = "safety_delta.safetensors"


@dataclass
class SafetyFit:
    """A fitted safety delta: where it is, the adapter, the mix it learned from and its training record."""

    path: Path
    adapter: LowRankAdapter
    mix: SafetyMix
    keep: list[KeepPair]
    result: Optional[TrainResult]  # None when the delta came from the cache


def safety_mix(settings: Any, data_cfg: Any, seed: int = 0) -> SafetyMix:
    """The training mix and validation sets that ``settings`` (a ``saesteer.config.SafetySettings``) size."""
    return build_mix(
        data_cfg,
        n_harmful_synthetic=settings.n_harmful_synthetic,
        n_harmless=settings.n_harmless,
        n_harmless_synthetic=settings.n_harmless_synthetic,
        n_questions=settings.n_questions,
        n_harmless_val=settings.n_harmless_val,
        n_lookalike_val=settings.n_lookalike_val,
        seed=seed,
        lexicon=settings.lexicon,
        val_lexicon=settings.val_lexicon,
    )


def drop_refused(keep: list[KeepPair], judge: Optional[RefusalJudge] = None) -> list[KeepPair]:
    """``keep`` without the pairs whose base answer ``judge`` (default: the substring judge) calls a refusal:
    distilling those would teach the model to refuse harmless requests."""
    judge = RefusalJudge() if judge is None else judge
    kept = [k for k in keep if not judge(k.answer)]
    log.info("keep pairs: %d of %d (the base refused the rest)", len(kept), len(keep))
    return kept


def fit_safety_delta(
    model: HookedTransformer,
    template: ChatTemplate,
    settings: Any,
    data_cfg: Any,
    *,
    seed: int = 0,
    base_name: str = "",
    base_file_sha256: Optional[str] = None,
    out: Optional[Path] = None,
    progress: bool = False,
) -> SafetyFit:
    """Teach the base ``model`` to refuse: a low-rank adapter trained as ``settings`` (a
    ``saesteer.config.SafetySettings``) says on the mix it sizes from ``data_cfg``'s prompt sources, saved as a
    float16 delta at ``out`` (default: the cache).  ``model`` itself is left unchanged (merge the delta with
    :func:`saesteer.safety.load_safety_delta`)."""
    mix = safety_mix(settings, data_cfg, seed)
    keep = distillation_targets(
        model,
        template,
        mix.keep,
        settings.distill_tokens,
        model_key(model),
        batch_size=settings.eval_batch_size,
        progress=progress,
        desc="base answers (train)",
    )
    if settings.drop_refused_keep:
        keep = drop_refused(keep)
    layers = settings.band(model.cfg.n_layers)
    adapter = LowRankAdapter.for_model(model, layers, settings.sites, settings.rank, settings.alpha, seed=seed)
    key = run_key(settings, adapter, mix.refuse, keep, seed)
    cached = artifact_dir("safety") / "deltas" / key / DELTA_NAME
    if out is None and cached.is_file():
        from saesteer.safety.delta import read_safety_delta

        log.info("safety delta of this run from the cache: %s", cached)
        return SafetyFit(cached, read_safety_delta(cached)[0], mix, keep, None)
    result = train_safety(
        model,
        template,
        adapter,
        mix.refuse,
        keep,
        settings,
        seed=seed,
        checkpoint_dir=artifact_dir("safety") / "runs" / key,
        progress=progress,
    )
    path = save_safety_delta(
        cached if out is None else Path(out),
        adapter,
        model,
        base_name=base_name,
        base_file_sha256=base_file_sha256,
        metadata={"seed": seed, "steps": settings.steps, "mix": mix.counts()},
    )
    return SafetyFit(path, adapter, mix, keep, result)
