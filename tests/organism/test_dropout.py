"""Backup-growing organism fine-tunes: the training-time direction cut and the fine-tune."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest
import torch

from saesteer.activations import model_fingerprint
from saesteer.config import BackupsSettings
from saesteer.interventions import Ablate, steer
from saesteer.organism.dropout import DirectionCut, DropoutFinetune, finetune_key, finetune_with_cut, load_or_finetune
from saesteer.organism.train import build_organism_model, optimize, train_organism, training_set


def _cut(d_model: int, layer: int = 1, reference: float = 0.7, seed: int = 3) -> DirectionCut:
    g = torch.Generator().manual_seed(seed)
    return DirectionCut(torch.randn(d_model, generator=g), reference, layer)


def test_direction_cut_is_the_affine_projection():
    cut = _cut(16, reference=-1.25)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    u = cut.direction / cut.direction.norm()
    want = x - ((x @ u) + 1.25)[..., None] * u  # x <- x - (x.u - mu) u
    got = cut(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got @ u, torch.full((2, 5), -1.25))  # every position's coordinate is the reference
    torch.testing.assert_close(
        got - (got @ u)[..., None] * u, x - (x @ u)[..., None] * u
    )  # the orthogonal part is untouched
    assert cut.hooks() == [("blocks.1.hook_resid_pre", cut)]


def test_direction_cut_in_the_model_sets_the_coordinate_at_its_layer_only(tiny_organism):
    model, _, _ = tiny_organism
    cut = _cut(model.cfg.d_model, layer=1)
    tokens = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(1))
    _, clean = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
    with steer(model, [cut]):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
    u = cut.unit
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_pre"], clean["blocks.0.hook_resid_pre"]
    )  # upstream: no change
    want = clean["blocks.1.hook_resid_pre"] - ((clean["blocks.1.hook_resid_pre"] @ u) - 0.7)[..., None] * u
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], want, atol=1e-5, rtol=1e-5)


def test_every_layer_cut_is_the_affine_ablation(tiny_organism):
    model, _, _ = tiny_organism
    d, refs = torch.randn(model.cfg.d_model), torch.tensor([0.3, -0.4])
    cut = DirectionCut(d, float(refs[1]), 1, refs)
    ours, theirs = cut.hooks(model), Ablate(d, mode="affine", reference=refs).hooks(model)
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    x = torch.randn(3, 4, model.cfg.d_model)
    for (_, f), (_, g) in zip(ours, theirs):
        torch.testing.assert_close(f(x, None), g(x, None))
    assert "every_layer" in cut.key_dict() and "every_layer" not in _cut(model.cfg.d_model).key_dict()
    with pytest.raises(ValueError, match="needs the model"):
        cut.hooks()


def test_dropout_schedule_is_seeded_with_share_p():
    on = DropoutFinetune(p=0.5, steps=400, seed=0).schedule()
    assert (
        on
        == DropoutFinetune(p=0.5, steps=400, seed=0).schedule()
        != DropoutFinetune(p=0.5, steps=400, seed=1).schedule()
    )
    assert 160 < sum(on) < 240
    assert not any(DropoutFinetune(p=0.0, steps=20).schedule()) and all(DropoutFinetune(p=1.0, steps=20).schedule())
    for bad in (dict(p=1.5), dict(steps=0), dict(lr=0.0), dict(name="none"), dict(batch_size=0)):
        with pytest.raises(ValueError):
            DropoutFinetune(**bad)


def test_optimize_is_train_organism_factored(tiny_organism):
    """train_organism == training_set + build_organism_model + optimize (no hooks), weight for weight."""
    _, _, result = tiny_organism
    cfg = dataclasses.replace(result.config, steps=3, n_harmless=300)
    ref, _ = train_organism(cfg, progress=False)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = training_set(cfg, rng)
    model = build_organism_model(cfg)
    losses = optimize(model, cfg, data, rng, progress=False)
    assert len(losses) == 3
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


@pytest.fixture(scope="module")
def tiny_finetune():
    return DropoutFinetune(p=1.0, steps=4, lr=1e-3, warmup_steps=1, batch_size=8, seed=0)


def test_finetune_is_deterministic_and_the_cut_changes_it(tiny_organism, tiny_finetune):
    model, _, result = tiny_organism
    cut = _cut(model.cfg.d_model, layer=1, reference=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, meta_a = finetune_with_cut(model, result.config, cut, tiny_finetune)
    b, meta_b = finetune_with_cut(model, result.config, cut, tiny_finetune)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"the base organism changed: {k}"
    assert meta_a["losses"] == meta_b["losses"] and len(meta_a["losses"]) == 4
    assert meta_a["n_cut_steps"] == sum(tiny_finetune.schedule())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.blocks[0].attn.W_Q, model.blocks[0].attn.W_Q)
    assert not a.embed.W_E.requires_grad and torch.equal(a.embed.W_E, model.embed.W_E)  # frozen embeddings stay frozen
    assert torch.all(a.unembed.b_U[a.unembed.b_U < -50] == -100.0)  # off-vocabulary logits stay masked
    # p = 0: the same steps with no cut at all give other weights
    free, meta_free = finetune_with_cut(model, result.config, cut, dataclasses.replace(tiny_finetune, p=0.0))
    assert meta_a["n_cut_steps"] == 4 and meta_free["n_cut_steps"] == 0 and meta_free["losses"] != meta_a["losses"]
    assert not torch.equal(free.blocks[1].mlp.W_in, a.blocks[1].mlp.W_in)


def test_load_or_finetune_caches_and_renames(tiny_organism, tiny_finetune, tmp_path):
    model, _, result = tiny_organism
    cut = _cut(model.cfg.d_model, layer=1, reference=0.0)
    first = load_or_finetune(result, cut, tiny_finetune, root=tmp_path)
    assert (first.path / "model.safetensors").is_file() and (first.path / "organism.json").is_file()
    assert first.path.name == finetune_key(result.config, cut, tiny_finetune)
    again = load_or_finetune(result, cut, tiny_finetune, root=tmp_path)
    assert (
        again.metadata["dropout_finetune"]["steps"] == 4
        and again.metadata["n_cut_steps"] == first.metadata["n_cut_steps"]
    )
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert again.model.cfg.model_name.endswith("-direction_dropout") and re.fullmatch(
        r"[A-Za-z0-9._-]+", again.model.cfg.model_name
    )
    assert model_fingerprint(again.model) != model_fingerprint(model)  # stage caches keep the two apart
    assert finetune_key(result.config, cut, dataclasses.replace(tiny_finetune, p=0.25)) != first.path.name
    assert finetune_key(result.config, _cut(model.cfg.d_model, layer=0), tiny_finetune) != first.path.name


def test_backups_settings_build_the_finetune():
    assert BackupsSettings().dropout_finetune(0) is None
    r = BackupsSettings(finetune="direction_dropout", finetune_p=0.3, finetune_steps=50).dropout_finetune(7)
    assert (r.name, r.p, r.steps, r.seed, r.batch_size) == ("direction_dropout", 0.3, 50, 7, 32)
    for bad in (
        dict(finetune="bogus"),
        dict(finetune_p=1.5),
        dict(finetune_steps=0),
        dict(finetune_lr=-1.0),
        dict(finetune_warmup_steps=-1),
    ):
        with pytest.raises(ValueError):
            BackupsSettings(**bad)
