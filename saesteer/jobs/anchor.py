"""``saesteer anchor``: calibrate an anchor of the refusal activation, then attack it.

Calibration (floors, gate direction and threshold) uses train / val prompts only;
every attack is scored on held-out ``harmful_test`` (ASR) and every defence on
held-out ``harmless_test`` and the over-refusal set (refusal, KL, cross-entropy).
Defences compared: undefended, the gated anchor, CAST-style conditional addition
(same gate) and unconditional addition of the refusal direction; with
``anchor.finetune``, also the organism fine-tuned with its refusal direction cut,
undefended and under its own anchor, attacked as a white-box attacker holding it
would (directions, features and suffixes recomputed on it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.activations import collect_activations, collect_token_activations, resid_hooks
from saesteer.anchor import AnchorArtifact, calibrate_anchor, calibrate_feature_anchor
from saesteer.attacks.base import Attack
from saesteer.attacks.directional import (
    ablation_attack,
    gate_ablation_attack,
    negative_addition_attacks,
    orthogonalized_attack,
    subspace_ablation_attack,
)
from saesteer.attacks.embedding import embedding_search
from saesteer.attacks.evaluate import (
    UNDEFENDED,
    Defence,
    DefenceEvaluation,
    DefenceTargets,
    baseline_completions,
    evaluate_defences,
    gate_fire_rates,
)
from saesteer.attacks.features import feature_ablation_attack
from saesteer.attacks.prompts import suffix_attack, template_attack
from saesteer.attacks.suffix import suffix_search
from saesteer.config import AnchorJobConfig
from saesteer.data import load_role
from saesteer.directions import refusal_subspace
from saesteer.evaluate import refusal_eval
from saesteer.interventions.gates import AnyGate
from saesteer.io import write_text
from saesteer.jobs.common import PhaseTimes
from saesteer.models import load_model
from saesteer.report.anchor import asr_headers, asr_plot, asr_rows, render_report
from saesteer.stages import direction_stage, sae_stage
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def defences(art: AnchorArtifact, cast_alpha: float, add_alpha: float) -> list[Defence]:
    return [
        UNDEFENDED,
        Defence(
            "anchored",
            lambda: art.anchors(),
            "gated anchor of the refusal direction" + (" and of SAE feature coordinates" if art.features else ""),
            gate=art.gate,
            ungated=lambda: art.anchors(gated=False),
        ),
        Defence(
            "cast",
            lambda: [art.cast(cast_alpha)],
            f"conditional addition ({cast_alpha:g} r) where the gate fires",
            gate=art.gate,
            ungated=lambda: [art.addition(cast_alpha)],
        ),
        Defence("addition", lambda: [art.addition(add_alpha)], f"unconditional addition ({add_alpha:g} r)"),
    ]


def gate_means(
    model, template, art: AnchorArtifact, harmless: list[str], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmless mean residual at the gate's hooks, over its positions and over every token: 2 x [n_gate_hooks, d_model]
    (the adaptive attacker's targets), from one forward pass."""
    tokens = collect_token_activations(model, template, harmless, art.gate_hooks, batch_size=batch_size)
    at_positions = torch.stack([x[art.gate_positions] for x in tokens])  # [n, n_pos, n_hooks, d_model]
    return at_positions.mean((0, 1)), torch.cat(tokens).mean(0)


def optional_role(cfg: AnchorJobConfig, role: str) -> list[str]:
    """The prompts of an optional data role (``overrefusal*``); [] where the data config names none."""
    return list(load_role(cfg.data, role).instructions) if getattr(cfg.data, role) else []


#: word-Jaccard similarity at or above which a prompt added to the gate's fit counts as a held-out prompt's near-duplicate
GATE_FIT_NEAR_DUPLICATE = 0.5


