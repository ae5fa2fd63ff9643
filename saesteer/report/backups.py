"""The backups job's report: its tables, plots and Markdown, rendered from the job's measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saesteer.redundancy import EditCurve
from saesteer.report import markdown_table, save_fig


def _fmt(x: Any) -> str:
    return "n/a (no monitored feature at a counted layer)" if x is None else f"{x:.3f}"


def cut_plot(run_dir: Path, checks: dict[str, dict], cut) -> Path:
    """Per model, each later-layer refusal feature's mean activation intact vs with the direction cut (red: backups)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(checks), figsize=(4.4 * len(checks), 3.8), squeeze=False)
    for ax, (name, c) in zip(axes[0], checks.items()):
        top = 0.0
        for L, d in c["features"].items():
            i, e, bk = d["intact"], d["cut"], d["backup"]
            top = max([top] + i + e)
            ax.scatter(
                [x for x, k in zip(i, bk) if not k],
                [y for y, k in zip(e, bk) if not k],
                s=14,
                color="0.5",
                label=f"layer {L} refusal features",
            )
            if any(bk):
                ax.scatter(
                    [x for x, k in zip(i, bk) if k],
                    [y for y, k in zip(e, bk) if k],
                    s=22,
                    color="red",
                    label=f"layer {L} backups ({sum(bk)})",
                )
        ax.plot([0, top or 1], [0, top or 1], ls="--", lw=0.8, color="k")
        ax.set_title(f"{name}: refusal {c['refusal']:.3f} with the direction cut", fontsize=9)
        ax.set_xlabel("mean activation, intact")
        ax.set_ylabel(f"mean activation, direction cut at layer {cut.layer}")
        ax.grid(alpha=0.3)
        if c["features"]:
            ax.legend(fontsize=7)
    fig.suptitle(
        "later-layer refusal features when the training-time cut is applied (above the diagonal: rises)", fontsize=9
    )
    return save_fig(fig, run_dir / "direction_cut_activations.png")


def hook_layer(hook: str) -> int:
    return int(hook.split(".")[1])


def change_rows(step) -> list[tuple]:
    rows = []
    for h, c in step.changes.items():
        for j, f in enumerate(c.features):
            if bool(c.edited_mask[j]):
                continue
            rows.append(
                (
                    hook_layer(h),
                    f,
                    float(c.intact[j]),
                    float(c.edited[j]),
                    float(c.relative[j]),
                    float(c.rise_rate[j]),
                    bool(c.backup[j]),
                    h in step.count_hooks,
                )
            )
    return rows


def details(*curves: EditCurve) -> dict[str, Any]:
    out = {}
    for name, curve in zip(("downstream", "upstream", "induction"), curves):
        out[name] = {
            "hook": curve.hook,
            "mode": curve.mode,
            "ranking_top": curve.ranking[: len(curve.steps)],
            "steps": [
                {
                    "k": st.k,
                    "features": st.features,
                    "refusal": st.refusal,
                    "n_backups": st.n_backups,
                    "changes": {
                        h: {
                            "features": c.features,
                            "intact": c.intact.tolist(),
                            "edited": c.edited.tolist(),
                            "relative": c.relative.tolist(),
                            "backup": c.backup.tolist(),
                            "edited_mask": c.edited_mask.tolist(),
                            "rise_rate": c.rise_rate.tolist(),
                        }
                        for h, c in st.changes.items()
                    },
                }
                for st in curve.steps
            ],
        }
    return out


