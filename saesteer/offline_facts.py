"""What can be known offline about a model or an SAE a config names: dimensions (TransformerLens's names,
the local Hugging Face cache, :data:`KNOWN_MODEL_DIMS`), hook names, and an SAE's hook and width from sae_lens's
registry or a directory in sae_lens format; nothing is downloaded."""

from __future__ import annotations

import difflib
import functools
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

#: sae_lens config getters that compute an SAE's config from the release's names alone (no download)
OFFLINE_SAE_CONFIG_GETTERS = ("gemma_2", "goodfire", "deepseek_r1", "qwen_scope")

#: (d_model, n_layers, n_ctx as TransformerLens sets it) of models whose TransformerLens config needs the
#: Hub's config.json; values from the models' config.json (hidden_size, num_hidden_layers, max_position_embeddings)
KNOWN_MODEL_DIMS: dict[str, tuple[int, int, int]] = {
    "Qwen/Qwen2.5-7B-Instruct": (3584, 28, 32768),
    "Qwen/Qwen2.5-7B": (3584, 28, 131072),
}


class ExperimentError(ValueError):
    """An experiment config names things that do not fit together (hook, layer, widths, template)."""


@dataclass(frozen=True)
class ModelFacts:
    name: str  # official TransformerLens name, or "organism"
    d_model: Optional[int]
    n_layers: Optional[int]
    n_ctx: Optional[int]
    source: str


@dataclass(frozen=True)
class SaeFacts:
    label: str  # release/id or the directory
    hook: Optional[str]
    hook_source: str
    d_in: Optional[int]
    d_in_source: str
    model: Optional[str] = None  # the model the SAE was trained on, as its source names it


# ----------------------------------------------------------------------------- model


def model_facts(model_cfg: Any) -> ModelFacts:
    """Official name and dimensions of ``model_cfg.name`` (a ModelConfig), without downloading anything."""
    if model_cfg.name == "organism":
        o = model_cfg.organism
        return ModelFacts("organism", int(o.d_model), int(o.n_layers), int(o.n_ctx), "the organism config")
    from saesteer.model_files import LOCAL_MODELS

    if model_cfg.name in LOCAL_MODELS:
        m = LOCAL_MODELS[model_cfg.name]
        return ModelFacts(m.name, m.d_model, m.n_layers, m.n_ctx, "saesteer.model_files.LOCAL_MODELS")
    from saesteer.model_names import resolve_model_name

    official = resolve_model_name(model_cfg.name)  # ModelLoadError with close names
    return _official_model_facts(official)


@functools.lru_cache(maxsize=64)
def _official_model_facts(official: str) -> ModelFacts:
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    try:  # name-based configs (Llama, Gemma, ...) need nothing; others come from the local HF cache only
        cfg = get_pretrained_model_config(official, device="cpu", local_files_only=True)
        return ModelFacts(
            official, int(cfg.d_model), int(cfg.n_layers), int(cfg.n_ctx), "transformer_lens config, offline"
        )
    except Exception as exc:  # noqa: BLE001 - any failure means "not knowable offline"
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    if official in KNOWN_MODEL_DIMS:
        d, n, ctx = KNOWN_MODEL_DIMS[official]
        return ModelFacts(
            official,
            d,
            n,
            ctx,
            "saesteer.experiments.KNOWN_MODEL_DIMS (transformer_lens reads this model's config from the Hub)",
        )
    log.info("dimensions of %s are not known offline (%s)", official, reason)
    return ModelFacts(official, None, None, None, f"not known offline ({reason})")


