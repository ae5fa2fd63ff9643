#!/usr/bin/env python
"""Render docs/results.md and the README's results table from run directories.

Usage: python scripts/results.py RUN_DIR [RUN_DIR ...] [--out docs/results.md] [--readme README.md]

A RUN_DIR is what a saesteer job wrote: ``metrics.json`` (a pipeline run's keys are
prefixed by their stage, ``organism/harmful_test_refusal``; a single job's are not) and
Hydra's ``.hydra/overrides.yaml`` and ``.hydra/config.yaml``, from which the command line
is rebuilt (``saesteer pipeline budget=quick``).  A copy of a run kept in the repository
(docs/runs/quick/) holds ``metrics.json``, ``overrides.yaml`` and ``run.json`` (the run's
marker: job, start time, and optionally where it ran) instead.

The date of a run is, in this order: the start time in ``run.json`` or in the marker every
job writes (``.saesteer-run.json``), a timestamp in the run directory's path
(``runs/pipeline/2026-12-06_21-41-00``), the modification time of its ``metrics.json``.

docs/results.md gets every table (organism refusal, directions, SAE, feature search,
anchor against attacks with their costs, backups, emergent misalignment), each under the
command and date that produced it; the README's table between ``<!-- results:start -->``
and ``<!-- results:end -->`` is rewritten from the same metrics (the first run that holds
each figure).  Both files are written atomically.

Refusal rates are the run's judge's (``judge`` in its metrics; a run that names none: the substring judge).  Where a
run's judge is not the substring judge and its directions stage also holds the substring judge's figures
(``<name>_substring``), those stand beside the run's own in the directions table and, in the side-by-side table, in
brackets after the figures Arditi et al. 2024 measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from saesteer.report.search import curve_points, curve_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"
#: stages of a pipeline run, in its order; the key prefix of each in a pipeline's metrics.json
STAGES = ("safety_tune", "organism", "behaviour", "directions", "train_sae", "search", "anchor", "backups", "emergent")
STAGE_JOB = {"train_sae": "train-sae"}
DEFENCES = ("undefended", "anchored", "cast", "addition", "finetuned", "finetuned_anchored")
DEFENCE_LABELS = {"cast": "CAST", "finetuned": "fine-tuned", "finetuned_anchored": "fine-tuned + anchor"}
MARKERS = ("run.json", ".saesteer-run.json")
_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[_T ](\d{2})[-:](\d{2})[-:](\d{2})")


class ResultsError(ValueError):
    """A run directory that cannot be read (no metrics.json, unreadable files), or a README without markers."""


@dataclass
class Run:
    path: Path
    job: str
    overrides: list[str]
    date: str
    stages: dict[str, dict[str, Any]]  # stage -> its metrics, unprefixed
    source: Optional[str] = None  # where it ran, from run.json ("scripts/run.sh on a fresh clone")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return " ".join(["saesteer", self.job, *(shlex.quote(o) for o in self.overrides)])

    def stage_command(self, stage: str) -> str:
        """The command of a stage's figures: the pipeline's own, or the job's."""
        return self.command

    @property
    def model(self) -> str:
        """The model the run used: its ``model=`` override (the organism when there is none)."""
        for o in reversed(self.overrides):
            k, _, v = o.partition("=")
            if k.lstrip("+~") == "model":
                return v
        for m in self.stages.values():
            if isinstance(m.get("model"), str):
                return m["model"]
        return "organism"

    @property
    def judge(self) -> str:
        """The refusal judge of the run's figures: the ``judge`` its metrics name, else its ``judge=`` override,
        else the substring judge."""
        for m in self.stages.values():
            if isinstance(m.get("judge"), str):
                return m["judge"]
        for o in reversed(self.overrides):
            k, _, v = o.partition("=")
            if k.lstrip("+~") == "judge":
                return v
        return "substring"

    @property
    def budget(self) -> Optional[str]:
        for o in reversed(self.overrides):
            k, _, v = o.partition("=")
            if k.lstrip("+~") == "budget":
                return v
        return None


