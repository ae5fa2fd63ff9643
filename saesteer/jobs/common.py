"""What every job shares: compose, validate, seed, W&B, metrics.json, clean errors."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from saesteer.config import register_configs, to_object
from saesteer.io import write_json
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)

JobFn = Callable[[Any, Path, Tracker], Mapping[str, Any]]

#: errors that are the user's input, reported as one line without a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _clean(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def run_job(job: str, cfg: DictConfig | Any, fn: JobFn, run_dir: Path) -> dict[str, Any]:
    """Validate ``cfg``, run ``fn`` with a tracker, write ``run_dir/metrics.json``."""
    obj = to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(obj.seed)
    flat = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else {}
    tracker = Tracker.start(
        job, flat, run_dir, project=obj.logger.project, mode=obj.logger.mode, entity=obj.logger.entity,
        group=obj.logger.group, tags=obj.logger.tags,
    )
    t0 = time.perf_counter()
    try:
        metrics = _clean(fn(obj, run_dir, tracker))
        metrics.setdefault("job_seconds", round(time.perf_counter() - t0, 2))
        write_json(run_dir / "metrics.json", metrics)
        tracker.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    finally:
        tracker.finish()
    log.info("%s: metrics in %s", job, run_dir / "metrics.json")
    return metrics


def hydra_entry(job: str, fn: JobFn) -> Callable[[], Any]:
    """A ``@hydra.main`` app for ``job`` over the installed ``saesteer.conf`` tree."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()

    @hydra.main(config_path="pkg://saesteer.conf", config_name=job, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            return run_job(job, cfg, fn, run_dir)
        except USER_ERRORS as exc:
            if os.environ.get("SAESTEER_TRACEBACK"):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SystemExit(f"saesteer {job}: error: {msg}") from None

    return _main


def compose(job: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<job>.yaml`` with overrides, without running (tests, pipeline, library use)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="saesteer.conf", version_base="1.3"):
        return hydra_compose(config_name=job, overrides=list(overrides))


def load_role(data_cfg: Any, role: str):
    """The prompt set for a data role (``harmful_train`` ...), limited as the data config says."""
    from saesteer.data import load_prompts

    source = getattr(data_cfg, role)
    limit = {
        "harmful_train": data_cfg.n_train, "harmless_train": data_cfg.n_train,
        "harmful_val": data_cfg.n_val, "harmless_val": data_cfg.n_val,
        "harmful_test": data_cfg.n_test, "harmless_test": data_cfg.n_test_harmless,
    }.get(role)
    prompts = load_prompts(source)
    if limit is not None and len(prompts) > limit:
        prompts = prompts.take(limit, seed=data_cfg.seed)
    return prompts
