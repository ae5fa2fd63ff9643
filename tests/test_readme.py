"""The README: its library example runs (on the tiny organism and an SAE saved to disk), and it stays a user's README."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from tests.conftest import TINY_ORGANISM
from tests.saes import random_sae

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
FIRST_COMMANDS = [
    "scripts/run.sh     # set up .venv, run the main job on the refusal organism (quick budget), print its results",
    "scripts/test.sh    # set up .venv, run the test suite",
]


def test_readme_library_example_runs(tiny_organism, tmp_path):
    model, _, _ = tiny_organism
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip("\n").splitlines()) <= 10, "the README's library example is at most 10 lines"
    for target in ('ModelConfig(name="organism")', '"path/to/sae"', "[:64]"):
        assert target in code, target
    sae = random_sae("standard", model.cfg.d_model, 64, "blocks.1.hook_resid_pre")
    sae.save_model(str(tmp_path / "sae"))
    code = (
        code.replace(
            'ModelConfig(name="organism")',
            f"ModelConfig(name='organism', organism=OrganismConfig(**{TINY_ORGANISM!r}))",
        )
        .replace('"path/to/sae"', repr(str(tmp_path / "sae")))
        .replace("[:64]", "[:24]")
    )
    out = io.StringIO()
    from saesteer.organism.config import OrganismConfig

    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"OrganismConfig": OrganismConfig, "__name__": "readme"})
    names = ("baseline", "direction ablated", "features to harmless means", "ablated + anchored")
    lines = [l for l in out.getvalue().splitlines() if l.startswith(names)]  # TransformerLens prints too
    assert [l.rsplit(" ", 1)[0] for l in lines] == [
        "baseline",
        "direction ablated",
        "features to harmless means",
        "ablated + anchored",
    ]
    rates = [float(l.rsplit(" ", 1)[1]) for l in lines]
    assert all(0.0 <= x <= 1.0 for x in rates)


def test_readme_starts_with_the_two_commands():
    """scripts/check_fresh.sh runs the first two commands of the README's first bash block."""
    text = README.read_text()
    lines = text.splitlines()
    assert (
        lines[0] == "# saesteer"
        and lines[1] == ""
        and lines[2]
        and not lines[2].startswith(("#", "`"))
        and lines[3] == ""
    )
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert text.index("```") == block.start(), "the first code block is the bash block"
    assert block.group(1).splitlines() == FIRST_COMMANDS
    after = text[block.end() :].lstrip("\n").split("\n\n")[0]
    assert "requirements.lock" in after and "SAESTEER_UNLOCKED=1" in after and "scripts/lock.sh" in after


def test_readme_is_a_users_readme():
    data = README.read_bytes()
    assert len(data) <= 8192, f"README.md is {len(data)} bytes; at most 8,192"
    text = data.decode()
    assert max(len(l) for l in text.splitlines()) < 1000
    jobs = re.findall(r"^\| `saesteer ([a-z-]+)` \|", text, re.M)
    from saesteer.jobs.registry import JOBS

    assert sorted(jobs) == sorted(JOBS)  # every job in the table, once
    assert text.count("<!-- results:start -->") == 1 and text.count("<!-- results:end -->") == 1
    assert "python scripts/check_experiments.py" in text


def test_no_history_outside_docs_history():
    """Recipe, session and issue numbers belong to docs/history/ only."""
    pattern = re.compile(r"recipe [0-9]|session [0-9]|issue [0-9]")
    files = [README, *sorted((ROOT / "docs").glob("*.md"))]
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_markdown_links_resolve():
    files = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for p in files:
        for target in re.findall(r"\]\(([^)\s]+)\)", p.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (p.parent / path).resolve() if path else p
            if not dest.exists():
                broken.append(f"{p.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{p.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    out = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#+ (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_the_package_exports_its_entry_points_lazily():
    """``import saesteer as ss; ss.load_model`` is the function of saesteer.models, loaded on first use."""
    import subprocess
    import sys

    import saesteer
    from saesteer.interventions import steer
    from saesteer.models import load_model

    assert saesteer.load_model is load_model and saesteer.steer is steer
    assert set(saesteer.__all__) <= set(dir(saesteer))
    code = (
        "import sys, saesteer; assert 'saesteer.models' not in sys.modules and 'torch' not in sys.modules; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "ok", res.stderr[-2000:]
    try:
        saesteer.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
