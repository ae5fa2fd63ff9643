"""Operating points of a trained organism: what each calibrate_harmless_fpr q would give, without retraining.

The refusal opener's bias is the only thing ``calibrate_harmless_fpr`` changes after training
(saesteer.organism.train.calibrate_refusal_bias), so one set of first-token margins gives the
organism's figures at every q: harmful_test, harmless_test (the job's seeded sample of 1,000 and
all 6,266 prompts) and the over-refusal set, all by first-token refusal.

    python scripts/organism_operating_points.py PATH [--q 0.015,0.017,0.02] [--csv out.csv]

PATH is an organism directory (``model.safetensors`` + ``organism.json``), e.g. the cache entry
``$SAESTEER_CACHE/organism/<key>`` that ``saesteer organism`` logs.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from saesteer.chat import get_template
from saesteer.config import DataConfig
from saesteer.data import load_prompts
from saesteer.directions import first_token_refusal_margin
from saesteer.organism.train import CALIBRATION_SET, bias_for_rate, load_organism


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--q", default="0.015,0.017,0.018,0.019,0.02,0.022,0.025", help="harmless_val refusal rates")
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    qs = [float(q) for q in args.q.split(",")]
    if not all(0.0 < q < 1.0 for q in qs):
        raise SystemExit(f"--q {args.q!r}: expected rates in (0, 1)")
    res = load_organism(args.path)
    model, bias = res.model, float(res.metadata.get("refusal_bias", 0.0))
    template = get_template("organism")
    data = DataConfig()
    sets = {name: load_prompts(name) for name in ("harmful_test", "harmless_test", "overrefusal")}
    # margins of the organism before its calibration shift (the shift is added to every margin alike)
    margins = {
        k: first_token_refusal_margin(model, template, list(v.instructions)).double() - bias for k, v in sets.items()
    }
    full = sets["harmless_test"]
    where = {t: i for i, t in enumerate(full.instructions)}
    sample = full.take(data.n_test_harmless, seed=data.seed)  # the job's sample: its rows of the full pass
    margins["harmless_test_full"] = margins["harmless_test"]
    margins["harmless_test"] = margins["harmless_test_full"][[where[t] for t in sample.instructions]]
    margins = {k: margins[k] for k in ("harmful_test", "harmless_test", "harmless_test_full", "overrefusal")}
    val = first_token_refusal_margin(model, template, list(load_prompts(CALIBRATION_SET).instructions)).double() - bias
    rows = []
    for q in qs:
        shift = bias_for_rate(val, q)  # as calibrate_refusal_bias sets it
        row = {"q": q, "bias": round(shift, 4)}
        row.update({name: round(float((m + shift > 0).double().mean()), 4) for name, m in margins.items()})
        rows.append(row)
    print(f"organism {args.path} (trained at refusal bias {bias:+.3f})")
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
