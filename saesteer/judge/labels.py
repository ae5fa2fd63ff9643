"""Labelled responses and a judge's agreement with them (``saesteer judge-eval``).

A label file is CSV or JSON lines (``.gz`` allowed) with ``prompt``, ``response`` and ``label`` (``refusal`` or
``compliance``; a partial refusal is a refusal) and optionally ``source`` (which model or set the response came
from) and ``split`` (e.g. ``train`` / ``test``); other fields are ignored.  Two sets are bundled
(``saesteer/resources/judge/ATTRIBUTION.md``): ``refusal_direction``, the 2,500 completions of Arditi et al.'s runs
with the paper's substring labels, and ``saesteer_human``, 800 of them labelled by people reading each against a
written rubric, split half train, half test.  ``NAME:SPLIT`` (``saesteer_human:test``) keeps the rows of one split.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saesteer.judge.base import JudgeError, judge_responses

LABELS = ("refusal", "compliance")
#: label sets bundled with saesteer, by name
BUNDLED = {"refusal_direction": "refusal_direction.jsonl.gz", "saesteer_human": "saesteer_human.jsonl.gz"}


@dataclass(frozen=True)
class Labelled:
    prompt: str
    response: str
    label: str  # refusal | compliance
    source: str = ""
    split: str = ""  # train | test | ... where the file names one


def _read_text(where: str) -> tuple[str, str]:
    """(text, file name) of a bundled set or a local file."""
    if where in BUNDLED:
        res = importlib.resources.files("saesteer") / "resources" / "judge" / BUNDLED[where]
        return gzip.decompress(res.read_bytes()).decode("utf-8"), BUNDLED[where]
    path = Path(where)
    if not path.is_file():
        raise JudgeError(f"labels={where!r}: no such file, and not a bundled set ({sorted(BUNDLED)})")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8"), path.name


def _split_name(where: str) -> tuple[str, str | None]:
    """(set or file, split) of ``NAME:SPLIT``; (where, None) when ``where`` names a set or file as it is."""
    base, sep, split = where.rpartition(":")
    if not sep or where in BUNDLED or Path(where).is_file() or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        return where, None
    return base, split


def load_labels(where: str) -> list[Labelled]:
    """The labelled responses of a bundled set (:data:`BUNDLED`) or a CSV / JSON-lines file; ``NAME:SPLIT`` keeps
    the rows whose ``split`` is SPLIT."""
    where, split = _split_name(where)
    text, name = _read_text(where)
    stem = name.removesuffix(".gz")
    if stem.endswith(".csv"):
        rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(text)))
    elif stem.endswith((".jsonl", ".json")):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise JudgeError(f"{name} line {i}: not JSON ({err.msg})") from None
    else:
        raise JudgeError(f"labels file {name!r}: expected .csv, .jsonl or .json (one object per line), optionally .gz")
    out = []
    for i, row in enumerate(rows, 1):
        missing = [k for k in ("prompt", "response", "label") if not isinstance(row.get(k), str)]
        if missing:
            raise JudgeError(f"{name} row {i}: missing or non-text {missing}; expected prompt, response and label")
        label = row["label"].strip().lower()
        if label not in LABELS:
            raise JudgeError(f"{name} row {i}: label {row['label']!r}; expected one of {list(LABELS)}")
        out.append(
            Labelled(row["prompt"], row["response"], label, str(row.get("source") or ""), str(row.get("split") or ""))
        )
    if not out:
        raise JudgeError(f"{name}: no labelled responses")
    if split is not None:
        splits = sorted({r.split for r in out if r.split})
        out = [r for r in out if r.split == split]
        if not out:
            raise JudgeError(f"{name}: no rows of split {split!r}; its splits are {splits or 'none (no split field)'}")
    return out


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary labellings (nan when chance agreement is 1: one class only)."""
    if len(a) != len(b) or not a:
        raise JudgeError(f"cohen_kappa needs two labellings of the same non-zero length, got {len(a)} and {len(b)}")
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return (po - pe) / (1 - pe) if pe < 1 else float("nan")


@dataclass
class Agreement:
    """A judge against labels: refusal is the positive class."""

    n: int
    accuracy: float
    cohen_kappa: float
    confusion: dict[str, int]  # true/false positives/negatives: tp (refusal, judged refusal), fn, fp, tn
    incoherent: float  # share of responses the judge flags incoherent
    by_source: dict[str, float] = field(default_factory=dict)  # accuracy per source
    disagreements: list[tuple[str, str, str, str]] = field(default_factory=list)  # (source, label, judged, response)


def agreement(judge: Any, rows: Sequence[Labelled], n_examples: int = 20) -> Agreement:
    """How often ``judge`` (refusal or not) agrees with the labels, overall and per source."""
    if not rows:
        raise JudgeError("agreement needs labelled responses, got none")
    truth = [r.label == "refusal" for r in rows]
    judged, flagged = judge_responses(judge, [r.response for r in rows], [r.prompt for r in rows])
    ok = [t == j for t, j in zip(truth, judged)]
    conf = Counter(("t" if t == j else "f") + ("p" if j else "n") for t, j in zip(truth, judged))
    sources = sorted({r.source for r in rows})
    by_source = {
        s: sum(o for o, r in zip(ok, rows) if r.source == s) / sum(1 for r in rows if r.source == s) for s in sources
    }
    wrong = [
        (r.source, r.label, "refusal" if j else "compliance", r.response) for r, j, o in zip(rows, judged, ok) if not o
    ]
    return Agreement(
        n=len(rows),
        accuracy=sum(ok) / len(rows),
        cohen_kappa=cohen_kappa(truth, judged),
        confusion={k: conf.get(k, 0) for k in ("tp", "fn", "fp", "tn")},
        incoherent=sum(o == "incoherent" for o in flagged) / len(rows) if flagged else 0.0,
        by_source=by_source,
        disagreements=wrong[:n_examples],
    )
