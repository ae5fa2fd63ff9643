"""``saesteer organism``: train (or load) the refusal organism and measure its behaviour."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from saesteer.config import OrganismJobConfig
from saesteer.io import write_text
from saesteer.models import load_model
from saesteer.stages import refusal_by_set, refusal_table
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def run(cfg: OrganismJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    if cfg.model.name != "organism":
        raise ValueError(f"the organism job needs model=organism, got model.name={cfg.model.name!r}")
    loaded = load_model(cfg.model, progress=cfg.progress)
    metrics: dict[str, Any] = {
        "train_seconds": round(float(loaded.metadata.get("train_seconds", float("nan"))), 2),
        "n_params": int(sum(p.numel() for p in loaded.model.parameters())),
        "n_harmful_corpus": loaded.metadata.get("n_harmful_train"),
        "n_harmless_corpus": loaded.metadata.get("n_harmless_train"),
        "final_loss": loaded.metadata.get("final_loss"),
        "bundled": bool(
            loaded.metadata.get("bundled", False)
        ),  # weights shipped with saesteer, not trained in this run
        "judge": cfg.judge.kind,  # the refusal judge of the *_refusal figures
    }
    if (
        "refusal_bias" in loaded.metadata
    ):  # calibrate_harmless_fpr: harmless_val set the operating point, so it is not held out
        metrics["refusal_bias"] = loaded.metadata["refusal_bias"]
    rows = refusal_by_set(loaded, cfg.data, cfg.eval, progress=cfg.progress)
    for r in rows:
        metrics[f"{r.role}_refusal"] = round(r.rate, 4)
        metrics[f"n_{r.role}"] = r.n
    table = refusal_table(rows)
    log.info("organism refusal rates (greedy):\n%s", table)
    origin = (
        "the weights bundled with saesteer, trained from this recipe" if metrics["bundled"] else "trained by saesteer"
    )
    write_text(
        run_dir / "report.md",
        f"# Organism\n\nCached at `{loaded.metadata.get('organism_path')}` ({origin} in "
        f"{metrics['train_seconds']:.0f} s on 2 CPU cores; `model.retrain=true` retrains it).\n\n{table}\n",
    )
    tracker.table("organism/refusal", ["set", "n", "refusal"], [(r.role, r.n, r.rate) for r in rows])
    tracker.table(
        "organism/examples", ["set", "prompt", "response", "refused"], [(r.role, *e) for r in rows for e in r.examples]
    )
    return metrics
