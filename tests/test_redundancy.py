"""Backup-feature analysis against brute-force references: the counting rule, monitors and per-k cuts."""

from __future__ import annotations

import pytest
import torch

from saesteer.chat import encode_chat
from saesteer.data import load_prompts
from saesteer.evaluate import refusal_eval
from saesteer.interventions import steer
from saesteer.interventions.features import EditFeatures
from saesteer.primitives.sae_weights import SaeWeights
from saesteer.redundancy import (
    BackupRule,
    CutStep,
    FeatureChange,
    FeatureSet,
    edit_curve,
    find_backups,
    hydra_restoration,
    monitored_activations,
    random_features,
)
from tests.saes import random_sae

H0, H1 = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"


# ---------------------------------------------------------------- the counting rule on synthetic activations


def test_backup_rule_on_synthetic_changes():
    rule = BackupRule(backup_threshold=0.25, backup_min_rise=0.05)
    intact = torch.tensor([1.00, 1.00, 0.00, 0.00, 0.10, 2.00, 1.00])
    edited = torch.tensor([1.30, 1.20, 0.06, 0.04, 0.14, 1.00, 2.00])
    mask, rel = find_backups(intact, edited, rule)
    # relative change: (edited - intact) / max(intact, min_rise)
    expected = (edited.double() - intact.double()) / intact.double().clamp_min(0.05)
    torch.testing.assert_close(rel, expected)
    # 0: +30% and +0.3 -> backup; 1: +20% -> no; 2: dormant, +0.06 -> backup; 3: dormant, +0.04 < floor -> no;
    # 4: +40% but only +0.04 absolute -> no; 5: falls -> no; 6: doubles -> backup
    assert mask.tolist() == [True, False, True, False, False, False, True]
    excluded = torch.tensor([False, False, False, False, False, False, True])
    assert find_backups(intact, edited, rule, excluded)[0].tolist() == [True, False, True, False, False, False, False]
    with pytest.raises(ValueError, match="differ in shape"):
        find_backups(intact, edited[:3], rule)
    with pytest.raises(ValueError, match=r"^BackupRule.backup_min_rise must be a number > 0.0, got 0.0$"):
        BackupRule(0.25, 0.0)


def _change(hook, intact, edited, edited_mask=None, rule=None):
    rule = rule if rule is not None else BackupRule()
    intact, edited = torch.tensor(intact, dtype=torch.float64), torch.tensor(edited, dtype=torch.float64)
    em = torch.zeros(len(intact), dtype=torch.bool) if edited_mask is None else torch.tensor(edited_mask)
    mask, rel = find_backups(intact, edited, rule, em)
    return FeatureChange(hook, list(range(len(intact))), intact, edited, rel, mask, em, mask.double())


def test_cut_step_counts_only_counted_hooks_and_gain_falls_back():
    same = _change(H0, [1.0, 1.0], [3.0, 1.0], edited_mask=[False, False])  # a rise at the cut layer itself
    later = _change(H1, [1.0, 0.0, 1.0], [1.5, 0.2, 0.9])
    step = CutStep(2, [5, 6], 0.5, {H0: same, H1: later}, count_hooks=[H1])
    assert step.n_backups == 2  # later-layer features 0 (+50%) and 1 (dormant, +0.2); not the same-layer rise
    gain, over = step.backup_gain()
    assert over == "backups" and gain == pytest.approx((0.5 + 0.2 / 0.05) / 2)
    quiet = CutStep(2, [5, 6], 0.5, {H1: _change(H1, [1.0, 1.0], [1.1, 0.9])}, count_hooks=[H1])
    gain, over = quiet.backup_gain()
    assert quiet.n_backups == 0 and over == "all_monitored" and gain == pytest.approx(0.0)
    assert CutStep(2, [], 0.5, {H0: same}, count_hooks=[H0]).n_backups == 1


