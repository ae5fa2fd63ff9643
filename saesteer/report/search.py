"""The search job's report: the top features, the causal checks and the cosine-vs-contrast plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesteer.report import markdown_table, scatter_plot

FEATURE_COLUMNS = [
    "rank",
    "feature",
    "combined",
    "cosine",
    "effect_size",
    "auroc",
    "attribution",
    "harmful_mean",
    "harmless_mean",
]


def feature_record(scores: Any, f: int, rank: int) -> dict[str, Any]:
    """Feature ``f``'s scores (the search's combined score, cosine, contrast, attribution, class means) and the
    prompts it fires on most."""
    return {
        "feature": f,
        "rank": rank,
        "combined": float(scores.signed_score[f]),
        "cosine": float(scores.cosine[f]),
        "effect_size": float(scores.effect_size[f]),
        "auroc": float(scores.auroc[f]),
        "attribution": float(scores.attribution[f]),
        "harmful_mean": float(scores.harmful_mean[f]),
        "harmless_mean": float(scores.harmless_mean[f]),
        "top_prompts": scores.top_prompts.get(f, []),
    }


def save_plot(scores: Any, top: list[int], path: Path) -> Path:
    """Every feature's decoder cosine with the refusal direction against its harmful-vs-harmless effect size."""
    return scatter_plot(
        scores.cosine.tolist(),
        scores.effect_size.tolist(),
        path,
        "cos(W_dec[f], refusal direction)",
        "effect size (harmful vs harmless)",
        "SAE features",
        highlight=top,
        labels=list(range(len(scores.cosine))),
    )


def causal_rows(s: Any, m: dict[str, Any]) -> list[tuple]:
    """(intervention, prompt set, refusal, KL on harmless_test) for every edit the job measured."""
    what = "their harmless mean" if s.ablation == "harmless_mean" else "0"
    kind = "features (refusal and comply, by |score|)" if s.signed else "refusal features"
    nan = float("nan")
    hook = m["hook"]
    return [
        ("baseline", "harmful_test", m["baseline_harmful_refusal"], 0.0),
        ("baseline", "harmless_test", m["baseline_harmless_refusal"], 0.0),
        (
            f"top-{s.k} {kind} set to {what}",
            "harmful_test",
            m["topk_ablation_harmful_refusal"],
            m["topk_ablation_kl_harmless"],
        ),
        (
            f"top-{s.k} refusal features set to 0",
            "harmful_test",
            m["topk_zero_ablation_harmful_refusal"],
            m["topk_zero_ablation_kl_harmless"],
        ),
        (
            f"top-{s.k} clamped: refusal features to {s.induce_scale:g}x their active mean, comply features to 0 "
            f"({s.induce_apply_to} tokens)",
            "harmless_test",
            m["topk_clamp_harmless_refusal"],
            nan,
        ),
        (
            f"random {s.k} features set to {what}",
            "harmful_test",
            m["random_k_ablation_harmful_refusal"],
            m["random_k_ablation_kl_harmless"],
        ),
        (f"random {s.k} features set to 0", "harmful_test", m["random_k_zero_ablation_harmful_refusal"], nan),
        (
            "refusal direction ablated (all layers)",
            "harmful_test",
            m["direction_ablation_harmful_refusal"],
            m["direction_ablation_kl_harmless"],
        ),
        (
            f"refusal direction ablated at `{hook}` only (affine to {m['sae_hook_affine_reference']:.3g}, the "
            "directions stage's reference)",
            "harmful_test",
            m["direction_ablation_sae_hook_harmful_refusal"],
            m["direction_ablation_sae_hook_kl_harmless"],
        ),
        (
            f"refusal direction ablated at `{hook}` only (affine to {m['harmless_coordinate_sae_hook']:.3g}, harmless "
            "mean at the searched positions)",
            "harmful_test",
            m["direction_ablation_sae_hook_positions_mean_harmful_refusal"],
            nan,
        ),
        (
            f"refusal direction projected out at `{hook}` only (plain)",
            "harmful_test",
            m["direction_plain_ablation_sae_hook_harmful_refusal"],
            nan,
        ),
        ("refusal direction added", "harmless_test", m["direction_addition_harmless_refusal"], nan),
    ]


def render_report(s: Any, scores: Any, m: dict[str, Any], rows: list[list[Any]]) -> str:
    """The search job's report.md from its settings ``s``, the scores, its metrics and the top features' rows."""
    what = "their harmless mean" if s.ablation == "harmless_mean" else "0"
    ranking = (
        "signed (|combined score|; negative = comply feature)"
        if s.signed
        else "refusal features (combined score descending)"
    )
    headers = [
        "rank",
        "feature",
        "combined",
        "cosine",
        "effect size",
        "AUROC",
        "attribution",
        "harmful mean",
        "harmless mean",
    ]
    return "\n".join(
        [
            "# Refusal features",
            "",
            f"SAE at `{m['hook']}` (d_sae={m['d_sae']}), {m['n_eligible']} features pass the activity filter.",
            "",
            f"Ranking: {ranking}; bypass sets the top {s.k} to {what}.",
            "",
            "## Top features",
            "",
            markdown_table(headers, rows),
            "",
            "## Causal check (held-out)",
            "",
            markdown_table(["intervention", "set", "refusal", "KL harmless"], causal_rows(s, m)),
            "",
            "SAE feature steering at one layer vs the difference-in-means direction at every layer (AxBench found the "
            "latter stronger) and at the SAE's hook only (the ceiling of a one-layer edit along the direction).",
            "",
            "![cosine vs contrast](cosine_vs_contrast.png)",
            "",
        ]
    )
