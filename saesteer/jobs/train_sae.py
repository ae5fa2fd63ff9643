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

import logging
import math
from pathlib import Path
from typing import Any

from saesteer.config import TrainSaeJobConfig
from saesteer.jobs.threads import torch_threads
from saesteer.models import load_model
from saesteer.stages import sae_responses, sample_prompts, train_or_reuse_sae
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)


def run(cfg: TrainSaeJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    with torch_threads(cfg.sae.threads):
        return _run(cfg, run_dir, tracker)


def _run(cfg: TrainSaeJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    sae_cfg = cfg.sae
    if sae_cfg.responses == "organism" and cfg.model.name != "organism":
        raise ValueError(
            f"sae.responses=organism needs model=organism, got model.name={cfg.model.name!r}; use greedy or none"
        )
    if sae_cfg.direction is not None and not Path(sae_cfg.direction).is_file():
        raise FileNotFoundError(
            f"sae.direction={sae_cfg.direction!r}: no such file (a direction.safetensors from `saesteer directions`)"
        )
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
        info: dict[str, Any] = {
            "source": "path" if sae_cfg.path else "registry",
            "train_seconds": float("nan"),
            "sae_path": sae_cfg.path or f"{sae_cfg.pretrained_release}/{sae_cfg.pretrained_id}",
        }
    else:
        sae, info = train_or_reuse_sae(cfg, loaded, tracker)

    from saesteer.sae.fit import build_token_dataset
    from saesteer.sae.load import sae_hook
    from saesteer.sae.quality import sae_quality

    hook = sae_hook(sae, sae_cfg.hook)
    n_harmless_eval = max(32, math.ceil(sae_cfg.eval_tokens / 20))
    harmful_eval = sample_prompts(cfg.data.harmful_val, None, cfg.data.seed)
    harmless_eval = sample_prompts(cfg.data.harmless_val, n_harmless_eval, cfg.data.seed)
    responses = sae_responses(cfg, loaded, harmful_eval, harmless_eval, "responses (val)")
    eval_set = build_token_dataset(
        model, loaded.template, harmful_eval + harmless_eval, sae_cfg.context_size, responses, seed=cfg.data.seed
    )
    quality = sae_quality(
        model,
        sae,
        dataset=eval_set,
        hook=hook,
        eval_tokens=sae_cfg.eval_tokens,
        batch_size=sae_cfg.eval_batch_size,
        progress=cfg.progress,
    )
    log.info(
        "SAE %s d_sae=%d at %s: explained variance %.4f, L0 %.2f, dead %.3f, CE loss recovered %.4f",
        sae_cfg.architecture,
        sae.cfg.d_sae,
        hook,
        quality["explained_variance"],
        quality["l0"],
        quality["dead_fraction"],
        quality["ce_loss_recovered"],
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
