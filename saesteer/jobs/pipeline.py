"""``saesteer pipeline``: every stage in one run directory, reusing cached artifacts, one report.

Each stage runs its own job function into ``<run_dir>/<stage>/`` (with its own
``metrics.json`` and ``report.md``); the pipeline's ``report.md`` stitches the stage
reports together and its ``metrics.json`` holds every stage's figures prefixed by
the stage name.  Stage artifacts (organism, direction, SAE) are cached, so a warm
run only re-evaluates.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from saesteer.config import DirectionsJobConfig, OrganismJobConfig, PipelineJobConfig, SearchJobConfig, TrainSaeJobConfig
from saesteer.io import write_json, write_text
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def _stage_cfg(cfg: PipelineJobConfig, stage: str):
    common = dict(seed=cfg.seed, progress=cfg.progress, model=cfg.model, data=cfg.data, eval=cfg.eval, logger=cfg.logger)
    if stage == "organism":
        return OrganismJobConfig(job="organism", **common)
    if stage == "directions":
        return DirectionsJobConfig(job="directions", directions=cfg.directions, **common)
    if stage == "train-sae":
        return TrainSaeJobConfig(job="train-sae", sae=cfg.sae, **common)
    return SearchJobConfig(job="search", sae=cfg.sae, directions=cfg.directions, search=cfg.search, **common)


def _stage_fn(stage: str):
    from saesteer.cli import job_function

    return job_function(stage)


def run(cfg: PipelineJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    sections = []
    for i, stage in enumerate(cfg.stages):
        sub = run_dir / stage
        sub.mkdir(parents=True, exist_ok=True)
        log.info("pipeline stage %d/%d: %s", i + 1, len(cfg.stages), stage)
        t0 = time.perf_counter()
        sc = _stage_cfg(cfg, stage)
        if stage == "train-sae" and "directions" in cfg.stages and sc.sae.hook is None:
            import dataclasses

            from saesteer.models import load_model
            from saesteer.stages import direction_stage

            art = direction_stage(load_model(cfg.model, progress=False), cfg.data, cfg.directions)
            sc = dataclasses.replace(sc, sae=dataclasses.replace(sc.sae, hook=f"blocks.{art.layer}.hook_resid_pre"))
        stage_metrics = dict(_stage_fn(stage)(sc, sub, tracker))
        stage_metrics["stage_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(sub / "metrics.json", stage_metrics)
        prefix = stage.replace("-", "_")
        metrics.update({f"{prefix}/{k}": v for k, v in stage_metrics.items()})
        tracker.log({f"{prefix}/{k}": v for k, v in stage_metrics.items() if isinstance(v, (int, float))})
        report = sub / "report.md"
        if report.is_file():
            text = report.read_text()
            # demote headings and point images into the stage folder
            text = re.sub(r"^(#+)", r"#\1", text, flags=re.M)
            text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", rf"![\1]({stage}/\2)", text)
            sections.append(text)
        log.info("stage %s done in %.1fs", stage, stage_metrics["stage_seconds"])
    write_text(run_dir / "report.md", "# saesteer pipeline\n\n" + "\n\n".join(sections) + "\n")
    log.info("report: %s", run_dir / "report.md")
    return metrics
