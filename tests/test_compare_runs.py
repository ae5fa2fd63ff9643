"""scripts/compare_runs.py: equal figures pass, a changed or missing figure fails and is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"


def _run(tmp_path, before: dict, after: dict):
    for name, m in (("a", before), ("b", after)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True
    )


def test_equal_figures_pass_and_timings_are_skipped(tmp_path):
    res = _run(
        tmp_path,
        {"x/rate": 0.5, "x/nan": float("nan"), "x/stage_seconds": 3.0, "x/name": "a"},
        {"x/rate": 0.5 + 1e-9, "x/nan": float("nan"), "x/stage_seconds": 9.0, "x/name": "a"},
    )
    assert res.returncode == 0, res.stdout
    assert res.stdout.startswith(
        "3 figures equal (atol 1e-06), 0 differ, 0 in one run only; 1 timing / path keys skipped"
    )


def test_a_changed_or_missing_figure_fails(tmp_path):
    res = _run(tmp_path, {"x/rate": 0.5, "x/old": 1}, {"x/rate": 0.51, "x/new": 1})
    assert res.returncode == 1
    assert "  x/rate: 0.5 -> 0.51" in res.stdout
    assert "  x/old: only in before" in res.stdout and "  x/new: only in after" in res.stdout
