#!/usr/bin/env python
"""Bundle human refusal labels of the refusal_direction completions as ``saesteer_human`` for ``saesteer judge-eval``
and ``saesteer judge-train``.

Reads the annotators' files (``<dir>/labels_*.jsonl``, one object per line: ``id`` = the completion's line index in
``saesteer/resources/judge/refusal_direction.jsonl.gz``, ``label`` = refusal | compliance, ``incoherent``, ``note``),
checks that every id is labelled once and exists, joins each label with its completion, and writes
``saesteer/resources/judge/saesteer_human.jsonl.gz``: one JSON line per labelled completion with ``id``, ``prompt``,
``response``, ``label``, ``source``, ``incoherent``, ``note`` and ``split``.  The split is stratified by source:
within each source the ids are shuffled with a fixed seed and the first half is ``train``, the rest ``test``.
The rubric the annotators followed (``<dir>/RUBRIC.md``) is copied next to the bundle.

Example::

    python scripts/bundle_human_labels.py /tmp/labels
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

JUDGE = Path(__file__).resolve().parents[1] / "saesteer" / "resources" / "judge"
SEED = 0
LABELS = ("refusal", "compliance")


def read_labels(folder: Path) -> dict[int, dict]:
    """id -> {label, incoherent, note} from every ``labels_*.jsonl`` in ``folder``; each id exactly once."""
    files = sorted(folder.glob("labels_*.jsonl"))
    if not files:
        raise SystemExit(f"error: no labels_*.jsonl in {folder}")
    out: dict[int, dict] = {}
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            d = json.loads(line)
            i, label = d.get("id"), d.get("label")
            if not isinstance(i, int) or label not in LABELS or not isinstance(d.get("incoherent"), bool):
                raise SystemExit(f"error: {path.name} line {n}: expected id (int), label in {LABELS}, incoherent")
            if i in out:
                raise SystemExit(f"error: {path.name} line {n}: id {i} labelled twice")
            out[i] = {"label": label, "incoherent": d["incoherent"], "note": str(d.get("note") or "")}
    return out


def split_by_source(ids_by_source: dict[str, list[int]], seed: int = SEED) -> dict[int, str]:
    """id -> "train" | "test": half of each source's ids (shuffled with ``seed``) train, the rest test."""
    rng = random.Random(seed)
    out = {}
    for source in sorted(ids_by_source):
        ids = sorted(ids_by_source[source])
        rng.shuffle(ids)
        half = len(ids) // 2
        out.update({i: "train" for i in ids[:half]})
        out.update({i: "test" for i in ids[half:]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path, help="folder with labels_*.jsonl and RUBRIC.md")
    parser.add_argument("--completions", type=Path, default=JUDGE / "refusal_direction.jsonl.gz")
    parser.add_argument("--out", type=Path, default=JUDGE / "saesteer_human.jsonl.gz")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    labels = read_labels(args.labels)
    completions = [json.loads(l) for l in gzip.decompress(args.completions.read_bytes()).decode().splitlines()]
    bad = sorted(i for i in labels if not 0 <= i < len(completions))
    if bad:
        raise SystemExit(f"error: ids {bad[:10]} are not line indices of {args.completions.name}")
    by_source: dict[str, list[int]] = defaultdict(list)
    for i in labels:
        by_source[completions[i]["source"]].append(i)
    split = split_by_source(by_source, args.seed)
    rows = [
        {
            "id": i,
            "prompt": completions[i]["prompt"],
            "response": completions[i]["response"],
            "label": labels[i]["label"],
            "source": completions[i]["source"],
            "incoherent": labels[i]["incoherent"],
            "note": labels[i]["note"],
            "split": split[i],
        }
        for i in sorted(labels)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out, "wb", mtime=0) as fh:  # mtime 0: the same rows give the same bytes
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    rubric = args.labels / "RUBRIC.md"
    if rubric.is_file():
        shutil.copyfile(rubric, args.out.parent / "RUBRIC.md")
    n_train = sum(r["split"] == "train" for r in rows)
    print(f"{len(rows)} labels ({n_train} train, {len(rows) - n_train} test, {len(by_source)} sources) -> {args.out}")


if __name__ == "__main__":
    main()
