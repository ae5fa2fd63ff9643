"""Break what each job test pins and check that the test fails (a mutation check of the job tests).

Each mutation edits one line of a job in a temporary git worktree of HEAD and runs the one test that pins the
behaviour the line implements; the test must fail.  Nothing in the working tree is touched.

    python scripts/break_job_tests.py            # every mutation
    python scripts/break_job_tests.py search     # the ones whose name contains "search"

Each test runs twice, on the job as written (it must pass) and broken (it must fail with an assertion).
Prints one row per mutation and exits 1 unless every test passes unchanged and fails broken.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, line as written, line broken, the test that must fail)
MUTATIONS = [
    (
        "search: bypass judged on harmful_val instead of harmful_test (wrong prompt split)",
        "saesteer/jobs/search.py",
        'test_h = list(load_role(cfg.data, "harmful_test").instructions)',
        'test_h = list(load_role(cfg.data, "harmful_val").instructions)',
        "tests/jobs/test_jobs.py::test_search_job_bypass_and_random_k_control_match_a_per_prompt_reference",
    ),
    (
        "anchor: the anchored defence applies no anchor (defences swapped for the undefended one)",
        "saesteer/jobs/anchor.py",
        "            lambda: art.anchors(),",
        "            lambda: [],",
        "tests/jobs/test_jobs.py::test_anchor_job_ablation_asr_and_harmless_cost_match_a_per_prompt_reference",
    ),
    (
        "backups: the downstream cut skips the top-ranked feature (wrong features)",
        "saesteer/jobs/backups.py",
        "        refusal_scores[cut].ranking,",
        "        refusal_scores[cut].ranking[1:],",
        "tests/jobs/test_analysis_jobs.py::test_backups_job_refusal_with_the_top_k_cut_matches_a_per_prompt_reference",
    ),
    (
        "emergent: tuned refusal of other categories measured on the direction prompts (wrong prompt split)",
        "saesteer/jobs/emergent.py",
        '"other": refusal(other_eval, [lora], "tuned other"),',
        '"other": refusal(other_dir, [lora], "tuned other"),',
        "tests/jobs/test_analysis_jobs.py::test_emergent_job_refusal_of_the_other_categories_matches_a_per_prompt_reference",
    ),
]


def run(name: str, file: str, old: str, new: str | None, test: str) -> tuple[str, float]:
    """How ``test`` ends on HEAD with ``old`` replaced by ``new`` in ``file`` (``new=None``: unchanged):
    ``passed``, ``failed`` (an assertion of the test) or ``error`` (anything else: a broken setup proves nothing)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), "HEAD"], cwd=ROOT, check=True)
        try:
            path = tree / file
            text = path.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"{name}: expected one {old!r} in {file}, found {text.count(old)}")
            if new is not None:
                path.write_text(text.replace(old, new))
            env = dict(os.environ, PYTHONPATH=str(tree))
            t0 = time.time()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            out = proc.stdout + proc.stderr
            if proc.returncode == 0:
                outcome = "passed"
            elif "1 failed" in out and "AssertionError" in out and " error" not in out.splitlines()[-1]:
                outcome = "failed"
            else:
                outcome = "error"
            return outcome, time.time() - t0
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def main() -> int:
    pick = sys.argv[1] if len(sys.argv) > 1 else ""
    bad = 0
    print("| mutation | test | unchanged job | broken job | seconds |\n|---|---|---|---|---|")
    for name, file, old, new, test in MUTATIONS:
        if pick not in name:
            continue
        control, s0 = run(name, file, old, None, test)
        broken, s1 = run(name, file, old, new, test)
        bad += not (control == "passed" and broken == "failed")
        print(f"| {name} | `{test.split('::')[1]}` | {control} | {broken} | {s0 + s1:.0f} |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
