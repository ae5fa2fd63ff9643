"""``saesteer train-sae``: fit (or load) an SAE on a residual stream and measure its quality.

The SAE is fitted through sae_lens on the model's own chat conversations over
harmful + harmless *train* prompts (``sae.responses``: its greedy answers, the
organism's training texts, or none), cached in ``cache_dir()/sae/<key>`` keyed by
the fit config, hook, model fingerprint and prompts, and resumed from its last
checkpoint if a previous run was interrupted.  ``sae.path`` or
``sae.pretrained_release`` + ``sae.pretrained_id`` load one instead.  Quality
(explained variance, L0, dead fraction, CE loss recovered) is measured on
held-out *val* conversations.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Optional, Sequence

from saesteer.activations import check_hooks, model_fingerprint
from saesteer.config import TrainSaeJobConfig
from saesteer.data import load_prompts
from saesteer.io import cache_dir, hash_strings, write_json
from saesteer.models import LoadedModel, load_model
from saesteer.sae.config import SaeConfig
from saesteer.jobs.threads import torch_threads
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def resolve_hook(cfg: SaeConfig, loaded: LoadedModel) -> str:
    """``sae.hook``; else the layer of ``sae.direction``; else the middle layer's ``hook_resid_pre``."""
    model = loaded.model
    if cfg.hook is not None:
        hook = cfg.hook
    elif cfg.direction is not None:
        from saesteer.directions import load_direction

        _, meta = load_direction(cfg.direction, d_model=model.cfg.d_model)
        if meta.get("hook"):
            hook = str(meta["hook"])
        elif meta.get("layer") is not None:
            hook = f"blocks.{int(meta['layer'])}.hook_resid_pre"
        else:
            raise ValueError(f"sae.direction={cfg.direction!r} names no layer in its metadata; set sae.hook")
        log.info("train-sae: hook %s from the direction %s", hook, cfg.direction)
    else:
        hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
        log.info("train-sae: no sae.hook or sae.direction; using the middle layer, %s", hook)
    check_hooks(model, [hook])
    return hook


def _prompts(source: str, n: Optional[int], seed: int) -> list[str]:
    prompts = load_prompts(source)
    if n is not None and n < len(prompts):
        prompts = prompts.take(n, seed=seed)
    return list(prompts.instructions)


def _responses(
    cfg: TrainSaeJobConfig, loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str], desc: str
) -> Optional[list[str]]:
    """The answers paired with the prompts (``sae.responses``): greedy, the organism's training texts, or none."""
    mode = cfg.sae.responses
    if mode == "none":
        return None
    if mode == "organism":
        from saesteer.organism.responses import comply, refuse

        rng = random.Random(cfg.sae.seed)
        echo = cfg.model.organism.echo_words
        org = cfg.model.organism
        return [refuse(rng, p, org.refusal_echo_words, org.n_refusals) for p in harmful] + [comply(p, rng, echo) for p in harmless]
    from saesteer.generation import generate

    prompts = list(harmful) + list(harmless)
    # SAEs at several hooks of one model (the backups stage fits three) read the same conversations: generate once
    key = hash_strings(["greedy-responses", model_fingerprint(loaded.model), loaded.template.name,
                        f"max_new_tokens={cfg.sae.max_new_tokens}", *prompts])
    path = cache_dir() / "responses" / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if isinstance(cached, list) and len(cached) == len(prompts) and all(isinstance(r, str) for r in cached):
            log.info("train-sae: greedy responses of the %d prompts from the cache %s", len(prompts), path)
            return cached
        log.warning("train-sae: ignoring the malformed response cache %s", path)
    responses = generate(loaded.model, loaded.template, prompts, max_new_tokens=cfg.sae.max_new_tokens,
                         batch_size=cfg.eval.batch_size, progress=cfg.progress, desc=desc)
    write_json(path, responses)
    return responses


def fit_key(cfg: TrainSaeJobConfig, loaded: LoadedModel, hook: str, harmful: Sequence[str], harmless: Sequence[str]) -> str:
    """The cache key of a fit: its config, hook, model (fingerprint), template and prompts."""
    fingerprint = model_fingerprint(loaded.model)
    key = {
        "sae": cfg.sae.fit_key_dict(), "hook": hook, "model": loaded.name, "model_fingerprint": fingerprint,
        "template": loaded.template.name, "harmful": hash_strings(list(harmful)), "harmless": hash_strings(list(harmless)),
    }
    return hash_strings([json.dumps(key, sort_keys=True)])