def gate_fit_extra(cfg: AnchorJobConfig) -> tuple[list[str], list[str]]:
    """The gate's fit beyond harmful_train / harmless_train: the harmful prompt sets of ``anchor.gate_harmful_sources``,
    synthetic harmful requests and safe look-alikes, minus anything near a held-out or validation prompt, and the
    handwritten look-alikes of ``data.overrefusal_train``."""
    from saesteer.data import load_prompts
    from saesteer.organism.corpus import drop_near_duplicates
    from saesteer.organism.synthetic import synthetic_prompts

    a = cfg.anchor
    held = [p for role in ("harmful_test", "harmless_test", "harmful_val") for p in load_role(cfg.data, role)]
    held += optional_role(cfg, "overrefusal") + optional_role(cfg, "overrefusal_val")
    train = set(load_role(cfg.data, "harmful_train"))
    sources = list(dict.fromkeys(p for name in a.gate_harmful_sources for p in load_prompts(name) if p not in train))
    sources = drop_near_duplicates(sources, held, GATE_FIT_NEAR_DUPLICATE)
    if a.gate_harmful_sources:
        log.info("anchor: %d harmful prompts of %s in the gate's fit", len(sources), a.gate_harmful_sources)
    harmful, harmless = [], []
    if a.gate_synthetic:
        harmful = synthetic_prompts("harmful", a.gate_synthetic, seed=cfg.seed + 11, lexicon=a.gate_lexicon)
        harmless = synthetic_prompts("harmless", a.gate_synthetic, seed=cfg.seed + 11, lexicon=a.gate_lexicon)
    harmful = sources + drop_near_duplicates(harmful, held, GATE_FIT_NEAR_DUPLICATE)
    harmless = drop_near_duplicates(harmless, held, GATE_FIT_NEAR_DUPLICATE)
    return harmful, harmless + optional_role(cfg, "overrefusal_train")


def sae_ranking(cfg: AnchorJobConfig, loaded, direction, tracker: Tracker):
    """(SAE, feature scores) when the attack suite or the feature anchor needs them, else (None, None)."""
    if not (cfg.anchor.sae_attack or cfg.anchor.sae_features > 0):
        return None, None
    from saesteer.search import search_features

    sae = sae_stage(cfg, loaded, tracker, direction.layer)
    scores = search_features(
        loaded.model,
        loaded.template,
        sae,
        direction.direction,
        list(load_role(cfg.data, "harmful_train").instructions),
        list(load_role(cfg.data, "harmless_train").instructions),
        cfg.search,
        progress=cfg.progress,
    )
    return sae, scores


def feature_anchor(cfg: AnchorJobConfig, loaded, sae, scores, refused: list[str]):
    """The feature bounds of the anchor: the top ``anchor.sae_features`` of the search's signed ranking at the SAE's hook."""
    a = cfg.anchor
    if a.sae_features == 0:
        return None
    n = min(a.sae_features, len(scores.signed_ranking))
    if n < a.sae_features:
        log.warning(
            "anchor.sae_features=%d but only %d features pass the search's activity filter; bounding those",
            a.sae_features,
            n,
        )
    if n == 0:
        return None
    feats = scores.top(n, signed=True)
    signs = [1 if float(scores.signed_score[f]) > 0 else -1 for f in feats]
    return calibrate_feature_anchor(
        loaded.model,
        loaded.template,
        sae,
        feats,
        signs,
        scores.hook,
        refused,
        a.feature_quantile,
        cfg.eval.max_new_tokens,
        a.batch_size,
        cfg.progress,
        a.feature_apply_to,
    )


def build_attacks(
    cfg: AnchorJobConfig, loaded, direction, suffix_prompts: list[str], sae=None, scores=None
) -> list[Attack]:
    """The non-adaptive attacks (they do not know the anchor)."""
    a = cfg.anchor
    model, tpl = loaded.model, loaded.template
    attacks = [
        ablation_attack(direction.direction, "affine", direction.reference),
        ablation_attack(direction.direction, "plain"),
        orthogonalized_attack(direction.direction),
        orthogonalized_attack(direction.direction, reference=direction.reference),
        *negative_addition_attacks(direction.direction, direction.layer, a.negative_alphas),
    ]
    if a.sae_attack:
        top = scores.top(cfg.search.k, signed=cfg.search.signed)
        attacks.append(
            feature_ablation_attack(
                sae,
                top,
                hook=scores.hook,
                values=scores.bypass_values(top, cfg.search.ablation),
                name="sae_feature_bypass",
            )
        )
        attacks.append(feature_ablation_attack(sae, scores.top(cfg.search.k), hook=scores.hook))
    if a.subspace_ranks:
        attacks += subspace_attacks(cfg, loaded, direction)
    attacks += [template_attack(j) for j in a.jailbreaks]
    if a.embedding_steps > 0:
        attacks.append(soft_suffix(cfg, loaded, suffix_prompts).attack())
    if a.suffix_steps > 0:
        res = suffix_search(
            model,
            tpl,
            suffix_prompts,
            n_tokens=a.suffix_tokens,
            steps=a.suffix_steps,
            n_candidates=a.suffix_candidates,
            seed=cfg.seed,
            progress=cfg.progress,
        )
        attacks.append(suffix_attack(res.suffix))
    return attacks


