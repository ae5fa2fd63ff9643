"""The README's library example runs (on the tiny organism and an SAE saved to disk)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from tests.conftest import TINY_ORGANISM
from tests.saes import random_sae

README = Path(__file__).parents[1] / "README.md"


def test_readme_library_example_runs(tiny_organism, tmp_path):
    model, _, _ = tiny_organism
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    for target in ('ModelConfig(name="organism")', '"path/to/sae"', "[:64]"):
        assert target in code, target
    sae = random_sae("standard", model.cfg.d_model, 64, "blocks.1.hook_resid_pre")
    sae.save_model(str(tmp_path / "sae"))
    code = (code.replace('ModelConfig(name="organism")', f"ModelConfig(name='organism', organism=OrganismConfig(**{TINY_ORGANISM!r}))")
            .replace('"path/to/sae"', repr(str(tmp_path / "sae"))).replace("[:64]", "[:24]"))
    out = io.StringIO()
    from saesteer.organism.config import OrganismConfig

    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"OrganismConfig": OrganismConfig, "__name__": "readme"})
    names = ("baseline", "direction ablated", "features to harmless means", "ablated + anchored")
    lines = [l for l in out.getvalue().splitlines() if l.startswith(names)]  # TransformerLens prints too
    assert [l.rsplit(" ", 1)[0] for l in lines] == ["baseline", "direction ablated", "features to harmless means", "ablated + anchored"]
    rates = [float(l.rsplit(" ", 1)[1]) for l in lines]
    assert all(0.0 <= x <= 1.0 for x in rates)
