"""``saesteer search``: rank SAE features against refusal, then test the top k causally."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any

import torch

from saesteer.config import SearchJobConfig
from saesteer.evaluate import kl_divergence, last_position_logprobs, refusal_eval
from saesteer.interventions import steer
from saesteer.interventions.features import EditFeatures
from saesteer.io import write_json, write_text
from saesteer.jobs.common import load_role
from saesteer.models import load_model
from saesteer.report import markdown_table, scatter_plot
from saesteer.search import search_features
from saesteer.stages import direction_stage
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def obtain_sae(cfg: Any, loaded, tracker: Tracker, layer: int):
    """The SAE of ``cfg.sae`` (loaded, cached or fitted), at the direction's layer unless a hook is set."""
    from saesteer.jobs.train_sae import _train_or_reuse
    from saesteer.sae.load import load_sae

    if cfg.sae.hook is None:
        cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, hook=f"blocks.{layer}.hook_resid_pre"))
    if cfg.sae.loads:
        return load_sae(cfg.sae, loaded.model, hook=cfg.sae.hook, device=loaded.model.cfg.device)
    sae, _ = _train_or_reuse(cfg, loaded, tracker)
    return sae


def run(cfg: SearchJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    s = cfg.search
    loaded = load_model(cfg.model, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    direction = direction_stage(loaded, cfg.data, cfg.directions, path=s.direction, progress=cfg.progress)
    sae = obtain_sae(cfg, loaded, tracker, direction.layer)
    train_h = list(load_role(cfg.data, "harmful_train").instructions)
    train_s = list(load_role(cfg.data, "harmless_train").instructions)
    scores = search_features(model, tpl, sae, direction.direction, train_h, train_s, s.search_config(), progress=cfg.progress)
    scores.write_csv(run_dir / "ranking.csv")
    top = scores.top(s.k)

    test_h = list(load_role(cfg.data, "harmful_test").instructions)
    test_s = list(load_role(cfg.data, "harmless_test").instructions)
    ev = dict(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, progress=cfg.progress)

    def rate(prompts, specs, desc):
        with steer(model, specs):
            return refusal_eval(model, tpl, prompts, desc=desc, **ev).rate

    ablate_top = EditFeatures(sae, top, mode="set", values=0.0, apply_to=s.apply_to, hook=scores.hook)
    clamp_values = [s.induce_scale * max(float(scores.harmful_active_mean[f]), 1e-3) for f in top]
    clamp_top = EditFeatures(sae, top, mode="set", values=clamp_values, apply_to=s.induce_apply_to, hook=scores.hook)
    eligible = [f for f in scores.ranking if f not in set(top)]
    rnd = random.Random(cfg.seed).sample(eligible, min(s.k, len(eligible)))
    ablate_rnd = EditFeatures(sae, rnd, mode="set", values=0.0, apply_to=s.apply_to, hook=scores.hook)

    base_h, base_s = rate(test_h, [], "baseline harmful"), rate(test_s, [], "baseline harmless")
    top_abl = rate(test_h, [ablate_top], "top-k ablation")
    top_clamp = rate(test_s, [clamp_top], "top-k clamp")
    rnd_abl = rate(test_h, [ablate_rnd], "random-k ablation")
    dir_abl = rate(test_h, [direction.ablate()], "direction ablation")
    dir_add = rate(test_s, [direction.add()], "direction addition")
    base_lp = last_position_logprobs(model, tpl, test_s)
    kl = {}
    for name, spec in (("topk", ablate_top), ("random", ablate_rnd), ("direction", direction.ablate())):
        with steer(model, [spec]):
            kl[name] = kl_divergence(base_lp, last_position_logprobs(model, tpl, test_s))

    best = top[0]
    scatter_plot(scores.cosine.tolist(), scores.effect_size.tolist(), run_dir / "cosine_vs_contrast.png",
                 "cos(W_dec[f], refusal direction)", "effect size (harmful vs harmless)", "SAE features", highlight=top, labels=list(range(len(scores.cosine))))
    write_json(run_dir / "top_features.json", [
        {"feature": f, "rank": i, "cosine": float(scores.cosine[f]), "effect_size": float(scores.effect_size[f]),
         "auroc": float(scores.auroc[f]), "attribution": float(scores.attribution[f]),
         "top_prompts": scores.top_prompts.get(f, [])} for i, f in enumerate(scores.ranking[: s.top_n])])
    rows = [(i, f, float(scores.combined[f]), float(scores.cosine[f]), float(scores.effect_size[f]), float(scores.auroc[f]), float(scores.attribution[f]))
            for i, f in enumerate(scores.ranking[: s.top_n])]
    tracker.table("search/top_features", ["rank", "feature", "combined", "cosine", "effect_size", "auroc", "attribution"], rows)
    causal = [
        ("baseline", "harmful_test", base_h, 0.0), ("baseline", "harmless_test", base_s, 0.0),
        (f"top-{s.k} features set to 0", "harmful_test", top_abl, kl["topk"]),
        (f"top-{s.k} features clamped to {s.induce_scale:g}x their active mean ({s.induce_apply_to} tokens)", "harmless_test", top_clamp, float("nan")),
        (f"random {s.k} features set to 0", "harmful_test", rnd_abl, kl["random"]),
        ("refusal direction ablated (all layers)", "harmful_test", dir_abl, kl["direction"]),
        ("refusal direction added", "harmless_test", dir_add, float("nan")),
    ]
    write_text(run_dir / "report.md", "\n".join([
        "# Refusal features", "",
        f"SAE at `{scores.hook}` (d_sae={len(scores.cosine)}), {int(scores.eligible.sum())} features pass the activity filter.", "",
        "## Top features", "", markdown_table(["rank", "feature", "combined", "cosine", "effect size", "AUROC", "attribution"], rows), "",
        "## Causal check (held-out)", "", markdown_table(["intervention", "set", "refusal", "KL harmless"], causal), "",
        "SAE feature steering at one layer vs the difference-in-means direction at every layer (AxBench found the latter stronger).", "",
        "![cosine vs contrast](cosine_vs_contrast.png)", ""]))
    return {
        "k": s.k, "hook": scores.hook, "d_sae": len(scores.cosine), "n_eligible": int(scores.eligible.sum()),
        "top_features": top, "top1_feature": best,
        "top1_cosine": float(scores.cosine[best]), "top1_auroc": float(scores.auroc[best]),
        "top1_effect_size": float(scores.effect_size[best]), "top1_attribution": float(scores.attribution[best]),
        "max_cosine": float(scores.cosine.max()),
        "baseline_harmful_refusal": base_h, "baseline_harmless_refusal": base_s,
        "topk_ablation_harmful_refusal": top_abl, "topk_clamp_harmless_refusal": top_clamp,
        "random_k_ablation_harmful_refusal": rnd_abl, "direction_ablation_harmful_refusal": dir_abl,
        "direction_addition_harmless_refusal": dir_add,
        "topk_ablation_kl_harmless": kl["topk"], "random_k_ablation_kl_harmless": kl["random"], "direction_ablation_kl_harmless": kl["direction"],
    }
