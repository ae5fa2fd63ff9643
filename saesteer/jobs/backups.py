"""``saesteer backups``: refusal vs k features cut, downstream vs upstream, and which features take over.

- downstream: the top-k refusal features of the SAE at ``backups.cut_layer`` are set
  to 0 (error term kept) for k = 0..K; per k, the refusal rate on harmful_test and
  the activation of the other refusal-ranked features at that layer and later ones;
- upstream: the top-k harm sensors of the SAE at ``backups.upstream_layer``
  (harmful-vs-harmless contrast at t_inst), cut the same way, same measures; and the
  induction test: the top-k sensors clamped high on harmless_test;
- backups: monitored features, not cut, whose mean activation rises past the
  thresholds (:class:`saesteer.redundancy.BackupRule`), counted at K.

Every SAE comes from the SAE stage (fitted once per layer and cached, as
``saesteer train-sae sae.hook=blocks.L.hook_resid_pre`` would).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.activations import mean_activations, resid_hooks
from saesteer.config import BackupsJobConfig, TrainSaeJobConfig, library_settings
from saesteer.data import load_role
from saesteer.evaluate import refusal_eval
from saesteer.harmfulness import fit_harm_detector, t_inst_position
from saesteer.interventions import steer
from saesteer.interventions.features import EditFeatures
from saesteer.io import json_ready, write_json, write_text
from saesteer.jobs.threads import torch_threads
from saesteer.models import load_model
from saesteer.redundancy import (
    EditCurve,
    FeatureSet,
    edit_curve,
    find_backups,
    hydra_restoration,
    monitored_activations,
    random_features,
    resid_hook,
)
from saesteer.report.backups import change_rows, cut_plot, details, hook_layer, render_report, save_plots
from saesteer.search import SIGNALS, SearchConfig, search_features
from saesteer.stages import direction_stage, sae_stage
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def layer_plan(b: Any, direction_layer: int, n_layers: int) -> tuple[int, int, list[int]]:
    """(cut layer, upstream layer, monitored layers) from the settings and the direction's layer."""
    cut = b.cut_layer
    if cut is None:
        cut = direction_layer if direction_layer < n_layers - 1 or n_layers == 1 else n_layers - 2
    up = b.upstream_layer if b.upstream_layer is not None else max(0, cut - 1)
    monitor = sorted(set(b.monitor_layers)) if b.monitor_layers is not None else list(range(cut, n_layers))
    for name, value in (("cut_layer", cut), ("upstream_layer", up)):
        if not 0 <= value < n_layers:
            raise ValueError(f"backups.{name}={value} is out of range for a model with {n_layers} layers")
    bad = [l for l in monitor if not 0 <= l < n_layers]
    if bad:
        raise ValueError(
            f"backups.monitor_layers={list(b.monitor_layers)} has layers {bad} out of range for {n_layers} layers"
        )
    return cut, up, monitor


def fit_layer_sae(cfg: BackupsJobConfig, loaded, tracker: Tracker, layer: int):
    """The SAE of ``cfg.sae`` at ``blocks.{layer}.hook_resid_pre``, through the SAE stage (cached per layer)."""
    tcfg = TrainSaeJobConfig(
        seed=cfg.seed,
        progress=cfg.progress,
        model=cfg.model,
        data=cfg.data,
        eval=cfg.eval,
        logger=cfg.logger,
        sae=dataclasses.replace(cfg.sae, hook=resid_hook(layer)),
    )
    return sae_stage(tcfg, loaded, tracker, layer)


def _union(a: list[int], b: list[int]) -> list[int]:
    return list(dict.fromkeys(list(a) + list(b)))


