"""The search job's report: the top features, the causal checks and the cosine-vs-contrast plot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from saesteer.feature_rankings import EDITS, CurvePoint
from saesteer.report import markdown_table, save_fig, scatter_plot

_EDIT = "|".join(sorted(EDITS, key=len, reverse=True))  # the longest first: harmless_mean_along_r before harmless_mean
_CURVE_KEY = re.compile(rf"(?:search/)?curve_refusal_(\w+?)_({_EDIT})_k(\d+)")

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
    """(intervention, prompt set, refusal, incoherent, KL on harmless_test) for every edit the job measured (the
    incoherent share: nan for a run from before the job recorded it)."""
    what = "their harmless mean" if s.ablation == "harmless_mean" else "0"
    kind = "features (refusal and comply, by |score|)" if s.signed else "refusal features"
    nan = float("nan")
    hook = m["hook"]
    spec = [
        ("baseline", "harmful_test", "baseline_harmful_refusal", 0.0),
        ("baseline", "harmless_test", "baseline_harmless_refusal", 0.0),
        (
            f"top-{s.k} {kind} set to {what}",
            "harmful_test",
            "topk_ablation_harmful_refusal",
            m["topk_ablation_kl_harmless"],
        ),
        (
            f"top-{s.k} refusal features set to 0",
            "harmful_test",
            "topk_zero_ablation_harmful_refusal",
            m["topk_zero_ablation_kl_harmless"],
        ),
        (
            f"top-{s.k} clamped: refusal features to {s.induce_scale:g}x their active mean, comply features to 0 "
            f"({s.induce_apply_to} tokens)",
            "harmless_test",
            "topk_clamp_harmless_refusal",
            m.get("topk_clamp_kl_harmless", nan),
        ),
        (
            f"random {s.k} features set to {what}",
            "harmful_test",
            "random_k_ablation_harmful_refusal",
            m["random_k_ablation_kl_harmless"],
        ),
        (f"random {s.k} features set to 0", "harmful_test", "random_k_zero_ablation_harmful_refusal", nan),
        (
            "refusal direction ablated (all layers)",
            "harmful_test",
            "direction_ablation_harmful_refusal",
            m["direction_ablation_kl_harmless"],
        ),
        (
            f"refusal direction ablated at `{hook}` only (affine to {m['sae_hook_affine_reference']:.3g}, the "
            "directions stage's reference)",
            "harmful_test",
            "direction_ablation_sae_hook_harmful_refusal",
            m["direction_ablation_sae_hook_kl_harmless"],
        ),
        (
            f"refusal direction ablated at `{hook}` only (affine to {m['harmless_coordinate_sae_hook']:.3g}, harmless "
            "mean at the searched positions)",
            "harmful_test",
            "direction_ablation_sae_hook_positions_mean_harmful_refusal",
            nan,
        ),
        (
            f"refusal direction projected out at `{hook}` only (plain)",
            "harmful_test",
            "direction_plain_ablation_sae_hook_harmful_refusal",
            nan,
        ),
        ("refusal direction added", "harmless_test", "direction_addition_harmless_refusal", nan),
        (
            f"refusal direction added x{m.get('direction_addition_matched_kl_alpha', nan):.3g}: the clamp's KL",
            "harmless_test",
            "direction_addition_matched_kl_harmless_refusal",
            m.get("direction_addition_matched_kl_kl_harmless", nan),
        ),
    ]
    return [
        (label, split, m[key], m.get(key.removesuffix("_refusal") + "_incoherent", nan), kl)
        for label, split, key, kl in spec
        if key in m  # runs from before a row was measured lack it
    ]


def save_k_curve(points: Sequence[Any], references: dict[str, float], path: Path) -> Path:
    """Refusal against k (log scale), one line per ranking and edit, with horizontal reference lines."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    keys = list(dict.fromkeys((p.ranking, p.edit) for p in points))
    colors = dict(zip(dict.fromkeys(r for r, _ in keys), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ranking, edit in keys:
        pts = [p for p in points if (p.ranking, p.edit) == (ranking, edit)]
        ax.plot(
            [p.k for p in pts],
            [p.refusal for p in pts],
            marker="o",
            color=colors[ranking],
            linestyle={"harmless_mean": "-", "zero": "--"}.get(edit, "-."),
            label=f"{ranking} ({edit})",
        )
    for (name, value), style in zip(references.items(), (":", "-.")):
        ax.axhline(value, color="gray", linestyle=style, label=name)
    ax.set_xscale("log", base=2)
    ks = sorted({p.k for p in points})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (features edited)")
    ax.set_ylabel("harmful_test refusal")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return save_fig(fig, path)


def curve_points(metrics: Mapping[str, Any]) -> list[CurvePoint]:
    """The refusal-vs-k points of a search run's metrics (``curve_refusal_*`` / ``curve_kl_*``, with or without
    the pipeline's ``search/`` prefix), in the metrics' order."""
    points = []
    for key, value in metrics.items():
        match = _CURVE_KEY.fullmatch(key)
        if match:
            kl = metrics.get(key.replace("curve_refusal_", "curve_kl_"))
            ranking, edit, k = match.group(1), match.group(2), int(match.group(3))
            points.append(CurvePoint(ranking, edit, k, [], float(value), float("nan") if kl is None else float(kl)))
    return points


def curve_table(points: Sequence[Any]) -> tuple[list[str], list[list[Any]]]:
    """Rows: ranking and edit; columns: refusal (KL) at each k."""
    ks = sorted({p.k for p in points})
    rows = []
    for ranking, edit in dict.fromkeys((p.ranking, p.edit) for p in points):
        at = {p.k: p for p in points if (p.ranking, p.edit) == (ranking, edit)}
        rows.append([ranking, edit] + [f"{at[k].refusal:.3f} ({at[k].kl:.3f})" if k in at else "" for k in ks])
    return ["ranking", "edit", *(f"k={k}" for k in ks)], rows


def render_report(s: Any, scores: Any, m: dict[str, Any], rows: list[list[Any]], points: Sequence[Any] = ()) -> str:
    """The search job's report.md from its settings ``s``, the scores, its metrics, the top features' rows and the
    refusal-vs-k points."""
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
            markdown_table(["intervention", "set", "refusal", "incoherent", "KL harmless"], causal_rows(s, m)),
            "",
            "SAE feature steering at one layer vs the difference-in-means direction at every layer (AxBench found the "
            "latter stronger) and at the SAE's hook only (the ceiling of a one-layer edit along the direction).",
            "",
            "![cosine vs contrast](cosine_vs_contrast.png)",
            "",
            *(k_section(s, m, points) if points else []),
        ]
    )


def k_section(s: Any, m: dict[str, Any], points: Sequence[Any]) -> list[str]:
    headers, rows = curve_table(points)
    reached = ", ".join(f"{r}: {m.get(f'k_at_bypass_{r}') or 'none'}" for r in s.curve_rankings)
    return [
        "## Refusal against k (held-out)",
        "",
        "harmful_test refusal (next-token KL on harmless_test) with each ranking's first k features edited at "
        f"`{m['hook']}`; the greedy order was chosen by real edits on {s.greedy_prompts} harmful_train prompts from "
        f"the attribution ranking's best {s.greedy_pool}.  Smallest k with refusal <= 0.10 at KL <= 0.1: {reached}.",
        "",
        markdown_table(headers, rows),
        "",
        "![refusal vs k](refusal_vs_k.png)",
        "",
    ]