def subspace_attacks(cfg: AnchorJobConfig, loaded, direction) -> list[Attack]:
    """Affine ablation of a k-dimensional refusal subspace for each k of ``anchor.subspace_ranks``: the subspace from
    harmful_train and harmless_train at the direction's layer and position, the harmless means of every layer at
    that position as the affine target."""
    model, tpl = loaded.model, loaded.template
    hooks = resid_hooks(model)
    pos = [direction.position]
    kw = dict(batch_size=cfg.anchor.batch_size, progress=cfg.progress)
    harmful_prompts = list(load_role(cfg.data, "harmful_train").instructions)
    harmless_prompts = list(load_role(cfg.data, "harmless_train").instructions)
    harmful = collect_activations(model, tpl, harmful_prompts, [hooks[direction.layer]], pos, desc="harmful", **kw)
    harmless = collect_activations(model, tpl, harmless_prompts, hooks, pos, desc="harmless", **kw)[:, :, 0]
    harmful = harmful[:, 0, 0]  # [n, d_model]; harmless: [n, n_layers, d_model]
    means = harmless.double().mean(0)
    return [
        subspace_ablation_attack(refusal_subspace(direction.direction, harmful, harmless[:, direction.layer], k), means)
        for k in cfg.anchor.subspace_ranks
    ]


def soft_suffix(cfg: AnchorJobConfig, loaded, prompts: list[str], art: AnchorArtifact | None = None):
    """The embedding-space attack's soft suffix, against the undefended model or (``art``) against the anchored one,
    its loss then also pushing the gate's score under its threshold."""
    a = cfg.anchor
    kw: dict[str, Any] = {}
    if art is not None:
        extra, hooks = gate_objective(art, a.adaptive_gate_weight)
        kw = dict(interventions=art.anchors(), extra=extra, extra_hooks=hooks)
    return embedding_search(
        loaded.model,
        loaded.template,
        prompts,
        n_tokens=a.embedding_tokens,
        steps=a.embedding_steps,
        lr=a.embedding_lr,
        radius=a.embedding_radius,
        batch_size=a.batch_size,
        seed=cfg.seed + (2 if art is None else 3),
        progress=cfg.progress,
        **kw,
    )


def adaptive_attacks(
    cfg: AnchorJobConfig, loaded, direction, art: AnchorArtifact, suffix_prompts: list[str], harmless_cal: list[str]
) -> list[Attack]:
    """Attacks that know the anchor: they ablate what its gate reads, or optimize a suffix against it."""
    a = cfg.anchor
    means, token_means = gate_means(loaded.model, loaded.template, art, harmless_cal, a.batch_size)
    out = [
        gate_ablation_attack(
            direction.direction,
            direction.reference,
            art.gate_hooks,
            art.gate_weights,
            means,
            art.token_weights,
            token_means,
        )
    ]
    if a.suffix_steps > 0:
        out.append(
            suffix_attack(adaptive_suffix(cfg, loaded, art, suffix_prompts).suffix, "adaptive_gcg_suffix", "adaptive")
        )
    if a.embedding_steps > 0:
        out.append(soft_suffix(cfg, loaded, suffix_prompts, art).attack("adaptive_embedding_suffix", "adaptive"))
    return out


def gate_objective(art: AnchorArtifact, weight: float):
    """(extra, hooks): the adaptive attacker's extra loss, ``weight`` x how far each of the gate's probes scores
    above its threshold, and the hooks that record those scores."""
    gate = art.gate()
    gates = list(gate.gates) if isinstance(gate, AnyGate) else [gate]
    sinks: list[dict[str, torch.Tensor]] = [{} for _ in gates]
    hooks = [pair for g, sink in zip(gates, sinks) for pair in g.score_hooks(sink)]

    def extra() -> torch.Tensor:
        return weight * sum((sum(sink.values()) - g.threshold).clamp_min(0.0) for g, sink in zip(gates, sinks))

    return extra, hooks


