"""The jobs by name: ``saesteer JOB`` and the pipeline find each job's ``run`` here (imported when asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

JOBS: dict[str, str] = {
    "organism": "saesteer.jobs.organism",
    "behaviour": "saesteer.jobs.behaviour",
    "generate": "saesteer.jobs.generate",
    "directions": "saesteer.jobs.directions",
    "search": "saesteer.jobs.search",
    "train-sae": "saesteer.jobs.train_sae",
    "anchor": "saesteer.jobs.anchor",
    "pipeline": "saesteer.jobs.pipeline",
    "backups": "saesteer.jobs.backups",
    "emergent": "saesteer.jobs.emergent",
    "safety-tune": "saesteer.jobs.safety_tune",
    "judge-eval": "saesteer.jobs.judge_eval",
    "judge-train": "saesteer.jobs.judge_train",
}


def job_function(job: str) -> Callable:
    return importlib.import_module(JOBS[job]).run
