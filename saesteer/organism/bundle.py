"""The default organism's weights, bundled with the package.

Training the default organism takes about 12 minutes on 2 cores.  Like a model
downloaded from a hub, saesteer ships the weights that ``saesteer organism`` trained
from the default recipe (``scripts/bundle_organism.py`` writes them), so a fresh
install starts from the same organism without training it.  The bundle is used only
when its recipe key (config, recipe version and the fingerprint of every prompt the
recipe reads) equals the requested organism's key; any other recipe, or
``model.retrain=true``, trains.

Only what training changed is stored: the blocks, the final norm, the live columns
of ``W_U`` (the organism masks every other logit) and ``b_U``.  The frozen token
embeddings are rebuilt from MiniLM-L6's weights (on the principal axes stored with
them when they are PCA-projected: eigenvector signs differ between LAPACK builds)
and checked against 64 rows stored at packing time, so the bundle is about a quarter
of the full weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.io import ArtifactError, load_tensors, save_tensors
from saesteer.organism.config import OrganismConfig
from saesteer.organism.model import build_organism_model, pca_axes

log = logging.getLogger(__name__)

BUNDLE_PATH = Path(__file__).resolve().parents[1] / "resources" / "organism" / "organism.safetensors"
FORMAT = "saesteer-organism-bundle/1"
_DERIVED = ("embed.W_E", "unembed.W_U")  # rebuilt from the axes / the live columns


def _probe_ids(d_vocab: int) -> torch.Tensor:
    """The token ids whose embedding rows a bundle stores to check the rebuilt embeddings."""
    return torch.linspace(0, d_vocab - 1, 64).long()


def pack(
    model: HookedTransformer, cfg: OrganismConfig, meta: dict[str, Any], key: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a bundle for ``model`` (the organism of ``cfg`` with cache key ``key``)."""
    if not cfg.pretrained_embeddings or not cfg.freeze_embeddings:
        raise ValueError(
            "only organisms with frozen pretrained embeddings can be bundled "
            f"(pretrained_embeddings={cfg.pretrained_embeddings}, freeze_embeddings={cfg.freeze_embeddings})"
        )
    fresh = build_organism_model(cfg)
    if not torch.equal(fresh.embed.W_E, model.embed.W_E):
        raise ValueError(
            "the model's token embeddings are not the recipe's frozen embeddings: not the organism of this config"
        )
    params = dict(model.named_parameters())
    W_U = params["unembed.W_U"].detach()
    live = (W_U != 0).any(0).nonzero()[:, 0]
    tensors = {k: v.detach().clone().contiguous() for k, v in params.items() if k not in _DERIVED}
    tensors["unembed.live_ids"] = live
    tensors["unembed.W_U_live"] = W_U[:, live].contiguous()
    if cfg.init_from is None:  # a MiniLM-initialised organism keeps MiniLM's embeddings as they are
        tensors["embed.pca_axes"] = pca_axes(cfg.d_model).contiguous()
    tensors["embed.W_E_probe"] = model.embed.W_E.detach()[_probe_ids(model.cfg.d_vocab)].clone()
    info = {
        "format": FORMAT,
        "organism_key": key,
        "config": cfg.to_dict(),
        "meta": {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool)) or v is None},
    }
    return tensors, info


def unpack(
    tensors: dict[str, torch.Tensor], info: dict[str, Any]
) -> tuple[HookedTransformer, OrganismConfig, dict[str, Any]]:
    """The organism a bundle holds (eval mode), its config and its training metadata."""
    if info.get("format") != FORMAT:
        raise ArtifactError(f"not an organism bundle: format={info.get('format')!r}, expected {FORMAT!r}")
    cfg = OrganismConfig.from_dict(info["config"])
    model = build_organism_model(cfg, axes=tensors.get("embed.pca_axes"))
    err = float((model.embed.W_E.detach()[_probe_ids(model.cfg.d_vocab)] - tensors["embed.W_E_probe"]).abs().max())
    if err > 1e-4:
        raise ArtifactError(
            f"the bundled organism's token embeddings do not rebuild (max error {err:.3g} on 64 probe rows): "
            "has the MiniLM package changed? Retrain with model.retrain=true"
        )
    state = model.state_dict()
    W_U = torch.zeros_like(state["unembed.W_U"])
    W_U[:, tensors["unembed.live_ids"]] = tensors["unembed.W_U_live"]
    state["unembed.W_U"] = W_U
    params = {k for k, _ in model.named_parameters()} - set(_DERIVED)
    missing = params - set(tensors)
    if missing:
        raise ArtifactError(f"the organism bundle lacks parameters {sorted(missing)}")
    state.update({k: tensors[k] for k in params})
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, cfg, dict(info.get("meta", {}))


def write_bundle(
    model: HookedTransformer, cfg: OrganismConfig, meta: dict[str, Any], key: str, path: Path = BUNDLE_PATH
) -> Path:
    tensors, info = pack(model, cfg, meta, key)
    return save_tensors(path, tensors, info, sidecar=False)


def bundled_organism(
    cfg: OrganismConfig, key: str, path: Path = BUNDLE_PATH
) -> Optional[tuple[HookedTransformer, dict[str, Any]]]:
    """The bundled organism and its metadata when the bundle holds the organism of key ``key``; else None."""
    if not path.is_file():
        return None
    tensors, info = load_tensors(path)
    if info.get("organism_key") != key:
        log.info(
            "the bundled organism is another recipe (key %s, asked for %s): training", info.get("organism_key"), key
        )
        return None
    model, bundled_cfg, meta = unpack(tensors, info)
    if bundled_cfg.cache_key_dict() != cfg.cache_key_dict():  # the key already says so; a cheap second check
        raise ArtifactError(
            f"{path}: key {key} but config {bundled_cfg.cache_key_dict()} differs from {cfg.cache_key_dict()}"
        )
    log.info(
        "organism: the weights bundled with saesteer (%s), trained from this recipe in %.0fs",
        path.name,
        meta.get("train_seconds", float("nan")),
    )
    return model, {**meta, "bundled": True}