def test_hydra_restoration_weighs_rises_by_their_decoder_along_the_direction():
    d = 6
    sae0, sae1 = random_sae("standard", d, 5, H0, seed=1), random_sae("standard", d, 4, H1, seed=2)
    g = torch.Generator().manual_seed(0)
    W0, W1 = SaeWeights.from_sae(sae0).W_dec.double(), SaeWeights.from_sae(sae1).W_dec.double()
    r0, r1 = (W0[3] + W0[1]).float(), torch.randn(d, generator=g)  # the cut features carry a positive coordinate
    # the cut: features 3 and 1 of layer 0 set to 0; layer 1's features 0 and 2 rise, 1 falls, 3 is unchanged
    cut = _change(
        H0, [0.5, 2.0, 0.1, 1.5, 0.3], [0.5, 0.0, 0.1, 0.0, 0.4], edited_mask=[False, True, False, True, False]
    )
    later = _change(H1, [1.0, 1.0, 0.0, 0.2], [1.5, 0.5, 0.3, 0.2])
    step = CutStep(2, [3, 1], 0.4, {H0: cut, H1: later}, count_hooks=[H0, H1])
    monitors = [FeatureSet(sae0, list(range(5)), H0), FeatureSet(sae1, list(range(4)), H1)]
    res = hydra_restoration(step, monitors, H0, {H0: r0, H1: r1})
    u0, u1 = r0.double() / r0.double().norm(), r1.double() / r1.double().norm()
    lost = 1.5 * float(W0[3] @ u0) + 2.0 * float(W0[1] @ u0)
    restored = 0.5 * float(W1[0] @ u1) + 0.3 * float(W1[2] @ u1)  # the rise at the cut layer itself does not count
    assert res.lost == pytest.approx(lost) and res.restored == pytest.approx(restored)
    assert lost > 0 and res.share == pytest.approx(restored / lost)
    # a cut that removed no refusal coordinate has no share to restore
    flipped = hydra_restoration(step, monitors, H0, {H0: -r0, H1: r1})
    assert flipped.lost == pytest.approx(-lost) and flipped.share != flipped.share  # nan
    with pytest.raises(ValueError, match=r"cut features \[7\] are not monitored"):
        hydra_restoration(CutStep(1, [7], 0.4, {H0: cut}, count_hooks=[]), monitors, H0, {H0: r0})


def test_random_features_are_seeded_and_exclude():
    a = random_features(range(20), [0, 1, 2], 5, seed=3)
    assert a == random_features(range(20), [0, 1, 2], 5, seed=3) and len(set(a)) == 5 and not {0, 1, 2} & set(a)


# ---------------------------------------------------------------- on the tiny organism


@pytest.fixture(scope="module")
def setup(tiny_organism):
    model, tpl, _ = tiny_organism
    d = model.cfg.d_model
    sae0 = random_sae("topk", d, 32, H0, seed=1, k=6)
    sae1 = random_sae("standard", d, 40, H1, seed=2)
    harmful = list(load_prompts("harmful_val").instructions[:6])
    return model, tpl, sae0, sae1, harmful


def _brute(model, tpl, sae, hook, prompts, features, specs=()):
    w = SaeWeights.from_sae(sae)
    rows = []
    for p in prompts:
        enc = encode_chat(model.tokenizer, tpl, [p])
        with steer(model, list(specs)):
            _, cache = model.run_with_cache(enc.tokens)
        x = cache[hook][0, -enc.n_post :].float()
        rows.append(w.encode(x)[:, features].mean(0).double())
    return torch.stack(rows)