def save_plots(
    run_dir: Path, down: EditCurve, upc: EditCurve, induce: EditCurve, random_rates, rule, prefix: str = ""
) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(down.ks, down.refusal, marker="o", label=f"downstream cut ({down.hook.split('.')[1]}), harmful")
    ax.plot(upc.ks, upc.refusal, marker="s", label=f"upstream cut ({upc.hook.split('.')[1]}), harmful")
    ax.plot(induce.ks, induce.refusal, marker="^", ls="--", label="upstream induce, harmless")
    K = down.ks[-1]
    for name, rate in random_rates.items():
        ax.scatter([K], [rate], marker="x", s=60, label=f"{name}: {K} random features cut")
    ax.set_xlabel("k (top features edited)")
    ax.set_ylabel("refusal rate")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if prefix:
        ax.set_title(prefix.rstrip("_") + " organism", fontsize=9)
    paths = [save_fig(fig, run_dir / f"{prefix}refusal_vs_k.png")]
    for name, curve in (("downstream", down), ("upstream", upc)):
        hooks = list(curve.steps[0].changes)
        if not hooks:
            continue
        fig, axes = plt.subplots(1, len(hooks), figsize=(4.2 * len(hooks), 3.4), squeeze=False)
        for ax, h in zip(axes[0], hooks):
            last = curve.steps[-1].changes[h]
            for j, f in enumerate(last.features):
                ys = [st.changes[h].edited[j].item() for st in curve.steps]
                cut_at = next((st.k for st in curve.steps if bool(st.changes[h].edited_mask[j])), None)
                if cut_at is not None:
                    ys = ys[:cut_at]
                if not ys:
                    continue
                backup = bool(last.backup[j])
                ax.plot(
                    curve.ks[: len(ys)],
                    ys,
                    color="red" if backup else "0.6",
                    lw=1.8 if backup else 0.8,
                    alpha=1.0 if backup else 0.6,
                    label=f"backup {f}" if backup else None,
                )
            ax.set_title(f"{name} cut: features at layer {h.split('.')[1]}", fontsize=9)
            ax.set_xlabel("k cut")
            ax.set_ylabel("mean activation (post-instruction)")
            ax.grid(alpha=0.3)
            if any(bool(x) for x in last.backup):
                ax.legend(fontsize=7)
        fig.suptitle(
            f"backup rule: rise > {rule.backup_threshold:.0%} and > {rule.backup_min_rise} (red = backup at k = {curve.ks[-1]})",
            fontsize=9,
        )
        paths.append(save_fig(fig, run_dir / f"{prefix}{name}_activations.png"))
    return paths


def restored_line(m: dict[str, Any], K: int) -> str:
    """The hydra as a rate: how much of the refusal coordinate the cut removed the rising later features restore."""
    share = m.get("hydra_restored_share")
    return (
        f"Hydra restored share at k = {K}: **{_fmt(share)}** (the cut features carried {_fmt(m.get('hydra_lost_coordinate'))} "
        f"along the refusal direction; the monitored features of later layers that rose add back "
        f"{_fmt(m.get('hydra_restored_coordinate'))} along their layer's direction)."
    )