def run(cfg: BackupsJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    with torch_threads(cfg.sae.threads):
        return _run(cfg, run_dir, tracker)


@dataclass
class Analysis:
    """One model's backup analysis: metrics, curves, and what the direction-cut check needs."""

    metrics: dict[str, Any]
    down: EditCurve
    upc: EditCurve
    induce: EditCurve
    random_rates: dict[str, float]
    plots: list[Path]
    saes: dict[int, Any]
    refusal_scores: dict[int, Any]


def _run(cfg: BackupsJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    b = cfg.backups
    loaded = load_model(cfg.model, progress=cfg.progress)
    direction = direction_stage(loaded, cfg.data, cfg.directions, path=cfg.search.direction, progress=cfg.progress)
    base = _analyse(cfg, loaded, direction, run_dir, tracker)
    metrics = base.metrics
    finetune = b.dropout_finetune(cfg.seed)
    rec = None
    if finetune is not None:
        if cfg.model.name != "organism":
            raise ValueError(
                f"backups.finetune={b.finetune} fine-tunes the organism; got model.name={cfg.model.name!r}"
            )
        from saesteer.stages import finetune_stage

        rec_loaded, cut = finetune_stage(cfg.model, loaded, direction, finetune, progress=cfg.progress)
        rec_direction = direction_stage(rec_loaded, cfg.data, cfg.directions, progress=cfg.progress)
        rec = _analyse(cfg, rec_loaded, rec_direction, run_dir, tracker, prefix="finetune_")
        checks = {
            name: _cut_check(cfg, lm, cut, a) for name, lm, a in (("base", loaded, base), ("finetune", rec_loaded, rec))
        }
        tuned_meta = dict(rec_loaded.metadata)
        tuned_path = tuned_meta.pop("organism_path")
        metrics.update(_finetune_metrics(rec.metrics, checks, tuned_meta, finetune, tuned_path))
        base.plots.append(cut_plot(run_dir, checks, cut))
        tracker.image("backups/direction_cut_activations", base.plots[-1])
    metrics = json_ready(metrics)
    write_text(
        run_dir / "report.md",
        render_report(cfg, metrics, base.down, base.upc, base.induce, base.random_rates, base.plots, rec),
    )
    return metrics


def _analyse(cfg: BackupsJobConfig, loaded, direction, run_dir: Path, tracker: Tracker, prefix: str = "") -> Analysis:
    b, s = cfg.backups, cfg.search
    model, tpl = loaded.model, loaded.template
    n_layers = loaded.n_layers
    cut, up, monitor_layers = layer_plan(b, direction.layer, n_layers)
    layers = sorted(set(monitor_layers) | {cut, up})
    log.info(
        "backups: cut layer %d, upstream layer %d, monitored layers %s (direction at layer %d)",
        cut,
        up,
        monitor_layers,
        direction.layer,
    )
    saes = {L: fit_layer_sae(cfg, loaded, tracker, L) for L in layers}

    train_h = list(load_role(cfg.data, "harmful_train").instructions)
    train_s = list(load_role(cfg.data, "harmless_train").instructions)
    # per-layer refusal directions (difference in means at the direction's position) for the cosine signal
    hooks = resid_hooks(model)
    mh = mean_activations(model, tpl, train_h, hooks, [direction.position], batch_size=s.batch_size)[:, 0]
    ms = mean_activations(model, tpl, train_s, hooks, [direction.position], batch_size=s.batch_size)[:, 0]
    refusal_dirs = (mh - ms).float()
    refusal_dirs[direction.layer] = direction.direction.float()
    _, harm_dirs = fit_harm_detector(model, tpl, train_h, train_s, batch_size=s.batch_size)

    refusal_scores = {}
    for L in sorted(set(monitor_layers) | {cut}):
        refusal_scores[L] = search_features(
            model, tpl, saes[L], refusal_dirs[L], train_h, train_s, s, hook=resid_hook(L), progress=cfg.progress
        )
    # the search's settings at t_inst, ranked by the sensor signal alone
    sensor_cfg = library_settings(
        SearchConfig,
        s,
        positions=[t_inst_position(model, tpl)],
        **{f"weight_{x}": float(x == b.sensor_signal) for x in SIGNALS},
    )
    sensor_scores = search_features(
        model, tpl, saes[up], harm_dirs[up], train_h, train_s, sensor_cfg, hook=resid_hook(up), progress=cfg.progress
    )
    sensor_scores.write_csv(run_dir / f"{prefix}sensor_ranking.csv")
    refusal_scores[cut].write_csv(run_dir / f"{prefix}refusal_ranking.csv")

    K = b.k_max
    for name, ranking in (
        ("refusal features at the cut layer", refusal_scores[cut].ranking),
        ("harm sensors", sensor_scores.ranking),
    ):
        if len(ranking) < K:
            raise ValueError(
                f"backups.k_max={K} but only {len(ranking)} {name} pass the activity filter "
                f"(search.min_active_fraction={s.min_active_fraction}); lower k_max or the filter"
            )

    test_h = list(load_role(cfg.data, "harmful_test").instructions)
    test_s = list(load_role(cfg.data, "harmless_test").instructions)
    n_mon = b.n_monitor_prompts
    mon_h = test_h[:n_mon] if n_mon else test_h
    mon_s = test_s[:n_mon] if n_mon else test_s
    ev = dict(
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        monitor_batch_size=b.batch_size,
        progress=cfg.progress,
        rule=b,
    )

    def counted_hooks(monitors: list[FeatureSet], layer: int) -> list[str]:
        """The monitors whose activity counts as a backup of a cut at ``layer``: later layers (and ``layer`` itself
        with ``count_same_layer``)."""
        return [
            m.hook
            for m in monitors
            if int(m.hook.split(".")[1]) > layer or (b.count_same_layer and m.hook == resid_hook(layer))
        ]

    def refusal_set(L: int) -> FeatureSet:
        return FeatureSet(saes[L], refusal_scores[L].ranking[: b.n_monitor], resid_hook(L))

    # downstream: cut refusal features at the cut layer; watch refusal features there and later
    # (the cut layer is always watched: the hydra's restored share needs the cut features' intact activations)
    down_monitors = [refusal_set(L) for L in sorted(set(monitor_layers) | {cut})]
    down_count = counted_hooks(down_monitors, cut)
    down = edit_curve(
        model,
        tpl,
        saes[cut],
        refusal_scores[cut].ranking,
        K,
        test_h,
        monitor_prompts=mon_h,
        monitors=down_monitors,
        count_hooks=down_count,
        values=0.0,
        hook=resid_hook(cut),
        apply_to=b.apply_to,
        desc="downstream cut",
        **ev,
    )
    # upstream: cut harm sensors; watch the other sensors and the refusal features of later layers
    same = refusal_scores[up].ranking[: b.n_monitor] if up in refusal_scores else []
    up_monitors = [FeatureSet(saes[up], _union(sensor_scores.ranking[: b.n_monitor], same), resid_hook(up))]
    up_monitors += [refusal_set(L) for L in monitor_layers if L > up]
    up_count = counted_hooks(up_monitors, up)
    upc = edit_curve(
        model,
        tpl,
        saes[up],
        sensor_scores.ranking,
        K,
        test_h,
        monitor_prompts=mon_h,
        monitors=up_monitors,
        count_hooks=up_count,
        values=0.0,
        hook=resid_hook(up),
        apply_to=b.apply_to,
        desc="upstream cut",
        **ev,
    )
    # induction: sensors clamped high on harmless prompts; do refusal and the later refusal features follow?
    active_mean = getattr(
        sensor_scores, "harmful_active_mean", sensor_scores.harmful_mean
    )  # mean where the sensor fires
    clamp = [b.induce_scale * max(float(active_mean[f]), 1e-3) for f in sensor_scores.ranking[:K]]
    ind_monitors = [refusal_set(L) for L in monitor_layers if L > up]
    induce = edit_curve(
        model,
        tpl,
        saes[up],
        sensor_scores.ranking,
        K,
        test_s,
        monitor_prompts=mon_s,
        monitors=ind_monitors,
        count_hooks=[],
        values=clamp,
        hook=resid_hook(up),
        apply_to=b.induce_apply_to,
        desc="upstream induce",
        **ev,
    )

    random_rates: dict[str, float] = {}
    if b.random_control:
        for name, L, scores in (("downstream", cut, refusal_scores[cut]), ("upstream", up, sensor_scores)):
            rnd = random_features(scores.ranking, scores.ranking[:K], K, cfg.seed)
            with steer(
                model, [EditFeatures(saes[L], rnd, mode="set", values=0.0, apply_to=b.apply_to, hook=resid_hook(L))]
            ):
                random_rates[name] = refusal_eval(
                    model,
                    tpl,
                    test_h,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size,
                    desc=f"{name} random {K}",
                ).rate

    metrics = json_ready(
        _metrics(
            cfg, direction.layer, cut, up, monitor_layers, down, upc, induce, random_rates, len(test_h), len(mon_h)
        )
    )
    metrics["harmless_test_refusal"] = induce.refusal[0]  # k = 0: no edit, all of harmless_test
    dirs = {resid_hook(L): refusal_dirs[L] for L in layers}
    rest = [hydra_restoration(st, down_monitors, resid_hook(cut), dirs) for st in down.steps if st.k > 0]
    metrics.update(
        json_ready(
            {
                "hydra_restored_share": rest[-1].share,
                "hydra_lost_coordinate": rest[-1].lost,
                "hydra_restored_coordinate": rest[-1].restored,
                "hydra_restored_share_at_k": [r.share for r in rest],
            }
        )
    )
    _log_tracker(tracker, down, upc, induce, prefix)
    plots = save_plots(run_dir, down, upc, induce, random_rates, b, prefix)
    for p in plots:
        tracker.image(f"backups/{p.stem}", p)
    write_json(run_dir / f"{prefix}backups.json", json_ready(details(down, upc, induce)))
    return Analysis(metrics, down, upc, induce, random_rates, plots, saes, refusal_scores)


def _cut_check(cfg: BackupsJobConfig, loaded, cut, a: Analysis) -> dict[str, Any]:
    """The training-time cut applied to a model: harmful_test refusal, and which later refusal features rise (backups)."""
    b = cfg.backups
    model, tpl = loaded.model, loaded.template
    test_h = list(load_role(cfg.data, "harmful_test").instructions)
    mon_h = test_h[: b.n_monitor_prompts] if b.n_monitor_prompts else test_h
    with steer(model, [cut]):
        rate = refusal_eval(
            model,
            tpl,
            test_h,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            desc="direction cut",
        ).rate
    layers = [L for L in sorted(a.refusal_scores) if L > cut.layer]
    sets = [FeatureSet(a.saes[L], a.refusal_scores[L].ranking[: b.n_monitor], resid_hook(L)) for L in layers]
    out: dict[str, Any] = {"refusal": rate, "layers": layers, "features": {}, "n_backups": 0, "gain": None}
    if not sets:
        return out
    intact = monitored_activations(model, tpl, mon_h, sets, batch_size=b.batch_size, desc="cut monitors intact")
    edited = monitored_activations(
        model, tpl, mon_h, sets, interventions=[cut], batch_size=b.batch_size, desc="cut monitors"
    )
    rels, rises = [], []
    for fs in sets:
        i, e = intact[fs.hook].mean(0), edited[fs.hook].mean(0)
        mask, rel = find_backups(i, e, b)
        out["features"][hook_layer(fs.hook)] = {
            "features": fs.features,
            "intact": i.tolist(),
            "cut": e.tolist(),
            "relative": rel.tolist(),
            "backup": mask.tolist(),
        }
        rels.append(rel[mask])
        rises.append(rel)
    rel_b = torch.cat(rels)
    out["n_backups"] = int(rel_b.numel())
    out["gain"] = float(rel_b.mean()) if rel_b.numel() else None
    out["mean_relative_change"] = float(torch.cat(rises).mean())
    return out


def _finetune_metrics(
    rm: dict[str, Any], checks: dict[str, dict], meta: dict[str, Any], finetune, path: str
) -> dict[str, Any]:
    m = {
        f"finetune_{k}": rm[k]
        for k in (
            "downstream_refusal_at_k",
            "upstream_refusal_at_k",
            "induction_harmless_refusal_at_k",
            "n_backup_features",
            "backup_activation_gain",
            "backup_gain_over",
            "backup_features",
            "backup_rise_rate",
            "downstream_n_backups_at_k",
            "upstream_n_backup_features",
            "upstream_backup_activation_gain",
            "direction_layer",
            "cut_layer",
            "upstream_layer",
            "downstream_top_features",
            "downstream_later_feature_change_at_k",
            "harmless_test_refusal",
            "hydra_restored_share",
            "hydra_lost_coordinate",
            "hydra_restored_coordinate",
            "hydra_restored_share_at_k",
        )
        if k in rm
    }
    for k in rm:
        if k.endswith("_random_refusal_at_kmax"):
            m[f"finetune_{k}"] = rm[k]
    m["finetune_harmful_test_refusal"] = rm["baseline_harmful_refusal"]
    m["finetune_settings"] = dataclasses.asdict(finetune)
    m["finetune_organism_path"] = path
    m["finetune_finetune_seconds"] = meta.get("finetune_seconds")
    m["finetune_final_cut_loss"], m["finetune_final_free_loss"] = (
        meta.get("final_cut_loss"),
        meta.get("final_free_loss"),
    )
    for name, c in checks.items():
        p = "" if name == "base" else "finetune_"
        m[f"{p}direction_cut_refusal"] = c["refusal"]
        m[f"{p}direction_cut_n_backup_features"] = c["n_backups"]
        m[f"{p}direction_cut_backup_activation_gain"] = c["gain"]
        m[f"{p}direction_cut_mean_relative_change"] = c.get("mean_relative_change")
        m[f"{p}direction_cut_backup_features"] = [
            f"{L}:{f}" for L, d in c["features"].items() for f, bk in zip(d["features"], d["backup"]) if bk
        ]
    return m


def _later_change(curve: EditCurve, after: int) -> list[float]:
    """Per k, the mean relative change of the unedited monitored features at layers after ``after``."""
    out = []
    for st in curve.steps:
        rel = [c.relative[~c.edited_mask] for h, c in st.changes.items() if hook_layer(h) > after]
        rel = torch.cat(rel) if rel else torch.zeros(0, dtype=torch.float64)
        out.append(float(rel.mean()) if rel.numel() else float("nan"))
    return out


def _metrics(
    cfg,
    direction_layer,
    cut,
    up,
    monitor_layers,
    down: EditCurve,
    upc: EditCurve,
    induce: EditCurve,
    random_rates,
    n_test,
    n_monitor,
) -> dict[str, Any]:
    b = cfg.backups
    K = b.k_max
    last, up_last = down.at(K), upc.at(K)
    gain, gain_over = last.backup_gain()
    up_gain, up_gain_over = up_last.backup_gain()
    same = last.changes.get(resid_hook(cut))
    m: dict[str, Any] = {
        "k_max": K,
        "k_values": list(range(K + 1)),
        "direction_layer": direction_layer,
        "cut_layer": cut,
        "upstream_layer": up,
        "monitor_layers": list(monitor_layers),
        "n_harmful_test": n_test,
        "n_monitor_prompts": n_monitor,
        "downstream_refusal_at_k": down.refusal,
        "upstream_refusal_at_k": upc.refusal,
        "induction_harmless_refusal_at_k": induce.refusal,
        "downstream_incoherent_at_k": down.incoherent,
        "upstream_incoherent_at_k": upc.incoherent,
        "induction_harmless_incoherent_at_k": induce.incoherent,
        "baseline_harmful_refusal": down.refusal[0],
        "baseline_harmless_refusal": induce.refusal[0],
        "n_backup_features": last.n_backups,
        "backup_activation_gain": gain,
        "backup_gain_over": gain_over,
        "backup_features": [f"{hook_layer(c.hook)}:{f}" for c in last.counted() for f in c.backups()],
        "backup_rise_rate": _rise_rate(last),
        "downstream_n_backups_at_k": down.n_backups,
        "n_backup_features_same_layer": int(same.backup.sum()) if same is not None else 0,
        "upstream_n_backup_features": up_last.n_backups,
        "upstream_backup_activation_gain": up_gain,
        "upstream_backup_gain_over": up_gain_over,
        "upstream_n_backups_at_k": upc.n_backups,
        "downstream_later_feature_change_at_k": _later_change(down, cut),
        "upstream_later_feature_change_at_k": _later_change(upc, up),
        "induction_later_feature_change_at_k": _later_change(induce, up),
        "downstream_top_features": down.ranking[:K],
        "upstream_top_sensors": upc.ranking[:K],
        "backup_threshold": b.backup_threshold,
        "backup_min_rise": b.backup_min_rise,
        "count_same_layer": b.count_same_layer,
        "finetune": b.finetune,
    }
    for name, rate in random_rates.items():
        m[f"{name}_random_refusal_at_kmax"] = rate
    for L in monitor_layers:
        h = resid_hook(L)
        if h in last.changes:
            m[f"downstream_mean_relative_change_layer{L}_at_k"] = [st.mean_relative_change(h) for st in down.steps]
    return m


def _rise_rate(step) -> float:
    rates = [c.rise_rate[c.backup] for c in step.counted()]
    rates = torch.cat(rates) if rates else torch.zeros(0, dtype=torch.float64)
    return float(rates.mean()) if rates.numel() else float("nan")


def _log_tracker(tracker: Tracker, down: EditCurve, upc: EditCurve, induce: EditCurve, prefix: str = "") -> None:
    g = f"backups/{prefix}"
    for k in down.ks:
        tracker.log(
            {
                "backups/k": k,
                f"{g}downstream_refusal": down.refusal[k],
                f"{g}upstream_refusal": upc.refusal[k],
                f"{g}induction_harmless_refusal": induce.refusal[k],
                f"{g}downstream_n_backups": down.n_backups[k],
                f"{g}upstream_n_backups": upc.n_backups[k],
            }
        )
    rows = change_rows(down.steps[-1])
    tracker.table(
        f"{g}downstream_changes_at_kmax",
        ["layer", "feature", "intact", "cut", "relative", "rise_rate", "backup", "counted"],
        rows,
    )
