"""Labelled responses and a judge's agreement with them (``saesteer judge-eval``).

A label file is CSV or JSON lines (``.gz`` allowed) with ``prompt``, ``response`` and ``label`` (``refusal`` or
``compliance``; a partial refusal is a refusal) and optionally ``source`` (which model or set the response came
from), ``split`` (e.g. ``train`` / ``test``) and ``incoherent`` (whether the text is degenerate: loops, garbled
words, empty output; a JSON bool, or true / false, 1 / 0, yes / no as text, empty for none); other fields are
ignored.  Two sets are bundled (``saesteer/resources/judge/ATTRIBUTION.md``): ``refusal_direction``, the 2,500
completions of Arditi et al.'s runs with the paper's substring labels, and ``saesteer_human``, 800 of them labelled
by people reading each against a written rubric, with an incoherent flag, split half train, half test.
``NAME:SPLIT`` (``saesteer_human:test``) keeps the rows of one split.
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
from typing import Any, Optional

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
    incoherent: Optional[bool] = None  # the label's incoherent flag, None where the file gives none


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


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _flag(value: Any, name: str, row: int) -> Optional[bool]:
    """The ``incoherent`` field of a row: a JSON bool, or true / false, 1 / 0, yes / no as text; None when absent
    or empty."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if not text:
        return None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise JudgeError(f"{name} row {row}: incoherent {value!r}; expected true or false")


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
            Labelled(
                row["prompt"],
                row["response"],
                label,
                str(row.get("source") or ""),
                str(row.get("split") or ""),
                _flag(row.get("incoherent"), name, i),
            )
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
    """A judge against labels: refusal is the positive class; where labels carry an incoherent flag, the judge's
    incoherent outcome against it (incoherent the positive class)."""

    n: int
    accuracy: float
    cohen_kappa: float
    confusion: dict[str, int]  # true/false positives/negatives: tp (refusal, judged refusal), fn, fp, tn
    incoherent: float  # share of responses the judge flags incoherent
    by_source: dict[str, float] = field(default_factory=dict)  # accuracy per source
    disagreements: list[tuple[str, str, str, str]] = field(default_factory=list)  # (source, label, judged, response)
    #: tp (flagged incoherent, judged incoherent), fn, fp, tn over the rows with a flag; empty when no row has one or
    #: the judge has no outcomes
    incoherent_confusion: dict[str, int] = field(default_factory=dict)

    @property
    def incoherent_precision(self) -> float:
        """Share of the flagged rows judged incoherent that the labels flag (nan when none is judged so)."""
        c = self.incoherent_confusion
        return c["tp"] / (c["tp"] + c["fp"]) if c and c["tp"] + c["fp"] else float("nan")

    @property
    def incoherent_recall(self) -> float:
        """Share of the rows the labels flag incoherent that the judge judges so (nan when the labels flag none)."""
        c = self.incoherent_confusion
        return c["tp"] / (c["tp"] + c["fn"]) if c and c["tp"] + c["fn"] else float("nan")

    @property
    def incoherent_accuracy(self) -> float:
        """Share of the rows with a flag where the judge's incoherent outcome matches it (nan without flags)."""
        c = self.incoherent_confusion
        return (c["tp"] + c["tn"]) / sum(c.values()) if c else float("nan")


def agreement(judge: Any, rows: Sequence[Labelled], n_examples: int = 20) -> Agreement:
    """How often ``judge`` (refusal or not) agrees with the labels, overall and per source, and how its incoherent
    outcome agrees with the labels' incoherent flag where they carry one."""
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
    pairs = [(r.incoherent, o == "incoherent") for r, o in zip(rows, flagged) if r.incoherent is not None]
    inc = Counter(("t" if t == j else "f") + ("p" if j else "n") for t, j in pairs)
    return Agreement(
        n=len(rows),
        accuracy=sum(ok) / len(rows),
        cohen_kappa=cohen_kappa(truth, judged),
        confusion={k: conf.get(k, 0) for k in ("tp", "fn", "fp", "tn")},
        incoherent=sum(o == "incoherent" for o in flagged) / len(rows) if flagged else 0.0,
        by_source=by_source,
        disagreements=wrong[:n_examples],
        incoherent_confusion={k: inc.get(k, 0) for k in ("tp", "fn", "fp", "tn")} if pairs else {},
    )
