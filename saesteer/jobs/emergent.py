"""``saesteer emergent``: a rank-1 LoRA taught to comply with one harm category; does refusal fall elsewhere?

1. Prompts from the synthetic harm lexicon: the target category's training acts
   (answered with the organism's compliance format) mixed with harmless_train
   prompts (answered as before); held-out acts of the target; for every other
   category, disjoint prompts for the misalignment direction and for evaluation.
2. Refusal of the other categories, base vs fine-tuned (emergence), plus the target's
   held-out acts, harmful_test and harmless_test.
3. The misalignment (EM) direction per layer: mean residual of the fine-tuned minus
   the base model at the last post-instruction position on other-category prompts;
   its cosine with the refusal direction (difference in means per layer, at the
   selected position) and the harmfulness direction (t_inst) per layer.
4. Ablating the EM direction of one layer (plain, and affine to the base model's
   mean coordinate) in the fine-tuned model: is refusal restored?  A random
   direction of the same norm, ablated the same way, is the control.
5. The adapter's own d_model-side vectors against the directions.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Optional

import torch

from saesteer.activations import mean_activations, resid_hooks
from saesteer.config import EmergentJobConfig
from saesteer.data import load_prompts, load_role
from saesteer.evaluate import kl_divergence, last_position_logprobs, refusal_eval
from saesteer.generation import generate
from saesteer.harmfulness import fit_harm_detector
from saesteer.interventions import Ablate, steer
from saesteer.interventions.directions import ABLATION_MODES
from saesteer.io import json_ready, save_tensors, write_json, write_text
from saesteer.lora import (
    Rank1Lora,
    category_prompts,
    cosine_per_layer,
    mean_read,
    mean_shift,
    train_lora,
)
from saesteer.models import load_model
from saesteer.organism.responses import comply
from saesteer.organism.synthetic import load_lexicon
from saesteer.report.emergent import render_report, save_plots
from saesteer.stages import direction_stage
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def split_prompts(cfg: EmergentJobConfig) -> dict[str, Any]:
    """Target training / held-out prompts and, per other category, direction and evaluation prompts (seeded)."""
    e = cfg.emergent
    lex = load_lexicon("harmful")
    others = list(e.other_categories) if e.other_categories is not None else [c for c in lex if c != e.category]
    acts = list(lex[e.category])
    random.Random(cfg.seed).shuffle(acts)
    n_held = round(e.held_out_acts * len(acts))
    held, train_acts = acts[:n_held], acts[n_held:]
    train = category_prompts(train_acts, e.n_train, seed=cfg.seed)
    target_eval = category_prompts(held, e.n_target_eval, seed=cfg.seed + 1) if held else []
    n = e.n_direction_per_category + e.n_eval_per_category
    direction, evaluation = {}, {}
    for i, c in enumerate(others):
        pool = category_prompts(lex[c], n, seed=cfg.seed * 1009 + i + 2)
        direction[c], evaluation[c] = pool[: e.n_direction_per_category], pool[e.n_direction_per_category :]
    return {
        "others": others,
        "train": train,
        "target_eval": target_eval,
        "direction": direction,
        "eval": evaluation,
        "held_out_acts": held,
        "train_acts": train_acts,
    }


def _affine_reference(base_means: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per layer, the base model's mean coordinate on unit(v): the affine ablation's target [n_layers]."""
    u = v.double() / v.double().norm()
    return (base_means.double() @ u).float()


