"""What every job shares: compose, validate, seed, W&B, metrics.json, clean errors."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from saesteer.config import compose, register_configs, to_object
from saesteer.io import write_json
from saesteer.judge import default_judge, use_judge
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)

JobFn = Callable[[Any, Path, Tracker], Mapping[str, Any]]

#: errors that are the user's input, reported as one line without a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)


class PhaseTimes:
    """Wall-clock seconds of a job's phases, for metrics.json: ``with times("calibration"): ...`` adds to
    ``seconds_calibration``; a phase entered twice accumulates."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"seconds_{k}": round(v, 2) for k, v in self.seconds.items()}


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


def _hydra_files(run_dir: Path) -> tuple[tuple[str, ...], Optional[Path]]:
    """(names Hydra wrote into ``run_dir`` for this run, the job's log file) when Hydra runs this job there."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return (), None
    hc = HydraConfig.get()
    try:
        if Path(hc.runtime.output_dir).resolve() != run_dir.resolve():
            return (), None
        log_name = f"{hc.job.name}.log"
    except Exception:  # noqa: BLE001 - an incomplete Hydra config: not Hydra's run directory
        return (), None
    return (".hydra", log_name), run_dir / log_name


def run_job(job: str, cfg: DictConfig | Any, fn: JobFn, run_dir: Path) -> dict[str, Any]:
    """Validate ``cfg``, run ``fn`` with a tracker, write ``run_dir/metrics.json``.

    ``run_dir`` must be writable and hold no other run's results unless ``overwrite=true``
    (then they are removed once the preflight passed): see :mod:`saesteer.jobs.rundir`."""
    from saesteer.jobs import rundir

    obj = to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    run_dir = Path(run_dir)
    keep, log_file = _hydra_files(run_dir)
    log_offset = log_file.stat().st_size if log_file is not None and log_file.is_file() else 0  # an earlier run's lines
    overwrite = bool(getattr(obj, "overwrite", False))
    earlier = rundir.check_run_dir(run_dir, overwrite)  # a file, unwritable, or another run's results: before any work
    from saesteer.experiments import job_settings, preflight

    if hasattr(obj, "model"):
        preflight(
            obj, job
        )  # offline: names, template, hooks, widths, layers, positions, direction files; before any download
    if earlier:
        log.info("%s: overwrite=true, removing the earlier run's results in %s (%s)", job, run_dir, ", ".join(earlier))
        rundir.clear_run_dir(run_dir, keep, log_file, log_offset)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_marker(run_dir, job)
    seed_everything(obj.seed)
    flat = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else {}
    try:
        tracker = Tracker.start(
            job,
            flat,
            run_dir,
            project=obj.logger.project,
            mode=obj.logger.mode,
            entity=obj.logger.entity,
            group=obj.logger.group,
            tags=obj.logger.tags,
        )
        t0 = time.perf_counter()
        try:
            judge = obj.judge.build() if hasattr(obj, "judge") else default_judge()
            # each model loaded is checked against the layer and position settings; every evaluation uses the judge
            with job_settings(obj), use_judge(judge):
                metrics = _clean(fn(obj, run_dir, tracker))
            metrics.setdefault("job_seconds", round(time.perf_counter() - t0, 2))
            write_json(run_dir / "metrics.json", metrics)
            tracker.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        finally:
            tracker.finish()
    except BaseException:
        rundir.drop_marker_if_alone(run_dir, keep)  # a run that wrote nothing leaves nothing
        raise
    log.info("%s: metrics in %s", job, run_dir / "metrics.json")
    return metrics


def hydra_entry(job: str, fn: JobFn) -> Callable[[], Any]:
    """A ``@hydra.main`` app for ``job`` over the installed ``saesteer.conf`` tree."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()

    @hydra.main(config_path="pkg://saesteer.conf", config_name=job, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        from hydra.types import RunMode

        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        if hc.mode == RunMode.MULTIRUN and cfg.logger.group is None:  # a sweep's runs share one W&B group
            from saesteer.sweeps import sweep_group

            cfg.logger.group = sweep_group(job, hc.sweep.dir)
        try:
            return run_job(job, cfg, fn, run_dir)
        except USER_ERRORS as exc:
            if os.environ.get("SAESTEER_TRACEBACK"):
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SystemExit(f"saesteer {job}: error: {msg}") from None

    return _main


class ConfigError(ValueError):
    """Command-line overrides that do not compose: unknown key, option or a value of the wrong type."""


#: command-line arguments for Hydra itself, not for the job's config
_HYDRA_ARGS = ("hydra.", "+hydra.", "++hydra.", "~hydra.", "hydra/", "+hydra/", "++hydra/", "~hydra/")


def config_error_message(exc: BaseException, job: str) -> str:
    """One line for a Hydra / OmegaConf composition error: the bad key, option or value and what was expected."""
    import difflib
    import re

    from hydra.errors import MissingConfigException

    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, MissingConfigException):
        m = re.search(r"Could not find '([^']+)/([^'/]+)'", first)
        options = list(getattr(exc, "options", None) or [])
        if m and options:
            group, name = m.groups()
            close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
            hint = f"; did you mean {group}={close[0]}?" if close else ""
            return f"unknown {group} option {name!r} ({group}={name}){hint} (available: {', '.join(options)})"
        return first
    cause: Optional[BaseException] = exc
    while cause is not None:  # the OmegaConf error under Hydra's ConfigCompositionException names the key
        key = getattr(cause, "full_key", None)
        if key:
            kind = type(cause).__name__
            if kind in ("ConfigAttributeError", "ConfigKeyError"):
                parent, _, leaf = str(key).rpartition(".")
                names: list[str] = []
                try:
                    from omegaconf import DictConfig, OmegaConf

                    node = OmegaConf.select(compose(job), parent) if parent else compose(job)
                    names = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
                except Exception:  # noqa: BLE001 - the hint is optional
                    pass
                close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
                hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
                expected = f" (expected one of: {', '.join(names)})" if names else ""
                return f"unknown config key {str(key)!r}{hint}{expected}"
            msg = str(cause).strip().splitlines()[0]
            return f"bad value for {key}: {msg}"
        cause = cause.__cause__ or cause.__context__
    if first.startswith("Ambiguous value"):
        return f"{first} (a list: key=[a,b]; a string: key='a,b'; a sweep: add --multirun)"
    return first


def check_overrides(job: str, args: Sequence[str]) -> None:
    """Compose ``conf/<job>.yaml`` with command-line ``args``; a one-line ConfigError if they do not fit.

    Hydra reports such errors over several lines; ``saesteer`` checks first.  Arguments
    for Hydra itself (``hydra.*``, flags such as ``--multirun``) are left to Hydra."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from saesteer.config import unknown_keys

    if any(a.startswith("-") for a in args):
        return
    overrides = [a for a in args if not a.startswith(_HYDRA_ARGS)]
    try:
        cfg = compose(job, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(config_error_message(exc, job)) from None
    unknown = unknown_keys(cfg)
    if unknown:
        key, names = unknown[0]
        raise ConfigError(f"unknown config key {key!r} (expected one of: {', '.join(names)})")