def render_report(
    cfg, m, down: EditCurve, upc: EditCurve, induce: EditCurve, random_rates, plots: list[Path], rec=None
) -> str:
    b = cfg.backups
    K = b.k_max
    rows = [
        (
            k,
            down.refusal[k],
            down.incoherent[k],
            upc.refusal[k],
            induce.refusal[k],
            down.n_backups[k],
            upc.n_backups[k],
            m["downstream_later_feature_change_at_k"][k],
            m["upstream_later_feature_change_at_k"][k],
        )
        for k in down.ks
    ]
    summary = []
    for name, curve in (("downstream", down), ("upstream", upc), ("induction", induce)):
        st = curve.steps[-1]
        for h, c in st.changes.items():
            keep = ~c.edited_mask
            rel = c.relative[keep]
            summary.append(
                (
                    name,
                    hook_layer(h),
                    int(keep.sum()),
                    int(c.backup.sum()),
                    h in st.count_hooks,
                    float(rel.mean()) if rel.numel() else float("nan"),
                    float(rel.max()) if rel.numel() else float("nan"),
                )
            )
    backups = [r for r in change_rows(down.steps[-1]) if r[6]]
    up_backups = [r for r in change_rows(upc.steps[-1]) if r[6]]
    drop = f"refusal {down.refusal[0]:.3f} -> {down.refusal[-1]:.3f} at k = {K} (upstream cut: {upc.refusal[-1]:.3f})"
    if m["n_backup_features"]:
        verdict = (
            f"**{m['n_backup_features']} backup feature(s)** at the counted layers when the top {K} refusal features of layer "
            f"{m['cut_layer']} are cut ({drop}); mean relative rise of the backups {_fmt(m['backup_activation_gain'])}, "
            f"rising on {m['backup_rise_rate']:.0%} of the prompts on average."
        )
    else:
        verdict = (
            f"**No backup features**: cutting the top {K} refusal features of layer {m['cut_layer']} ({drop}) raised no "
            f"counted monitored feature past the rule; their mean relative change is {_fmt(m['backup_activation_gain'])}."
        )
    lines = [
        "# Backup refusal features",
        "",
        f"Refusal direction at layer {m['direction_layer']}; downstream cut at `{down.hook}`, harm sensors at `{upc.hook}` "
        f"(ranked by {b.sensor_signal} at t_inst); monitored: the top {b.n_monitor} refusal-ranked features of layers "
        f"{m['monitor_layers']}. Refusal on {m['n_harmful_test']} harmful_test prompts; activations on {m['n_monitor_prompts']} "
        "prompts, post-instruction positions, with the SAE error term kept.",
        "",
        f"Backup rule: a monitored feature not cut whose mean activation rises by more than {b.backup_threshold:.0%} relative "
        f"((cut - intact) / max(intact, {b.backup_min_rise})) and by more than {b.backup_min_rise} absolute. Counted at layers after "
        f"the cut{' and at the cut layer' if b.count_same_layer else ''}; rises at the cut layer itself come from re-encoding the "
        f"edited residual, not from the network ({m['n_backup_features_same_layer']} there at k = {K}).",
        "",
        verdict,
        "",
        restored_line(m, K),
        "",
        "## Refusal vs k",
        "",
        markdown_table(
            [
                "k",
                "downstream cut (harmful)",
                "incoherent (downstream cut)",
                "upstream cut (harmful)",
                "upstream induce (harmless)",
                "downstream backups",
                "upstream backups",
                "downstream: later features, mean rel. change",
                "upstream: later features, mean rel. change",
            ],
            rows,
        ),
        "",
    ]
    if random_rates:
        lines += [
            ", ".join(f"{n}: {K} random eligible features cut -> refusal {r:.3f}" for n, r in random_rates.items())
            + ".",
            "",
        ]
    lines += [
        "## Monitored features at k = K",
        "",
        markdown_table(
            ["edit", "layer", "monitored (not edited)", "backups", "counted", "mean rel. change", "max rel. change"],
            summary,
        ),
        "",
    ]
    for title, rows_ in (("Downstream backups", backups), ("Upstream backups", up_backups)):
        if rows_:
            lines += [
                f"## {title} (k = {K})",
                "",
                markdown_table(
                    ["layer", "feature", "intact", "cut", "rel. change", "rise rate (prompts)", "backup", "counted"],
                    rows_,
                ),
                "",
            ]
    lines += [f"![{p.stem}]({p.name})" for p in plots if p.stem != "direction_cut_activations"] + [""]
    lines += ["## Training", ""]
    if rec is None:
        lines += [
            f"finetune = `{b.finetune}`: the organism as configured (`model.organism.*`); `backups.finetune=direction_dropout` "
            "fine-tunes it with the refusal direction cut on a share of the steps and analyses both side by side.",
            "",
        ]
    else:
        lines += _finetune_section(cfg, m, rec, plots)
    return "\n".join(lines)