# ----------------------------------------------------------------------------- hooks

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@functools.lru_cache(maxsize=1)
def _hook_names() -> tuple[frozenset[str], frozenset[str]]:
    """(per-block hook suffixes, top-level hook names) of TransformerLens models, from two tiny random models."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    common = dict(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=8, n_ctx=8, device="cpu")
    configs = [
        HookedTransformerConfig(act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", **common),
        HookedTransformerConfig(
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=4,
            gated_mlp=True,
            n_key_value_heads=1,
            use_normalization_before_and_after=True,
            **common,
        ),
    ]
    block, top = set(), set()
    for cfg in configs:
        with warnings.catch_warnings():  # TransformerLens 3 deprecates HookedTransformer (still what saesteer runs)
            warnings.simplefilter("ignore", DeprecationWarning)
            names = list(HookedTransformer(cfg).hook_dict)
        for name in names:
            m = _HOOK_RE.match(name)
            (block.add(m.group(2)) if m else top.add(name))
    return frozenset(block), frozenset(top)


def check_hook_name(hook: str, n_layers: Optional[int], what: str = "sae.hook") -> int:
    """The layer of a TransformerLens hook name; an ExperimentError for a misspelt hook or a layer out of range."""
    block, top = _hook_names()
    m = _HOOK_RE.match(hook or "")
    if m is None or m.group(2) not in block:
        if hook in top:
            return -1
        layer = m.group(1) if m else "<layer>"
        close = difflib.get_close_matches(m.group(2) if m else str(hook), sorted(block), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(f'blocks.{layer}.{c}') for c in close)}?" if close else ""
        raise ExperimentError(
            f"{what}={hook!r} is not a TransformerLens hook name; expected blocks.<layer>.<hook>, "
            f"e.g. 'blocks.12.hook_resid_post'{hint}"
        )
    layer = int(m.group(1))
    if n_layers is not None and layer >= n_layers:
        raise ExperimentError(
            f"{what}={hook!r} is at layer {layer}, but the model has {n_layers} layers (0..{n_layers - 1})"
        )
    return layer


# ----------------------------------------------------------------------------- SAEs

_HOOK_IN_NAME = re.compile(r"blocks\.\d+\.(?:[a-z0-9_]+\.)?hook_[a-z0-9]+(?:_[a-z0-9]+)*")


def registry_sae_facts(release: str, sae_id: str) -> SaeFacts:
    """Hook and d_in of a registry SAE from sae_lens's installed metadata; SaeLoadError if unknown."""
    from saesteer.sae.load import validate_release

    lookup = validate_release(release, sae_id)  # close names on a typo
    folder = lookup.saes_map[sae_id]
    label = f"{release}/{sae_id}"
    hook = d_in = None
    hook_source = d_in_source = ""
    conv = lookup.conversion_func or "sae_lens"
    if conv in OFFLINE_SAE_CONFIG_GETTERS:
        from sae_lens.loading.pretrained_sae_loaders import (
            NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        )
        from sae_lens.loading.pretrained_saes_directory import get_config_overrides

        try:
            cfg = NAMED_PRETRAINED_SAE_CONFIG_GETTERS[conv](
                lookup.repo_id, folder, "cpu", False, get_config_overrides(release, sae_id)
            )
            hook, d_in = cfg.get("hook_name"), cfg.get("d_in")
            hook_source = d_in_source = f"sae_lens's {conv} config"
        except Exception as exc:  # noqa: BLE001
            log.info("sae_lens's %s config getter failed offline for %s: %s", conv, label, exc)
    if hook is None:
        m = _HOOK_IN_NAME.search(sae_id) or _HOOK_IN_NAME.search(folder)
        if m:
            hook, hook_source = m.group(0), "the registry id"
        elif conv == "dictionary_learning_1" and (m := re.search(r"resid_post_layer_(\d+)", folder)):
            # sae_lens's dictionary_learning_1 loader reads blocks.<trainer layer>.hook_resid_post
            hook, hook_source = (
                f"blocks.{m.group(1)}.hook_resid_post",
                "the registry path (dictionary_learning resid_post layer)",
            )
    if d_in is None:
        try:
            from saesteer.model_names import resolve_model_name

            trained_on = _official_model_facts(resolve_model_name(lookup.model))
            if trained_on.d_model is not None:
                d_in, d_in_source = (
                    trained_on.d_model,
                    f"d_model of {lookup.model}, the model the release was trained on",
                )
        except ValueError:
            pass
    return SaeFacts(
        label,
        str(hook) if hook else None,
        hook_source or "not known offline",
        d_in,
        d_in_source or "not known offline",
        lookup.model,
    )


def disk_sae_facts(path: str | Path) -> SaeFacts:
    """Hook and d_in of an SAE directory in sae_lens format, from its cfg.json (the weights are not read)."""
    from sae_lens.constants import SAE_CFG_FILENAME

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"sae.path={str(path)!r}: no such directory")
    cfg_file = p / SAE_CFG_FILENAME
    if not p.is_dir() or not cfg_file.is_file():
        from saesteer.sae.load import SaeLoadError

        raise SaeLoadError(
            f"sae.path={str(path)!r} is not an SAE in sae_lens format: expected a directory with {SAE_CFG_FILENAME}"
        )
    from sae_lens.constants import SAE_WEIGHTS_FILENAME

    from saesteer.sae.load import check_not_pickle, read_sae_cfg

    cfg = read_sae_cfg(cfg_file)  # one line naming cfg.json if it is not a JSON object with d_in and d_sae

    if (p / SAE_WEIGHTS_FILENAME).is_file():
        check_not_pickle(p / SAE_WEIGHTS_FILENAME)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    d_in = cfg.get("d_in")
    return SaeFacts(
        str(p), hook, str(cfg_file), int(d_in) if isinstance(d_in, int) else None, str(cfg_file), meta.get("model_name")
    )
