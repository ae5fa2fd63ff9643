"""``saesteer generate model=... prompts=FILE``: completions.jsonl and the refusal rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saesteer.config import GenerateJobConfig
from saesteer.data import load_prompts
from saesteer.evaluate import refusal_eval
from saesteer.interventions import steer
from saesteer.io import atomic_path
from saesteer.models import load_model
from saesteer.tracking import Tracker


def run(cfg: GenerateJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    prompts = load_prompts(cfg.prompts, column=cfg.column, limit=cfg.limit)  # fails before loading the model
    loaded = load_model(cfg.model, progress=cfg.progress)
    specs = []
    if cfg.steer.kind != "none":
        from saesteer.stages import direction_stage

        artifact = direction_stage(loaded, cfg.data, cfg.directions, path=cfg.steer.direction, progress=cfg.progress)
        specs = cfg.steer.build(artifact)
    with steer(loaded.model, specs):
        res = refusal_eval(
            loaded.model,
            loaded.template,
            prompts.instructions,
            progress=cfg.progress,
            desc="generate",
            **cfg.eval.refusal_kwargs(),
        )
    with atomic_path(run_dir / "completions.jsonl") as tmp:
        with open(tmp, "w") as fh:
            for p, r, f in zip(prompts.instructions, res.responses, res.refused):
                fh.write(json.dumps({"prompt": p, "response": r, "refused": f}) + "\n")
    tracker.table(
        "completions", ["prompt", "response", "refused"], list(zip(prompts.instructions, res.responses, res.refused))
    )
    return {"refusal_rate": round(res.rate, 4), "n_prompts": len(res), "model": loaded.name, "steer": cfg.steer.kind}
