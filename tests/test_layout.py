"""The repository's top-level folders never shadow an installed distribution.

Python puts the current directory (``python -c``, a script saved next to the README) or the
test root (pytest's default import mode) first on ``sys.path``. A top-level package of this
repository whose name equals a top-level module of an installed distribution would then be
imported in its place: ``transformers`` imports the PyPI distribution ``kernels`` when it is
installed, and a repository-root ``kernels/__init__.py`` once broke ``import transformer_lens``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_DISTRIBUTION = "saesteer"


def _root_names() -> dict[str, str]:
    """Top-level names Python could import from the repository root: name -> kind.

    ``regular``: a folder with ``__init__.py`` or a ``.py`` file (wins over any later
    ``sys.path`` entry); ``namespace``: a folder without ``__init__.py`` (yields to a regular
    package of the same name anywhere on ``sys.path``).
    """
    names: dict[str, str] = {}
    for p in ROOT.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir() and p.name.isidentifier():
            names[p.name] = "regular" if (p / "__init__.py").is_file() else "namespace"
        elif p.suffix == ".py" and p.stem.isidentifier():
            names[p.stem] = "regular"
    return names


def _installed_modules() -> dict[str, list[str]]:
    """Top-level module name -> the installed distributions providing it (saesteer excluded)."""
    out = {}
    for name, dists in importlib.metadata.packages_distributions().items():
        others = [d for d in dists if d.lower() != OWN_DISTRIBUTION]
        if others:
            out[name] = others
    return out


def test_no_regular_top_level_package_equals_an_installed_module():
    installed = _installed_modules()
    clashes = {name: installed[name] for name, kind in _root_names().items() if kind == "regular" and name in installed}
    assert not clashes, (
        f"top-level packages of the repository shadow installed distributions: {clashes}; "
        "rename the folder or drop its __init__.py"
    )


def test_kernels_folder_is_not_a_regular_package():
    # The folder that holds saesteer.kernels' source: a namespace folder only.
    assert _root_names().get("kernels") == "namespace"
    assert (ROOT / "kernels" / "saesteer_kernels" / "__init__.py").is_file()


def test_namespace_folders_yield_to_installed_distributions():
    """From the repository root, an installed distribution's module wins over a same-named folder."""
    installed = _installed_modules()
    names = [n for n, kind in _root_names().items() if kind == "namespace" and n in installed]
    if not names:
        pytest.skip("no top-level folder shares its name with an installed distribution's module")
    code = (
        "import importlib, json\n"
        "out = {}\n"
        f"for name in {names!r}:\n"
        "    m = importlib.import_module(name)\n"
        "    out[name] = [m.__file__] if getattr(m, '__file__', None) else list(m.__path__)\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    prefix = Path(sys.prefix).resolve()
    for name, where in json.loads(res.stdout.strip().splitlines()[-1]).items():
        for w in map(Path, where):
            w = w.resolve()
            from_repo = w.is_relative_to(ROOT) and not w.is_relative_to(prefix)
            assert not from_repo, f"`import {name}` from the repository root resolved to {w}"


def test_heavy_dependencies_import_from_the_repository_root():
    code = "import saesteer, saesteer.kernels, transformer_lens, transformers, sae_lens; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


def test_every_package_of_saesteer_is_installed():
    """pyproject's explicit package list names every folder of saesteer/ with an __init__.py (a wheel installs no other)."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "saesteer").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
