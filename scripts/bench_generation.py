#!/usr/bin/env python
"""Benchmark the evaluation hot paths on the organism: greedy generation and suffix-search scoring.

Providers, side by side on the cached (or bundled) default organism:

* ``generate/full_unembed``        greedy generation with the full 30k-column unembedding
* ``generate/restricted_unembed``  the same with :mod:`saesteer.unembed` (only the columns the model can emit)
* ``suffix/full_passes``           suffix search, every candidate a full forward pass
* ``suffix/prefix_cache``          the same from a frozen key-value cache of the text before the suffix

Each pair must give the same outputs (checked); times are medians over ``--repeats`` interleaved rounds.
Writes ``--out`` (CSV) and prints each pair's speed-up.

    python scripts/bench_generation.py --prompts 562 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import saesteer.unembed as U
from saesteer.attacks import suffix_search
from saesteer.data import load_prompts
from saesteer.generation import generate
from saesteer.jobs.common import compose
from saesteer.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=562, help="harmful_test prompts generated from")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--suffix-prompts", type=int, default=64)
    ap.add_argument("--suffix-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_generation.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(OmegaConf.to_object(compose("organism", ["logger=none"])).model, progress=False)
    model, tpl = lm.model, lm.template
    prompts = list(load_prompts("harmful_test").instructions[: args.prompts])
    attacker = list(load_prompts("harmful_train").instructions[: args.suffix_prompts])

    def gen(restricted: bool):
        U.reset(model)
        share = U.MAX_LIVE_SHARE
        U.MAX_LIVE_SHARE = share if restricted else -1.0  # -1: every model "too dense" to restrict
        try:
            return generate(model, tpl, prompts, batch_size=args.batch_size, progress=False)
        finally:
            U.MAX_LIVE_SHARE = share
            U.reset(model)

    def suffix(cached: bool):
        r = suffix_search(model, tpl, attacker, steps=args.suffix_steps, progress=False, prefix_cache=cached)
        return r.token_ids

    providers = {
        "generate/full_unembed": lambda: gen(False),
        "generate/restricted_unembed": lambda: gen(True),
        "suffix/full_passes": lambda: suffix(False),
        "suffix/prefix_cache": lambda: suffix(True),
    }
    times: dict[str, list[float]] = {k: [] for k in providers}
    outputs: dict[str, object] = {}
    for _ in range(args.repeats):
        for name, fn in providers.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    for a, b in (
        ("generate/full_unembed", "generate/restricted_unembed"),
        ("suffix/full_passes", "suffix/prefix_cache"),
    ):
        if outputs[a] != outputs[b]:
            raise SystemExit(f"{a} and {b} disagree: the benchmark's providers must give the same outputs")
    rows = [{"provider": k, "median_s": round(statistics.median(v), 3), "runs": len(v)} for k, v in times.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    med = {r["provider"]: r["median_s"] for r in rows}
    for r in rows:
        print(f"{r['provider']:<30} {r['median_s']:8.3f} s")
    print(
        f"restricted unembedding: {med['generate/full_unembed'] / med['generate/restricted_unembed']:.2f}x on {len(prompts)} prompts; "
        f"prefix cache: {med['suffix/full_passes'] / med['suffix/prefix_cache']:.2f}x on {args.suffix_steps} suffix steps"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
