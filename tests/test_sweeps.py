"""Hydra multirun sweeps with the joblib launcher on 2 workers, and the sweep summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from tests.conftest import tiny_organism_overrides


def test_joblib_sweep_runs_every_point_and_writes_a_summary(tiny_organism, tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        sys.executable,
        "-m",
        "saesteer.cli",
        "generate",
        "--multirun",
        "prompts=harmful_val",
        "limit=4",
        "eval.max_new_tokens=3,5",
        "logger.mode=disabled",
        "progress=false",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        *tiny_organism_overrides(),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert runs == ["0", "1"], runs
    with open(sweep / "sweep_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["eval.max_new_tokens"] for r in rows) == ["3", "5"]
    for r in rows:
        m = json.loads((sweep / r["run"] / "metrics.json").read_text())
        assert float(r["refusal_rate"]) == m["refusal_rate"]
    assert "| run |" in (sweep / "sweep_summary.md").read_text()


def test_sweep_group_is_one_per_sweep():
    from saesteer.sweeps import sweep_group

    assert sweep_group("directions", "multirun/directions/2026-11-29_10-00-00") == "directions-2026-11-29_10-00-00"
