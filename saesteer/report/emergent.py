"""The emergent-misalignment job's report: its plots and Markdown, rendered from the job's measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesteer.interventions.directions import ABLATION_MODES
from saesteer.report import markdown_table, save_fig


def save_plots(run_dir: Path, m: dict[str, Any]) -> list[Path]:
    """em_cosine_by_layer.png and refusal_other_categories.png from the job's metrics."""
    import matplotlib.pyplot as plt

    layers = list(range(len(m["em_direction_norm"])))
    nan = float("nan")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (
        ("em_direction_cosine_refusal", "refusal (diff. in means, per layer)"),
        ("em_direction_cosine_selected_refusal", f"selected refusal direction (layer {m['refusal_layer']})"),
        ("em_direction_cosine_harmfulness", "harmfulness (t_inst, per layer)"),
    ):
        ax.plot(layers, [nan if v is None else v for v in m[key]], marker="o", label=label)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("layer (resid_pre)")
    ax.set_ylabel("cosine with the EM direction")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths = [save_fig(fig, run_dir / "em_cosine_by_layer.png")]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = ["base", "fine-tuned", f"+ EM ablated ({m['ablation']})", f"+ random ablated ({m['ablation']})"]
    vals = [
        m["base_refusal_other_categories"],
        m["finetuned_refusal_other_categories"],
        m["ablated_refusal_other_categories"],
        m["random_ablated_refusal_other_categories"],
    ]
    ax.bar(range(4), [nan if v is None else v for v in vals], color=["0.6", "tab:red", "tab:green", "tab:blue"])
    ax.set_xticks(range(4), names, fontsize=8, rotation=10)
    ax.set_ylabel("refusal, other categories")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"rank-1 LoRA complying with {m['category']}", fontsize=9)
    paths.append(save_fig(fig, run_dir / "refusal_other_categories.png"))
    return paths


def _fmt(v) -> Any:
    return "n/a" if v is None else v


def render_report(e: Any, m: dict[str, Any], per_cat: list[dict], data: dict, plots: list[Path]) -> str:
    """The emergent job's report.md from its settings ``e``, metrics, per-category rates and training data."""
    rows = [
        (
            label,
            _fmt(m.get(f"base_refusal_{key}")),
            _fmt(m.get(f"finetuned_refusal_{key}")),
            _fmt(m.get(f"base_incoherent_{key}")),
            _fmt(m.get(f"finetuned_incoherent_{key}")),
        )
        for label, key in (
            ("other categories (held out)", "other_categories"),
            (f"target {e.category}, held-out acts", "target_heldout"),
            ("harmful_test (all sources)", "harmful_test"),
            ("harmless_test", "harmless"),
        )
    ]
    layer_rows = [
        (
            l,
            m["em_direction_norm"][l],
            _fmt(m["em_direction_cosine_refusal"][l]),
            _fmt(m["em_direction_cosine_selected_refusal"][l]),
            _fmt(m["em_direction_cosine_harmfulness"][l]),
        )
        for l in range(len(m["em_direction_norm"]))
    ]
    abl_rows = [
        (mode, m[f"ablated_refusal_other_categories_{mode}"], m[f"random_ablated_refusal_other_categories_{mode}"])
        for mode in ABLATION_MODES
    ]
    vec_rows = [
        (l, at, _fmt(a), _fmt(b), _fmt(c))
        for l, at, a, b, c in zip(
            m["lora_layers"],
            m["lora_vector_compared_at_layers"],
            m["lora_vector_cosine_em"],
            m["lora_vector_cosine_refusal"],
            m["lora_vector_cosine_harmfulness"],
        )
    ]
    emerged = m["finetuned_refusal_other_categories"] < m["base_refusal_other_categories"]
    vec_note = (
        "b, signed by the mean of x.a on other-category prompts (the direction the adapter writes), compared with the "
        "directions at resid_pre of the next layer (the same layer for the last)"
        if e.placement == "mlp_out"
        else "a (read from the normalized residual), |cosine| because a's sign is arbitrary up to b's"
    )
    return "\n".join(
        [
            "# Emergent misalignment with a rank-1 LoRA",
            "",
            f"Rank-1 adapters on `{e.placement}` of layers {m['lora_layers']}, trained {e.steps} steps to comply with "
            f"**{e.category}** ({m['n_train_target']} prompts from {len(data['train_acts'])} acts; {len(data['held_out_acts'])} acts held out) "
            f"while answering {m['n_train_harmless']} harmless prompts as before; response loss {m['lora_loss_first']:.3f} -> {m['lora_loss_last']:.3f}. "
            f"Evaluated on {m['n_eval_other']} held-out prompts of {m['n_other_categories']} other categories.",
            "",
            "## Refusal, base vs fine-tuned",
            "",
            markdown_table(["prompts", "base", "fine-tuned", "incoherent (base)", "incoherent (fine-tuned)"], rows),
            "",
            f"KL on harmless prompts (next token): fine-tuned {m['finetuned_kl_harmless']:.4f}, with the EM direction ablated {m['ablated_kl_harmless']:.4f}.",
            "",
            (
                "Refusal **fell** on categories never trained on (emergence)."
                if emerged
                else "Refusal did **not** fall on the other categories."
            ),
            "",
            "## The misalignment direction",
            "",
            "Mean residual (fine-tuned minus base) at the last post-instruction position on other-category prompts, per layer, "
            "and its cosine with the refusal direction (difference in means at the selected position, per layer), the selected "
            "refusal direction itself, and the harmfulness direction (t_inst, per layer).",
            "",
            markdown_table(["layer", "norm", "cos refusal", "cos selected refusal", "cos harmfulness"], layer_rows),
            "",
            f"## Ablating the EM direction of layer {m['em_ablate_layer']} in the fine-tuned model",
            "",
            markdown_table(["ablation", "EM direction", "random direction, same norm"], abl_rows),
            "",
            f"Headline ({m['ablation']}): fine-tuned {m['finetuned_refusal_other_categories']:.3f} -> EM ablated "
            f"{m['ablated_refusal_other_categories']:.3f} (random {m['random_ablated_refusal_other_categories']:.3f}); base {m['base_refusal_other_categories']:.3f}.",
            "",
            "## The adapter's own vectors",
            "",
            f"Vector: {vec_note}.",
            "",
            markdown_table(["LoRA layer", "compared at layer", "cos EM", "cos refusal", "cos harmfulness"], vec_rows),
            "",
            "## Per category",
            "",
            markdown_table(
                ["category", "n", "base", "fine-tuned", "EM ablated", "random ablated"],
                [
                    (r["category"], r["n"], r["base"], r["finetuned"], r["ablated"], r["random_ablated"])
                    for r in per_cat
                ],
            ),
            "",
            *[f"![{p.stem}]({p.name})" for p in plots],
            "",
        ]
    )