def _train_or_reuse(cfg: TrainSaeJobConfig, loaded: LoadedModel, tracker: Tracker) -> tuple[Any, dict[str, Any]]:
    from sae_lens import SAE

    from saesteer.sae.fit import SAE_DIR, FitInterrupted, build_token_dataset, fit_sae, read_fit_metadata

    sae_cfg = cfg.sae
    hook = resolve_hook(sae_cfg, loaded)
    harmful = _prompts(cfg.data.harmful_train, sae_cfg.n_harmful, cfg.data.seed)
    harmless = _prompts(cfg.data.harmless_train, sae_cfg.n_harmless, cfg.data.seed)
    fit_dir = cache_dir() / "sae" / fit_key(cfg, loaded, hook, harmful, harmless)
    meta = read_fit_metadata(fit_dir / SAE_DIR)
    if meta is not None and sae_cfg.reuse:
        log.info("train-sae: reusing the cached SAE %s", fit_dir / SAE_DIR)
        sae = SAE.load_from_disk(str(fit_dir / SAE_DIR), device=loaded.model.cfg.device).eval()
        return sae, {**meta, "sae_path": str(fit_dir / SAE_DIR), "source": "cache"}
    log.info("train-sae: %d harmful + %d harmless train prompts, responses=%s", len(harmful), len(harmless), sae_cfg.responses)
    responses = _responses(cfg, loaded, harmful, harmless, "responses (train)")
    dataset = build_token_dataset(
        loaded.model, loaded.template, list(harmful) + list(harmless), sae_cfg.context_size, responses, seed=sae_cfg.seed
    )
    try:
        result = fit_sae(
            loaded.model, sae_cfg, dataset, hook, fit_dir, tracker=tracker, progress=cfg.progress,
            extra_metadata={"template": loaded.template.name, "responses": sae_cfg.responses,
                            "harmful_source": cfg.data.harmful_train, "harmless_source": cfg.data.harmless_train},
        )
    except FitInterrupted as exc:
        raise SystemExit(f"saesteer train-sae: {exc}; run the same command again to resume") from None
    return result.sae, {**result.metadata, "sae_path": str(result.path), "source": "fit"}


def run(cfg: TrainSaeJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    with torch_threads(cfg.sae.threads):
        return _run(cfg, run_dir, tracker)


def _run(cfg: TrainSaeJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    sae_cfg = cfg.sae
    if sae_cfg.responses == "organism" and cfg.model.name != "organism":
        raise ValueError(f"sae.responses=organism needs model=organism, got model.name={cfg.model.name!r}; use greedy or none")
    if sae_cfg.direction is not None and not Path(sae_cfg.direction).is_file():
        raise FileNotFoundError(f"sae.direction={sae_cfg.direction!r}: no such file (a direction.safetensors from `saesteer directions`)")
    if sae_cfg.path is not None and not Path(sae_cfg.path).expanduser().exists():
        raise FileNotFoundError(f"sae.path={sae_cfg.path!r}: no such directory")
    if sae_cfg.pretrained_release is not None:
        from saesteer.sae.load import validate_release

        validate_release(sae_cfg.pretrained_release, str(sae_cfg.pretrained_id))  # offline, before loading the model
    loaded = load_model(cfg.model, progress=cfg.progress)
    model = loaded.model

    if sae_cfg.loads:
        from saesteer.sae.load import load_sae

        sae = load_sae(sae_cfg, model, hook=sae_cfg.hook, device=model.cfg.device)
        info: dict[str, Any] = {"source": "path" if sae_cfg.path else "registry", "train_seconds": float("nan"),
                                "sae_path": sae_cfg.path or f"{sae_cfg.pretrained_release}/{sae_cfg.pretrained_id}"}
    else:
        sae, info = _train_or_reuse(cfg, loaded, tracker)

    from saesteer.sae.fit import build_token_dataset
    from saesteer.sae.load import sae_hook
    from saesteer.sae.quality import sae_quality

    hook = sae_hook(sae, sae_cfg.hook)
    n_harmless_eval = max(32, math.ceil(sae_cfg.eval_tokens / 20))
    harmful_eval = _prompts(cfg.data.harmful_val, None, cfg.data.seed)
    harmless_eval = _prompts(cfg.data.harmless_val, n_harmless_eval, cfg.data.seed)
    responses = _responses(cfg, loaded, harmful_eval, harmless_eval, "responses (val)")
    eval_set = build_token_dataset(
        model, loaded.template, harmful_eval + harmless_eval, sae_cfg.context_size, responses, seed=cfg.data.seed
    )
    quality = sae_quality(model, sae, dataset=eval_set, hook=hook, eval_tokens=sae_cfg.eval_tokens,
                          batch_size=sae_cfg.eval_batch_size, progress=cfg.progress)
    log.info(
        "SAE %s d_sae=%d at %s: explained variance %.4f, L0 %.2f, dead %.3f, CE loss recovered %.4f",
        sae_cfg.architecture, sae.cfg.d_sae, hook, quality["explained_variance"], quality["l0"],
        quality["dead_fraction"], quality["ce_loss_recovered"],
    )
    tracker.log({f"sae/{k}": v for k, v in quality.items() if isinstance(v, (int, float))})
    return {
        "explained_variance": quality["explained_variance"],
        "l0": quality["l0"],
        "dead_fraction": quality["dead_fraction"],
        "ce_loss_recovered": quality["ce_loss_recovered"],
        "d_sae": int(sae.cfg.d_sae),
        "hook": hook,
        "architecture": sae_cfg.architecture if not sae_cfg.loads else sae.cfg.architecture(),
        "train_seconds": info.get("train_seconds"),
        "ce_clean": quality["ce_clean"],
        "ce_spliced": quality["ce_spliced"],
        "ce_zero_ablate": quality["ce_zero_ablate"],
        "mse": quality["mse"],
        "n_eval_tokens": quality["n_eval_tokens"],
        "n_training_tokens": info.get("n_training_tokens"),
        "source": info["source"],
        "sae_path": info["sae_path"],
    }
