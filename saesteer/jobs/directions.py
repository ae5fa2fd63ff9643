"""``saesteer directions``: extract, select, bypass, induce, orthogonalize; harmfulness vs refusal.

Refusal rates are the ``judge`` group's; the headline ones, those Arditi et al. 2024 report (baseline on harmful and
harmless prompts, plain and affine ablation, addition), are also given by the paper's substring judge on the same
completions, as ``<name>_substring`` (:data:`SUBSTRING_FIGURES`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from saesteer.chat import encode_chat
from saesteer.config import DirectionsJobConfig
from saesteer.data import load_role
from saesteer.evaluate import (
    completion_cross_entropy,
    kl_divergence,
    last_position_logprobs,
    refusal_eval,
)
from saesteer.generation import generate
from saesteer.harmfulness import (
    behavioural_refusal_directions,
    detector_auroc,
    fit_harm_detector,
    layerwise_cosine,
)
from saesteer.interventions import Ablate, Add, orthogonalize_weights, steer
from saesteer.io import write_json, write_text
from saesteer.judge import RefusalJudge
from saesteer.model_files import LOCAL_MODELS
from saesteer.models import load_model
from saesteer.report.directions import candidate_rows, render_report, save_plots
from saesteer.stages import direction_stage
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)

#: the refusal figures also reported by the substring judge (as ``<name>_substring``): those the paper reports
SUBSTRING_FIGURES = (
    "baseline_harmful_refusal",
    "baseline_harmless_refusal",
    "ablation_harmful_refusal",
    "affine_ablation_harmful_refusal",
    "addition_harmless_refusal",
)


def norm_matched_random(direction: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(direction.shape[0], generator=g)
    return r / r.norm() * direction.norm()


def untuned_harm_detector(
    cfg: DirectionsJobConfig, P: dict[str, list[str]], harm_dirs: torch.Tensor, batch_size: int
) -> dict[str, Any]:
    """For a safety-tuned local model (``smollm2_safe``): the harm detector fitted on its untuned base, which
    never refuses (is harmfulness encoded before refusal is taught?), and the cosine, per layer, of the base's
    harmfulness directions with the tuned model's.  Empty for any other model."""
    local = LOCAL_MODELS.get(cfg.model.name)
    if local is None or local.base is None:
        return {}
    base = load_model(dataclasses.replace(cfg.model, name=local.base, safety_delta=None, retrain=False), progress=False)
    det, dirs = fit_harm_detector(base.model, base.template, P["harmful_train"], P["harmless_train"], batch_size)
    auc = detector_auroc(det, base.model, base.template, P["harmful_test"], P["harmless_test"])
    cos = layerwise_cosine(dirs, harm_dirs)
    log.info("harm detector on the untuned base %s: AUROC %.3f", local.base, auc)
    return {
        "untuned_base": local.base,
        "untuned_harm_detector_auroc": auc,
        "untuned_tuned_harm_cosine_by_layer": [round(float(c), 4) for c in cos],
    }


def incoherent_rates(results: dict[str, Any]) -> dict[str, float]:
    """``<condition>_<set>_incoherent``: the share of each evaluation's answers the judge flags incoherent (broken
    text, neither refusal nor compliance), keyed like its ``<condition>_<set>_refusal``."""
    return {name.removesuffix("_refusal") + "_incoherent": r.incoherent_rate for name, r in results.items()}