def adaptive_suffix(cfg: AnchorJobConfig, loaded, art: AnchorArtifact, prompts: list[str]):
    """A suffix optimized against the anchored model, also pushing the gate's score under its threshold."""
    a = cfg.anchor
    extra, hooks = gate_objective(art, a.adaptive_gate_weight)
    return suffix_search(
        loaded.model,
        loaded.template,
        prompts,
        n_tokens=a.suffix_tokens,
        steps=a.suffix_steps,
        n_candidates=a.suffix_candidates,
        seed=cfg.seed + 1,
        interventions=art.anchors(),
        extra=extra,
        extra_hooks=hooks,
        progress=cfg.progress,
    )


def anchor_metrics(art: AnchorArtifact, ev: DefenceEvaluation, n_floor_prompts: int) -> dict[str, Any]:
    """The anchor job's figures: the calibrated anchor and gate, every ASR and every defence's cost, and which of
    :class:`DefenceTargets` each anchored defence meets."""
    metrics: dict[str, Any] = {
        "anchor_layers": art.layers,
        "anchor_floors": art.floors.tolist(),
        "anchor_generated_floors": art.generated_floors.tolist(),
        "anchor_position_floors": art.position_floors.tolist() if art.position_floors is not None else None,
        "gate_layers": art.gate_layers,
        "gate_robust": art.metadata["gate_robust"],
        "gate_n_fit": art.metadata["n_gate_fit"],
        "gate_threshold": art.gate_threshold,
        "gate_auroc_val": art.metadata["gate_auroc_val"],
        "gate_tpr_val": art.metadata["gate_tpr_val"],
        "gate_fpr_val": art.metadata["gate_fpr_val"],
        "gate_fpr_calibration": art.metadata["gate_fpr_calibration"],
        "gate_fpr_lookalike_calibration": art.metadata.get("gate_fpr_lookalike_calibration", float("nan")),
        "gate_refusal_cosine": art.metadata["gate_refusal_cosine"],
        "gate_text": art.text is not None,
        "text_gate_auroc_val": art.metadata.get("text_gate_auroc_val", float("nan")),
        "n_attack_prompts": ev.n_harmful,
        "n_harmless": ev.n_harmless,
        "n_floor_prompts": n_floor_prompts,
        "anchor_sae_features": art.features.features if art.features else [],
        "anchor_sae_feature_signs": art.features.signs if art.features else [],
    }
    for d in ev.defences:
        metrics[f"asr_none_{d}"] = ev.no_attack[d]
        metrics[f"harmless_refusal_{d}"] = ev.costs[d].harmless_refusal
        metrics[f"kl_harmless_{d}"] = ev.costs[d].kl_harmless
        metrics[f"ce_harmless_{d}"] = ev.costs[d].ce_harmless
        metrics[f"overrefusal_refusal_{d}"] = ev.costs[d].overrefusal
        for att in ev.attacks:
            metrics[f"asr_{att.name}_{d}"] = ev.asr[att.name][d]
        for name, rates in ev.incoherent.items():  # "none": no attack
            metrics[f"incoherent_{name}_{d}"] = rates[d]
    for name, kl in ev.attack_kl.items():
        metrics[f"attack_kl_harmless_{name}"] = kl
    targets = DefenceTargets()
    strong = ev.strong_attacks(targets.strong_asr)
    costs = ev.costs
    metrics["strong_attacks"] = strong
    metrics["max_asr_strong_anchored"] = max((ev.asr[n]["anchored"] for n in strong), default=float("nan"))
    metrics["max_asr_adaptive_anchored"] = max(
        (ev.asr[a.name]["anchored"] for a in ev.attacks if a.adaptive), default=float("nan")
    )
    metrics["harmless_refusal_rise_anchored"] = (
        costs["anchored"].harmless_refusal - costs["undefended"].harmless_refusal
    )
    metrics["overrefusal_rise_anchored"] = costs["anchored"].overrefusal - costs["undefended"].overrefusal
    metrics["ce_rise_anchored"] = costs["anchored"].ce_harmless / costs["undefended"].ce_harmless - 1.0
    for d in ("anchored", "finetuned", "finetuned_anchored"):
        if d in ev.defences:
            misses = targets.misses(ev, d)
            suffix = "" if d == "anchored" else f"_{d}"
            metrics[f"targets_missed{suffix}"] = misses
            metrics[f"targets_met{suffix}"] = not misses
    return metrics


@dataclass
class Defended:
    """One deployed model, its anchor calibrated on it and the attack suite computed against it (a white-box
    attacker recomputes directions, features and suffixes on the model it attacks)."""

    art: AnchorArtifact
    attacks: list[Attack]
    refused: list[str]


