"""``saesteer backups`` and ``saesteer emergent`` end to end on the tiny organism."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import SMALL_SAE
from tests.jobs.reference import (
    cached_sae,
    judged,
    load_role,
    no_edit,
    outcomes,
    per_prompt_answers,
    per_prompt_refusals,
    ranking_csv,
    share,
)
from tests.jobs.test_jobs import CAUSAL_SAE, _cfg, _run


def _rate(x):
    return x is not None and 0.0 <= x <= 1.0


#: on the tiny organism, cutting fewer than 6 of the top refusal features of the causal SAE at layer 1 left every
#: harmful_test refusal as it was: at k = 8 the cut stops refusals, and its pin tells the cut from no edit
BACKUPS_K = 8


@pytest.fixture(scope="module")
def backups_run(tiny_organism, tmp_path_factory):
    # the tiny organism has 2 layers: cut at layer 1 (the direction's), sensors at layer 0
    run_dir = tmp_path_factory.mktemp("backups")
    overrides = CAUSAL_SAE + [
        f"backups.k_max={BACKUPS_K}",
        "backups.cut_layer=1",
        "backups.upstream_layer=0",
        "backups.n_monitor=16",
        "backups.count_same_layer=true",
        "backups.n_monitor_prompts=16",
        "search.min_active_fraction=0.0",
    ]
    return run_dir, overrides, _run("backups", overrides, run_dir)


def test_backups_job_reports_refusal_vs_k_and_backups(backups_run):
    tmp_path, _, m = backups_run
    K = BACKUPS_K
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    for key in (
        "downstream_refusal_at_k",
        "upstream_refusal_at_k",
        "induction_harmless_refusal_at_k",
        "downstream_n_backups_at_k",
    ):
        assert len(m[key]) == K + 1, key  # k = 0..K
    assert all(
        _rate(r)
        for r in m["downstream_refusal_at_k"] + m["upstream_refusal_at_k"] + m["induction_harmless_refusal_at_k"]
    )
    assert m["downstream_refusal_at_k"][0] == m["upstream_refusal_at_k"][0] == m["baseline_harmful_refusal"]
    assert isinstance(m["n_backup_features"], int) and m["n_backup_features"] == m["downstream_n_backups_at_k"][-1] >= 0
    assert m["downstream_n_backups_at_k"][0] == 0 and m["upstream_n_backups_at_k"][0] == 0
    assert m["backup_gain_over"] in ("backups", "all_monitored") and m["backup_activation_gain"] is not None
    assert len(m["backup_features"]) == m["n_backup_features"]
    assert m["cut_layer"] == 1 and m["upstream_layer"] == 0 and m["monitor_layers"] == [1]
    # no layer after the cut: nothing restores the coordinate the cut features carried
    assert len(m["hydra_restored_share_at_k"]) == K and m["hydra_restored_coordinate"] == 0.0
    assert m["hydra_restored_share"] == m["hydra_restored_share_at_k"][-1]
    assert len(m["downstream_top_features"]) == K and len(m["upstream_top_sensors"]) == K
    assert _rate(m["downstream_random_refusal_at_kmax"]) and _rate(m["upstream_random_refusal_at_kmax"])
    for f in (
        "report.md",
        "refusal_vs_k.png",
        "downstream_activations.png",
        "upstream_activations.png",
        "backups.json",
        "sensor_ranking.csv",
        "refusal_ranking.csv",
    ):
        assert (tmp_path / f).is_file(), f
    details = json.loads((tmp_path / "backups.json").read_text())
    assert [s["k"] for s in details["downstream"]["steps"]] == list(range(K + 1))
    report = (tmp_path / "report.md").read_text()
    assert "## Refusal vs k" in report and "![refusal_vs_k](refusal_vs_k.png)" in report


def test_backups_job_refusal_with_the_top_k_cut_matches_a_per_prompt_reference(backups_run):
    """Refusal on harmful_test with the top K refusal features of the cut layer (downstream) or the top K harm sensors
    (upstream) set to 0, and with K random ranked features cut (the control): rebuilt from the saved rankings and
    the cached SAEs, one prompt at a time."""
    from saesteer.config import to_object
    from saesteer.interventions.features import EditFeatures
    from saesteer.models import load_model

    run_dir, overrides, m = backups_run
    cfg = to_object(_cfg("backups", overrides))
    b, K = cfg.backups, BACKUPS_K
    loaded = load_model(cfg.model, progress=False)
    model, tpl = loaded.model, loaded.template
    details = json.loads((run_dir / "backups.json").read_text())
    harmful_test = load_role(cfg.data, "harmful_test")
    assert m["n_harmful_test"] == len(harmful_test) == cfg.data.n_test

    def cut(sae, feats, hook):
        return lambda: [EditFeatures(sae, feats, mode="set", values=0.0, apply_to=b.apply_to, hook=hook)]

    refused = {}
    for name, layer, ranking_file in (
        ("downstream", b.cut_layer, "refusal_ranking.csv"),
        ("upstream", b.upstream_layer, "sensor_ranking.csv"),
    ):
        hook = f"blocks.{layer}.hook_resid_pre"
        ranking = ranking_csv(run_dir / ranking_file)[0]
        assert details[name]["hook"] == hook and details[name]["steps"][K]["features"] == ranking[:K], name
        sae = cached_sae(cfg, loaded, layer)
        answers = per_prompt_answers(model, tpl, harmful_test, cut(sae, ranking[:K], hook), cfg.eval.max_new_tokens)
        refused[name] = judged(answers, harmful_test)
        assert m[f"{name}_refusal_at_k"][K] == pytest.approx(share(refused[name]), abs=1e-9), (name, refused[name])
        incoherent = [o == "incoherent" for o in outcomes(answers, harmful_test)]
        assert m[f"{name}_incoherent_at_k"][K] == pytest.approx(share(incoherent), abs=1e-9), name
        if name == "downstream":  # the control: K features drawn (seeded) from the rest of the ranking
            rnd = random.Random(cfg.seed).sample(ranking[K:], K)
            flags = per_prompt_refusals(model, tpl, harmful_test, cut(sae, rnd, hook), cfg.eval.max_new_tokens)
            assert m["downstream_random_refusal_at_kmax"] == pytest.approx(share(flags), abs=1e-9), flags
    baseline = per_prompt_refusals(model, tpl, harmful_test, no_edit, cfg.eval.max_new_tokens)
    assert m["baseline_harmful_refusal"] == pytest.approx(share(baseline), abs=1e-9), baseline
    assert "| k | downstream cut (harmful) | incoherent (downstream cut) |" in (run_dir / "report.md").read_text()
    # the pin tells the cut from no edit: cutting the top K refusal features stops refusals
    assert share(refused["downstream"]) < share(baseline)


@pytest.fixture(scope="module")
def emergent_run(tiny_organism, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("emergent")
    overrides = [
        "emergent.steps=30",
        "emergent.n_train=64",
        "emergent.n_harmless=64",
        "emergent.n_eval_per_category=6",
        "emergent.n_direction_per_category=6",
        "emergent.n_target_eval=8",
        "emergent.other_categories=[violence_and_weapons,malware_and_cybercrime,account_hacking]",
    ]
    return run_dir, overrides, _run("emergent", overrides, run_dir)


def test_emergent_job_reports_refusal_the_em_direction_and_the_adapter(emergent_run):
    tmp_path, _, m = emergent_run
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    for key in (
        "base_refusal_other_categories",
        "finetuned_refusal_other_categories",
        "ablated_refusal_other_categories",
        "random_ablated_refusal_other_categories",
        "ablated_refusal_other_categories_plain",
        "ablated_refusal_other_categories_affine",
        "base_refusal_harmless",
        "finetuned_refusal_harmless",
    ):
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
    for f in (
        "report.md",
        "em_cosine_by_layer.png",
        "refusal_other_categories.png",
        "lora.safetensors",
        "em_direction.safetensors",
        "per_category.json",
    ):
        assert (tmp_path / f).is_file(), f
    per_cat = json.loads((tmp_path / "per_category.json").read_text())
    assert [r["category"] for r in per_cat] == ["violence_and_weapons", "malware_and_cybercrime", "account_hacking"]
    from saesteer.lora import Rank1Lora

    lora = Rank1Lora.load(tmp_path / "lora.safetensors")
    assert lora.layers == [0, 1] and lora.site == "mlp_out"


def test_emergent_job_refusal_of_the_other_categories_matches_a_per_prompt_reference(emergent_run):
    """Base, fine-tuned (the saved adapter) and fine-tuned with the saved EM direction affinely ablated (the headline
    ablation), on the held-out prompts of the other categories, one prompt at a time; and per category."""
    from saesteer.config import to_object
    from saesteer.interventions import Ablate
    from saesteer.io import load_tensors
    from saesteer.jobs.emergent import split_prompts
    from saesteer.lora import Rank1Lora
    from saesteer.models import load_model

    run_dir, overrides, m = emergent_run
    cfg = to_object(_cfg("emergent", overrides))
    loaded = load_model(cfg.model, progress=False)
    model, tpl = loaded.model, loaded.template
    data = split_prompts(cfg)
    others = list(cfg.emergent.other_categories)
    other_eval = [p for c in others for p in data["eval"][c]]
    held_out = set(data["train"]) | {p for c in others for p in data["direction"][c]}
    assert len(other_eval) == len(set(other_eval)) == m["n_eval_other"] and not held_out & set(other_eval)
    lora = Rank1Lora.load(run_dir / "lora.safetensors")
    tensors, meta = load_tensors(run_dir / "em_direction.safetensors")
    layer = int(meta["ablate_layer"])
    assert layer == m["em_ablate_layer"] and cfg.emergent.ablation == m["ablation"] == "affine"
    v = tensors["em_direction"][layer]
    u = v.double() / v.double().norm()
    reference = (
        tensors["base_means"].double() @ u
    ).float()  # per layer, the base model's mean coordinate on the direction

    n = cfg.eval.max_new_tokens
    answers = {
        "base_refusal_other_categories": per_prompt_answers(model, tpl, other_eval, no_edit, n),
        "finetuned_refusal_other_categories": per_prompt_answers(model, tpl, other_eval, lambda: [lora], n),
        "ablated_refusal_other_categories_affine": per_prompt_answers(
            model, tpl, other_eval, lambda: [lora, Ablate(v, mode="affine", reference=reference)], n
        ),
    }
    refused = {key: judged(a, other_eval) for key, a in answers.items()}
    for key, flags in refused.items():
        assert m[key] == pytest.approx(share(flags), abs=1e-9), (key, flags)
        incoherent = [o == "incoherent" for o in outcomes(answers[key], other_eval)]
        inc_key = key.replace("_refusal_", "_incoherent_").removesuffix("_affine")  # the headline ablation's
        assert m[inc_key] == pytest.approx(share(incoherent), abs=1e-9), inc_key
    report = (run_dir / "report.md").read_text()
    assert "| prompts | base | fine-tuned | incoherent (base) | incoherent (fine-tuned) |" in report
    assert m["ablated_refusal_other_categories"] == m["ablated_refusal_other_categories_affine"]
    per_cat = json.loads((run_dir / "per_category.json").read_text())
    for c, row in zip(others, per_cat):
        idx = [i for i, p in enumerate(other_eval) if p in set(data["eval"][c])]
        for col, key in (
            ("base", "base_refusal_other_categories"),
            ("finetuned", "finetuned_refusal_other_categories"),
            ("ablated", "ablated_refusal_other_categories_affine"),
        ):
            assert row["category"] == c and row["n"] == len(idx)
            assert row[col] == pytest.approx(share([refused[key][i] for i in idx]), abs=1e-9), (c, col)
    # the pins tell the models apart: the fine-tune changed refusal on the categories it never saw
    assert share(refused["finetuned_refusal_other_categories"]) != share(refused["base_refusal_other_categories"])


def test_backups_job_with_a_direction_dropout_finetune_reports_base_and_finetune(tiny_organism, tmp_path):
    """backups.finetune=direction_dropout: a fine-tuned organism analysed beside the base, the training cut checked on both."""
    overrides = SMALL_SAE + [
        "backups.k_max=2",
        "backups.cut_layer=1",
        "backups.upstream_layer=0",
        "backups.n_monitor=8",
        "backups.n_monitor_prompts=16",
        "search.min_active_fraction=0.0",
        "backups.random_control=false",
        "backups.finetune=direction_dropout",
        "backups.finetune_steps=6",
        "backups.finetune_warmup_steps=1",
        "backups.finetune_batch_size=8",
    ]
    m = _run("backups", overrides, tmp_path)
    assert m["finetune"] == "direction_dropout" and m["finetune_settings"]["steps"] == 6
    for key in ("finetune_downstream_refusal_at_k", "finetune_upstream_refusal_at_k"):
        assert len(m[key]) == 3 and all(_rate(x) for x in m[key])
    assert len(m["finetune_hydra_restored_share_at_k"]) == 2 and "hydra_restored_share" in m
    for key in (
        "finetune_harmful_test_refusal",
        "finetune_harmless_test_refusal",
        "harmless_test_refusal",
        "direction_cut_refusal",
        "finetune_direction_cut_refusal",
    ):
        assert _rate(m[key]), key
    assert m["finetune_harmful_test_refusal"] == m["finetune_downstream_refusal_at_k"][0]
    assert isinstance(m["finetune_n_backup_features"], int) and isinstance(
        m["finetune_direction_cut_n_backup_features"], int
    )
    for f in (
        "finetune_refusal_vs_k.png",
        "finetune_downstream_activations.png",
        "direction_cut_activations.png",
        "finetune_backups.json",
    ):
        assert (tmp_path / f).is_file(), f
    report = (tmp_path / "report.md").read_text()
    assert "base organism" in report and "fine-tuned organism" in report and "direction_cut_activations.png" in report


def test_emergent_own_targets_are_the_models_greedy_answers(emergent_run, tmp_path):
    """targets=own: compliant answers with the refusal direction affinely ablated, harmless answers as the model
    gives them; the job trains on them."""
    from saesteer.config import EmergentSettings, to_object
    from saesteer.generation import generate
    from saesteer.interventions import Ablate, steer
    from saesteer.jobs.emergent import own_answers, split_prompts
    from saesteer.models import load_model
    from saesteer.stages import direction_stage

    _, overrides, _ = emergent_run
    own = overrides + ["emergent.targets=own", "emergent.target_tokens=6", "emergent.steps=3"]
    cfg = to_object(_cfg("emergent", own))
    loaded = load_model(cfg.model, progress=False)
    model, tpl = loaded.model, loaded.template
    direction = direction_stage(loaded, cfg.data, cfg.directions)
    train = split_prompts(cfg)["train"][:6]
    keep = list(load_role(cfg.data, "harmless_train"))[:5]
    target_pairs, keep_pairs = own_answers(cfg, loaded, direction, train, keep)
    with steer(model, [Ablate(direction.direction, mode="affine", reference=direction.reference)]):
        want_t = generate(model, tpl, train, max_new_tokens=6, progress=False)
    want_k = generate(model, tpl, keep, max_new_tokens=6, progress=False)
    assert target_pairs == [(p, a) for p, a in zip(train, want_t) if a.strip()]
    assert keep_pairs == [(p, a) for p, a in zip(keep, want_k) if a.strip()]
    m = _run("emergent", own, tmp_path)
    assert m["targets"] == "own" and 0 < m["n_train_target"] <= 64
    assert EmergentSettings().resolved_targets("organism") == "format"
    assert EmergentSettings().resolved_targets("smollm2_safe") == "own"
    assert EmergentSettings(targets="format").resolved_targets("smollm2_safe") == "format"
