"""``saesteer search``: rank SAE features against refusal, then test the top k causally."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Optional

from saesteer.config import SearchJobConfig
from saesteer.data import load_role
from saesteer.directions import refusal_token_ids
from saesteer.evaluate import kl_divergence, last_position_logprobs, refusal_eval, scale_at_kl
from saesteer.feature_rankings import greedy_selection, k_at_bypass, ranked_features, refusal_vs_k
from saesteer.interventions import AblateAt, steer
from saesteer.interventions.features import EditFeatures
from saesteer.io import write_json, write_text
from saesteer.models import load_model
from saesteer.report.search import FEATURE_COLUMNS, feature_record, render_report, save_k_curve, save_plot
from saesteer.search import search_features
from saesteer.stages import direction_stage, sae_stage
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def stage_reference(direction, hook: str, n_layers: int) -> Optional[float]:
    """The directions stage's affine reference (harmless mean of x.r at the direction's position) at
    ``hook`` when it is a residual stream point the stage measured (resid_pre of layer L, or resid_post
    of L < n_layers - 1, which equals resid_pre of L + 1); None otherwise."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    if m is None:
        return None
    layer = int(m.group(1)) + (m.group(2) == "post")
    return float(direction.reference[layer]) if layer < n_layers else None


def run(cfg: SearchJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    s = cfg.search
    loaded = load_model(cfg.model, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    direction = direction_stage(loaded, cfg.data, cfg.directions, path=s.direction, progress=cfg.progress)
    sae = sae_stage(cfg, loaded, tracker, direction.layer)
    train_h = list(load_role(cfg.data, "harmful_train").instructions)
    train_s = list(load_role(cfg.data, "harmless_train").instructions)
    scores = search_features(model, tpl, sae, direction.direction, train_h, train_s, s, progress=cfg.progress)
    scores.write_csv(run_dir / "ranking.csv")
    top = scores.top(s.k, signed=s.signed)

    test_h = list(load_role(cfg.data, "harmful_test").instructions)
    test_s = list(load_role(cfg.data, "harmless_test").instructions)
    ev = dict(cfg.eval.refusal_kwargs(), progress=cfg.progress)

    judged: dict[str, Any] = {}  # metric name (without "_refusal") -> the judged answers

    def rate(name, prompts, specs, desc):
        with steer(model, specs):
            judged[name] = refusal_eval(model, tpl, prompts, desc=desc, **ev)
        return judged[name].rate

    # bypass: the top k (refusal and, with search.signed, comply features) set to search.ablation's values;
    # zeroing the top k refusal features is the literal check, reported beside it
    refusal_top = scores.top(s.k)
    ablate_top = EditFeatures(
        sae, top, mode="set", values=scores.bypass_values(top, s.ablation), apply_to=s.apply_to, hook=scores.hook
    )
    zero_top = EditFeatures(sae, refusal_top, mode="set", values=0.0, apply_to=s.apply_to, hook=scores.hook)
    # induce: refusal features clamped high, comply features (signed ranking) set to 0
    clamp_values = [
        s.induce_scale * max(float(scores.harmful_active_mean[f]), 1e-3) if float(scores.signed_score[f]) >= 0 else 0.0
        for f in top
    ]
    clamp_top = EditFeatures(sae, top, mode="set", values=clamp_values, apply_to=s.induce_apply_to, hook=scores.hook)
    pool = scores.signed_ranking if s.signed else scores.ranking
    eligible = [f for f in pool if f not in set(top)]
    rnd = random.Random(cfg.seed).sample(eligible, min(s.k, len(eligible)))
    ablate_rnd = EditFeatures(
        sae, rnd, mode="set", values=scores.bypass_values(rnd, s.ablation), apply_to=s.apply_to, hook=scores.hook
    )
    zero_rnd = EditFeatures(sae, rnd, mode="set", values=0.0, apply_to=s.apply_to, hook=scores.hook)
    # the direction at the SAE's hook only: the ceiling of any one-layer edit along it
    hook_ref = stage_reference(direction, scores.hook, model.cfg.n_layers)
    hook_affine = AblateAt(
        direction.direction, scores.hook, reference=scores.harmless_coordinate if hook_ref is None else hook_ref
    )
    hook_affine_pos = AblateAt(direction.direction, scores.hook, reference=scores.harmless_coordinate)
    hook_plain = AblateAt(direction.direction, scores.hook)

    base_h = rate("baseline_harmful", test_h, [], "baseline harmful")
    base_s = rate("baseline_harmless", test_s, [], "baseline harmless")
    top_abl = rate("topk_ablation_harmful", test_h, [ablate_top], "top-k ablation")
    top_zero = rate("topk_zero_ablation_harmful", test_h, [zero_top], "top-k zero ablation")
    top_clamp = rate("topk_clamp_harmless", test_s, [clamp_top], "top-k clamp")
    rnd_abl = rate("random_k_ablation_harmful", test_h, [ablate_rnd], "random-k ablation")
    rnd_zero = rate("random_k_zero_ablation_harmful", test_h, [zero_rnd], "random-k zero ablation")
    dir_abl = rate("direction_ablation_harmful", test_h, [direction.ablate()], "direction ablation")
    hook_aff = rate("direction_ablation_sae_hook_harmful", test_h, [hook_affine], "direction ablation at the SAE hook")
    hook_aff_pos = rate(
        "direction_ablation_sae_hook_positions_mean_harmful",
        test_h,
        [hook_affine_pos],
        "direction ablation at the SAE hook (searched positions' mean)",
    )
    hook_pl = rate(
        "direction_plain_ablation_sae_hook_harmful", test_h, [hook_plain], "plain direction ablation at the SAE hook"
    )
    dir_add = rate("direction_addition_harmless", test_s, [direction.add()], "direction addition")
    base_lp = last_position_logprobs(model, tpl, test_s)
    kl = {}
    for name, spec in (
        ("topk", ablate_top),
        ("topk_zero", zero_top),
        ("random", ablate_rnd),
        ("direction", direction.ablate()),
        ("hook", hook_affine),
        ("clamp", clamp_top),
    ):
        with steer(model, [spec]):
            kl[name] = kl_divergence(base_lp, last_position_logprobs(model, tpl, test_s))
    # the induce side at matched cost: the direction added at the scale whose KL on harmless_test equals the clamp's
    add_alpha, add_kl = scale_at_kl(
        model,
        tpl,
        test_s,
        lambda a: [direction.add(a)],
        kl["clamp"],
        base_logprobs=base_lp,
        batch_size=cfg.eval.kl_batch_size,
    )
    dir_add_matched = rate(
        "direction_addition_matched_kl_harmless",
        test_s,
        [direction.add(add_alpha)],
        "direction addition at the clamp's KL",
    )

    best = refusal_top[0]  # top1_*: the top refusal feature; top_signed_*: the first of the signed ranking
    m = {
        "k": s.k,
        "ablation": s.ablation,
        "signed": s.signed,
        "hook": scores.hook,
        "d_sae": len(scores.cosine),
        "n_eligible": int(scores.eligible.sum()),
        "top_features": top,
        "n_comply_features": sum(float(scores.signed_score[f]) < 0 for f in top),
        "top_refusal_features": refusal_top,
        "top1_feature": best,
        "top1_cosine": float(scores.cosine[best]),
        "top1_auroc": float(scores.auroc[best]),
        "top1_effect_size": float(scores.effect_size[best]),
        "top1_attribution": float(scores.attribution[best]),
        "max_cosine": float(scores.cosine.max()),
        "min_cosine": float(scores.cosine.min()),
        "top_signed_feature": scores.signed_ranking[0],
        "top_signed_cosine": float(scores.cosine[scores.signed_ranking[0]]),
        "top_signed_auroc": float(scores.auroc[scores.signed_ranking[0]]),
        "baseline_harmful_refusal": base_h,
        "baseline_harmless_refusal": base_s,
        "topk_ablation_harmful_refusal": top_abl,
        "topk_zero_ablation_harmful_refusal": top_zero,
        "topk_clamp_harmless_refusal": top_clamp,
        "random_k_ablation_harmful_refusal": rnd_abl,
        "random_k_zero_ablation_harmful_refusal": rnd_zero,
        "direction_ablation_harmful_refusal": dir_abl,
        "direction_ablation_sae_hook_harmful_refusal": hook_aff,
        "direction_ablation_sae_hook_positions_mean_harmful_refusal": hook_aff_pos,
        "direction_plain_ablation_sae_hook_harmful_refusal": hook_pl,
        "sae_hook_affine_reference": hook_affine.reference,
        "direction_addition_harmless_refusal": dir_add,
        "topk_clamp_kl_harmless": kl["clamp"],
        "direction_addition_matched_kl_alpha": add_alpha,
        "direction_addition_matched_kl_kl_harmless": add_kl,
        "direction_addition_matched_kl_harmless_refusal": dir_add_matched,
        "harmful_coordinate_sae_hook": scores.harmful_coordinate,
        "harmless_coordinate_sae_hook": scores.harmless_coordinate,
        "topk_ablation_kl_harmless": kl["topk"],
        "topk_zero_ablation_kl_harmless": kl["topk_zero"],
        "random_k_ablation_kl_harmless": kl["random"],
        "direction_ablation_kl_harmless": kl["direction"],
        "direction_ablation_sae_hook_kl_harmless": kl["hook"],
        **{f"{name}_incoherent": r.incoherent_rate for name, r in judged.items()},
    }
    points = []
    if s.curve_ks:
        points = k_curve(cfg, loaded, sae, scores, train_h, test_h, test_s)
        for p in points:
            m[f"curve_refusal_{p.ranking}_{p.edit}_k{p.k}"] = p.refusal
            m[f"curve_kl_{p.ranking}_{p.edit}_k{p.k}"] = p.kl
        for r in s.curve_rankings:
            m[f"k_at_bypass_{r}"] = k_at_bypass(points, r)
        save_k_curve(points, {"direction at the SAE hook": hook_aff, "no edit": base_h}, run_dir / "refusal_vs_k.png")
    records = [feature_record(scores, f, rank) for rank, f in enumerate(pool[: s.top_n])]
    write_json(run_dir / "top_features.json", records)
    rows = [[r[c] for c in FEATURE_COLUMNS] for r in records]
    tracker.table("search/top_features", FEATURE_COLUMNS, rows)
    save_plot(scores, top, run_dir / "cosine_vs_contrast.png")
    write_text(run_dir / "report.md", render_report(s, scores, m, rows, points))
    return m


def k_curve(cfg: SearchJobConfig, loaded, sae, scores, train_h: list[str], test_h: list[str], test_s: list[str]):
    """Refusal against k for every ranking and edit of the settings (the greedy order found on train prompts)."""
    s = cfg.search
    model, tpl = loaded.model, loaded.template
    orders: dict[tuple[str, str], list[int]] = {}
    for edit in s.curve_edits:
        for ranking in s.curve_rankings:
            if ranking != "greedy":
                orders[(ranking, edit)] = ranked_features(scores, ranking, edit, s.signed)
                continue
            pool = ranked_features(scores, "attribution", edit, s.signed)[: s.greedy_pool]
            if not pool:
                log.warning("greedy ranking for %s: no feature with a predicted drop to pick from", edit)
                continue
            orders[(ranking, edit)] = greedy_selection(
                model,
                tpl,
                sae,
                scores,
                train_h[: s.greedy_prompts],
                pool,
                min(max(s.curve_ks), len(pool)),
                edit=edit,
                apply_to=s.apply_to,
                refusal_ids=refusal_token_ids(model, tpl),
                batch_size=cfg.eval.batch_size,
                progress=cfg.progress,
            ).features
    return refusal_vs_k(
        model,
        tpl,
        sae,
        scores,
        orders,
        s.curve_ks,
        test_h,
        test_s,
        apply_to=s.apply_to,
        progress=cfg.progress,
        **cfg.eval.refusal_kwargs(),
    )
