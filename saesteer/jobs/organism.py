"""``saesteer organism``: train (or load) the refusal organism and measure its behaviour."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from saesteer.config import OrganismJobConfig
from saesteer.data import load_prompts
from saesteer.evaluate import refusal_eval
from saesteer.io import write_text
from saesteer.models import load_model
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)

EVAL_SETS = ("harmful_train", "harmful_val", "harmful_test", "harmless_val", "harmless_test", "overrefusal")


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
    }
    if (
        "refusal_bias" in loaded.metadata
    ):  # calibrate_harmless_fpr: harmless_val set the operating point, so it is not held out
        metrics["refusal_bias"] = loaded.metadata["refusal_bias"]
    roles = {
        "harmful_train": cfg.data.harmful_train,
        "harmful_val": cfg.data.harmful_val,
        "harmful_test": cfg.data.harmful_test,
        "harmless_val": cfg.data.harmless_val,
        "harmless_test": cfg.data.harmless_test,
        "overrefusal": cfg.data.overrefusal,
    }
    rows = []
    examples = []
    for role in EVAL_SETS:
        prompts = load_prompts(roles[role])
        limit = cfg.data.n_test_harmless if role.startswith("harmless") else cfg.data.n_test
        if limit is not None and len(prompts) > limit:
            prompts = prompts.take(limit, seed=cfg.data.seed)
        res = refusal_eval(
            loaded.model,
            loaded.template,
            prompts.instructions,
            progress=cfg.progress,
            desc=role,
            **cfg.eval.refusal_kwargs(),
        )
        metrics[f"{role}_refusal"] = round(res.rate, 4)
        metrics[f"n_{role}"] = len(res)
        rows.append((role, len(res), res.rate))
        examples += [(role, p, r, f) for p, r, f in list(zip(prompts.instructions, res.responses, res.refused))[:5]]
    table = "| set | n | refusal |\n|---|---|---|\n" + "\n".join(f"| {r} | {n} | {rate:.3f} |" for r, n, rate in rows)
    log.info("organism refusal rates (greedy):\n%s", table)
    origin = (
        "the weights bundled with saesteer, trained from this recipe" if metrics["bundled"] else "trained by saesteer"
    )
    write_text(
        run_dir / "report.md",
        f"# Organism\n\nCached at `{loaded.metadata.get('organism_path')}` ({origin} in "
        f"{metrics['train_seconds']:.0f} s on 2 CPU cores; `model.retrain=true` retrains it).\n\n{table}\n",
    )
    tracker.table("organism/refusal", ["set", "n", "refusal"], rows)
    tracker.table("organism/examples", ["set", "prompt", "response", "refused"], examples)
    return metrics
