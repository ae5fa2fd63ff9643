#!/usr/bin/env python
"""Benchmark what the learned judge adds to ``saesteer generate`` on the organism.

``saesteer generate`` greedily completes a prompt set with :func:`saesteer.evaluate.refusal_eval` and judges every
completion.  This times that call on ``--prompts`` prompts (harmful_test, then harmless_test) with the default
substring judge and with the learned judge (``judge=learned``, the bundled head), interleaved over ``--repeats``
rounds.  The learned judge's embedding cache is cleared before each of its rounds, so every round embeds its
completions afresh; its first round also loads MiniLM (reported apart as ``learned_first``).  Writes ``--out`` (CSV:
judge, round, seconds, refusal rate) and prints the median times, their ratio, and the learned judge's time alone on
the last round's completions as a share of generate's (steadier than the ratio on a busy machine).

    python scripts/bench_judge.py --prompts 500 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from saesteer.data import load_prompts
from saesteer.evaluate import refusal_eval
from saesteer.jobs.common import compose
from saesteer.judge import RefusalJudge
from saesteer.judge.learned import LearnedJudge, clear_cache
from saesteer.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", default="runs/bench_judge.csv")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = OmegaConf.to_object(compose("generate", ["logger=none", "prompts=harmful_test"]))
    lm = load_model(cfg.model, progress=False)
    prompts = list(load_prompts("harmful_test").instructions) + list(load_prompts("harmless_test").instructions)
    prompts = prompts[: args.prompts]
    if len(prompts) < args.prompts:
        raise SystemExit(f"error: only {len(prompts)} prompts in harmful_test + harmless_test")
    judges = {"substring": RefusalJudge(), "learned": LearnedJudge()}
    rows = []
    for r in range(args.repeats + 1):  # round 0 warms generation up (and loads MiniLM): reported, not in the medians
        for name, judge in judges.items():
            clear_cache()
            t0 = time.perf_counter()
            res = refusal_eval(lm.model, lm.template, prompts, judge=judge, **cfg.eval.refusal_kwargs())
            rows.append((name if r else f"{name}_first", r, time.perf_counter() - t0, res.rate))
    # the judge alone, on the completions of the last round
    responses = res.responses
    for name, judge in judges.items():
        clear_cache()
        t0 = time.perf_counter()
        judge.batch(responses, prompts) if name == "learned" else judge.batch(responses)
        rows.append((f"{name}_judge_only", 0, time.perf_counter() - t0, float("nan")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["judge", "round", "seconds", "refusal_rate"])
        w.writerows(rows)
    med = {k: statistics.median(s for n, _, s, _ in rows if n == k) for k in {n for n, *_ in rows}}
    print(f"{len(prompts)} prompts, {cfg.eval.max_new_tokens} new tokens, {torch.get_num_threads()} torch threads")
    for k in sorted(med):
        print(f"  {k:24s} {med[k]:.3f} s")
    ratio = med["learned"] / med["substring"]
    print(f"generate with the learned judge / with the substring judge: {ratio:.3f} (+{100 * (ratio - 1):.1f}%)")
    alone = med["learned_judge_only"] / med["substring"]
    print(
        f"the learned judge alone on those completions: {med['learned_judge_only']:.3f} s, {100 * alone:.1f}% of generate"
    )
    first = med["learned_first"] / med["substring_first"]
    print(f"first round (MiniLM loaded in it): {first:.3f}; {len(set(responses))} distinct completions; -> {out}")


if __name__ == "__main__":
    main()