# ----------------------------------------------------------------------------- reading run directories


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        import yaml
    except ImportError:  # without PyYAML: the two shapes read here, a list of strings and top-level "key: value" lines
        return _simple_yaml(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ResultsError(f"{path}: not valid YAML ({exc})") from None


def _simple_yaml(text: str) -> Any:
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if lines and all(l.startswith("- ") for l in lines):
        return [l[2:].strip().strip("'\"") for l in lines]
    return {
        k.strip(): v.strip().strip("'\"")
        for k, sep, v in (l.partition(":") for l in lines if not l.startswith((" ", "-")))
        if sep
    }


def _marker(path: Path) -> dict[str, Any]:
    for name in MARKERS:
        p = path / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError) as exc:
                raise ResultsError(f"{p}: not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ResultsError(f"{p}: expected a JSON object, got {type(data).__name__}")
            return data
    return {}


def _overrides(path: Path) -> list[str]:
    for p in (path / ".hydra" / "overrides.yaml", path / "overrides.yaml"):
        if p.is_file():
            data = _read_yaml(p) or []
            if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
                raise ResultsError(f"{p}: expected a YAML list of override strings, got {data!r}")
            return list(data)
    return []


def _job(path: Path, metrics: dict[str, Any], marker: dict[str, Any]) -> str:
    cfg = path / ".hydra" / "config.yaml"
    if cfg.is_file():
        data = _read_yaml(cfg)
        if isinstance(data, dict) and isinstance(data.get("job"), str):
            return data["job"]
    if isinstance(marker.get("job"), str):
        return marker["job"]
    if any("/" in k for k in metrics):
        return "pipeline"
    raise ResultsError(
        f"{path}: cannot tell which job wrote it (no .hydra/config.yaml, no run.json or .saesteer-run.json, "
        "and its metrics.json keys carry no stage prefix)"
    )


def _date(path: Path, marker: dict[str, Any]) -> str:
    for key in ("date", "started"):
        v = marker.get(key)
        if isinstance(v, str) and re.match(r"\d{4}-\d{2}-\d{2}", v):
            return v[:10]
    stamps = list(_STAMP.finditer(str(path.resolve())))
    if stamps:
        return stamps[-1].group(1)
    return _dt.date.fromtimestamp((path / "metrics.json").stat().st_mtime).isoformat()


def load_run(path: str | os.PathLike) -> Run:
    """A run directory's metrics, command line and date; ResultsError naming the path when it has no metrics.json."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path}: no such run directory")
    mfile = path / "metrics.json"
    if not mfile.is_file():
        raise ResultsError(f"{path}: no metrics.json (not a finished saesteer run directory)")
    try:
        metrics = json.loads(mfile.read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{mfile}: not valid JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise ResultsError(f"{mfile}: expected a JSON object of metrics, got {type(metrics).__name__}")
    marker = _marker(path)
    job = _job(path, metrics, marker)
    stages: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}  # a pipeline's own keys (job_seconds)
    if job == "pipeline":
        for key, value in metrics.items():
            stage, sep, name = key.partition("/")
            if sep:
                stages.setdefault(stage, {})[name] = value
            else:
                extra[key] = value
    else:
        stages[job.replace("-", "_")] = dict(metrics)
    source = marker.get("source") if isinstance(marker.get("source"), str) else None
    return Run(path, job, _overrides(path), _date(path, marker), stages, source, extra)


# ----------------------------------------------------------------------------- formatting


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v != 0 and abs(v) < 10**-digits:
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x, digits) for x in v)
    return str(v).replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _sentence(parts: Sequence[str]) -> str:
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def _has(m: dict[str, Any], *keys: str) -> bool:
    return all(k in m for k in keys)


def _rows(m: dict[str, Any], spec: Sequence[tuple]) -> list[list[Any]]:
    """Rows of (label, key or None, ...) whose keys are all present in m; None cells are left empty."""
    out = []
    for label, *keys in spec:
        present = [k for k in keys if k is not None]
        if present and not any(k in m for k in present):
            continue
        out.append([label] + [("" if k is None else m.get(k)) for k in keys])
    return out


def _substring_beside(m: dict[str, Any]) -> bool:
    """Whether a stage's figures are another judge's and it also holds the substring judge's (``<name>_substring``)."""
    return m.get("judge", "substring") != "substring" and any(k.endswith("_substring") for k in m)


def _substring_key(m: dict[str, Any], key: str) -> Optional[str]:
    """The substring judge's figure of ``key`` in ``m``, if the stage holds one (None: an empty cell)."""
    return f"{key}_substring" if f"{key}_substring" in m else None


def _incoherent_key(m: dict[str, Any], key: str) -> Optional[str]:
    """The incoherent share beside the refusal figure ``key`` (``<name>_refusal`` -> ``<name>_incoherent``), if the
    stage holds one (None: an empty cell)."""
    inc = key.removesuffix("_refusal") + "_incoherent"
    return inc if inc in m else None


def _with_incoherent(m: dict[str, Any], spec: list[tuple], header: list[str]) -> tuple[list[tuple], list[str]]:
    """``spec`` and ``header`` with an incoherent column after the refusal one, where the stage records the share of
    broken answers (``<name>_incoherent``); as they are for a run from before it did."""
    if not any(k.endswith("_incoherent") for k in m):
        return spec, header
    spec = [(label, key, _incoherent_key(m, key), *rest) for label, key, *rest in spec]
    return spec, header[:2] + ["incoherent"] + header[2:]


# ----------------------------------------------------------------------------- one table per stage


ORGANISM_SETS = ("harmful_train", "harmful_val", "harmful_test", "harmless_val", "harmless_test", "overrefusal")


def organism_section(m: dict[str, Any]) -> str:
    rows = [[s, m.get(f"n_{s}"), m[f"{s}_refusal"]] for s in ORGANISM_SETS if f"{s}_refusal" in m]
    text = [table(["set", "n", "refusal"], rows)]
    facts = []
    if "n_params" in m:
        facts.append(f"{m['n_params']:,} parameters")
    if "train_seconds" in m:
        how = "bundled weights, trained" if m.get("bundled") else "trained in this run"
        facts.append(f"{how} in {fmt(m['train_seconds'], 0)} s")
    if facts:
        text.append("Organism: " + ", ".join(facts) + ".")
    return "\n\n".join(text)


def behaviour_section(m: dict[str, Any]) -> str:
    sets = [s for s in ORGANISM_SETS if f"{s}_refusal" in m]
    if any(f"{s}_incoherent" in m for s in sets):
        return table(
            ["set", "n", "refusal", "incoherent"],
            [[s, m.get(f"n_{s}"), m[f"{s}_refusal"], m.get(f"{s}_incoherent")] for s in sets],
        )
    return table(["set", "n", "refusal"], [[s, m.get(f"n_{s}"), m[f"{s}_refusal"]] for s in sets])


SAFETY_SETS = ("harmful_val", "harmless_val", "lookalike_val", "harmful_test", "harmless_test", "overrefusal")


def safety_section(m: dict[str, Any]) -> str:
    rows = [
        [s, m.get(f"n_{s}"), m.get(f"{s}_refusal_base"), m[f"{s}_refusal"]] for s in SAFETY_SETS if f"{s}_refusal" in m
    ]
    text = [table(["set", "n", "refusal, base", "refusal, safety-tuned"], rows)]
    ce = [
        [s, m[f"{s}_ce_base"], m[f"{s}_ce"], m[f"{s}_ce_ratio"]]
        for s in ("harmless_val", "harmless_test")
        if _has(m, f"{s}_ce_base", f"{s}_ce", f"{s}_ce_ratio")
    ]
    if ce:
        text.append(
            "Cross-entropy of the base model's own greedy answers to harmless prompts:\n\n"
            + table(["set", "base", "safety-tuned", "ratio"], ce)
        )
    facts = [f"{k.replace('_', ' ')} {fmt(m[k], 0)}" for k in ("steps", "train_seconds", "delta_bytes") if k in m]
    if facts:
        text.append("Training: " + ", ".join(facts) + ".")
    return "\n\n".join(text)


def directions_section(m: dict[str, Any]) -> str:
    head = []
    if _has(m, "selected_layer", "selected_position"):
        how = f" by {m['selected_ablation']} ablation" if "selected_ablation" in m else ""
        fb = "; selection fell back" if m.get("selection_fallback") else "; every filter of the paper passed"
        head.append(f"Selected: layer {m['selected_layer']}, position {m['selected_position']}{how}{fb}.")
    alpha = m.get("addition_prompt_only_best_alpha")
    spec = [
        ("baseline", "baseline_harmful_refusal", None, None),
        ("baseline, harmless_test", "baseline_harmless_refusal", None, "ce_harmless_baseline"),
        (
            "plain ablation (every layer)",
            "ablation_harmful_refusal",
            "ablation_kl_harmless",
            "ce_harmless_ablation",
        ),
        (
            "affine ablation (every layer)",
            "affine_ablation_harmful_refusal",
            "affine_ablation_kl_harmless",
            "ce_harmless_affine_ablation",
        ),
        (
            "norm-matched random direction ablated",
            "random_ablation_harmful_refusal",
            "random_ablation_kl_harmless",
            "ce_harmless_random_ablation",
        ),
        ("addition (alpha 1, every token), harmless_test", "addition_harmless_refusal", None, None),
        (
            f"addition (alpha {fmt(alpha, 2) if alpha is not None else '?'}, prompt tokens only), harmless_test",
            "addition_prompt_only_harmless_refusal",
            None,
            None,
        ),
        ("random direction added, harmless_test", "random_addition_harmless_refusal", None, None),
    ]
    header = ["intervention (harmful_test unless named)", "refusal", "KL on harmless_test", "CE on harmless_test"]
    if _substring_beside(m):
        judge = m.get("judge", "substring")
        spec = [(label, key, _substring_key(m, key), *rest) for label, key, *rest in spec]
        header[1:2] = [f"refusal ({judge} judge)", "refusal (substring judge)"]
    spec, header = _with_incoherent(m, spec, header)
    out = head + [table(header, _rows(m, spec))]
    tail = []
    if "orthogonalized_max_logit_diff" in m:
        tail.append(
            f"Orthogonalized weights against the hook ablation: max logit difference {fmt(m['orthogonalized_max_logit_diff'])}."
        )
    if _has(m, "harm_detector_auroc", "harm_detector_auroc_under_ablation"):
        tail.append(
            f"Harm detector at t_inst, AUROC harmful_test vs harmless_test: {fmt(m['harm_detector_auroc'])} "
            f"({fmt(m['harm_detector_auroc_under_ablation'])} with the refusal direction ablated)."
        )
    if "untuned_harm_detector_auroc" in m:
        tail.append(
            f"On the untuned base `{m['untuned_base']}`, which never refuses, the same detector's AUROC is "
            f"{fmt(m['untuned_harm_detector_auroc'])}."
        )
    if tail:
        out.append(" ".join(tail))
    return "\n\n".join(out)


def sae_section(m: dict[str, Any]) -> str:
    rows = _rows(
        m,
        [
            ("architecture", "architecture"),
            ("hook", "hook"),
            ("d_sae", "d_sae"),
            ("training tokens", "n_training_tokens"),
            ("explained variance", "explained_variance"),
            ("L0", "l0"),
            ("dead fraction", "dead_fraction"),
            ("CE loss recovered", "ce_loss_recovered"),
            ("held-out tokens", "n_eval_tokens"),
        ],
    )
    return table(["SAE", "value"], rows)


def search_section(m: dict[str, Any]) -> str:
    k = m.get("k", "k")
    out = []
    if _has(m, "top1_feature", "top1_cosine", "top1_auroc"):
        line = f"Top refusal feature {m['top1_feature']}: cosine with the direction {fmt(m['top1_cosine'])}, AUROC {fmt(m['top1_auroc'])}"
        if _has(m, "top_signed_feature", "top_signed_cosine", "top_signed_auroc"):
            line += (
                f"; first of the signed ranking: feature {m['top_signed_feature']}, cosine {fmt(m['top_signed_cosine'])}, "
                f"AUROC {fmt(m['top_signed_auroc'])}"
            )
        if "n_comply_features" in m:
            line += f"; the top {k} signed features hold {m['n_comply_features']} comply features"
        out.append(line + ".")
    what = "harmless means" if m.get("ablation", "harmless_mean") == "harmless_mean" else "0"
    spec = [
        (
            f"top-{k} signed features set to their {what}",
            "topk_ablation_harmful_refusal",
            "topk_ablation_kl_harmless",
        ),
        (f"{k} random features, the same", "random_k_ablation_harmful_refusal", "random_k_ablation_kl_harmless"),
        (
            f"top-{k} refusal features set to 0",
            "topk_zero_ablation_harmful_refusal",
            "topk_zero_ablation_kl_harmless",
        ),
        (f"{k} random features set to 0", "random_k_zero_ablation_harmful_refusal", None),
        (
            "direction ablated (affine), every layer",
            "direction_ablation_harmful_refusal",
            "direction_ablation_kl_harmless",
        ),
        (
            "direction ablated (affine), SAE hook only",
            "direction_ablation_sae_hook_harmful_refusal",
            "direction_ablation_sae_hook_kl_harmless",
        ),
        (
            "direction projected out (plain), SAE hook only",
            "direction_plain_ablation_sae_hook_harmful_refusal",
            None,
        ),
        (
            f"top-{k} clamped (refusal features high, comply features 0), harmless_test",
            "topk_clamp_harmless_refusal",
            "topk_clamp_kl_harmless",
        ),
        ("direction added, harmless_test", "direction_addition_harmless_refusal", None),
        (
            "direction added at the clamp's KL, harmless_test",
            "direction_addition_matched_kl_harmless_refusal",
            "direction_addition_matched_kl_kl_harmless",
        ),
    ]
    header = ["edit (harmful_test unless named)", "refusal", "KL on harmless_test"]
    spec, header = _with_incoherent(m, spec, header)
    out.append(table(header, _rows(m, spec)))
    points = curve_points(m)
    if points:
        headers, rows = curve_table(points)
        out.append(
            "Refusal against k: harmful_test refusal (KL on harmless_test) with each ranking's first k features "
            "edited at the SAE's hook; k_at_bypass is the smallest k with refusal <= 0.10 at KL <= 0.1.\n\n"
            + table(headers, rows)
            + "\n\nk_at_bypass: "
            + k_at_bypass_text(m)
        )
    return "\n\n".join(out)


def best_k_at_bypass(m: dict[str, Any]) -> str:
    """The smallest k_at_bypass_<ranking> of a search run and its rankings, or ``none <= K``."""
    reached = {
        key[len("k_at_bypass_") :]: v for key, v in m.items() if key.startswith("k_at_bypass_") and v is not None
    }
    if not reached:
        return f"none <= {max((p.k for p in curve_points(m)), default=0)}"
    best = min(reached.values())
    return f"{best} ({', '.join(r for r, v in reached.items() if v == best)})"


def k_at_bypass_text(m: dict[str, Any]) -> str:
    """``ranking k`` for every k_at_bypass_<ranking> of a search run (``none <= K``: no k measured bypasses)."""
    kmax = max((p.k for p in curve_points(m)), default=0)
    return ", ".join(
        f"{key[len('k_at_bypass_') :]} {f'none <= {kmax}' if v is None else v}"
        for key, v in m.items()
        if key.startswith("k_at_bypass_")
    )


def attack_names(m: dict[str, Any]) -> list[str]:
    """The attacks of an anchor run's asr_<attack>_<defence> keys, in the run's order, "none" first."""
    names: list[str] = []
    for key in m:
        if not key.startswith("asr_"):
            continue
        for d in sorted(DEFENCES, key=len, reverse=True):  # "x_finetuned_anchored" is x under finetuned_anchored
            if key.endswith(f"_{d}"):
                name = key[len("asr_") : -len(d) - 1]
                if name and name not in names:
                    names.append(name)
                break
    return sorted(names, key=lambda n: n != "none")


def anchor_section(m: dict[str, Any]) -> str:
    out = []
    if _has(m, "gate_auroc_val", "gate_tpr_val", "gate_fpr_val"):
        out.append(
            f"Gate on the validation prompts: AUROC {fmt(m['gate_auroc_val'])}, TPR {fmt(m['gate_tpr_val'])}, "
            f"FPR {fmt(m['gate_fpr_val'])}; anchored hooks from layer {fmt((m.get('anchor_layers') or ['?'])[0])}, "
            f"gate read at layers {fmt(m.get('gate_layers'))}."
        )
    defences = [d for d in DEFENCES if any(k.startswith("asr_") and k.endswith(f"_{d}") for k in m)]
    gate = any(k.startswith("gate_fire_") for k in m)  # runs that record where the anchor's gate fires
    rows = []
    incoherent = any(k.startswith("incoherent_") for k in m)  # runs that count only coherent compliance
    for name in attack_names(m):
        label = "(no attack)" if name == "none" else f"`{name}`"
        kl = 0.0 if name == "none" else m.get(f"attack_kl_harmless_{name}")
        extra = [m.get(f"incoherent_{name}_undefended"), m.get(f"incoherent_{name}_anchored")] if incoherent else []
        fires = [m.get(f"gate_fire_{name}")] if gate else []
        rows.append([label] + [m.get(f"asr_{name}_{d}") for d in defences] + extra + fires + [kl])
    tuned = (
        " Fine-tuned: the organism fine-tuned with its refusal direction cut on a share of steps, attacked with its own direction, features and suffixes."
        if "finetuned" in defences
        else ""
    )
    if incoherent:
        out.append(
            "Attack success rate (share of harmful_test answered with coherent compliance) per defence; the share of "
            "incoherent answers undefended and anchored; the last column is the attack's own KL on harmless_test, "
            "undefended (prompt attacks: -)." + tuned
        )
        header = ["attack", *(DEFENCE_LABELS.get(d, d) for d in defences), "incoherent", "incoherent (anchored)"]
    else:
        out.append(
            "Attack success rate (share of harmful_test not refused) per defence; the last column is the attack's own "
            "KL on harmless_test, undefended (prompt attacks: -)." + tuned
        )
        header = ["attack", *(DEFENCE_LABELS.get(d, d) for d in defences)]
    if gate:
        out[-1] += (
            " `gate fires`: the share of attacked prompts on which the anchor's gate fires (harmless_test: "
            f"{fmt(m.get('gate_fire_harmless_test'))})."
        )
    out.append(table([*header, *(["gate fires"] if gate else []), "attack KL"], rows))
    over = any(k.startswith("overrefusal_refusal_") for k in m)
    cost = [
        [DEFENCE_LABELS.get(d, d), m.get(f"harmless_refusal_{d}"), m.get(f"kl_harmless_{d}"), m.get(f"ce_harmless_{d}")]
        + ([m.get(f"overrefusal_refusal_{d}")] if over else [])
        for d in defences
        if f"harmless_refusal_{d}" in m
    ]
    if cost:
        out.append(
            "Cost on harmless_test (KL and CE from the undefended model)"
            + (", and refusal on the over-refusal set:" if over else ":")
        )
        out.append(
            table(["defence", "refusal", "KL", "CE of own completions"] + (["over-refusal set"] if over else []), cost)
        )
    if "targets_missed" in m:
        strong = m.get("strong_attacks") or []
        out.append(
            f"Targets (`saesteer.attacks.evaluate.DefenceTargets`): every non-adaptive attack with ASR >= 0.5 undefended "
            f"({', '.join(f'`{s}`' for s in strong) or 'none'}) held to <= 0.05 (activation, weight, feature edits) or "
            "<= 0.10 (prompts, soft suffixes), every adaptive attack to <= 0.30; harmless refusal +<= 0.01, KL <= 0.03, "
            "CE +<= 2%, over-refusal set +<= 0.02."
        )
        for d, suffix in (("anchored", ""), ("finetuned", "_finetuned"), ("finetuned_anchored", "_finetuned_anchored")):
            if f"targets_missed{suffix}" in m:
                missed = m[f"targets_missed{suffix}"]
                out.append(
                    f"- {DEFENCE_LABELS.get(d, d)}: "
                    + ("every target met" if not missed else "misses " + "; ".join(missed))
                )
    elif "targets_met" in m:  # runs before DefenceTargets: their own, looser criteria
        strong = m.get("strong_attacks") or []
        out.append(
            f"Strong attacks (ASR >= 0.8 undefended): {', '.join(f'`{s}`' for s in strong) or 'none'}; highest anchored ASR among "
            f"them {fmt(m.get('max_asr_strong_anchored'))}; harmless refusal rise {fmt(m.get('overrefusal_rise_anchored'))}; "
            f"targets of that run (strong attacks <= 0.10, rise <= 0.02, KL <= 0.05) met: {fmt(m['targets_met'])}."
        )
    return "\n\n".join(out)


def backups_section(m: dict[str, Any]) -> str:
    out = []
    ks = m.get("k_values") or []
    curves = [
        ("downstream_refusal_at_k", "harmful_test refusal, top k refusal features cut"),
        ("upstream_refusal_at_k", "harmful_test refusal, top k harm sensors cut"),
        ("induction_harmless_refusal_at_k", "harmless_test refusal, top k sensors clamped"),
        ("downstream_n_backups_at_k", "backup features (downstream cut)"),
    ]
    present = [(k, label) for k, label in curves if isinstance(m.get(k), list)]
    if ks and present:
        layers = (
            f"cut at layer {m['cut_layer']}, harm sensors at layer {m['upstream_layer']}"
            if _has(m, "cut_layer", "upstream_layer")
            else ""
        )
        if layers:
            out.append(f"Features {layers}.")
        rows = [[str(k)] + [m[key][i] if i < len(m[key]) else None for key, _ in present] for i, k in enumerate(ks)]
        out.append(table(["k", *(label for _, label in present)], rows))
    facts = []
    if "n_backup_features" in m:
        facts.append(
            f"backup features at k = {m.get('k_max', '?')}: {m['n_backup_features']}"
            + (f" ({', '.join(map(str, m['backup_features']))})" if m.get("backup_features") else "")
        )
    if m.get("hydra_restored_share") is not None:
        facts.append(
            f"hydra restored share at k = {m.get('k_max', '?')}: {fmt(m['hydra_restored_share'])} of the refusal "
            "coordinate the cut features carried comes back through rising later features"
        )
    for side in ("downstream", "upstream"):
        if f"{side}_random_refusal_at_kmax" in m:
            facts.append(
                f"{side}: {m.get('k_max', '?')} random features cut: {fmt(m[f'{side}_random_refusal_at_kmax'])}"
            )
    if facts:
        out.append(_sentence(facts))
    if "finetune_harmful_test_refusal" in m:
        finetune = m.get("finetune", "finetune")
        rows = _rows(
            m,
            [
                ("harmful_test refusal", "baseline_harmful_refusal", "finetune_harmful_test_refusal"),
                ("harmless_test refusal", "harmless_test_refusal", "finetune_harmless_test_refusal"),
                ("refusal, direction cut at its layer", "direction_cut_refusal", "finetune_direction_cut_refusal"),
                (
                    "backup features, direction cut",
                    "direction_cut_n_backup_features",
                    "finetune_direction_cut_n_backup_features",
                ),
                ("backup features, top k cut", "n_backup_features", "finetune_n_backup_features"),
                ("hydra restored share, top k cut", "hydra_restored_share", "finetune_hydra_restored_share"),
            ],
        )
        out.append(table(["", "organism", f"fine-tuned (`{finetune}`)"], rows))
    return "\n\n".join(out)


def emergent_section(m: dict[str, Any]) -> str:
    out = []
    if "category" in m:
        out.append(
            f"Rank-1 LoRA fine-tuned to comply with `{m['category']}` only; refusal on the other harm categories and elsewhere."
        )
    mode = m.get("ablation", "affine")
    rows = _rows(
        m,
        [
            (
                "other categories",
                "base_refusal_other_categories",
                "finetuned_refusal_other_categories",
                "ablated_refusal_other_categories",
                "random_ablated_refusal_other_categories",
            ),
            (
                "target category, held-out acts",
                "base_refusal_target_heldout",
                "finetuned_refusal_target_heldout",
                None,
                None,
            ),
            ("harmful_test", "base_refusal_harmful_test", "finetuned_refusal_harmful_test", None, None),
            ("harmless_test", "base_refusal_harmless", "finetuned_refusal_harmless", None, None),
        ],
    )
    out.append(
        table(
            [
                "refusal on",
                "base",
                "fine-tuned",
                f"fine-tuned, EM direction ablated ({mode})",
                "fine-tuned, random direction ablated",
            ],
            rows,
        )
    )
    facts = []
    cos = m.get("em_direction_cosine_refusal")
    if isinstance(cos, list):
        facts.append(
            "cosine of the EM direction with each layer's refusal direction, by layer: "
            + fmt(cos)
            + (f" (the EM direction ablated: layer {m['em_ablate_layer']})" if "em_ablate_layer" in m else "")
        )
    elif cos is not None:
        facts.append(f"cosine of the EM direction with the refusal direction {fmt(cos)}")
    if "ablated_refusal_other_categories_plain" in m and mode != "plain":
        facts.append(f"plain ablation of the EM direction: {fmt(m['ablated_refusal_other_categories_plain'])}")
    if "finetuned_kl_harmless" in m:
        facts.append(f"KL of the fine-tuned model on harmless_test {fmt(m['finetuned_kl_harmless'])}")
    if facts:
        out.append(_sentence(facts))
    return "\n\n".join(out)


SECTIONS = {
    "safety_tune": (
        "Safety tuning",
        safety_section,
        "The chat model taught to refuse by `saesteer safety-tune` (a low-rank adapter); refusal before and after",
    ),
    "behaviour": (
        "Model behaviour",
        behaviour_section,
        "Share of each prompt set refused (greedy, {judge} judge)",
    ),
    "organism": (
        "Organism refusal",
        organism_section,
        "Share of each prompt set refused (greedy, {judge} judge)",
    ),
    "directions": (
        "Refusal direction",
        directions_section,
        "Difference-in-means direction, selected as in Arditi et al. 2024; held-out effects of ablating and adding it",
    ),
    "train_sae": (
        "SAE",
        sae_section,
        "SAE fitted through sae_lens at the direction's layer; quality on held-out tokens",
    ),
    "search": (
        "Feature search",
        search_section,
        "SAE features ranked against the refusal direction; edits scored on held-out prompts",
    ),
    "anchor": (
        "Anchor against attacks",
        anchor_section,
        "Attack success rate on harmful_test per defence, and each defence's cost on harmless_test",
    ),
    "backups": ("Backups", backups_section, "Refusal as more features are cut, and the later features that rise"),
    "emergent": ("Emergent misalignment", emergent_section, "A rank-1 LoRA trained to comply with one harm category"),
}


# ----------------------------------------------------------------------------- documents


def _intro(runs: Sequence[Run]) -> list[str]:
    lines = []
    for run in runs:
        where = f" ({run.source})" if run.source else ""
        lines.append(f"- `{run.command}`, {run.date}{where}")
    out = [
        "Generated by `python scripts/results.py " + " ".join(_shown(r.path) for r in runs) + "` from:",
        "",
        *lines,
        "",
    ]
    if any(r.budget == "quick" for r in runs):
        out += [
            "These are the quick budget's figures (`budget=quick`, conf/budget/quick.yaml: fewer held-out prompts, smaller "
            "searches), the run `scripts/run.sh` makes. The full budget's figures (`scripts/run.sh budget=full`) "
            "are in [history/results.md](history/results.md) until it is rerun.",
            "",
        ]
    return out


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _timing(runs: Sequence[Run]) -> list[str]:
    rows = []
    for run in runs:
        for stage, m in run.stages.items():
            if "stage_seconds" in m:
                secs = m.get("computed_seconds") if m.get("reused") else m["stage_seconds"]
                rows.append(
                    [
                        STAGE_JOB.get(stage, stage),
                        f"{secs / 60:.1f}" if isinstance(secs, (int, float)) else "-",
                        "cached" if m.get("reused") else "computed",
                    ]
                )
                # the phases a job times itself (seconds_<phase>; the anchor's), indented under it
                rows += [
                    [f"&nbsp;&nbsp;{k.removeprefix('seconds_').replace('_', ' ')}", f"{v / 60:.1f}", ""]
                    for k, v in m.items()
                    if k.startswith("seconds_") and isinstance(v, (int, float))
                ]
        total = run.extra.get("job_seconds")
        if isinstance(total, (int, float)) and rows:
            rows.append([f"{run.job} (all stages)", f"{total / 60:.1f}", ""])
    if not rows:
        return []
    return [
        "## Time per stage",
        "",
        "Minutes on the machine that ran it (a reused stage: the minutes it took when computed).",
        "",
        table(["stage", "minutes", "run"], rows),
        "",
    ]


def render_results(runs: Sequence[Run]) -> str:
    out = ["# Results", "", *_intro(runs), *side_by_side(runs)]
    for stage in STAGES:
        title, fn, what = SECTIONS[stage]
        for run in runs:
            m = run.stages.get(stage)
            if not m:
                continue
            body = fn(m)
            if not body.strip():
                continue
            heading = f"## {title}" + (f": {run.model}" if len({r.model for r in runs}) > 1 else "")
            what_here = what.format(judge=run.judge)
            out += [heading, "", f"{what_here}. From `{run.stage_command(stage)}`, {run.date}.", "", body, ""]
    out += _timing(runs)
    return "\n".join(out).rstrip("\n") + "\n"


def _first(runs: Sequence[Run], stage: str) -> tuple[Optional[dict[str, Any]], Optional[Run]]:
    for run in runs:
        if run.stages.get(stage):
            return run.stages[stage], run
    return None, None


def _join(m: dict[str, Any], keys: Sequence[str], sep: str = " / ") -> Optional[str]:
    if not all(k in m for k in keys):
        return None
    return sep.join(fmt(m[k]) for k in keys)


#: Arditi et al. 2024's figures on 13 open chat models (1.8B-72B), for the rows they measured: directional ablation
#: and activation addition judged on JailbreakBench (100 harmful) and Alpaca (100 harmless) instructions
REFERENCE = {
    "directions: affine / plain ablation, harmful_test refusal": "- / near 0 for every model",
    "directions: addition, harmless_test refusal": "most harmless prompts refused",
    "directions: KL of the selected ablation on harmless prompts": "< 0.1 (their selection filter)",
}
REFERENCE_NAME = "Arditi et al. 2024"


def _headline(runs: Sequence[Run], substring: bool = False) -> list[tuple[str, str]]:
    """(label, value) of the headline figures of one model's runs: each from the first run holding its stage; with
    ``substring``, the substring judge's figures in brackets after those Arditi et al. measured, where the run's
    judge is another and its directions stage holds them."""
    rows: list[tuple[str, str]] = []

    def add(stage: str, label: str, value: Optional[str]) -> None:
        if value is not None:
            rows.append((f"{STAGE_JOB.get(stage, stage)}: {label}", value))

    o, _ = _first(runs, "organism")
    if o is None:
        o, _ = _first(runs, "behaviour")
    if o:
        add(
            "model",
            "refusal of harmful_test / harmless_test / over-refusal set",
            _join(o, ["harmful_test_refusal", "harmless_test_refusal", "overrefusal_refusal"]),
        )
    d, _ = _first(runs, "directions")
    if d:
        if _has(d, "selected_layer", "selected_position"):
            add("directions", "layer, position", f"{d['selected_layer']}, {d['selected_position']}")

        def with_substring(keys: list[str]) -> Optional[str]:
            value = _join(d, keys)
            sub = _join(d, [f"{k}_substring" for k in keys]) if substring and _substring_beside(d) else None
            return value if value is None or sub is None else f"{value} (substring {sub})"

        add(
            "directions",
            "affine / plain ablation, harmful_test refusal",
            with_substring(["affine_ablation_harmful_refusal", "ablation_harmful_refusal"]),
        )
        kl_key = (
            "affine_ablation_kl_harmless"
            if d.get("selected_ablation", "affine") == "affine"
            else "ablation_kl_harmless"
        )
        add("directions", "KL of the selected ablation on harmless prompts", _join(d, [kl_key]))
        add("directions", "addition, harmless_test refusal", with_substring(["addition_harmless_refusal"]))
    s, _ = _first(runs, "train_sae")
    if s:
        add(
            "train-sae", "explained variance / CE loss recovered", _join(s, ["explained_variance", "ce_loss_recovered"])
        )
    f, _ = _first(runs, "search")
    if f:
        k = f.get("k", "k")
        add(
            "search",
            f"top {k} / {k} random features to harmless means, harmful_test refusal",
            _join(f, ["topk_ablation_harmful_refusal", "random_k_ablation_harmful_refusal"]),
        )
        if any(key.startswith("k_at_bypass_") for key in f):
            add("search", "fewest features that bypass (refusal <= 0.10, KL <= 0.1), best ranking", best_k_at_bypass(f))
    a, _ = _first(runs, "anchor")
    if a:
        for name, label in (
            ("ablation_affine", "affine ablation"),
            ("gcg_suffix", "adversarial suffix"),
            ("adaptive_gate_ablation", "adaptive gate ablation"),
        ):
            add(
                "anchor",
                f"ASR undefended -> anchored, {label}",
                _join(a, [f"asr_{name}_undefended", f"asr_{name}_anchored"], " -> "),
            )
        add(
            "anchor",
            "harmless_test refusal (undefended -> anchored), KL",
            None
            if not _has(a, "harmless_refusal_undefended", "harmless_refusal_anchored", "kl_harmless_anchored")
            else f"{fmt(a['harmless_refusal_undefended'])} -> {fmt(a['harmless_refusal_anchored'])}, {fmt(a['kl_harmless_anchored'])}",
        )
        add(
            "anchor",
            "over-refusal set refusal, undefended -> anchored",
            _join(a, ["overrefusal_refusal_undefended", "overrefusal_refusal_anchored"], " -> "),
        )
    b, _ = _first(runs, "backups")
    if b and isinstance(b.get("downstream_refusal_at_k"), list) and b["downstream_refusal_at_k"]:
        kmax = b.get("k_max", len(b["downstream_refusal_at_k"]) - 1)
        add(
            "backups",
            f"top {kmax} refusal features cut, harmful_test refusal; backup features",
            f"{fmt(b['downstream_refusal_at_k'][-1])}; {fmt(b.get('n_backup_features'))}",
        )
        if "hydra_restored_share" in b:
            add(
                "backups",
                "hydra: restored share (base / dropout fine-tune)",
                f"{fmt(b['hydra_restored_share'])} / {fmt(b.get('finetune_hydra_restored_share'))}",
            )
    e, _ = _first(runs, "emergent")
    if e:
        add(
            "emergent",
            "refusal of other categories, base / fine-tuned / EM direction ablated",
            _join(
                e,
                [
                    "base_refusal_other_categories",
                    "finetuned_refusal_other_categories",
                    "ablated_refusal_other_categories",
                ],
            ),
        )
    return rows


def models(runs: Sequence[Run]) -> list[str]:
    """The models of ``runs`` in the order they first appear."""
    return list(dict.fromkeys(r.model for r in runs))


def headline_rows(runs: Sequence[Run], reference: bool = False) -> list[list[str]]:
    """One row per headline figure: its label and its value for each model (``-`` where a model lacks it); with
    ``reference``, Arditi et al.'s figure where they measured it and the substring judge's beside the run's."""
    names = models(runs)
    per_model = {name: dict(_headline([r for r in runs if r.model == name], reference)) for name in names}
    labels = list(dict.fromkeys(label for name in names for label in per_model[name]))
    rows = [[label] + [per_model[name].get(label, "-") for name in names] for label in labels]
    if reference:
        rows = [row + [REFERENCE.get(row[0], "")] for row in rows]
    return rows


def _judges_sentence(runs: Sequence[Run]) -> str:
    """Which judge the refusal figures of ``runs`` are, and where the paper's substring judge's stand."""
    judges = list(dict.fromkeys(r.judge for r in runs))
    text = f"Refusal is judged by the {' and '.join(judges)} judge{'s' if len(judges) > 1 else ''}"
    if judges == ["substring"]:
        return text + ", the paper's."
    return text + "; in brackets, the paper's substring judge's on the same completions, where a run holds them."


def side_by_side(runs: Sequence[Run]) -> list[str]:
    """docs/results.md's first table when the runs hold several models: their headline figures and the paper's."""
    names = models(runs)
    if len(names) < 2:
        return []
    return [
        "## Side by side",
        "",
        f"The headline figures of each model, with {REFERENCE_NAME}'s on 13 open chat models (1.8B-72B parameters; "
        "JailbreakBench and Alpaca instructions) where they measured the same thing. " + _judges_sentence(runs),
        "",
        table(["stage: figure", *names, REFERENCE_NAME], headline_rows(runs, reference=True)),
        "",
    ]


def render_readme_table(runs: Sequence[Run]) -> str:
    dates = sorted({r.date for r in runs})
    cmds = ", ".join(f"`{r.command}`" for r in runs)
    names = models(runs)
    header = ["stage: figure", *names] if len(names) > 1 else ["stage: figure", "value"]
    lines = [
        f"From {cmds} ({', '.join(dates)}; generated by `scripts/results.py`, every table in [docs/results.md](docs/results.md)):",
        "",
        table(header, headline_rows(runs)),
    ]
    return "\n".join(lines)


def replace_between_markers(text: str, body: str, where: str = "README.md") -> str:
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        raise ResultsError(f"{where}: expected the markers {START} and {END} (in that order) around the results table")
    return text[: i + len(START)] + "\n" + body.strip("\n") + "\n" + text[j:]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Render docs/results.md and the README's results table from saesteer run directories."
    )
    ap.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run directory holding metrics.json (a pipeline run, or a single job's)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "results.md",
        help="the results page to write (default: docs/results.md)",
    )
    ap.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "README.md",
        help=f"the README whose table between {START} and {END} is rewritten (default: README.md)",
    )
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    args = ap.parse_args(argv)
    try:
        runs = [load_run(p) for p in args.run_dirs]
        page = render_results(runs)
        readme = None
        if not args.no_readme:
            try:
                old = args.readme.read_text()
            except OSError as exc:
                raise ResultsError(f"{args.readme}: cannot read it ({exc.strerror or exc})") from None
            readme = replace_between_markers(old, render_readme_table(runs), str(args.readme))
    except ResultsError as exc:
        print(f"results.py: error: {exc}", file=sys.stderr)
        return 2
    write_atomic(args.out, page)
    print(f"wrote {args.out}")
    if readme is not None:
        write_atomic(args.readme, readme)
        print(f"wrote the results table of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
