"""``saesteer behaviour``: how often a model refuses, set by set, with example answers.

Greedy completions of every prompt set (harmful train / val / test, harmless val / test and the over-refusal set
of safe prompts that sound alarming), judged one by one; the pipeline's first stage for every model but the
organism (whose own stage trains or loads it first).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from saesteer.config import BehaviourJobConfig
from saesteer.io import write_text
from saesteer.models import load_model
from saesteer.report import markdown_table
from saesteer.stages import refusal_by_set, refusal_table
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def run(cfg: BehaviourJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    loaded = load_model(cfg.model, progress=cfg.progress)
    rows = refusal_by_set(loaded, cfg.data, cfg.eval, n_examples=cfg.n_examples, progress=cfg.progress)
    metrics: dict[str, Any] = {"model": loaded.name, "judge": cfg.judge.kind}
    for r in rows:
        metrics[f"{r.role}_refusal"] = round(r.rate, 4)
        metrics[f"{r.role}_incoherent"] = round(r.incoherent, 4)
        metrics[f"n_{r.role}"] = r.n
    table = refusal_table(rows)
    log.info("%s refusal rates (greedy):\n%s", loaded.name, table)
    examples = [(r.role, p, a, "refused" if f else "answered") for r in rows for p, a, f in r.examples]
    write_text(
        run_dir / "report.md",
        f"# Behaviour\n\nModel `{loaded.name}`, greedy completions of {cfg.eval.max_new_tokens} tokens, each judged "
        f"refused or not by the {cfg.judge.kind} judge (incoherent: broken text, flagged apart).\n\n{table}\n\n## Examples\n\n"
        + markdown_table(["set", "prompt", "answer", "judged"], [tuple(_cell(c) for c in e) for e in examples])
        + "\n",
    )
    tracker.table("behaviour/refusal", ["set", "n", "refusal"], [(r.role, r.n, r.rate) for r in rows])
    tracker.table("behaviour/examples", ["set", "prompt", "answer", "judged"], examples)
    return metrics


def _cell(text: str) -> str:
    """One Markdown table cell: no newlines or pipes, at most 160 characters."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= 160 else flat[:157] + "..."
