"""``saesteer judge-eval``: how well each refusal judge agrees with labelled responses.

Reads the labels (:func:`saesteer.judge.labels.load_labels`: a bundled set or a CSV / JSON-lines file), judges every
response with the configured judge (``judge.kind``) and each of ``judges``, and writes per judge its accuracy,
Cohen's kappa, confusion counts (refusal is the positive class), the share it flags incoherent, the accuracy per
source, and in the report the first disagreements.  Where the labels carry an ``incoherent`` flag, each judge's
incoherent outcome is scored against it: ``<judge>_incoherent_precision``, ``_recall`` and ``_accuracy`` (incoherent
the positive class, over the rows with a flag), in the report too.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from saesteer.config import JudgeConfig, JudgeEvalJobConfig
from saesteer.io import write_text
from saesteer.judge.labels import Agreement, agreement, load_labels
from saesteer.report import markdown_table
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def _key(source: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", source).strip("_") or "unnamed"


def run(cfg: JudgeEvalJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    rows = load_labels(cfg.labels)
    kinds = list(dict.fromkeys([cfg.judge.kind, *cfg.judges]))
    results: dict[str, Agreement] = {}
    for kind in kinds:
        judge = cfg.judge.build() if kind == cfg.judge.kind else JudgeConfig(kind=kind).build()
        results[kind] = agreement(judge, rows, cfg.n_examples)
        log.info(
            "%s judge: accuracy %.4f, kappa %.4f on %d labels",
            kind,
            results[kind].accuracy,
            results[kind].cohen_kappa,
            len(rows),
        )
    main = results[cfg.judge.kind]
    m: dict[str, Any] = {
        "labels": cfg.labels,
        "n_labels": len(rows),
        "n_refusal_labels": sum(r.label == "refusal" for r in rows),
        "judge": cfg.judge.kind,
        "accuracy": main.accuracy,
        "cohen_kappa": main.cohen_kappa,
    }
    for kind, a in results.items():
        m[f"{kind}_accuracy"] = a.accuracy
        m[f"{kind}_cohen_kappa"] = a.cohen_kappa
        m[f"{kind}_incoherent"] = a.incoherent
        for c, v in a.confusion.items():
            m[f"{kind}_{c}"] = v
        for source, acc in a.by_source.items():
            m[f"{kind}_accuracy_{_key(source)}"] = acc
        if a.incoherent_confusion:
            m[f"{kind}_incoherent_precision"] = a.incoherent_precision
            m[f"{kind}_incoherent_recall"] = a.incoherent_recall
            m[f"{kind}_incoherent_accuracy"] = a.incoherent_accuracy
            for c, v in a.incoherent_confusion.items():
                m[f"{kind}_incoherent_{c}"] = v
    flags = [r.incoherent for r in rows if r.incoherent is not None]
    if flags:
        m["n_incoherent_flags"] = len(flags)
        m["n_incoherent_labels"] = sum(flags)
    headers = ["judge", "accuracy", "Cohen's kappa", "refusal recall", "refusal precision", "incoherent"]
    table = [
        [
            k,
            a.accuracy,
            a.cohen_kappa,
            a.confusion["tp"] / max(a.confusion["tp"] + a.confusion["fn"], 1),
            a.confusion["tp"] / max(a.confusion["tp"] + a.confusion["fp"], 1),
            a.incoherent,
        ]
        for k, a in results.items()
    ]
    sources = sorted({s for a in results.values() for s in a.by_source})
    per_source = [[s, *(results[k].by_source.get(s, float("nan")) for k in results)] for s in sources]
    tracker.table("judge_eval/agreement", headers, table)
    lines = [
        "# Judge agreement",
        "",
        f"{len(rows)} labelled responses from `{cfg.labels}` ({m['n_refusal_labels']} refusals); refusal is the "
        "positive class.",
        "",
        markdown_table(headers, table, floatfmt=".4f"),
        "",
        "## By source",
        "",
        markdown_table(["source", *results], per_source, floatfmt=".3f"),
        "",
    ]
    scored = {k: a for k, a in results.items() if a.incoherent_confusion}
    if scored:
        inc_headers = ["judge", "precision", "recall", "accuracy", "tp", "fp", "fn", "tn"]
        inc_table = [
            [k, a.incoherent_precision, a.incoherent_recall, a.incoherent_accuracy]
            + [a.incoherent_confusion[c] for c in ("tp", "fp", "fn", "tn")]
            for k, a in scored.items()
        ]
        tracker.table("judge_eval/incoherence", inc_headers, inc_table)
        lines += [
            "## Incoherence",
            "",
            f"Each judge's incoherent outcome against the labels' flag ({m['n_incoherent_labels']} of "
            f"{m['n_incoherent_flags']} flagged incoherent); incoherent is the positive class.",
            "",
            markdown_table(inc_headers, inc_table, floatfmt=".4f"),
            "",
        ]
    for kind, a in results.items():
        if a.disagreements:
            lines += [
                f"## Disagreements of the {kind} judge (first {len(a.disagreements)})",
                "",
                markdown_table(
                    ["source", "label", "judged", "response"],
                    [(s, lab, j, " ".join(r.split())[:200].replace("|", "\\|")) for s, lab, j, r in a.disagreements],
                ),
                "",
            ]
    write_text(run_dir / "report.md", "\n".join(lines))
    return m
