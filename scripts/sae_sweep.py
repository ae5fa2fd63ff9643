"""Summarise an SAE sweep: which SAE carries refusal in the fewest features.

Reads the run directories of one or more Hydra multiruns of ``saesteer pipeline 'stages=[train-sae,search]'`` (or
``saesteer search``) with ``search.curve_ks`` set, and writes, into ``--out``:

- ``sae_sweep.csv`` and ``sae_sweep.md``: one row per SAE (architecture, hook, d_sae, k, L0, explained variance, CE
  loss recovered), ``k_at_bypass`` per ranking (the smallest k whose edit takes harmful_test refusal <= 0.10 at
  KL <= 0.1), the lowest refusal any ranking reaches at KL <= 0.1 with its k, and at k = 4, 8 and 16;
- ``k_at_bypass_vs_ev.png``: the best ranking's k_at_bypass against explained variance (SAEs that reach no bypass
  at k <= the curve's largest k drawn above the axis).

``--rows`` adds the rows of an earlier ``sae_sweep.csv`` (a sweep whose run directories are gone).

    python scripts/sae_sweep.py multirun/pipeline/sweep_architecture multirun/pipeline/sweep_width --out docs/measurements/organism_sae_sweep
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SHOWN_KS = (4, 8, 16)  # the lowest refusal at these k is a column of its own
CURVE = re.compile(r"(?:search/)?curve_refusal_(\w+?)_(harmless_mean|zero|decoder_mean)_k(\d+)")


def _get(m: dict, key: str):
    return m.get(key, m.get(f"train_sae/{key}", m.get(f"search/{key}")))


def row(run: Path) -> dict:
    """One SAE's figures from a run directory's metrics.json."""
    m = json.loads((run / "metrics.json").read_text())
    curve: dict[tuple[str, int], tuple[float, float]] = {}
    for key, value in m.items():
        hit = CURVE.fullmatch(key)
        if hit and hit.group(2) == "harmless_mean":
            kl = m.get(key.replace("curve_refusal_", "curve_kl_"), float("nan"))
            curve[(hit.group(1), int(hit.group(3)))] = (value, kl)
    if not curve:
        raise SystemExit(f"{run}: no curve_refusal_* metrics (run the search with search.curve_ks=[...])")
    rankings = sorted({r for r, _ in curve})
    within = [(refusal, k, r) for (r, k), (refusal, kl) in curve.items() if kl <= 0.1]
    best = min(within) if within else (float("nan"), None, None)
    out = {
        "run": str(run),
        "architecture": _get(m, "architecture"),
        "hook": _get(m, "hook"),
        "d_sae": _get(m, "d_sae"),
        "l0": _get(m, "l0"),
        "explained_variance": _get(m, "explained_variance"),
        "ce_loss_recovered": _get(m, "ce_loss_recovered"),
        "max_k": max(k for _, k in curve),
        "lowest_refusal_kl_0.1": best[0],
        "at_k": best[1],
        "by": best[2],
        "direction_at_hook": _get(m, "direction_ablation_sae_hook_harmful_refusal"),
    }
    for k in SHOWN_KS:
        at = [refusal for (_, kk), (refusal, kl) in curve.items() if kk == k and kl <= 0.1]
        out[f"lowest_refusal_k{k}"] = min(at) if at else None
    for r in rankings:
        out[f"k_at_bypass_{r}"] = _get(m, f"k_at_bypass_{r}")
    return out


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier ``sae_sweep.csv``, numbers parsed back; "none" is None (no bypass at any k, say) and an
    empty cell a figure that sweep did not measure (left out of the row)."""

    def parse(v: str):
        if v == "none":
            return None
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def fmt(v) -> str:
    if v is None:
        return "none"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="multirun folders (their numbered run directories are read)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=Path, action="append", default=[], help="an earlier sae_sweep.csv to include")
    args = ap.parse_args()
    runs = [p.parent for s in args.sweeps for p in sorted(s.glob("*/metrics.json"))]
    if not runs:
        raise SystemExit(f"no */metrics.json under {[str(s) for s in args.sweeps]}")
    rows = [r for path in args.rows for r in read_rows(path)] + [row(r) for r in runs]
    cols = list(dict.fromkeys(c for r in rows for c in r))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sae_sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({k: "none" if v is None else v for k, v in r.items()} for r in rows)  # "": not measured
    shown = [c for c in cols if c != "run"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(fmt(r[c]) if c in r else "-" for c in shown) + " |" for r in rows]  # -: not measured
    (args.out / "sae_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    top = max(r["max_k"] for r in rows) * 2
    markers = "osDvP*Xph<>"
    for i, r in enumerate(r for r in rows if r["explained_variance"] is not None):  # a search-only run has none
        ks = [r[c] for c in r if c.startswith("k_at_bypass_") and r[c] is not None]
        y = min(ks) if ks else top
        label = f"{r['architecture']}, d_sae {r['d_sae']}, block {r['hook'].split('.')[1]}, L0 {r['l0']:.0f}"
        ax.scatter(
            r["explained_variance"], y, marker=markers[i % len(markers)], s=60, label=label + ("" if ks else " (none)")
        )
    ax.set_yscale("log", base=2)
    ax.axhline(top / 2, ls=":", c="grey")
    ax.set_xlabel("explained variance")
    ax.set_ylabel("k at bypass, best ranking")
    ax.set_title("features needed to bypass refusal (refusal <= 0.10 at KL <= 0.1); top row: none at any k", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(args.out / "k_at_bypass_vs_ev.png", dpi=120)


if __name__ == "__main__":
    main()
