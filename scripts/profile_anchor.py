"""Where the anchor stage's time goes: cProfile of its calibration and attack searches (``defend``) and of one
attack's completions under one defence, with the pipeline's settings.

    python scripts/profile_anchor.py budget=quick --top 40 --out /tmp/anchor.prof

Prints the phase seconds (``seconds_calibration``, ``seconds_attacks``, ``seconds_adaptive``), the seconds of one
``attack_outcomes`` call on ``harmful_test`` (the attack table holds one per attack and defence) and the functions
with the largest cumulative time.  The stages the anchor reads (organism, directions, SAE) come from the cache.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from saesteer.attacks.directional import ablation_attack
from saesteer.attacks.evaluate import UNDEFENDED, attack_outcomes
from saesteer.config import compose, to_object
from saesteer.experiments import job_settings
from saesteer.jobs import anchor as job
from saesteer.jobs.common import PhaseTimes
from saesteer.jobs.pipeline import stage_config
from saesteer.judge import use_judge
from saesteer.models import load_model
from saesteer.stages import direction_stage
from saesteer.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="pipeline overrides, e.g. budget=quick model=smollm2_safe")
    ap.add_argument("--top", type=int, default=40, help="functions to list")
    ap.add_argument("--out", help="write the profile here (pstats format)")
    args = ap.parse_args()
    cfg = stage_config(to_object(compose("pipeline", ["logger=none", "progress=false", *args.overrides])), "anchor")
    with job_settings(cfg), use_judge(cfg.judge.build()):
        profile(cfg, args)


def profile(cfg, args) -> None:
    extra = job.gate_fit_extra(cfg)
    loaded = load_model(cfg.model, progress=False)
    P, harmless_cal = job.anchor_prompts(cfg)
    direction = direction_stage(loaded, cfg.data, cfg.directions, path=cfg.search.direction, progress=False)

    times = PhaseTimes()
    prof = cProfile.Profile()
    prof.enable()
    job.defend(cfg, loaded, direction, P, harmless_cal, Tracker(), times, extra)
    prof.disable()
    attack = ablation_attack(direction.direction, "affine", direction.reference)
    start = time.perf_counter()
    attack_outcomes(loaded.model, loaded.template, attack, UNDEFENDED, P["harmful_test"], **cfg.eval.refusal_kwargs())
    one = time.perf_counter() - start

    print("phases:", times.metrics())
    print(f"one attack x defence on {len(P['harmful_test'])} harmful_test prompts: {one:.2f} s")
    if args.out:
        prof.dump_stats(args.out)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
