"""scripts/results.py: docs/results.md and the README's results table from run directories."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("saesteer_results_script", ROOT / "scripts" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


results = _load()

STAGE_METRICS = {
    "organism": {
        "harmful_train_refusal": 0.985,
        "n_harmful_train": 260,
        "harmful_test_refusal": 0.935,
        "n_harmful_test": 200,
        "harmless_test_refusal": 0.01,
        "n_harmless_test": 200,
        "overrefusal_refusal": 0.1648,
        "n_overrefusal": 91,
        "n_params": 28_900_000,
        "train_seconds": 591.0,
        "bundled": True,
        "stage_seconds": 30.5,
    },
    "directions": {
        "selected_layer": 1,
        "selected_position": -2,
        "selected_ablation": "affine",
        "selection_fallback": False,
        "baseline_harmful_refusal": 0.935,
        "affine_ablation_harmful_refusal": 0.0,
        "affine_ablation_kl_harmless": 0.0561,
        "ablation_harmful_refusal": 0.922,
        "ablation_kl_harmless": 0.099,
        "addition_harmless_refusal": 0.995,
        "orthogonalized_max_logit_diff": 0.00013,
        "stage_seconds": 120.0,
    },
    "train_sae": {
        "architecture": "topk",
        "hook": "blocks.1.hook_resid_pre",
        "d_sae": 1536,
        "explained_variance": 0.9312,
        "ce_loss_recovered": 0.9987,
        "l0": 16.0,
        "dead_fraction": 0.146,
        "stage_seconds": 66.0,
    },
    "search": {
        "k": 8,
        "ablation": "harmless_mean",
        "topk_ablation_harmful_refusal": 0.537,
        "topk_ablation_kl_harmless": 0.025,
        "random_k_ablation_harmful_refusal": 0.902,
        "topk_zero_ablation_harmful_refusal": 0.808,
        "top1_feature": 12,
        "top1_cosine": 0.7071,
        "top1_auroc": 0.946,
        "stage_seconds": 40.0,
    },
    "anchor": {
        "gate_auroc_val": 0.998,
        "gate_tpr_val": 0.974,
        "gate_fpr_val": 0.047,
        "anchor_layers": [0, 1, 2],
        "gate_layers": [0, 1, 2],
        "asr_none_undefended": 0.065,
        "asr_none_anchored": 0.06,
        "asr_none_cast": 0.055,
        "asr_none_addition": 0.0,
        "harmless_refusal_undefended": 0.01,
        "kl_harmless_undefended": 0.0,
        "ce_harmless_undefended": 0.423,
        "harmless_refusal_anchored": 0.015,
        "kl_harmless_anchored": 0.0123,
        "ce_harmless_anchored": 0.43,
        "asr_ablation_affine_undefended": 1.0,
        "asr_ablation_affine_anchored": 0.19,
        "asr_ablation_affine_cast": 0.16,
        "asr_ablation_affine_addition": 0.005,
        "asr_negative_addition_4_undefended": 0.99,
        "asr_negative_addition_4_anchored": 0.195,
        "asr_negative_addition_4_cast": 1.0,
        "asr_negative_addition_4_addition": 0.5,
        "asr_gcg_suffix_undefended": 0.76,
        "asr_gcg_suffix_anchored": 0.55,
        "asr_gcg_suffix_cast": 0.1,
        "asr_gcg_suffix_addition": 0.2,
        "attack_kl_harmless_ablation_affine": 0.0561,
        "attack_kl_harmless_negative_addition_4": 0.3,
        "strong_attacks": ["ablation_affine", "negative_addition_4"],
        "max_asr_strong_anchored": 0.195,
        "overrefusal_rise_anchored": 0.005,
        "targets_met": False,
        "seconds_calibration": 60.0,
        "seconds_table_finetuned": 129.0,
        "stage_seconds": 336.0,
    },
    "backups": {
        "k_max": 2,
        "k_values": [0, 1, 2],
        "cut_layer": 1,
        "upstream_layer": 0,
        "downstream_refusal_at_k": [0.935, 0.9, 0.808],
        "upstream_refusal_at_k": [0.935, 0.91, 0.886],
        "induction_harmless_refusal_at_k": [0.01, 0.2, 0.4],
        "downstream_n_backups_at_k": [0, 1, 1],
        "n_backup_features": 1,
        "backup_features": ["2:77"],
        "downstream_random_refusal_at_kmax": 0.93,
        "stage_seconds": 114.0,
    },
    "emergent": {
        "category": "fraud_and_scams",
        "ablation": "affine",
        "base_refusal_other_categories": 1.0,
        "finetuned_refusal_other_categories": 0.0,
        "ablated_refusal_other_categories": 0.995,
        "random_ablated_refusal_other_categories": 0.0,
        "em_direction_cosine_refusal": [None, -0.448, -0.927],
        "em_ablate_layer": 1,
        "ablated_refusal_other_categories_plain": 0.97,
        "stage_seconds": 90.0,
    },
}


def pipeline_run(root: Path, stamp: str = "2026-12-06_21-41-00", overrides=("budget=quick",), metrics=None) -> Path:
    """A pipeline run directory as saesteer writes it: flat stage-prefixed metrics, .hydra/, per-stage folders."""
    run = root / "runs" / "pipeline" / stamp
    (run / ".hydra").mkdir(parents=True)
    flat = {f"{stage}/{k}": v for stage, m in (metrics or STAGE_METRICS).items() for k, v in m.items()}
    flat["job_seconds"] = 880.0
    (run / "metrics.json").write_text(json.dumps(flat, indent=2))
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides) or "[]\n")
    (run / ".hydra" / "config.yaml").write_text("job: pipeline\nseed: 0\n")
    for stage in metrics or STAGE_METRICS:
        (run / stage.replace("_", "-")).mkdir()
    return run


def test_pipeline_run_renders_every_table(tmp_path):
    run = results.load_run(pipeline_run(tmp_path))
    assert run.command == "saesteer pipeline budget=quick" and run.date == "2026-12-06" and run.budget == "quick"
    page = results.render_results([run])
    for title in (
        "## Organism refusal",
        "## Refusal direction",
        "## SAE",
        "## Feature search",
        "## Anchor against attacks",
        "## Backups",
        "## Emergent misalignment",
        "## Time per stage",
    ):
        assert page.count(title + "\n") == 1, title
    assert (
        page.count(". From `saesteer pipeline budget=quick`, 2026-12-06.\n") == 7
    )  # every table names its command and date
    assert "| harmful_test | 200 | 0.935 |" in page
    assert "| overrefusal | 91 | 0.165 |" in page
    assert "28,900,000 parameters, bundled weights, trained in 591 s" in page
    assert "Selected: layer 1, position -2 by affine ablation; every filter of the paper passed." in page
    assert "| affine ablation (every layer) | 0.000 | 0.056 | - |" in page
    assert "max logit difference 1.3e-04" in page
    assert "| explained variance | 0.931 |" in page
    assert "| top-8 signed features set to their harmless means | 0.537 | 0.025 |" in page
    # the anchor's table: no attack first, then the run's attacks in order, with each attack's own KL
    assert "| (no attack) | 0.065 | 0.060 | 0.055 | 0.000 | 0.000 |" in page
    assert "| `ablation_affine` | 1.000 | 0.190 | 0.160 | 0.005 | 0.056 |" in page
    assert "| `negative_addition_4` | 0.990 | 0.195 | 1.000 | 0.500 | 0.300 |" in page
    assert "| `gcg_suffix` | 0.760 | 0.550 | 0.100 | 0.200 | - |" in page
    assert page.index("(no attack)") < page.index("`ablation_affine` |") < page.index("`gcg_suffix` |")
    assert "| anchored | 0.015 | 0.012 | 0.430 |" in page
    assert "met: no." in page
    assert "| 2 | 0.808 | 0.886 | 0.400 | 1 |" in page
    assert "Backup features at k = 2: 1 (2:77); downstream: 2 random features cut: 0.930." in page
    assert "| other categories | 1.000 | 0.000 | 0.995 | 0.000 |" in page
    assert (
        "Cosine of the EM direction with each layer's refusal direction, by layer: -, -0.448, -0.927 (the EM direction ablated: "
        "layer 1); plain ablation of the EM direction: 0.970." in page
    )
    assert (
        "| anchor | 5.6 | computed |\n| &nbsp;&nbsp;calibration | 1.0 |  |\n| &nbsp;&nbsp;table finetuned | 2.1 |  |"
        in page
    )
    assert "| anchor | 5.6 | computed |" in page and "| pipeline (all stages) | 14.7 |  |" in page
    assert "quick budget's figures" in page and "history/results.md" in page


def test_readme_table_between_markers(tmp_path):
    run_dir = pipeline_run(tmp_path)
    readme = tmp_path / "README.md"
    before, after = "# proj\n\ntext before\n\n", "\n\n## Next\n\ntext after\n"
    readme.write_text(f"{before}{results.START}\n| stale | table |\n{results.END}{after}")
    out = tmp_path / "docs" / "results.md"
    assert results.main([str(run_dir), "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before + results.START + "\n") and text.endswith(results.END + after)
    inner = text.split(results.START)[1].split(results.END)[0]
    assert "stale" not in inner
    assert "`saesteer pipeline budget=quick` (2026-12-06;" in inner
    assert "| model: refusal of harmful_test / harmless_test / over-refusal set | 0.935 / 0.010 / 0.165 |" in inner
    assert "| directions: layer, position | 1, -2 |" in inner
    assert "| anchor: ASR undefended -> anchored, affine ablation | 1.000 -> 0.190 |" in inner
    assert "| anchor: ASR undefended -> anchored, adversarial suffix | 0.760 -> 0.550 |" in inner
    assert "| backups: top 2 refusal features cut, harmful_test refusal; backup features | 0.808; 1 |" in inner
    assert "| train-sae: explained variance / CE loss recovered | 0.931 / 0.999 |" in inner
    assert "| anchor: harmless_test refusal (undefended -> anchored), KL | 0.010 -> 0.015, 0.012 |" in inner
    assert (
        "| emergent: refusal of other categories, base / fine-tuned / EM direction ablated | 1.000 / 0.000 / 0.995 |"
        in inner
    )
    assert "adaptive" not in inner and "SAE feature bypass" not in inner  # a figure the run does not hold gets no row
    assert out.read_text().startswith("# Results\n")
    # a second run changes nothing, and leaves no temporary files
    page = out.read_text()
    assert results.main([str(run_dir), "--out", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == text and out.read_text() == page
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "docs", "runs"]


def test_two_models_side_by_side_with_the_reference_column(tmp_path):
    organism = pipeline_run(tmp_path)
    smol = {
        "behaviour": {"harmful_test_refusal": 0.95, "harmless_test_refusal": 0.02, "overrefusal_refusal": 0.12},
        "directions": {
            "selected_layer": 15,
            "selected_position": -1,
            "selected_ablation": "affine",
            "affine_ablation_harmful_refusal": 0.03,
            "ablation_harmful_refusal": 0.05,
            "affine_ablation_kl_harmless": 0.08,
            "addition_harmless_refusal": 0.91,
        },
    }
    smol_run = pipeline_run(tmp_path, "2026-12-07_01-00-00", ("model=smollm2_safe",), smol)
    runs = [results.load_run(organism), results.load_run(smol_run)]
    assert [r.model for r in runs] == ["organism", "smollm2_safe"]
    assert "Arditi" not in results.render_readme_table(runs)  # the README names the models only
    table = results.render_results(runs)
    assert "| stage: figure | organism | smollm2_safe | Arditi et al. 2024 |" in table
    assert (
        "| model: refusal of harmful_test / harmless_test / over-refusal set | 0.935 / 0.010 / 0.165 | 0.950 / 0.020 / 0.120 |  |"
        in table
    )
    assert "| directions: layer, position | 1, -2 | 15, -1 |  |" in table
    assert (
        "| directions: affine / plain ablation, harmful_test refusal | 0.000 / 0.922 | 0.030 / 0.050 | - / near 0 for every model |"
        in table
    )
    assert (
        "| directions: KL of the selected ablation on harmless prompts | 0.056 | 0.080 | < 0.1 (their selection filter) |"
        in table
    )
    assert "| train-sae: explained variance / CE loss recovered | 0.931 / 0.999 | - |  |" in table  # not run on smollm2
    page = table
    assert page.index("## Side by side") < page.index("## Organism refusal")
    assert "## Model behaviour: smollm2_safe" in page and "## Refusal direction: organism" in page


def test_substring_figures_stand_beside_another_judges(tmp_path):
    """A run judged by the learned judge: the substring judge's figures in brackets where the paper is compared, and
    as a column of the directions table; runs whose metrics name no judge are the substring judge's."""
    organism = pipeline_run(tmp_path)
    learned = {
        "behaviour": {"judge": "learned", "harmful_test_refusal": 0.95, "harmless_test_refusal": 0.02},
        "directions": {
            "judge": "learned",
            "selected_layer": 15,
            "selected_position": -1,
            "baseline_harmful_refusal": 0.95,
            "baseline_harmful_refusal_substring": 0.94,
            "affine_ablation_harmful_refusal": 0.03,
            "affine_ablation_harmful_refusal_substring": 0.02,
            "ablation_harmful_refusal": 0.05,
            "ablation_harmful_refusal_substring": 0.06,
            "addition_harmless_refusal": 0.91,
            "addition_harmless_refusal_substring": 0.9,
            "random_ablation_harmful_refusal": 0.9,
        },
    }
    smol_run = pipeline_run(tmp_path, "2026-12-07_01-00-00", ("model=smollm2_safe",), learned)
    runs = [results.load_run(organism), results.load_run(smol_run)]
    assert [r.judge for r in runs] == ["substring", "learned"]
    page = results.render_results(runs)
    assert "Refusal is judged by the substring and learned judges; in brackets" in page
    assert (
        "| directions: affine / plain ablation, harmful_test refusal | 0.000 / 0.922 "
        "| 0.030 / 0.050 (substring 0.020 / 0.060) | - / near 0 for every model |" in page
    )
    assert "| directions: addition, harmless_test refusal | 0.995 | 0.910 (substring 0.900) |" in page
    assert "| intervention (harmful_test unless named) | refusal (learned judge) | refusal (substring judge) |" in page
    assert (
        "| baseline | 0.950 | 0.940 |  |  |" in page and "| norm-matched random direction ablated | 0.900 |  |" in page
    )
    assert "Share of each prompt set refused (greedy, learned judge)" in page
    assert "Share of each prompt set refused (greedy, substring judge)" in page  # the organism run names no judge
    assert "substring" not in results.render_readme_table(runs)  # the README's table holds the runs' own figures
    # the substring judge's run: its own figures only
    same = {"directions": {**learned["directions"], "judge": "substring"}}
    sub = results.load_run(pipeline_run(tmp_path, "2026-12-08_01-00-00", ("model=smollm2_safe",), same))
    assert "(substring" not in results.render_results([runs[0], sub])
    assert "refusal (substring judge)" not in results.render_results([sub])


