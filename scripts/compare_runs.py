#!/usr/bin/env python
"""Compare the figures of two run directories' ``metrics.json`` (a refactor must leave them unchanged).

Numbers are equal within ``--atol`` (NaN equals NaN), anything else must be equal; timings and paths are skipped.
Exit status 1 when a figure differs or a key is in one run only.

Example::

    python scripts/compare_runs.py runs/pipeline/BEFORE runs/pipeline/AFTER
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SKIPPED = ("seconds", "_time", "reused", "path")


def _load(run: str) -> dict:
    path = Path(run)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"error: {path} is not a metrics.json or a run directory holding one")
    return json.loads(path.read_text())


def _equal(a, b, atol: float) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers:
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol
    return a == b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--atol", type=float, default=1e-6)
    args = parser.parse_args()
    a, b = _load(args.before), _load(args.after)
    keys = sorted(k for k in set(a) | set(b) if not any(s in k for s in SKIPPED))
    only = [k for k in keys if (k in a) != (k in b)]
    differ = [k for k in keys if k in a and k in b and not _equal(a[k], b[k], args.atol)]
    print(
        f"{len(keys) - len(only) - len(differ)} figures equal (atol {args.atol:g}), {len(differ)} differ, "
        f"{len(only)} in one run only; {len(set(a) | set(b)) - len(keys)} timing / path keys skipped"
    )
    for k in differ:
        print(f"  {k}: {a[k]!r} -> {b[k]!r}")
    for k in only:
        print(f"  {k}: only in {'before' if k in a else 'after'}")
    return 1 if differ or only else 0


if __name__ == "__main__":
    sys.exit(main())
