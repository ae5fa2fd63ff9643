"""Print the refusal-vs-k table (markdown) of a search run directory's metrics.json.

    python scripts/refusal_vs_k.py docs/measurements/organism_search_curves

Each cell: harmful_test refusal with the ranking's first k features edited at the SAE's hook, and the next-token KL on
harmless_test in brackets; the last rows give k_at_bypass_<ranking> (refusal <= 0.10 at KL <= 0.1) and the
direction's affine ablation at the same hook.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def table(metrics: dict) -> str:
    cells = {}
    for key, value in metrics.items():
        m = re.fullmatch(r"(?:search/)?curve_refusal_(\w+?)_(harmless_mean|zero|decoder_mean)_k(\d+)", key)
        if m:
            ranking, edit, k = m.group(1), m.group(2), int(m.group(3))
            kl = metrics.get(key.replace("curve_refusal_", "curve_kl_"))
            cells[(ranking, edit, k)] = f"{value:.3f}" + (f" ({kl:.3f})" if kl is not None else "")
    if not cells:
        raise SystemExit("no curve_refusal_* metrics: run `saesteer search search.curve_ks=[1,2,4,8]` first")
    ks = sorted({k for _, _, k in cells})
    rows = sorted({(r, e) for r, e, _ in cells}, key=lambda x: (x[1], x[0]))
    out = ["| ranking | edit | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for r, e in rows:
        out.append(f"| {r} | {e} | " + " | ".join(cells.get((r, e, k), "") for k in ks) + " |")
    out.append("")
    prefix = "search/" if any(k.startswith("search/") for k in metrics) else ""
    at = {r: metrics.get(f"{prefix}k_at_bypass_{r}") for r, _ in rows}
    out.append("k_at_bypass: " + ", ".join(f"{r} {'none <= 64' if v is None else v}" for r, v in at.items()))
    ref = metrics.get(f"{prefix}direction_ablation_sae_hook_harmful_refusal")
    kl = metrics.get(f"{prefix}direction_ablation_sae_hook_kl_harmless")
    if ref is not None:
        out.append(
            f"direction's affine ablation at the same hook: refusal {ref:.3f}" + (f" (KL {kl:.3f})" if kl else "")
        )
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(table(json.loads((Path(sys.argv[1]) / "metrics.json").read_text())))