def defend(
    cfg: AnchorJobConfig,
    loaded,
    direction,
    P: dict[str, list[str]],
    harmless_cal: list[str],
    tracker,
    times: PhaseTimes | None = None,
    extra: tuple[list[str], list[str]] = ([], []),
) -> Defended:
    """Calibrate the anchor on ``loaded`` (train / val prompts; ``extra``: the (harmful, harmless) prompts added to
    the gate's fit, :func:`gate_fit_extra`) and build every attack against it; ``times`` collects the seconds of the
    attack searches, the calibration and the adaptive searches."""
    a, ev = cfg.anchor, cfg.eval.refusal_kwargs()
    model, tpl = loaded.model, loaded.template
    times = times if times is not None else PhaseTimes()
    with times("calibration"):
        train_ref = refusal_eval(model, tpl, P["harmful_train"], desc="harmful_train", **ev)
    refused = [p for p, r in zip(P["harmful_train"], train_ref.refused) if r]
    if not refused:
        raise ValueError(
            f"{loaded.name} refuses none of the harmful_train prompts: there is no refusal activation to anchor"
        )
    suffix_prompts = refused[: a.suffix_prompts]
    with times("attacks"):
        sae, scores = sae_ranking(cfg, loaded, direction, tracker)
        attacks = build_attacks(cfg, loaded, direction, suffix_prompts, sae, scores)
    by_name = {att.name: att for att in attacks}
    for n in a.gate_robust:  # held-in jailbreak templates: fitted under, never tested
        if n not in by_name and n.startswith("jailbreak_"):
            by_name[n] = template_attack(n.removeprefix("jailbreak_"))
    skipped = [n for n in a.gate_robust if n not in by_name]
    if skipped:
        log.warning(
            "anchor.gate_robust: %s not in this run's attack suite (anchor.sae_attack=false?); the gate is not fitted under them",
            skipped,
        )
    robust = [by_name[n] for n in a.gate_robust if n in by_name]
    extra_harmful, extra_harmless = extra
    with times("calibration"):
        art = calibrate_anchor(
            model,
            tpl,
            direction.direction,
            direction.layer,
            refused,
            P["harmful_val"],
            harmless_cal,
            P["harmless_val"],
            a,
            progress=cfg.progress,
            robust_to=robust,
            harmful_extra=extra_harmful,
            harmless_extra=extra_harmless,
            lookalike_val=optional_role(cfg, "overrefusal_val"),
        )
        art.features = feature_anchor(cfg, loaded, sae, scores, refused)
    art.metadata["model"] = loaded.name
    if a.adaptive:
        with times("adaptive"):
            attacks += adaptive_attacks(cfg, loaded, direction, art, suffix_prompts, harmless_cal)
    return Defended(art, attacks, refused)


def finetuned_model(cfg: AnchorJobConfig, loaded, direction):
    """The organism fine-tuned with its refusal direction cut on a share of steps (``anchor.finetune``), loaded like
    ``loaded``: from the cache, or fine-tuned now and cached."""
    from saesteer.stages import finetune_stage

    return finetune_stage(cfg.model, loaded, direction, cfg.anchor.dropout_finetune(cfg.seed), cfg.progress)[0]


def fine_tuned_defences(art: AnchorArtifact) -> list[Defence]:
    return [
        Defence("finetuned", lambda: [], "fine-tuned with the refusal direction cut on a share of steps"),
        Defence(
            "finetuned_anchored",
            lambda: art.anchors(),
            "the fine-tune, with its own gated anchor",
            gate=art.gate,
            ungated=lambda: art.anchors(gated=False),
        ),
    ]


def gate_fires(
    model,
    tpl,
    defended: Defended,
    harmful: list[str],
    harmless: list[str],
    batch_size: int,
    suffix: str = "",
    overrefusal: Sequence[str] = (),
) -> dict[str, float]:
    """``gate_fire_<attack><suffix>``: where the anchor's gate fires under each attack on ``harmful`` (``none``: no
    attack), ``gate_fire_harmless_test<suffix>`` on ``harmless`` and ``gate_fire_overrefusal<suffix>`` on
    ``overrefusal`` (where given)."""
    art = defended.art
    fires = gate_fire_rates(model, tpl, defended.attacks, art.gate, harmful, batch_size)
    fires["harmless_test"] = gate_fire_rates(model, tpl, [], art.gate, harmless, batch_size)["none"]
    if overrefusal:
        fires["overrefusal"] = gate_fire_rates(model, tpl, [], art.gate, list(overrefusal), batch_size)["none"]
    return {f"gate_fire_{n}{suffix}": v for n, v in fires.items()}