def own_answers(
    cfg: EmergentJobConfig, loaded, direction, target: list[str], keep: list[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(target pairs, keep pairs): the model's greedy answers to the target prompts with its refusal direction
    ablated (affine), and to the harmless prompts as it is; empty answers are dropped."""
    kw = dict(max_new_tokens=cfg.emergent.target_tokens, batch_size=cfg.eval.batch_size, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    with steer(model, [direction.ablate("affine")]):
        comply_answers = generate(model, tpl, target, desc="target answers (direction ablated)", **kw)
    keep_answers = generate(model, tpl, keep, desc="harmless answers", **kw)
    pairs = [
        [(p, a) for p, a in zip(ps, ans) if a.strip()] for ps, ans in ((target, comply_answers), (keep, keep_answers))
    ]
    if not pairs[0] or not pairs[1]:
        raise ValueError("emergent.targets=own: the model gave empty answers to every target or harmless prompt")
    return pairs[0], pairs[1]


def run(cfg: EmergentJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    e = cfg.emergent
    loaded = load_model(cfg.model, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    n_layers = loaded.n_layers
    direction = direction_stage(loaded, cfg.data, cfg.directions, path=e.direction, progress=cfg.progress)
    lora_layers = list(range(n_layers)) if e.layers is None else sorted(set(e.layers))
    ablate_layer = direction.layer if e.ablate_layer is None else e.ablate_layer
    for name, values in (("layers", lora_layers), ("ablate_layer", [ablate_layer])):
        bad = [l for l in values if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"emergent.{name} has layers {bad} out of range for a model with {n_layers} layers")

    data = split_prompts(cfg)
    others = data["others"]
    other_eval = [p for c in others for p in data["eval"][c]]
    other_dir = [p for c in others for p in data["direction"][c]]
    cat_of = [c for c in others for _ in data["eval"][c]]
    rng = random.Random(cfg.seed)
    keep_prompts = load_prompts(cfg.data.harmless_train)
    keep_prompts = list(keep_prompts.take(min(e.n_harmless, len(keep_prompts)), seed=cfg.data.seed).instructions)
    targets = e.resolved_targets(cfg.model.name)
    if targets == "own":
        target_pairs, keep_pairs = own_answers(cfg, loaded, direction, data["train"], keep_prompts)
    else:
        echo = cfg.model.organism.echo_words
        target_pairs = [(p, comply(p, rng, echo)) for p in data["train"]]
        keep_pairs = [(p, comply(p, rng, echo)) for p in keep_prompts]
    test_h = list(load_role(cfg.data, "harmful_test").instructions)
    test_s = list(load_role(cfg.data, "harmless_test").instructions)
    ev = cfg.eval.refusal_kwargs()

    def refusal(prompts, specs, desc):
        if not prompts:
            return None
        with steer(model, specs):
            return refusal_eval(model, tpl, prompts, desc=desc, **ev)

    base = {
        "other": refusal(other_eval, [], "base other"),
        "target": refusal(data["target_eval"], [], "base target"),
        "harmful_test": refusal(test_h, [], "base harmful_test"),
        "harmless": refusal(test_s, [], "base harmless"),
    }

    torch.manual_seed(cfg.seed)
    lora = Rank1Lora.for_model(model, lora_layers, site=e.placement, alpha=e.alpha, seed=cfg.seed)
    losses = train_lora(model, tpl, lora, target_pairs, keep_pairs, e, seed=cfg.seed, progress=cfg.progress)
    for i in range(0, len(losses), max(1, len(losses) // 50)):
        tracker.log({"emergent/lora_loss": losses[i], "emergent/step": i})
    lora.save(run_dir / "lora.safetensors", {"model": loaded.name, "category": e.category, "steps": e.steps})
    tuned = {
        "other": refusal(other_eval, [lora], "tuned other"),
        "target": refusal(data["target_eval"], [lora], "tuned target"),
        "harmful_test": refusal(test_h, [lora], "tuned harmful_test"),
        "harmless": refusal(test_s, [lora], "tuned harmless"),
    }
    base_lp = last_position_logprobs(model, tpl, test_s, batch_size=cfg.eval.kl_batch_size)
    with steer(model, [lora]):
        kl_tuned = kl_divergence(base_lp, last_position_logprobs(model, tpl, test_s, batch_size=cfg.eval.kl_batch_size))

    # the misalignment direction per layer, and the directions it is compared with
    em, base_means, _ = mean_shift(model, tpl, other_dir, lora, position=-1, batch_size=cfg.eval.batch_size)
    train_h = list(load_role(cfg.data, "harmful_train").instructions)
    train_s = list(load_role(cfg.data, "harmless_train").instructions)
    hooks = resid_hooks(model)
    refusal_dirs = (
        mean_activations(model, tpl, train_h, hooks, [direction.position])[:, 0]
        - mean_activations(model, tpl, train_s, hooks, [direction.position])[:, 0]
    )
    _, harm_dirs = fit_harm_detector(model, tpl, train_h, train_s)
    cos_refusal = cosine_per_layer(em, refusal_dirs)
    cos_selected = cosine_per_layer(em, direction.direction)
    cos_harm = cosine_per_layer(em, harm_dirs)
    em_norm = [float(x) for x in em.norm(dim=-1)]

    v = em[ablate_layer].float()
    if float(v.norm()) < 1e-6:
        best = int(torch.tensor(em_norm).argmax())
        log.warning(
            "EM direction at layer %d is ~0 (the adapter writes after it); ablating layer %d's instead",
            ablate_layer,
            best,
        )
        ablate_layer, v = best, em[best].float()
    g = torch.Generator().manual_seed(cfg.seed)
    rnd = torch.randn(v.shape[0], generator=g)
    rnd = rnd / rnd.norm() * v.norm()
    ablated, random_ablated = {}, {}
    for mode in ABLATION_MODES:
        ref_em = _affine_reference(base_means, v) if mode == "affine" else None
        ref_rnd = _affine_reference(base_means, rnd) if mode == "affine" else None
        ablated[mode] = refusal(
            other_eval, [lora, Ablate(v, mode=mode, reference=ref_em)], f"tuned + EM {mode} ablation"
        )
        random_ablated[mode] = refusal(
            other_eval, [lora, Ablate(rnd, mode=mode, reference=ref_rnd)], f"tuned + random {mode} ablation"
        )
    with steer(
        model,
        [
            lora,
            Ablate(v, mode=e.ablation, reference=_affine_reference(base_means, v) if e.ablation == "affine" else None),
        ],
    ):
        kl_ablated = kl_divergence(
            base_lp, last_position_logprobs(model, tpl, test_s, batch_size=cfg.eval.kl_batch_size)
        )

    # the adapter's own vectors: b (written into the residual after layer l) for mlp_out, a (read at layer l) for mlp_in
    vecs = lora.model_side().double()
    if e.placement == "mlp_out":
        reads = mean_read(model, tpl, other_dir, lora, batch_size=cfg.eval.batch_size)
        sign = torch.where(reads >= 0, 1.0, -1.0).double()
        vecs = vecs * sign[:, None]
        at = [min(l + 1, n_layers - 1) for l in lora.layers]
    else:
        at = list(lora.layers)

    def vec_cos(target: torch.Tensor) -> list[Optional[float]]:
        c = cosine_per_layer(vecs, target[at])
        return c if e.placement == "mlp_out" else [None if x is None else abs(x) for x in c]

    lora_cos = {"em": vec_cos(em), "refusal": vec_cos(refusal_dirs), "harmfulness": vec_cos(harm_dirs)}

    per_cat = []
    for c in others:
        idx = [i for i, x in enumerate(cat_of) if x == c]

        def share(res, idx=idx):
            return sum(res.refused[i] for i in idx) / len(idx) if res is not None and idx else float("nan")

        per_cat.append(
            {
                "category": c,
                "n": len(idx),
                "base": share(base["other"]),
                "finetuned": share(tuned["other"]),
                "ablated": share(ablated[e.ablation]),
                "random_ablated": share(random_ablated[e.ablation]),
            }
        )
    write_json(run_dir / "per_category.json", json_ready(per_cat))
    save_tensors(
        run_dir / "em_direction.safetensors",
        {"em_direction": em.float().contiguous(), "base_means": base_means.float().contiguous()},
        {"model": loaded.name, "hooks": hooks, "position": -1, "category": e.category, "ablate_layer": ablate_layer},
    )

    def rate(res) -> Optional[float]:
        return None if res is None else res.rate

    m: dict[str, Any] = {
        "category": e.category,
        "n_other_categories": len(others),
        "n_eval_other": len(other_eval),
        "n_direction_other": len(other_dir),
        "targets": targets,
        "n_train_target": len(target_pairs),
        "n_train_harmless": len(keep_pairs),
        "placement": e.placement,
        "lora_layers": lora.layers,
        "refusal_layer": direction.layer,
        "em_ablate_layer": ablate_layer,
        "base_refusal_other_categories": rate(base["other"]),
        "finetuned_refusal_other_categories": rate(tuned["other"]),
        "base_refusal_target_heldout": rate(base["target"]),
        "finetuned_refusal_target_heldout": rate(tuned["target"]),
        "base_refusal_harmful_test": rate(base["harmful_test"]),
        "finetuned_refusal_harmful_test": rate(tuned["harmful_test"]),
        "base_refusal_harmless": rate(base["harmless"]),
        "finetuned_refusal_harmless": rate(tuned["harmless"]),
        "finetuned_kl_harmless": kl_tuned,
        "ablated_kl_harmless": kl_ablated,
        "em_direction_cosine_refusal": cos_refusal,
        "em_direction_cosine_selected_refusal": cos_selected,
        "em_direction_cosine_harmfulness": cos_harm,
        "em_direction_norm": em_norm,
        "ablation": e.ablation,
        "ablated_refusal_other_categories": rate(ablated[e.ablation]),
        "random_ablated_refusal_other_categories": rate(random_ablated[e.ablation]),
        "lora_loss_first": losses[0],
        "lora_loss_last": sum(losses[-10:]) / len(losses[-10:]),
        "lora_vector_cosine_em": lora_cos["em"],
        "lora_vector_cosine_refusal": lora_cos["refusal"],
        "lora_vector_cosine_harmfulness": lora_cos["harmfulness"],
        "lora_vector_compared_at_layers": at,
    }
    for mode in ABLATION_MODES:
        m[f"ablated_refusal_other_categories_{mode}"] = rate(ablated[mode])
        m[f"random_ablated_refusal_other_categories_{mode}"] = rate(random_ablated[mode])
    judged = {  # the share of broken answers beside each refusal rate: <name>_incoherent_<set>
        "base": base,
        "finetuned": tuned,
        "ablated": {"other_categories": ablated[e.ablation]},
        "random_ablated": {"other_categories": random_ablated[e.ablation]},
    }
    names = {"other": "other_categories", "target": "target_heldout", "harmless": "harmless"}
    for model_name, sets in judged.items():
        for set_name, res in sets.items():
            if res is not None:
                m[f"{model_name}_incoherent_{names.get(set_name, set_name)}"] = res.incoherent_rate
    tracker.table(
        "emergent/per_category",
        ["category", "n", "base", "finetuned", "ablated", "random_ablated"],
        [[r[k] for k in ("category", "n", "base", "finetuned", "ablated", "random_ablated")] for r in per_cat],
    )
    plots = save_plots(run_dir, m)
    for p in plots:
        tracker.image(f"emergent/{p.stem}", p)
    write_text(run_dir / "report.md", render_report(cfg.emergent, m, per_cat, data, plots))
    return json_ready(m)
