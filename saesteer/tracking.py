"""W&B logging, offline by default: every job run is a W&B run.

``Tracker`` is a thin wrapper so library code never imports wandb at module
import time and tests run with ``logger.mode=disabled`` (no account, no files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, run: Any = None) -> None:
        self.run = run

    @classmethod
    def start(
        cls,
        job: str,
        config: Mapping[str, Any],
        run_dir: Path,
        project: str = "saesteer",
        mode: str = "offline",
        entity: Optional[str] = None,
        group: Optional[str] = None,
        tags: Sequence[str] = (),
    ) -> Tracker:
        mode = os.environ.get("WANDB_MODE", mode) if mode != "disabled" else "disabled"
        if mode == "disabled":
            return cls(None)
        import wandb

        run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            job_type=job,
            tags=list(tags),
            config=dict(config),
            dir=str(run_dir),
            mode=mode,
            name=f"{job}-{run_dir.name}",
            reinit="finish_previous",
        )
        return cls(run)

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, data: Mapping[str, Any], step: Optional[int] = None) -> None:
        if self.run is not None:
            self.run.log(dict(data), step=step)

    def summary(self, data: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(data))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def image(self, key: str, path: Path) -> None:
        if self.run is not None and Path(path).is_file():
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