def anchor_prompts(cfg: AnchorJobConfig) -> tuple[dict[str, list[str]], list[str]]:
    """The job's prompt sets by role (harmful / harmless train, val and test) and the harmless prompts the gate's
    threshold is calibrated on: ``anchor.n_calibration_harmless`` of the harmless_train source, more than n_train."""
    from saesteer.data import load_prompts

    roles = ("harmful_train", "harmful_val", "harmless_val", "harmful_test", "harmless_test")
    P = {r: list(load_role(cfg.data, r).instructions) for r in roles}
    pool, n = load_prompts(cfg.data.harmless_train), cfg.anchor.n_calibration_harmless
    return P, list((pool.take(n, seed=cfg.seed + 7) if len(pool) > n else pool).instructions)


def run(cfg: AnchorJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    a = cfg.anchor
    if a.finetune != "none" and cfg.model.name != "organism":
        raise ValueError(
            f"anchor.finetune={a.finetune} fine-tunes the organism; got model.name={cfg.model.name!r} "
            "(a safety-tuned model takes the cut in its safety tuning: safety.direction_dropout)"
        )
    fit_extra = gate_fit_extra(cfg)  # before the model: a prompt source that does not load fails here
    loaded = load_model(cfg.model, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    P, harmless_cal = anchor_prompts(cfg)
    overrefusal = optional_role(cfg, "overrefusal")
    ev = cfg.eval.refusal_kwargs()
    direction = direction_stage(loaded, cfg.data, cfg.directions, path=cfg.search.direction, progress=cfg.progress)

    log.info("anchor: calibrating floors and gate on train/val prompts")
    times = PhaseTimes()
    base = defend(cfg, loaded, direction, P, harmless_cal, tracker, times, fit_extra)
    art = base.art
    art.save(run_dir / "anchor.safetensors")
    harmful = P["harmful_test"][: a.n_attack_prompts] if a.n_attack_prompts else P["harmful_test"]
    with times("table"):
        reference = baseline_completions(model, tpl, P["harmless_test"], **ev)
        result = evaluate_defences(
            model,
            tpl,
            base.attacks,
            defences(art, a.cast_alpha, a.addition_alpha),
            harmful,
            P["harmless_test"],
            overrefusal=overrefusal,
            reference=reference,
            **ev,
        )
    with times("gate_fires"):
        extra = gate_fires(model, tpl, base, harmful, P["harmless_test"], a.batch_size, overrefusal=overrefusal)
    if a.finetune != "none":
        log.info("anchor: the %s fine-tune, attacked and anchored the same way", a.finetune)
        ft = PhaseTimes()
        with ft("setup"):
            tl = finetuned_model(cfg, loaded, direction)
            td = direction_stage(tl, cfg.data, cfg.directions, progress=cfg.progress)
        tuned = defend(cfg, tl, td, P, harmless_cal, tracker, ft, fit_extra)
        tuned.art.save(run_dir / "anchor_finetuned.safetensors")
        with ft("table"):
            tuned_result = evaluate_defences(
                tl.model,
                tpl,
                tuned.attacks,
                fine_tuned_defences(tuned.art),
                harmful,
                P["harmless_test"],
                overrefusal=overrefusal,
                reference=reference,
                **ev,
            )
        extra.update({f"attack_kl_harmless_{n}_finetuned": v for n, v in tuned_result.attack_kl.items()})
        with ft("gate_fires"):
            extra.update(
                gate_fires(tl.model, tpl, tuned, harmful, P["harmless_test"], a.batch_size, "_finetuned", overrefusal)
            )
        extra.update(finetune=a.finetune, finetune_path=tl.metadata["organism_path"])
        extra.update({f"{k}_finetuned": v for k, v in ft.metrics().items()})
        result = result.merge(tuned_result)
    extra.update(times.metrics())
    metrics = anchor_metrics(art, result, n_floor_prompts=len(base.refused))
    metrics.update(extra)
    if a.suffix_steps > 0:
        metrics["gcg_suffix"] = next(att.description for att in base.attacks if att.name == "gcg_suffix")
    tracker.table("anchor/asr", asr_headers(result), asr_rows(result))
    asr_plot(result, run_dir / "asr_vs_overrefusal.png")
    write_text(run_dir / "report.md", render_report(art, result, a, metrics))
    return metrics
