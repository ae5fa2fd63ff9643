"""``saesteer judge-train``: fit the learned judge's head (``judge=learned``) on labelled responses.

Reads the training rows (:func:`saesteer.judge.labels.load_labels`: by default the train split of the bundled human
labels), computes their features once (:func:`saesteer.judge.learned.features`), chooses the L2 penalty by
stratified cross-validation on those rows only, fits the head on all of them and writes ``learned.safetensors`` and
its sidecar ``learned.json`` into the run directory (``install=true``: also over the bundled head).  With
``test_labels`` it scores the head, and the ``judges`` beside it, on the held-out rows: accuracy, Cohen's kappa and
the disagreements in the report.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from saesteer.config import JudgeConfig, JudgeTrainJobConfig
from saesteer.io import write_text
from saesteer.judge import JudgeError
from saesteer.judge.labels import Agreement, agreement, load_labels
from saesteer.judge.learned import LearnedJudge, bundled_weights, features, labels_hash, save_head
from saesteer.judge.training import cross_validate, fit_head
from saesteer.report import markdown_table
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def _l2_key(l2: float) -> str:
    return f"{l2:g}".replace(".", "p").replace("-", "m")


def run(cfg: JudgeTrainJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    rows = load_labels(cfg.labels)
    test = load_labels(cfg.test_labels) if cfg.test_labels else []
    y = torch.tensor([r.label == "refusal" for r in rows])
    if bool(y.all()) or not bool(y.any()):
        raise JudgeError(f"labels={cfg.labels!r}: every row is a {rows[0].label}; training needs both classes")
    spec = cfg.features
    prompts, responses = [r.prompt for r in rows], [r.response for r in rows]
    t0 = time.perf_counter()
    x = features(spec, responses, prompts, cfg.batch_size)  # [n, d]
    t_features = time.perf_counter() - t0
    log.info("features of %d training rows: %d each, %.1f s", len(rows), x.shape[1], t_features)
    t0 = time.perf_counter()
    cv = cross_validate(x, y, cfg.l2, cfg.cv_folds, cfg.cv_repeats, cfg.seed)
    head = fit_head(x, y, cv.best)
    t_fit = time.perf_counter() - t0
    train_acc = float(((head.logits(x) >= 0) == y).double().mean())
    log.info(
        "l2=%g chosen: cross-validated accuracy %.4f, training accuracy %.4f", cv.best, cv.best_accuracy(), train_acc
    )
    m: dict[str, Any] = {
        "labels": cfg.labels,
        "labels_sha256": labels_hash(prompts, responses, y.tolist()),
        "n_train": len(rows),
        "n_train_refusal": int(y.sum()),
        "n_features": x.shape[1],
        "l2": cv.best,
        "cv_accuracy": cv.best_accuracy(),
        "cv_log_loss": cv.log_loss[cv.l2.index(cv.best)],
        "train_accuracy": train_acc,
        **{f"cv_accuracy_l2_{_l2_key(v)}": a for v, a in zip(cv.l2, cv.accuracy)},
    }
    meta = {
        "labels": cfg.labels,
        "labels_sha256": m["labels_sha256"],
        "n_labels": len(rows),
        "l2": cv.best,
        "cv": {
            "folds": cfg.cv_folds,
            "repeats": cfg.cv_repeats,
            "seed": cfg.seed,
            "l2": cv.l2,
            "accuracy": cv.accuracy,
        },
        "metrics": {"cv_accuracy": m["cv_accuracy"], "train_accuracy": train_acc},
    }
    results: dict[str, Agreement] = {}
    if test:
        weights = save_head(run_dir / "learned.safetensors", head, spec, meta)  # scored as judge=learned reads it
        results["learned"] = agreement(LearnedJudge(str(weights), cfg.batch_size), test, cfg.n_examples)
        for kind in cfg.judges:
            results[kind] = agreement(JudgeConfig(kind=kind).build(), test, cfg.n_examples)
        m.update({"test_labels": cfg.test_labels, "n_test": len(test)})
        m.update({"test_accuracy": results["learned"].accuracy, "test_cohen_kappa": results["learned"].cohen_kappa})
        for kind, a in results.items():
            m[f"test_{kind}_accuracy"], m[f"test_{kind}_cohen_kappa"] = a.accuracy, a.cohen_kappa
        meta["test_labels"] = cfg.test_labels
        meta["metrics"].update({"test_accuracy": m["test_accuracy"], "test_cohen_kappa": m["test_cohen_kappa"]})
        log.info("held-out accuracy %.4f (kappa %.4f) on %d rows", m["test_accuracy"], m["test_cohen_kappa"], len(test))
    weights = save_head(run_dir / "learned.safetensors", head, spec, meta)
    m.update({"feature_seconds": round(t_features, 2), "fit_seconds": round(t_fit, 2)})
    if cfg.install:
        target = bundled_weights()
        shutil.copyfile(weights, target)
        shutil.copyfile(weights.with_suffix(".json"), target.with_suffix(".json"))
        log.info("installed the head as the bundled one: %s", target)
        m["installed"] = str(target)
    tracker.table("judge_train/cv", ["l2", "cv accuracy", "cv log-loss"], list(zip(cv.l2, cv.accuracy, cv.log_loss)))
    write_text(run_dir / "report.md", _report(cfg, m, cv, results, spec.names(), head.weight.tolist()))
    return m


def _report(cfg, m, cv, results, names, weight) -> str:
    lines = [
        "# Learned judge training",
        "",
        f"{m['n_train']} training rows from `{cfg.labels}` ({m['n_train_refusal']} refusals), {m['n_features']} "
        f"features; L2 penalty chosen by {cfg.cv_folds}-fold cross-validation ({cfg.cv_repeats} repeats) on them: "
        f"**l2={m['l2']:g}**, cross-validated accuracy **{m['cv_accuracy']:.4f}**.",
        "",
        markdown_table(
            ["l2", "CV accuracy", "CV log-loss"], list(zip(cv.l2, cv.accuracy, cv.log_loss)), floatfmt=".4f"
        ),
        "",
    ]
    if results:
        lines += [
            f"## Held out: {m['n_test']} rows of `{cfg.test_labels}`",
            "",
            markdown_table(
                ["judge", "accuracy", "Cohen's kappa"],
                [(k, a.accuracy, a.cohen_kappa) for k, a in results.items()],
                floatfmt=".4f",
            ),
            "",
        ]
        wrong = results["learned"].disagreements
        if wrong:
            lines += [
                f"### Disagreements of the learned judge (first {len(wrong)})",
                "",
                markdown_table(
                    ["source", "label", "judged", "response"],
                    [(s, lab, j, " ".join(r.split())[:200].replace("|", "\\|")) for s, lab, j, r in wrong],
                ),
                "",
            ]
    top = sorted(zip(names, weight), key=lambda t: -abs(t[1]))[:15]
    lines += ["## Largest weights (standardised features)", "", markdown_table(["feature", "weight"], top), ""]
    return "\n".join(lines)