def run(cfg: DirectionsJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    dcfg = cfg.directions
    roles = {
        r: load_role(cfg.data, r)
        for r in ("harmful_train", "harmless_train", "harmful_val", "harmless_val", "harmful_test", "harmless_test")
    }
    loaded = load_model(cfg.model, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    ev = cfg.eval.refusal_kwargs()
    P = {k: list(v.instructions) for k, v in roles.items()}

    log.info("directions: difference-in-means candidates and selection")
    sel = direction_stage(loaded, cfg.data, dcfg, progress=cfg.progress)
    fallback = sel.metadata.get("fallback")
    log.info(
        "selected layer %d position %d (%s ablation)%s",
        sel.layer,
        sel.position,
        sel.ablation,
        f"; {fallback}" if fallback else "",
    )

    # ---- held-out evaluation
    def rate(prompts, specs, desc):
        with steer(model, specs):
            return refusal_eval(model, tpl, prompts, progress=cfg.progress, desc=desc, **ev)

    base_harm = rate(P["harmful_test"], [], "baseline harmful")
    base_safe = rate(P["harmless_test"], [], "baseline harmless")
    plain, affine = sel.ablate("plain"), sel.ablate("affine")
    abl_plain = rate(P["harmful_test"], [plain], "ablation (plain)")
    abl_affine = rate(P["harmful_test"], [affine], "ablation (affine)")
    add = rate(P["harmless_test"], [sel.add(dcfg.add_alpha)], "addition")
    rnd = norm_matched_random(sel.direction, cfg.seed + 1)
    rnd_abl = rate(P["harmful_test"], [Ablate(rnd)], "random ablation")
    rnd_add = rate(P["harmless_test"], [Add(rnd, dcfg.add_alpha, sel.layer)], "random addition")

    kl_prompts = P["harmless_test"]
    base_lp = last_position_logprobs(model, tpl, kl_prompts, batch_size=cfg.eval.batch_size)
    kls = {}
    for name, spec in (("plain", plain), ("affine", affine), ("random", Ablate(rnd))):
        with steer(model, [spec]):
            kls[name] = kl_divergence(
                base_lp, last_position_logprobs(model, tpl, kl_prompts, batch_size=cfg.eval.batch_size)
            )

    # cross-entropy of the model's own harmless completions, before and after ablation
    ce_prompts = P["harmless_test"][: dcfg.n_ce]
    ce_targets = generate(model, tpl, ce_prompts, max_new_tokens=cfg.eval.max_new_tokens, progress=False)
    ce = {"baseline": completion_cross_entropy(model, tpl, ce_prompts, ce_targets)}
    for name, spec in (("plain", plain), ("affine", affine), ("random", Ablate(rnd))):
        with steer(model, [spec]):
            ce[name] = completion_cross_entropy(model, tpl, ce_prompts, ce_targets)

    # weight orthogonalization == hook ablation
    ortho = orthogonalize_weights(model, sel.direction)
    probe = P["harmful_test"][:32] + P["harmless_test"][:32]
    enc = encode_chat(model.tokenizer, tpl, probe, pad_token_id=model.tokenizer.pad_token_id)
    with torch.no_grad():
        with steer(model, [plain]):
            lh = model(enc.tokens, attention_mask=enc.attention_mask)
        lo = ortho(enc.tokens, attention_mask=enc.attention_mask)
    m = enc.attention_mask.bool()
    ortho_diff = float((lh - lo).abs()[m].max())
    del ortho

    # ---- harmfulness vs refusal (Zhao et al. 2025)
    det, harm_dirs = fit_harm_detector(model, tpl, P["harmful_train"], P["harmless_train"], batch_size=dcfg.batch_size)
    mixed = P["harmful_train"] + P["harmless_train"]
    judged = refusal_eval(model, tpl, mixed, progress=False, **ev)
    try:
        ref_dirs = behavioural_refusal_directions(model, tpl, mixed, judged.refused, batch_size=dcfg.batch_size)
        cos = layerwise_cosine(harm_dirs, ref_dirs)
    except ValueError as exc:
        log.warning("behavioural refusal direction unavailable: %s", exc)
        cos = torch.full((model.cfg.n_layers,), float("nan"))
    det_auc = detector_auroc(det, model, tpl, P["harmful_test"], P["harmless_test"])
    det_auc_abl = detector_auroc(det, model, tpl, P["harmful_test"], P["harmless_test"], [sel.ablate()])
    untuned = untuned_harm_detector(cfg, P, harm_dirs, dcfg.batch_size)

    # ---- artifacts
    import shutil

    shutil.copyfile(sel.path, run_dir / "direction.safetensors")
    shutil.copyfile(sel.path.with_suffix(".json"), run_dir / "direction.json")
    write_json(run_dir / "candidates.json", [s.__dict__ for s in sel.scores])

    # steering dose-response: addition of alpha x the direction, on every token or on the prompt only
    dose_prompts = P["harmless_test"][: dcfg.n_dose]
    dose = {
        apply: [
            rate(dose_prompts, [Add(sel.direction, a, sel.layer, apply_to=apply)], f"addition {a:g} ({apply})").rate
            for a in dcfg.dose_alphas
        ]
        for apply in ("both", "prompt")
    }
    best_prompt = max(range(len(dcfg.dose_alphas)), key=lambda i: (dose["prompt"][i], -dcfg.dose_alphas[i]))

    # the paper's judge on the completions the job's judge read (no second generation)
    headline = dict(zip(SUBSTRING_FIGURES, (base_harm, base_safe, abl_plain, abl_affine, add)))
    substring = {f"{name}_substring": RefusalJudge().refusal_rate(r.responses) for name, r in headline.items()}
    metrics: dict[str, Any] = {
        "judge": cfg.judge.kind,
        "selected_layer": sel.layer,
        "selected_position": sel.position,
        "selected_ablation": sel.ablation,
        "selection_fallback": fallback is not None,
        "baseline_harmful_refusal": base_harm.rate,
        "baseline_harmless_refusal": base_safe.rate,
        "ablation_harmful_refusal": abl_plain.rate,
        "affine_ablation_harmful_refusal": abl_affine.rate,
        "addition_harmless_refusal": add.rate,
        "addition_dose_alphas": list(dcfg.dose_alphas),
        "addition_dose_harmless_refusal": dose["both"],
        "addition_dose_prompt_only_harmless_refusal": dose["prompt"],
        "addition_prompt_only_best_alpha": dcfg.dose_alphas[best_prompt],
        "addition_prompt_only_harmless_refusal": dose["prompt"][best_prompt],
        "n_dose": len(dose_prompts),
        "ablation_kl_harmless": kls["plain"],
        "affine_ablation_kl_harmless": kls["affine"],
        "random_ablation_harmful_refusal": rnd_abl.rate,
        "random_addition_harmless_refusal": rnd_add.rate,
        "random_ablation_kl_harmless": kls["random"],
        "ce_harmless_baseline": ce["baseline"],
        "ce_harmless_ablation": ce["plain"],
        "ce_harmless_affine_ablation": ce["affine"],
        "ce_harmless_random_ablation": ce["random"],
        "orthogonalized_max_logit_diff": ortho_diff,
        "harm_detector_auroc": det_auc,
        "harm_detector_auroc_under_ablation": det_auc_abl,
        "harm_refusal_cosine_at_selected_layer": float(cos[sel.layer]),
        "harm_refusal_cosine_by_layer": [round(float(c), 4) for c in cos],
        **substring,
        **incoherent_rates(
            {
                **headline,
                "random_ablation_harmful_refusal": rnd_abl,
                "random_addition_harmless_refusal": rnd_add,
            }
        ),
        "n_harmful_test": len(P["harmful_test"]),
        "n_harmless_test": len(P["harmless_test"]),
        **untuned,
    }
    save_plots(run_dir, sel, cos, dose, dcfg.dose_alphas)
    write_text(run_dir / "report.md", render_report(loaded.name, sel, metrics))
    rows = candidate_rows(sel)
    tracker.table(
        "directions/candidates",
        ["layer", "pos", "bypass_plain", "bypass_affine", "induce", "kl_plain", "kl_affine", "filtered_by"],
        rows,
    )
    tracker.image("directions/candidates", run_dir / "candidate_scores.png")
    return metrics