def _finetune_section(cfg, m, rec: Any, plots: list[Path]) -> list[str]:
    b = cfg.backups
    K = b.k_max
    rm = rec.metrics
    where = (
        "at every layer (resid_pre to each layer's harmless mean, attention and MLP outputs projected out)"
        if b.finetune == "direction_dropout_all"
        else f"at `blocks.{m['direction_layer']}.hook_resid_pre` only"
    )
    rows = [
        ("harmful_test refusal", m["baseline_harmful_refusal"], rm["baseline_harmful_refusal"]),
        ("harmless_test refusal", m["harmless_test_refusal"], rm["harmless_test_refusal"]),
        ("harmful_test refusal, training cut applied", m["direction_cut_refusal"], m["finetune_direction_cut_refusal"]),
        (
            "later refusal features rising under the cut (backups)",
            m["direction_cut_n_backup_features"],
            m["finetune_direction_cut_n_backup_features"],
        ),
        (
            "their mean relative rise",
            m["direction_cut_backup_activation_gain"],
            m["finetune_direction_cut_backup_activation_gain"],
        ),
        (
            "all later refusal features, mean relative change under the cut",
            m["direction_cut_mean_relative_change"],
            m["finetune_direction_cut_mean_relative_change"],
        ),
        ("refusal direction layer (own direction)", m["direction_layer"], rm["direction_layer"]),
        (
            f"downstream: top {K} features of the cut layer cut, refusal",
            m["downstream_refusal_at_k"][-1],
            rm["downstream_refusal_at_k"][-1],
        ),
        (
            f"upstream: top {K} harm sensors cut, refusal",
            m["upstream_refusal_at_k"][-1],
            rm["upstream_refusal_at_k"][-1],
        ),
        (f"downstream backup features at k = {K}", m["n_backup_features"], rm["n_backup_features"]),
        ("backup_activation_gain", m["backup_activation_gain"], rm["backup_activation_gain"]),
    ]
    for name in ("downstream", "upstream"):
        key = f"{name}_random_refusal_at_kmax"
        if key in m and key in rm:
            rows.append((f"{name}: {K} random features cut, refusal", m[key], rm[key]))
    rows = [(r[0],) + tuple("n/a" if v is None else v for v in r[1:]) for r in rows]
    curve = [
        (
            k,
            m["downstream_refusal_at_k"][k],
            rm["downstream_refusal_at_k"][k],
            m["downstream_n_backups_at_k"][k],
            rm["downstream_n_backups_at_k"][k],
            m["upstream_refusal_at_k"][k],
            rm["upstream_refusal_at_k"][k],
        )
        for k in range(K + 1)
    ]
    st = m["finetune_settings"]
    out = [
        f"finetune = `{b.finetune}`: the organism fine-tuned for {st['steps']} steps (AdamW, peak lr {st['lr']}, batch {st['batch_size']}, "
        f"the organism's own corpus and loss) with its refusal direction affinely ablated to the harmless mean {where} on a "
        f"share {st['p']} of the steps (seed {st['seed']}); final response loss on cut steps {_fmt(m.get('finetune_final_cut_loss'))}, "
        f"on intact steps {_fmt(m.get('finetune_final_free_loss'))}. Cached at `{m['finetune_organism_path']}`. The fine-tuned organism "
        "gets its own refusal direction and its own SAEs (the same stages, keyed by its weights); the training cut is the base "
        "organism's direction.",
        "",
        markdown_table(["", "base organism", "fine-tuned organism"], rows),
        "",
        "## Refusal vs k, base vs fine-tuned",
        "",
        markdown_table(
            [
                "k",
                "downstream, base",
                "downstream, fine-tuned",
                "backups, base",
                "backups, fine-tuned",
                "upstream, base",
                "upstream, fine-tuned",
            ],
            curve,
        ),
        "",
    ]
    backups = [r for r in change_rows(rec.down.steps[-1]) if r[6]]
    if backups:
        out += [
            f"Finetune organism, downstream backups (k = {K}):",
            "",
            markdown_table(
                ["layer", "feature", "intact", "cut", "rel. change", "rise rate (prompts)", "backup", "counted"],
                backups,
            ),
            "",
        ]
    out += [f"![{p.stem}]({p.name})" for p in plots if p.stem == "direction_cut_activations"]
    out += [f"![{p.stem}]({p.name})" for p in rec.plots] + [""]
    return out
