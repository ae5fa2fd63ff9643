"""The bundled organism: packing is lossless, the shipped bundle is the default recipe's, bad bundles fail clearly."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from saesteer.io import ArtifactError, load_tensors
from saesteer.organism.bundle import BUNDLE_PATH, bundled_organism, pack, unpack, write_bundle
from saesteer.organism.train import load_or_train_organism, organism_key


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"weights differ: {diff}"


def test_pack_unpack_is_lossless(tiny_organism, tmp_path):
    model, _, result = tiny_organism
    path = write_bundle(model, result.config, result.metadata, "k", tmp_path / "b.safetensors")
    tensors, info = load_tensors(path)
    assert "embed.W_E" not in tensors and "unembed.W_U" not in tensors  # rebuilt, not stored
    back, cfg, meta = unpack(tensors, info)
    _assert_same_weights(back, model)
    assert cfg == result.config and meta["train_seconds"] == result.metadata["train_seconds"]
    stored = sum(t.numel() for t in tensors.values())
    assert stored < 0.6 * sum(t.numel() for t in model.state_dict().values())


def test_load_or_train_takes_a_matching_bundle_and_caches_it(tiny_organism, tmp_path):
    model, _, result = tiny_organism
    key = organism_key(result.config)
    bundle = write_bundle(model, result.config, result.metadata, key, tmp_path / "b.safetensors")
    got = load_or_train_organism(result.config, root=tmp_path / "cache", bundle=bundle, progress=False)
    assert got.metadata["bundled"] is True
    _assert_same_weights(got.model, model)
    assert (tmp_path / "cache" / key / "model.safetensors").is_file()  # the next load is a cache hit
    assert bundled_organism(result.config, "another-key", bundle) is None


def test_shipped_bundle_is_the_default_recipe():
    """Fails after a recipe change until ``python scripts/bundle_organism.py`` re-bundles the organism."""
    from saesteer.jobs.common import compose

    cfg = OmegaConf.to_object(compose("organism", ["logger=none"])).model.organism
    tensors, info = load_tensors(BUNDLE_PATH)
    assert info["organism_key"] == organism_key(cfg), "stale organism bundle: run python scripts/bundle_organism.py"
    model, bcfg, meta = unpack(tensors, info)  # the embeddings rebuild to their packing-time checksums
    assert bcfg.cache_key_dict() == cfg.cache_key_dict()
    assert meta["train_seconds"] > 0
    live = int((model.unembed.W_U != 0).any(0).sum())
    assert live == meta["n_output_vocab"] == tensors["unembed.live_ids"].numel()


def test_bundle_with_other_embeddings_is_refused(tiny_organism, tmp_path):
    model, _, result = tiny_organism
    tensors, info = pack(model, result.config, result.metadata, "k")
    tensors["embed.pca_axes"] = -tensors["embed.pca_axes"]  # another eigensolver's signs, without its weights
    with pytest.raises(ArtifactError, match="do not rebuild"):
        unpack(tensors, info)
    with pytest.raises(ArtifactError, match="format"):
        unpack(tensors, {**info, "format": "something-else"})


def test_truncated_bundle_is_an_artifact_error(tiny_organism, tmp_path):
    model, _, result = tiny_organism
    path = write_bundle(model, result.config, result.metadata, organism_key(result.config), tmp_path / "b.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        bundled_organism(result.config, organism_key(result.config), path)


def test_an_unusable_bundle_falls_back_to_training(tiny_organism, tmp_path, monkeypatch, caplog):
    import saesteer.organism.train as train

    model, _, result = tiny_organism
    path = write_bundle(model, result.config, result.metadata, organism_key(result.config), tmp_path / "b.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    monkeypatch.setattr(train, "train_organism", lambda cfg, progress=True: (model, {"train_seconds": 1.0}))
    with caplog.at_level("WARNING"):
        got = train.load_or_train_organism(result.config, root=tmp_path / "cache", bundle=path, progress=False)
    assert got.model is model and "training it instead" in caplog.text


def test_pack_refuses_a_model_with_foreign_embeddings(tiny_organism):
    model, _, result = tiny_organism
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.embed.W_E.add_(1e-3)
    with pytest.raises(ValueError, match="frozen embeddings"):
        pack(other, result.config, result.metadata, "k")


def test_minilm_initialised_organism_bundles_without_pca_axes(tmp_path):
    """A MiniLM-initialised organism (384 wide, absolute positions) packs its blocks and W_pos; its embeddings are
    MiniLM's own, rebuilt without PCA axes, and the live W_U columns come back exactly."""
    from saesteer.organism.config import OrganismConfig
    from saesteer.organism.model import build_organism_model

    cfg = OrganismConfig(d_model=384, n_heads=12, d_mlp=1536, n_layers=1, init_from="minilm", seed=3)
    model = build_organism_model(cfg)
    with torch.no_grad():  # a trained organism's unembedding: a few live columns, the rest masked
        model.unembed.W_U.zero_()
        model.unembed.W_U[:, [5, 77, 2003]] = torch.randn(384, 3)
        model.blocks[0].mlp.W_in.add_(0.01)  # weights that differ from MiniLM's
    tensors, info = pack(model, cfg, {"train_seconds": 1.0}, "k")
    assert "embed.pca_axes" not in tensors and "pos_embed.W_pos" in tensors
    assert tensors["unembed.live_ids"].tolist() == [5, 77, 2003]
    back, bcfg, _ = unpack(tensors, info)
    _assert_same_weights(back, model)
    assert bcfg == cfg
