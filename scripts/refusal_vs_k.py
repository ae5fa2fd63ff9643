"""Print the refusal-vs-k table (markdown) of a search run directory's metrics.json.

    python scripts/refusal_vs_k.py docs/measurements/organism_search_curves [--plot refusal_vs_k.png]

Each cell: harmful_test refusal with the ranking's first k features edited at the SAE's hook, and the next-token KL on
harmless_test in brackets; the last rows give k_at_bypass_<ranking> (refusal <= 0.10 at KL <= 0.1) and the
direction's affine ablation at the same hook.  ``--plot PATH`` redraws the run's refusal-vs-k plot from its metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from saesteer.report import markdown_table
from saesteer.report.search import curve_points, curve_table, save_k_curve


def table(metrics: dict) -> str:
    points = curve_points(metrics)
    if not points:
        raise SystemExit("no curve_refusal_* metrics: run `saesteer search search.curve_ks=[1,2,4,8]` first")
    headers, rows = curve_table(points)
    out = [markdown_table(headers, rows), ""]
    prefix = "search/" if any(k.startswith("search/") for k in metrics) else ""
    rankings = dict.fromkeys(p.ranking for p in points)
    at = {r: metrics.get(f"{prefix}k_at_bypass_{r}") for r in rankings}
    ks = max(p.k for p in points)
    out.append("k_at_bypass: " + ", ".join(f"{r} {f'none <= {ks}' if v is None else v}" for r, v in at.items()))
    ref = metrics.get(f"{prefix}direction_ablation_sae_hook_harmful_refusal")
    kl = metrics.get(f"{prefix}direction_ablation_sae_hook_kl_harmless")
    if ref is not None:
        out.append(
            f"direction's affine ablation at the same hook: refusal {ref:.3f}" + (f" (KL {kl:.3f})" if kl else "")
        )
    return "\n".join(out)


def plot(metrics: dict, path: Path) -> Path:
    prefix = "search/" if any(k.startswith("search/") for k in metrics) else ""
    refs = {
        "direction at the SAE hook": metrics.get(f"{prefix}direction_ablation_sae_hook_harmful_refusal"),
        "no edit": metrics.get(f"{prefix}baseline_harmful_refusal"),
    }
    return save_k_curve(curve_points(metrics), {k: v for k, v in refs.items() if v is not None}, path)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "--plot"):
        raise SystemExit(__doc__)
    metrics = json.loads((Path(args[0]) / "metrics.json").read_text())
    print(table(metrics))
    if len(args) == 3:
        print(f"wrote {plot(metrics, Path(args[2]))}")
