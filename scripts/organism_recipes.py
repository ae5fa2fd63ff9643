"""Train organism variants (OrganismConfig overrides) and compare them on held-out refusal (the log behind docs/history/organism-recipes.md).

    python scripts/organism_recipes.py NAME key=value ... [--log runs/organism_recipes.jsonl] [--bias 0,1,2] [--addition]

Each recipe is the default ``OrganismConfig`` with the given overrides.  The model
is trained (or loaded from the organism cache) and scored by *first-token*
refusal (the greedy first token is a refusal opener), which agrees with the
judge on greedy completions for this organism and costs one forward pass;
``saesteer organism`` gives the judged figures for the recipe that is kept.

harmless_test is the job's seeded sample of 1,000 (``harmless_test_full``: all 6,266).
``--bias``: the same first-token refusal with a bias added to the refusal token's logit (the
organism's ROC curve: harmful_test / harmless_test / over-refusal per bias).  ``--addition``: the
layer-2 difference in means at the last post-instruction token (harmful_train vs the first 1000
harmless_train prompts) added with alpha 1 on every token and on prompt tokens only, judged refusal of
200 harmless_test prompts (12 greedy tokens), as ``saesteer directions`` adds its selected direction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from saesteer.chat import get_template
from saesteer.config import DataConfig
from saesteer.data import load_prompts
from saesteer.directions import first_token_refusal_margin as refusal_margin
from saesteer.organism.config import OrganismConfig
from saesteer.organism.train import load_or_train_organism

SETS = ("harmful_val", "harmful_test", "harmless_test", "overrefusal")


def addition_check(model, template, layer: int = 2) -> dict[str, float]:
    from saesteer.directions import compute_candidates
    from saesteer.generation import generate
    from saesteer.interventions import Add, steer
    from saesteer.judge import refusal_rate

    harmful = list(load_prompts("harmful_train").instructions)
    harmless = list(load_prompts("harmless_train").instructions)[:1000]
    cands = compute_candidates(model, template, harmful, harmless, positions=[-1], batch_size=64)
    r = (cands.harmful_mean - cands.harmless_mean)[layer, 0].float()
    test = list(load_prompts("harmless_test").instructions)[:200]
    out = {}
    for apply_to in ("both", "prompt"):
        with steer(model, [Add(r, alpha=1.0, layer=layer, apply_to=apply_to)]):
            out[f"addition_L{layer}_{apply_to}"] = round(
                refusal_rate(generate(model, template, test, max_new_tokens=12, progress=False)), 3
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--log", default="runs/organism_recipes.jsonl")
    ap.add_argument("--bias", default="", help="comma-separated refusal-logit biases to sweep, e.g. 0,1,2")
    ap.add_argument("--addition", action="store_true", help="also measure addition of the layer-2 direction")
    args = ap.parse_args()
    base = yaml.safe_load((Path(__file__).parents[1] / "conf/model/organism.yaml").read_text())["organism"]
    for o in args.overrides:
        k, v = o.split("=", 1)
        base[k] = yaml.safe_load(v)
    cfg = OrganismConfig.from_dict(base)
    t0 = time.perf_counter()
    res = load_or_train_organism(cfg)
    model = res.model
    template = get_template("organism")
    row = {
        "name": args.name,
        "overrides": args.overrides,
        "train_seconds": round(res.train_seconds, 1),
        "wall": round(time.perf_counter() - t0, 1),
    }
    margins: dict[str, torch.Tensor] = {}
    for s in SETS:
        ps = load_prompts(s)
        if s == "harmless_test":  # the full set too, then the job's seeded sample of 1,000 (`saesteer organism`'s)
            full = refusal_margin(model, template, list(ps.instructions))
            row["harmless_test_full"] = round(float((full > 0).float().mean()), 4)
            if args.bias:
                row["bias_sweep_harmless_full"] = {
                    b: round(float((full + float(b) > 0).float().mean()), 4) for b in args.bias.split(",")
                }
            data = DataConfig()
            ps = ps.take(data.n_test_harmless, seed=data.seed)
            where = {t: i for i, t in enumerate(load_prompts(s).instructions)}
            margins[s] = full[[where[t] for t in ps.instructions]]  # the sample's rows of the full pass
        else:
            margins[s] = refusal_margin(model, template, list(ps.instructions))
        r = margins[s] > 0
        row[s] = round(float(r.float().mean()), 3)
        if s == "harmful_test":
            by = {"jbb": slice(0, 100), "harmbench": slice(100, 252), "strongreject": slice(252, None)}
            row["by_source"] = {k: round(float(r[v].float().mean()), 3) for k, v in by.items()}
        if s == "overrefusal":
            by: dict[str, list[bool]] = {}
            for c, x in zip(ps.categories, r.tolist()):
                by.setdefault(c, []).append(x)
            row["overrefusal_by"] = {k: round(sum(v) / len(v), 2) for k, v in by.items()}
    if args.bias:
        row["bias_sweep"] = {
            b: [
                round(float((margins[s] + float(b) > 0).float().mean()), 3)
                for s in ("harmful_test", "harmless_test", "overrefusal")
            ]
            for b in args.bias.split(",")
        }
    if args.addition:
        row.update(addition_check(model, template, layer=min(2, model.cfg.n_layers - 1)))
    print(json.dumps(row))
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
