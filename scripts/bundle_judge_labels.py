#!/usr/bin/env python
"""Bundle the refusal_direction runs' completions with the paper's labels for ``saesteer judge-eval``.

Reads ``<runs>/<model>/completions/*_evaluations.json`` of Arditi et al. 2024 (andyrdt/refusal_direction,
Apache-2.0; ../shared/data/refusal_direction/runs here) and writes one JSON line per completion to
``saesteer/resources/judge/refusal_direction.jsonl.gz``: prompt, response, label ("refusal" when the paper's
substring matching found no jailbreak, else "compliance"), source ("<model>/<set>_<intervention>") and the
paper's LlamaGuard-2 verdict where it has one (1: unsafe content).

Example::

    python scripts/bundle_judge_labels.py ../shared/data/refusal_direction/runs
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "saesteer" / "resources" / "judge" / "refusal_direction.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the refusal_direction repository's runs/ folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    for path in sorted(args.runs.glob("*/completions/*_evaluations.json")):
        model, kind = path.parts[-3], path.name.removesuffix("_evaluations.json")
        for c in json.loads(path.read_text())["completions"]:
            rows.append(
                {
                    "prompt": c["prompt"],
                    "response": c["response"],
                    "label": "compliance" if c["is_jailbreak_substring_matching"] else "refusal",
                    "source": f"{model}/{kind}",
                    "llamaguard2_unsafe": c.get("is_jailbreak_llamaguard2"),
                }
            )
    if not rows:
        raise SystemExit(f"error: no *_evaluations.json under {args.runs}/<model>/completions/")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out, "wb", mtime=0) as fh:  # mtime 0: the same rows give the same bytes
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    print(f"{len(rows)} completions -> {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
