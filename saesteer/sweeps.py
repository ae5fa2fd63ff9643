"""Hydra multirun sweeps: one W&B group per sweep and a summary table when it ends.

Any job sweeps with Hydra's ``--multirun`` (``-m``): locally with the joblib launcher
(``hydra/launcher=joblib hydra.launcher.n_jobs=2``), on a Slurm cluster with the
submitit launcher (``hydra/launcher=submitit_slurm``, package
``hydra-submitit-launcher``) or on Ray (``hydra-ray-launcher``).  Every run of a
sweep logs to the W&B group ``<job>-<sweep folder>`` unless ``logger.group`` is
set; :class:`SweepSummary` (registered in ``conf/base.yaml``) collects each run's
``metrics.json`` and overrides into ``sweep_summary.csv`` / ``sweep_summary.md`` in
the sweep folder and, unless W&B is disabled, a W&B table in the same group.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from saesteer.io import atomic_path, write_text

log = logging.getLogger(__name__)


def sweep_group(job: str, sweep_dir: str | Path) -> str:
    return f"{job}-{Path(sweep_dir).name}"


def collect_sweep(sweep_dir: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): one row per finished run with its overrides and scalar metrics."""
    sweep_dir = Path(sweep_dir)
    rows: list[dict[str, Any]] = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        run = metrics_file.parent
        row: dict[str, Any] = {"run": run.name}
        overrides = run / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            for o in OmegaConf.to_container(OmegaConf.load(overrides)) or []:
                k, _, v = str(o).partition("=")
                if not k.startswith(("hydra.", "hydra/")):
                    row[k.lstrip("+~")] = v
        for k, v in json.loads(metrics_file.read_text()).items():
            if isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v)):
                row[k] = v
        rows.append(row)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return columns, rows


def write_summary(sweep_dir: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    sweep_dir = Path(sweep_dir)
    columns, rows = collect_sweep(sweep_dir)
    with atomic_path(sweep_dir / "sweep_summary.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    write_text(sweep_dir / "sweep_summary.md", f"# Sweep {sweep_dir}\n\n{len(rows)} runs\n\n" + "\n".join(lines) + "\n")
    return columns, rows


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, a summary of every run (CSV, markdown, W&B table)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        columns, rows = write_summary(sweep_dir)
        log.info("sweep summary of %d runs: %s", len(rows), sweep_dir / "sweep_summary.md")
        logger = config.get("logger")
        if logger is None or logger.get("mode") == "disabled" or not rows:
            return
        from saesteer.tracking import Tracker

        job = str(config.get("job", "sweep"))
        tracker = Tracker.start(
            f"{job}-sweep",
            {"sweep_dir": str(sweep_dir)},
            sweep_dir,
            project=logger.project,
            mode=logger.mode,
            entity=logger.get("entity"),
            group=logger.get("group") or sweep_group(job, sweep_dir),
        )
        try:
            tracker.table("sweep/summary", columns, [[r.get(c) for c in columns] for r in rows])
        finally:
            tracker.finish()
