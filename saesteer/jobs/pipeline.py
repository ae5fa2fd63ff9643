"""``saesteer pipeline``: every stage in one run directory, reusing cached artifacts, one report.

Each stage runs its own job function into ``<run_dir>/<stage>/`` (with its own
``metrics.json`` and ``report.md``); the pipeline's ``report.md`` stitches the stage
reports together and its ``metrics.json`` holds every stage's figures prefixed by
the stage name.  Stage artifacts (organism, direction, SAE) are cached; with
``reuse=true`` (default) a stage whose inputs are unchanged (its config, the
prompt data, the model's weights and saesteer's code) is not re-evaluated either:
its run folder is copied from ``cache_dir()/pipeline/<key>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from saesteer.artifacts import artifact_path, cache_key
from saesteer.config import (
    AnchorJobConfig,
    BackupsJobConfig,
    BehaviourJobConfig,
    DirectionsJobConfig,
    EmergentJobConfig,
    OrganismJobConfig,
    PipelineJobConfig,
    SearchJobConfig,
    TrainSaeJobConfig,
)
from saesteer.io import write_json, write_text
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def stage_config(cfg: PipelineJobConfig, stage: str):
    """The job config of one pipeline stage: the pipeline's shared settings and the groups that stage reads."""
    common = dict(
        seed=cfg.seed,
        progress=cfg.progress,
        model=cfg.model,
        data=cfg.data,
        eval=cfg.eval,
        judge=cfg.judge,
        logger=cfg.logger,
    )
    if stage == "organism":
        return OrganismJobConfig(job="organism", **common)
    if stage == "behaviour":
        return BehaviourJobConfig(job="behaviour", **common)
    if stage == "directions":
        return DirectionsJobConfig(job="directions", directions=cfg.directions, **common)
    if stage == "train-sae":
        return TrainSaeJobConfig(job="train-sae", sae=cfg.sae, **common)
    if stage == "backups":
        return BackupsJobConfig(
            job="backups", sae=cfg.sae, directions=cfg.directions, search=cfg.search, backups=cfg.backups, **common
        )
    if stage == "emergent":
        return EmergentJobConfig(job="emergent", directions=cfg.directions, emergent=cfg.emergent, **common)
    if stage == "anchor":
        return AnchorJobConfig(
            job="anchor", sae=cfg.sae, directions=cfg.directions, search=cfg.search, anchor=cfg.anchor, **common
        )
    return SearchJobConfig(job="search", sae=cfg.sae, directions=cfg.directions, search=cfg.search, **common)


def _stage_fn(stage: str):
    from saesteer.jobs.registry import job_function

    return job_function(stage)


def code_version() -> str:
    """A hash of saesteer's own source and configs: cached stage results die with any code change."""
    import saesteer

    root = Path(saesteer.__file__).parent
    h = hashlib.sha256()
    files = sorted(p for pat in ("**/*.py", "**/*.yaml") for p in root.glob(pat))
    try:
        import saesteer.conf as conf
        import saesteer.kernels as kernels

        for pkg in (conf, kernels):
            files += sorted(Path(pkg.__file__).parent.glob("**/*.py")) + sorted(
                Path(pkg.__file__).parent.glob("**/*.yaml")
            )
    except ImportError:  # pragma: no cover
        pass
    for p in files:
        h.update(str(p.relative_to(p.parents[1])).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def reuse_key(stage: str, sc: Any) -> str:
    """The cache key of a pipeline stage's run folder: its job config (less progress and logger), the six
    prompt roles' data hashes and saesteer's code version."""
    from saesteer.data import load_role

    d = dataclasses.asdict(sc)
    for k in ("progress", "logger"):
        d.pop(k, None)
    roles = ("harmful_train", "harmless_train", "harmful_val", "harmless_val", "harmful_test", "harmless_test")
    data = {r: load_role(sc.data, r).data_hash for r in roles}
    return cache_key(stage, d, data, code_version())


def _reuse(key: str, sub: Path) -> dict[str, Any] | None:
    cached = artifact_path("pipeline", key)
    if not (cached / "metrics.json").is_file():
        return None
    shutil.copytree(cached, sub, dirs_exist_ok=True)
    return json.loads((cached / "metrics.json").read_text())


def _store(key: str, sub: Path) -> None:
    cached = artifact_path("pipeline", key)
    tmp = cached.with_name(f".{key}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(sub, tmp)
    shutil.rmtree(cached, ignore_errors=True)
    tmp.replace(cached)


def _budget_line(cfg: PipelineJobConfig) -> str:
    d, a = cfg.data, cfg.anchor
    return (
        f"Model `{cfg.model.name}`. Budget: harmful_test {d.n_test if d.n_test is not None else 'all'} prompts, "
        f"harmless_test {d.n_test_harmless if d.n_test_harmless is not None else 'all'}, SAE training tokens {cfg.sae.training_tokens:,}, "
        f"suffix searches of {a.suffix_steps} steps, gate fitted on {a.n_calibration_harmless:,} harmless + {a.gate_synthetic:,} synthetic "
        "prompts (`budget=quick` / `budget=full`, conf/budget/; standalone jobs use the full budget)."
    )


def run(cfg: PipelineJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    sections = []
    for i, stage in enumerate(cfg.stages):
        sub = run_dir / stage
        sub.mkdir(parents=True, exist_ok=True)
        log.info("pipeline stage %d/%d: %s", i + 1, len(cfg.stages), stage)
        t0 = time.perf_counter()
        sc = stage_config(cfg, stage)
        if stage == "train-sae" and "directions" in cfg.stages and sc.sae.hook is None:
            import dataclasses

            from saesteer.models import load_model
            from saesteer.stages import direction_stage

            art = direction_stage(load_model(cfg.model, progress=False), cfg.data, cfg.directions)
            sc = dataclasses.replace(sc, sae=dataclasses.replace(sc.sae, hook=f"blocks.{art.layer}.hook_resid_pre"))
        key = reuse_key(stage, sc) if cfg.reuse else None
        reused = _reuse(key, sub) if key else None
        if reused is not None:
            log.info("stage %s: inputs unchanged, reusing its results (pipeline cache %s)", stage, key)
            stage_metrics = {
                **reused,
                "reused": True,
                "computed_seconds": reused.get("stage_seconds"),
                "stage_seconds": round(time.perf_counter() - t0, 2),
            }
        else:
            stage_metrics = dict(_stage_fn(stage)(sc, sub, tracker))
            stage_metrics["stage_seconds"] = round(time.perf_counter() - t0, 2)
            write_json(sub / "metrics.json", stage_metrics)
            if key:
                _store(key, sub)
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
    write_text(
        run_dir / "report.md", "# saesteer pipeline\n\n" + _budget_line(cfg) + "\n\n" + "\n\n".join(sections) + "\n"
    )
    log.info("report: %s", run_dir / "report.md")
    return metrics
