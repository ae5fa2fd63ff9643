"""``saesteer backups`` and ``saesteer emergent`` end to end on the tiny organism."""

from __future__ import annotations

import json

from saesteer.cli import job_function
from saesteer.jobs.common import compose, run_job

from tests.conftest import tiny_organism_overrides
from tests.jobs.test_jobs import SMALL_DATA, SMALL_SAE


def _run(job, overrides, run_dir):
    return run_job(job, compose(job, tiny_organism_overrides() + SMALL_DATA + overrides), job_function(job), run_dir)


def _rate(x):
    return x is not None and 0.0 <= x <= 1.0


def test_backups_job_reports_refusal_vs_k_and_backups(tiny_organism, tmp_path):
    # the tiny organism has 2 layers: cut at layer 1 (the direction's), sensors at layer 0
    overrides = SMALL_SAE + ["backups.k_max=3", "backups.cut_layer=1", "backups.upstream_layer=0", "backups.n_monitor=8",
                             "backups.count_same_layer=true", "backups.n_monitor_prompts=16", "search.min_active_fraction=0.0"]
    m = _run("backups", overrides, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    for key in ("downstream_refusal_at_k", "upstream_refusal_at_k", "induction_harmless_refusal_at_k", "downstream_n_backups_at_k"):
        assert len(m[key]) == 4, key  # k = 0..K
    assert all(_rate(r) for r in m["downstream_refusal_at_k"] + m["upstream_refusal_at_k"] + m["induction_harmless_refusal_at_k"])
    assert m["downstream_refusal_at_k"][0] == m["upstream_refusal_at_k"][0] == m["baseline_harmful_refusal"]
    assert isinstance(m["n_backup_features"], int) and m["n_backup_features"] == m["downstream_n_backups_at_k"][-1] >= 0
    assert m["downstream_n_backups_at_k"][0] == 0 and m["upstream_n_backups_at_k"][0] == 0
    assert m["backup_gain_over"] in ("backups", "all_monitored") and m["backup_activation_gain"] is not None
    assert len(m["backup_features"]) == m["n_backup_features"]
    assert m["cut_layer"] == 1 and m["upstream_layer"] == 0 and m["monitor_layers"] == [1]
    assert len(m["downstream_top_features"]) == 3 and len(m["upstream_top_sensors"]) == 3
    assert _rate(m["downstream_random_refusal_at_kmax"]) and _rate(m["upstream_random_refusal_at_kmax"])
    for f in ("report.md", "refusal_vs_k.png", "downstream_activations.png", "upstream_activations.png", "backups.json",
              "sensor_ranking.csv", "refusal_ranking.csv"):
        assert (tmp_path / f).is_file(), f
    details = json.loads((tmp_path / "backups.json").read_text())
    assert [s["k"] for s in details["downstream"]["steps"]] == [0, 1, 2, 3]
    report = (tmp_path / "report.md").read_text()
    assert "## Refusal vs k" in report and "![refusal_vs_k](refusal_vs_k.png)" in report


def test_emergent_job_reports_emergence_direction_and_controls(tiny_organism, tmp_path):
    overrides = ["emergent.steps=30", "emergent.n_train=64", "emergent.n_harmless=64", "emergent.n_eval_per_category=6",
                 "emergent.n_direction_per_category=6", "emergent.n_target_eval=8",
                 "emergent.other_categories=[violence_and_weapons,malware_and_cybercrime,account_hacking]"]
    m = _run("emergent", overrides, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    for key in ("base_refusal_other_categories", "finetuned_refusal_other_categories", "ablated_refusal_other_categories",
                "random_ablated_refusal_other_categories", "ablated_refusal_other_categories_plain",
                "ablated_refusal_other_categories_affine", "base_refusal_harmless", "finetuned_refusal_harmless"):
        assert _rate(m[key]), key
    assert m["n_eval_other"] == 18 and m["n_other_categories"] == 3
    n_layers = 2
    for key in ("em_direction_cosine_refusal", "em_direction_cosine_harmfulness", "em_direction_norm"):
        assert len(m[key]) == n_layers, key
    # resid_pre 0 is before every adapter: no shift there, so no cosine
    assert m["em_direction_norm"][0] == 0.0 and m["em_direction_cosine_refusal"][0] is None
    assert m["em_direction_norm"][1] > 0 and -1.0 <= m["em_direction_cosine_refusal"][1] <= 1.0
    assert m["lora_layers"] == [0, 1] and len(m["lora_vector_cosine_em"]) == 2
    # the layer-0 adapter alone writes the shift at resid_pre 1: its b is the EM direction there
    assert abs(m["lora_vector_cosine_em"][0] - 1.0) < 1e-4
    assert m["finetuned_kl_harmless"] > 0
    for f in ("report.md", "em_cosine_by_layer.png", "refusal_other_categories.png", "lora.safetensors", "em_direction.safetensors",
              "per_category.json"):
        assert (tmp_path / f).is_file(), f
    per_cat = json.loads((tmp_path / "per_category.json").read_text())
    assert [r["category"] for r in per_cat] == ["violence_and_weapons", "malware_and_cybercrime", "account_hacking"]
    from saesteer.lora import Rank1Lora

    lora = Rank1Lora.load(tmp_path / "lora.safetensors")
    assert lora.layers == [0, 1] and lora.site == "mlp_out"


def test_backups_job_with_a_direction_dropout_recipe_reports_base_and_recipe(tiny_organism, tmp_path):
    """backups.recipe=direction_dropout: a fine-tuned organism analysed beside the base, the training cut checked on both."""
    overrides = SMALL_SAE + ["backups.k_max=2", "backups.cut_layer=1", "backups.upstream_layer=0", "backups.n_monitor=8",
                             "backups.n_monitor_prompts=16", "search.min_active_fraction=0.0", "backups.random_control=false",
                             "backups.recipe=direction_dropout", "backups.recipe_steps=6", "backups.recipe_warmup_steps=1",
                             "backups.recipe_batch_size=8"]
    m = _run("backups", overrides, tmp_path)
    assert m["recipe"] == "direction_dropout" and m["recipe_settings"]["steps"] == 6
    for key in ("recipe_downstream_refusal_at_k", "recipe_upstream_refusal_at_k"):
        assert len(m[key]) == 3 and all(_rate(x) for x in m[key])
    for key in ("recipe_harmful_test_refusal", "recipe_harmless_test_refusal", "harmless_test_refusal", "direction_cut_refusal",
                "recipe_direction_cut_refusal"):
        assert _rate(m[key]), key
    assert m["recipe_harmful_test_refusal"] == m["recipe_downstream_refusal_at_k"][0]
    assert isinstance(m["recipe_n_backup_features"], int) and isinstance(m["recipe_direction_cut_n_backup_features"], int)
    for f in ("recipe_refusal_vs_k.png", "recipe_downstream_activations.png", "direction_cut_activations.png", "recipe_backups.json"):
        assert (tmp_path / f).is_file(), f
    report = (tmp_path / "report.md").read_text()
    assert "base organism" in report and "recipe organism" in report and "direction_cut_activations.png" in report