def test_run_dir_without_metrics_names_the_path(tmp_path, capsys):
    run_dir = pipeline_run(tmp_path)
    (run_dir / "metrics.json").unlink()
    with pytest.raises(results.ResultsError, match=f"{run_dir}: no metrics.json"):
        results.load_run(run_dir)
    readme = tmp_path / "README.md"
    readme.write_text(f"{results.START}\n{results.END}\n")
    out = tmp_path / "results.md"
    assert results.main([str(run_dir), "--out", str(out), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir}: no metrics.json" in err and "Traceback" not in err
    assert not out.exists() and readme.read_text() == f"{results.START}\n{results.END}\n"
    with pytest.raises(results.ResultsError, match=f"{tmp_path / 'nowhere'}: no such run directory"):
        results.load_run(tmp_path / "nowhere")


def test_readme_without_markers_is_an_error(tmp_path, capsys):
    run_dir = pipeline_run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    out = tmp_path / "results.md"
    assert results.main([str(run_dir), "--out", str(out), "--readme", str(readme)]) == 2
    assert f"{readme}: expected the markers" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n" and not out.exists()


def test_single_job_run_and_date_sources(tmp_path):
    run_dir = tmp_path / "anchor_run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(STAGE_METRICS["anchor"]))
    (run_dir / ".hydra" / "overrides.yaml").write_text("- anchor.quantile=0.25\n- anchor.jailbreaks=[roleplay]\n")
    (run_dir / ".hydra" / "config.yaml").write_text("job: anchor\n")
    os.utime(
        run_dir / "metrics.json", (1_700_000_000, 1_700_000_000)
    )  # 2023-11-14/15: the date when nothing else gives one
    run = results.load_run(run_dir)
    assert run.command == "saesteer anchor anchor.quantile=0.25 'anchor.jailbreaks=[roleplay]'"
    assert run.date in ("2023-11-14", "2023-11-15") and list(run.stages) == ["anchor"]
    page = results.render_results([run])
    assert "## Anchor against attacks" in page and "## Organism refusal" not in page
    assert "| `ablation_affine` | 1.000 | 0.190 |" in page
    # the marker a job writes (or run.json, a repository copy's) dates it before the path does
    (run_dir / ".saesteer-run.json").write_text(
        json.dumps({"job": "anchor", "started": "2026-12-07T01:02:03", "pid": 1})
    )
    assert results.load_run(run_dir).date == "2026-12-07"
    stamped = pipeline_run(tmp_path, stamp="2026-11-30_10-00-00", overrides=())
    assert results.load_run(stamped).date == "2026-11-30" and results.load_run(stamped).command == "saesteer pipeline"


def test_repository_copy_without_hydra_folder(tmp_path):
    """docs/runs/<name>/: metrics.json, overrides.yaml and run.json, in a path without a timestamp."""
    src = pipeline_run(tmp_path)
    copy = tmp_path / "docs" / "runs" / "quick"
    copy.mkdir(parents=True)
    shutil.copy(src / "metrics.json", copy / "metrics.json")
    shutil.copy(src / ".hydra" / "overrides.yaml", copy / "overrides.yaml")
    (copy / "run.json").write_text(
        json.dumps({"job": "pipeline", "started": "2026-12-06T21:41:00", "source": "scripts/run.sh on a fresh clone"})
    )
    run = results.load_run(copy)
    assert (run.command, run.date, run.source) == (
        "saesteer pipeline budget=quick",
        "2026-12-06",
        "scripts/run.sh on a fresh clone",
    )
    assert (
        results.render_results([run]).count(
            "`saesteer pipeline budget=quick`, 2026-12-06 (scripts/run.sh on a fresh clone)"
        )
        == 1
    )


@pytest.mark.skipif(
    not (ROOT / "docs" / "runs" / "quick" / "metrics.json").is_file(), reason="no run kept in docs/runs/quick"
)
def test_docs_results_regenerate_from_the_repository(tmp_path):
    """python scripts/results.py docs/runs/quick docs/runs/smollm2_safe (every run kept in docs/runs, the organism's
    first) reproduces docs/results.md and the README's table exactly."""
    runs = ["quick", "smollm2_safe"]
    assert sorted(runs) == sorted(p.name for p in (ROOT / "docs" / "runs").iterdir() if p.is_dir())
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    out = tmp_path / "results.md"
    args = [str(ROOT / "docs" / "runs" / r) for r in runs]
    assert results.main([*args, "--out", str(out), "--readme", str(readme)]) == 0
    assert out.read_text() == (ROOT / "docs" / "results.md").read_text()
    assert readme.read_text() == (ROOT / "README.md").read_text()


def test_yaml_fallback_without_pyyaml():
    assert results._simple_yaml("- budget=quick\n- 'anchor.quantile=0.25'\n") == [
        "budget=quick",
        "anchor.quantile=0.25",
    ]
    assert results._simple_yaml("job: pipeline\nmodel:\n  name: organism\n")["job"] == "pipeline"


def test_feature_search_doc_holds_the_table_of_its_run_directory():
    """docs/feature_search.md's refusal-vs-k table is what scripts/refusal_vs_k.py prints for its run directory."""
    spec = importlib.util.spec_from_file_location("saesteer_refusal_vs_k", ROOT / "scripts" / "refusal_vs_k.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = ROOT / "docs" / "measurements" / "organism_search_curves"
    text = script.table(json.loads((run / "metrics.json").read_text()))
    assert text in (ROOT / "docs" / "feature_search.md").read_text()
    assert "| greedy | harmless_mean | 0.799 (0.013)" in text and "greedy 8" in text
    with pytest.raises(SystemExit, match="no curve_refusal_"):
        script.table({"k": 8})


def test_anchor_and_behaviour_tables_carry_the_incoherent_share_where_the_run_has_it():
    m = {
        "asr_none_undefended": 0.1,
        "asr_none_anchored": 0.05,
        "asr_ablation_affine_undefended": 0.8,
        "asr_ablation_affine_anchored": 0.1,
        "incoherent_none_undefended": 0.0,
        "incoherent_none_anchored": 0.0,
        "incoherent_ablation_affine_undefended": 0.15,
        "incoherent_ablation_affine_anchored": 0.02,
        "attack_kl_harmless_ablation_affine": 0.2,
    }
    text = results.anchor_section(m)
    # columns: the defences the run has
    assert "| attack | undefended | anchored | incoherent | incoherent (anchored) | attack KL |" in text
    assert "| `ablation_affine` | 0.800 | 0.100 | 0.150 | 0.020 | 0.200 |" in text
    tuned = {
        **m,
        "asr_none_finetuned": 0.0,
        "asr_ablation_affine_finetuned": 0.3,
        "asr_none_finetuned_anchored": 0.0,
        "asr_ablation_affine_finetuned_anchored": 0.04,
        "harmless_refusal_undefended": 0.01,
        "kl_harmless_undefended": 0.0,
        "ce_harmless_undefended": 0.4,
        "overrefusal_refusal_undefended": 0.1,
        "harmless_refusal_finetuned": 0.02,
        "kl_harmless_finetuned": 0.05,
        "ce_harmless_finetuned": 0.45,
        "overrefusal_refusal_finetuned": 0.2,
        "targets_missed": ["asr_ablation_affine_anchored 0.100 > 0.05"],
        "targets_missed_finetuned": ["KL on harmless 0.050 > 0.03"],
        "strong_attacks": ["ablation_affine"],
    }
    text = results.anchor_section(tuned)
    assert "| `ablation_affine` | 0.800 | 0.100 | 0.300 | 0.040 | 0.150 | 0.020 | 0.200 |" in text
    assert "| fine-tuned | 0.020 | 0.050 | 0.450 | 0.200 |" in text
    assert results.attack_names(tuned) == ["none", "ablation_affine"]  # not "ablation_affine_finetuned"
    assert "- anchored: misses asr_ablation_affine_anchored 0.100 > 0.05" in text
    assert "- fine-tuned: misses KL on harmless 0.050 > 0.03" in text
    fired = {**m, "gate_fire_none": 0.9, "gate_fire_ablation_affine": 0.7, "gate_fire_harmless_test": 0.02}
    text = results.anchor_section(fired)  # where the gate fires, beside the ASR
    assert (
        "| `ablation_affine` | 0.800 | 0.100 | 0.150 | 0.020 | 0.700 | 0.200 |" in text
        and "(harmless_test: 0.020)" in text
    )
    old = {k: v for k, v in m.items() if not k.startswith("incoherent_")}
    assert "incoherent" not in results.anchor_section(old)
    b = {"harmful_test_refusal": 0.9, "n_harmful_test": 10, "harmful_test_incoherent": 0.1}
    assert "| harmful_test | 10 | 0.900 | 0.100 |" in results.behaviour_section(b)
    assert "incoherent" not in results.behaviour_section({"harmful_test_refusal": 0.9, "n_harmful_test": 10})


def test_directions_and_search_tables_carry_the_incoherent_share_where_the_run_has_it():
    m = {
        "judge": "learned",
        "selected_layer": 1,
        "selected_position": -2,
        "baseline_harmful_refusal": 0.9,
        "baseline_harmful_refusal_substring": 0.8,
        "baseline_harmful_incoherent": 0.01,
        "affine_ablation_harmful_refusal": 0.0,
        "affine_ablation_harmful_incoherent": 0.02,
        "affine_ablation_kl_harmless": 0.03,
    }
    text = results.directions_section(m)
    assert (
        "| intervention (harmful_test unless named) | refusal (learned judge) | incoherent | refusal (substring judge) |"
        in text
    )
    assert "| baseline | 0.900 | 0.010 | 0.800 |  |  |" in text
    assert "| affine ablation (every layer) | 0.000 | 0.020 |  | 0.030 |" in text
    old = {k: v for k, v in m.items() if not k.endswith("_incoherent")}  # a run from before: no column
    assert "incoherent" not in results.directions_section(old)
    search = {
        "k": 8,
        "topk_ablation_harmful_refusal": 0.4,
        "topk_ablation_harmful_incoherent": 0.05,
        "topk_ablation_kl_harmless": 0.02,
    }
    text = results.search_section(search)
    assert "| edit (harmful_test unless named) | refusal | incoherent | KL on harmless_test |" in text
    assert "| top-8 signed features set to their harmless means | 0.400 | 0.050 | 0.020 |" in text


def test_search_runs_with_a_curve_get_its_table_and_the_best_k():
    m = {
        "curve_refusal_attribution_harmless_mean_k1": 0.8,
        "curve_kl_attribution_harmless_mean_k1": 0.01,
        "curve_refusal_attribution_harmless_mean_along_r_k2": 0.05,
        "curve_kl_attribution_harmless_mean_along_r_k2": 0.02,
        "curve_refusal_greedy_harmless_mean_k2": 0.04,
        "curve_kl_greedy_harmless_mean_k2": 0.03,
        "k_at_bypass_attribution": 2,
        "k_at_bypass_greedy": 2,
        "k_at_bypass_cosine": None,
    }
    assert results.best_k_at_bypass(m) == "2 (attribution, greedy)"
    assert results.k_at_bypass_text(m) == "attribution 2, greedy 2, cosine none <= 2"
    assert results.best_k_at_bypass({"k_at_bypass_cosine": None, "curve_refusal_cosine_zero_k8": 0.5}) == "none <= 8"
    section = results.search_section(m)
    assert "| attribution | harmless_mean_along_r |  | 0.050 (0.020) |" in section
    assert "| greedy | harmless_mean |  | 0.040 (0.030) |" in section
