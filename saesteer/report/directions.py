"""The directions job's report: the candidate heatmaps, the dose-response and cosine plots, and the Markdown,
rendered from the selection and the job's figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from saesteer.report import heatmaps, line_plot, markdown_table

CANDIDATE_COLUMNS = ["layer", "pos", "bypass plain", "bypass affine", "induce", "KL plain", "KL affine", "filtered by"]


def candidate_rows(sel: Any) -> list[tuple]:
    """One row per scored candidate (layer, position): bypass, induce and KL scores, and the filters it failed."""
    return [
        (
            s.layer,
            s.position,
            s.bypass_plain,
            s.bypass_affine,
            s.induce,
            s.kl_plain,
            s.kl_affine,
            ",".join(s.filtered_by) or "-",
        )
        for s in sel.scores
    ]


def save_plots(
    run_dir: Path, sel: Any, cos: torch.Tensor, dose: dict[str, list[float]], alphas: Sequence[float]
) -> list[Path]:
    """candidate_scores.png (every candidate's scores, the selected one marked), harm_refusal_cosine.png and
    addition_dose_response.png."""
    layers = sorted({s.layer for s in sel.scores})
    positions = sorted({s.position for s in sel.scores})
    by_cell = {(s.layer, s.position): s for s in sel.scores}

    def grid(score) -> list[list[float]]:
        return [[score(by_cell[(l, p)]) if (l, p) in by_cell else float("nan") for p in positions] for l in layers]

    return [
        heatmaps(
            {
                "bypass (affine)": grid(lambda s: s.bypass_affine),
                "bypass (plain)": grid(lambda s: s.bypass_plain),
                "induce": grid(lambda s: s.induce),
                "KL (affine)": grid(lambda s: s.kl_affine),
            },
            positions,
            layers,
            run_dir / "candidate_scores.png",
            "refusal-direction candidates",
            marker=(layers.index(sel.layer), positions.index(sel.position)),
        ),
        line_plot(
            {"cos(harmfulness@t_inst, refusal@post)": cos.tolist()},
            list(range(len(cos))),
            run_dir / "harm_refusal_cosine.png",
            "layer",
            "cosine",
        ),
        line_plot(
            {"every token": dose["both"], "prompt tokens only": dose["prompt"]},
            list(alphas),
            run_dir / "addition_dose_response.png",
            "alpha (x difference in means)",
            "harmless_test refusal",
            "steering dose-response",
        ),
    ]


def render_report(model_name: str, sel: Any, m: dict[str, Any]) -> str:
    """The directions job's report.md from the selection ``sel`` and the job's metrics ``m``."""
    fallback = sel.metadata.get("fallback")
    nan = float("nan")
    alphas = m["addition_dose_alphas"]
    return (
        "\n".join(
            [
                "# Refusal direction",
                "",
                f"Model `{model_name}`; selected layer **{sel.layer}**, position **{sel.position}** by {sel.ablation} ablation.",
                f"Fallback: {fallback}" if fallback else "Every filter of the paper passed for the selected candidate.",
                "",
                "## Held-out effects",
                "",
                f"Refusal by the {m.get('judge', 'configured')} judge, and the share of answers it flags incoherent "
                "(broken text: an ablation that breaks the model is not a bypass); beside them, the substring judge of "
                "Arditi et al. on the same completions, for the figures the paper reports.",
                "",
                markdown_table(
                    ["condition", "set", "refusal", "incoherent", "refusal (substring)", "KL harmless", "CE harmless"],
                    [
                        (
                            condition,
                            split,
                            m[key],
                            m.get(key.removesuffix("_refusal") + "_incoherent", nan),
                            m.get(f"{key}_substring", ""),
                            kl,
                            ce,
                        )
                        for condition, split, key, kl, ce in (
                            ("baseline", "harmful_test", "baseline_harmful_refusal", 0.0, m["ce_harmless_baseline"]),
                            ("baseline", "harmless_test", "baseline_harmless_refusal", 0.0, m["ce_harmless_baseline"]),
                            (
                                "ablation (plain)",
                                "harmful_test",
                                "ablation_harmful_refusal",
                                m["ablation_kl_harmless"],
                                m["ce_harmless_ablation"],
                            ),
                            (
                                "ablation (affine)",
                                "harmful_test",
                                "affine_ablation_harmful_refusal",
                                m["affine_ablation_kl_harmless"],
                                m["ce_harmless_affine_ablation"],
                            ),
                            ("addition", "harmless_test", "addition_harmless_refusal", nan, nan),
                            (
                                "random ablation",
                                "harmful_test",
                                "random_ablation_harmful_refusal",
                                m["random_ablation_kl_harmless"],
                                m["ce_harmless_random_ablation"],
                            ),
                            ("random addition", "harmless_test", "random_addition_harmless_refusal", nan, nan),
                        )
                    ],
                ),
                "",
                f"Orthogonalized weights vs hook ablation: max |logit diff| = {m['orthogonalized_max_logit_diff']:.2e}.",
                "",
                "## Steering dose-response",
                "",
                f"Addition of alpha x the direction at layer {sel.layer} on {m['n_dose']} harmless_test prompts: on every "
                "token (prompt and generated, as the paper) or on the prompt tokens only (generated tokens untouched: strong "
                "additions on every token make the text degenerate, which the judge does not count as a refusal).",
                "",
                markdown_table(
                    ["alpha", "every token", "prompt only"],
                    list(
                        zip(
                            alphas, m["addition_dose_harmless_refusal"], m["addition_dose_prompt_only_harmless_refusal"]
                        )
                    ),
                ),
                "",
                "![dose-response](addition_dose_response.png)",
                "",
                "## Harmfulness vs refusal",
                "",
                f"Latent harm detector AUROC (harmful_test vs harmless_test): {m['harm_detector_auroc']:.3f}; with the "
                f"refusal direction ablated: {m['harm_detector_auroc_under_ablation']:.3f}.",
                *(
                    [
                        f"The same detector fitted on the untuned base `{m['untuned_base']}`, which never refuses: AUROC "
                        f"{m['untuned_harm_detector_auroc']:.3f}; cos(its harmfulness direction, the tuned model's) by "
                        f"layer: {m['untuned_tuned_harm_cosine_by_layer']}.",
                    ]
                    if "untuned_harm_detector_auroc" in m
                    else []
                ),
                "cos(harmfulness direction at t_inst, behavioural refusal direction at the last position) by layer: "
                f"{[round(float(c), 3) for c in m['harm_refusal_cosine_by_layer']]}.",
                "",
                "![candidates](candidate_scores.png)",
                "",
                "![cosine](harm_refusal_cosine.png)",
                "",
                "## Candidates",
                "",
                markdown_table(CANDIDATE_COLUMNS, candidate_rows(sel)),
            ]
        )
        + "\n"
    )