def test_monitored_activations_match_brute_force(setup):
    model, tpl, sae0, sae1, prompts = setup
    f0, f1 = [0, 3, 7, 11], [1, 2, 30]
    sets = [FeatureSet(sae0, f0), FeatureSet(sae1, f1)]
    got = monitored_activations(model, tpl, prompts, sets, batch_size=4)
    torch.testing.assert_close(got[H0], _brute(model, tpl, sae0, H0, prompts, f0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[H1], _brute(model, tpl, sae1, H1, prompts, f1), atol=1e-5, rtol=1e-4)
    # under an edit at layer 0: both hooks read the edited stream (layer 0 after the edit itself)
    edit = EditFeatures(sae0, [3, 7], mode="set", values=0.0)
    got = monitored_activations(model, tpl, prompts, sets, interventions=[edit], batch_size=4)
    torch.testing.assert_close(got[H1], _brute(model, tpl, sae1, H1, prompts, f1, [edit]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[H0], _brute(model, tpl, sae0, H0, prompts, f0, [edit]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one FeatureSet per hook"):
        monitored_activations(model, tpl, prompts, [FeatureSet(sae0, [0]), FeatureSet(sae0, [1])])


def test_edit_curve_matches_per_k_reference_and_k0_is_the_baseline(setup):
    model, tpl, sae0, sae1, prompts = setup
    ranking = [5, 2, 9, 14]
    monitors = [FeatureSet(sae0, [5, 2, 20, 21]), FeatureSet(sae1, [0, 1, 2, 3])]
    rule = BackupRule(0.25, 0.01)
    curve = edit_curve(
        model, tpl, sae0, ranking, 3, prompts, monitors=monitors, rule=rule, max_new_tokens=6, batch_size=4
    )
    assert curve.ks == [0, 1, 2, 3] and curve.mode == "cut" and curve.steps[0].count_hooks == [H1]
    base = refusal_eval(model, tpl, prompts, max_new_tokens=6, batch_size=4)
    assert curve.refusal[0] == base.rate
    k0 = curve.at(0)
    assert k0.features == [] and k0.n_backups == 0
    for c in k0.changes.values():
        assert torch.equal(c.intact, c.edited) and not c.backup.any()
    intact1 = _brute(model, tpl, sae1, H1, prompts, [0, 1, 2, 3]).mean(0)
    for k in (1, 3):
        spec = EditFeatures(sae0, ranking[:k], mode="set", values=0.0)
        with steer(model, [spec]):
            assert curve.at(k).refusal == refusal_eval(model, tpl, prompts, max_new_tokens=6, batch_size=4).rate
        edited1 = _brute(model, tpl, sae1, H1, prompts, [0, 1, 2, 3], [spec]).mean(0)
        c = curve.at(k).changes[H1]
        torch.testing.assert_close(c.intact, intact1, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c.edited, edited1, atol=1e-5, rtol=1e-4)
        assert c.backup.tolist() == rule.is_backup(intact1, edited1).tolist()
        # the cut features are marked at their own hook and never count as backups
        assert curve.at(k).changes[H0].edited_mask.tolist() == [f in ranking[:k] for f in [5, 2, 20, 21]]
    with pytest.raises(ValueError, match="k_max=9 but only 4"):
        edit_curve(model, tpl, sae0, ranking, 9, prompts)


# ---------------------------------------------------------------- config


def test_backups_and_emergent_schemas_validate():
    from saesteer.config import BackupsSettings, EmergentSettings

    with pytest.raises(ValueError, match=r"backups.k_max must be a positive integer, got 0"):
        BackupsSettings(k_max=0)
    with pytest.raises(ValueError, match=r"backups.backup_threshold must be a number >= 0.0, got -0.1"):
        BackupsSettings(backup_threshold=-0.1)
    with pytest.raises(ValueError, match=r"backups.apply_to must be one of .*, got 'all'"):
        BackupsSettings(apply_to="all")
    with pytest.raises(ValueError, match=r"backups.finetune must be one of .*, got 'feature_dropout'"):
        BackupsSettings(finetune="feature_dropout")
    assert BackupsSettings(finetune="direction_dropout").finetune == "direction_dropout"
    with pytest.raises(ValueError, match=r"backups.monitor_layers must be .*, got \[-1\]"):
        BackupsSettings(monitor_layers=[-1])
    with pytest.raises(ValueError, match=r"emergent.category must be a harmful lexicon category .*got 'nope'"):
        EmergentSettings(category="nope")
    with pytest.raises(ValueError, match=r"must not hold the target category"):
        EmergentSettings(other_categories=["fraud_and_scams", "animal_cruelty"])
    with pytest.raises(ValueError, match=r"emergent.placement must be one of .*, got 'attn'"):
        EmergentSettings(placement="attn")


def test_backups_job_rejects_a_loaded_sae_and_a_fixed_hook():
    from saesteer.config import to_object
    from saesteer.jobs.common import compose

    with pytest.raises(ValueError, match="leave sae.hook null"):
        to_object(compose("backups", ["sae.hook=blocks.2.hook_resid_pre"]))
    with pytest.raises(ValueError, match="one SAE per layer"):
        to_object(compose("backups", ["sae.path=/tmp/some_sae"]))
