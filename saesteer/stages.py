"""Cached stage outputs shared by jobs and the pipeline (so a warm run recomputes nothing): the refusal
direction and the SAE.

Each stage result is an artifact under ``cache_dir()/<stage>/<key>`` (:mod:`saesteer.artifacts`) where
the key hashes the model's weights fingerprint, the prompt data and the stage config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from saesteer.activations import check_hooks, model_fingerprint
from saesteer.artifacts import artifact_path, cache_key
from saesteer.data import load_prompts, load_role
from saesteer.directions import (
    CandidateScore,
    compute_candidates,
    load_direction,
    save_direction,
    select_direction,
)
from saesteer.io import hash_strings, write_json
from saesteer.models import LoadedModel
from saesteer.sae.config import SaeConfig

log = logging.getLogger(__name__)

#: bump when a stage's code changes what the same inputs produce (invalidates caches)
STAGE_VERSION = {"directions": 2}


@dataclass
class DirectionArtifact:
    direction: torch.Tensor  # raw difference in means at (layer, position)
    layer: int
    position: int
    reference: torch.Tensor  # affine reference per layer
    ablation: str
    path: Path
    metadata: dict[str, Any]
    scores: list[CandidateScore] = dataclasses.field(default_factory=list)

    @property
    def unit(self) -> torch.Tensor:
        return self.direction / self.direction.norm()

    def ablate(self, mode: Optional[str] = None):
        from saesteer.interventions import Ablate

        mode = mode or self.ablation
        return Ablate(self.direction, mode=mode, reference=self.reference if mode == "affine" else None)

    def add(self, alpha: float = 1.0):
        from saesteer.interventions import Add

        return Add(self.direction, alpha=alpha, layer=self.layer)


def stage_key(loaded: LoadedModel, *parts: Any) -> str:
    """The cache key of a stage's artifact on ``loaded``: its weights fingerprint, template and ``parts``."""
    return cache_key(model_fingerprint(loaded.model), loaded.template.name, *parts)


def direction_stage(
    loaded: LoadedModel, data_cfg: Any, dir_cfg: Any, *, path: Optional[str] = None, progress: bool = False
) -> DirectionArtifact:
    """The refusal direction: from ``path``, from the cache, or extracted and selected now."""
    if path:
        d, meta = load_direction(
            path, d_model=loaded.d_model, model_name=loaded.name, fingerprint=model_fingerprint(loaded.model)
        )
        ref = meta.pop("affine_reference", torch.zeros(loaded.n_layers))
        scores_file = Path(path).with_name("candidates.json")
        scores = [CandidateScore(**s) for s in json.loads(scores_file.read_text())] if scores_file.is_file() else []
        return DirectionArtifact(
            d, int(meta["layer"]), int(meta["position"]), ref, meta.get("ablation", "plain"), Path(path), meta, scores
        )
    roles = {r: load_role(data_cfg, r) for r in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")}
    key = stage_key(
        loaded, {r: p.data_hash for r, p in roles.items()}, dataclasses.asdict(dir_cfg), STAGE_VERSION["directions"]
    )
    file = artifact_path("directions", key) / "direction.safetensors"
    if file.is_file():
        log.info("refusal direction from cache %s", file)
        return direction_stage(loaded, data_cfg, dir_cfg, path=str(file))
    m, tpl = loaded.model, loaded.template
    cands = compute_candidates(
        m,
        tpl,
        list(roles["harmful_train"].instructions),
        list(roles["harmless_train"].instructions),
        positions=dir_cfg.positions,
        batch_size=dir_cfg.batch_size,
        progress=progress,
    )
    sel = select_direction(
        m,
        tpl,
        cands,
        list(roles["harmful_val"].instructions),
        list(roles["harmless_val"].instructions),
        dir_cfg,
        progress=progress,
    )
    meta = {
        "model": loaded.name,
        "model_fingerprint": model_fingerprint(m),
        "template": tpl.name,
        "config": dataclasses.asdict(dir_cfg),
    }
    write_json(file.with_name("candidates.json"), [dataclasses.asdict(s) for s in sel.scores])
    save_direction(file, sel, meta)
    return direction_stage(loaded, data_cfg, dir_cfg, path=str(file))


# ---------------------------------------------------------------- the SAE stage


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


def sample_prompts(source: str, n: Optional[int], seed: int) -> list[str]:
    prompts = load_prompts(source)
    if n is not None and n < len(prompts):
        prompts = prompts.take(n, seed=seed)
    return list(prompts.instructions)


def sae_responses(
    cfg: Any, loaded: LoadedModel, harmful: Sequence[str], harmless: Sequence[str], desc: str
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
        return [refuse(rng, p, org.refusal_echo_words, org.n_refusals) for p in harmful] + [
            comply(p, rng, echo) for p in harmless
        ]
    from saesteer.generation import generate

    prompts = list(harmful) + list(harmless)
    # SAEs at several hooks of one model (the backups stage fits three) read the same conversations: generate once
    key = cache_key(
        "greedy-responses",
        model_fingerprint(loaded.model),
        loaded.template.name,
        f"max_new_tokens={cfg.sae.max_new_tokens}",
        *prompts,
    )
    path = artifact_path("responses", f"{key}.json")
    if path.is_file():
        cached = json.loads(path.read_text())
        if isinstance(cached, list) and len(cached) == len(prompts) and all(isinstance(r, str) for r in cached):
            log.info("train-sae: greedy responses of the %d prompts from the cache %s", len(prompts), path)
            return cached
        log.warning("train-sae: ignoring the malformed response cache %s", path)
    responses = generate(
        loaded.model,
        loaded.template,
        prompts,
        max_new_tokens=cfg.sae.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        progress=cfg.progress,
        desc=desc,
    )
    write_json(path, responses)
    return responses


def sae_fit_key(cfg: Any, loaded: LoadedModel, hook: str, harmful: Sequence[str], harmless: Sequence[str]) -> str:
    """The cache key of an SAE fit: its config, hook, model (fingerprint), template and prompts."""
    fingerprint = model_fingerprint(loaded.model)
    key = {
        "sae": cfg.sae.fit_key_dict(),
        "hook": hook,
        "model": loaded.name,
        "model_fingerprint": fingerprint,
        "template": loaded.template.name,
        "harmful": hash_strings(list(harmful)),
        "harmless": hash_strings(list(harmless)),
    }
    return cache_key(key)


def train_or_reuse_sae(cfg: Any, loaded: LoadedModel, tracker: Any) -> tuple[Any, dict[str, Any]]:
    from sae_lens import SAE

    from saesteer.sae.fit import (
        SAE_DIR,
        FitInterrupted,
        build_token_dataset,
        fit_sae,
        read_fit_metadata,
    )

    sae_cfg = cfg.sae
    hook = resolve_hook(sae_cfg, loaded)
    harmful = sample_prompts(cfg.data.harmful_train, sae_cfg.n_harmful, cfg.data.seed)
    harmless = sample_prompts(cfg.data.harmless_train, sae_cfg.n_harmless, cfg.data.seed)
    fit_dir = artifact_path("sae", sae_fit_key(cfg, loaded, hook, harmful, harmless))
    meta = read_fit_metadata(fit_dir / SAE_DIR)
    if meta is not None and sae_cfg.reuse:
        log.info("train-sae: reusing the cached SAE %s", fit_dir / SAE_DIR)
        sae = SAE.load_from_disk(str(fit_dir / SAE_DIR), device=loaded.model.cfg.device).eval()
        return sae, {**meta, "sae_path": str(fit_dir / SAE_DIR), "source": "cache"}
    log.info(
        "train-sae: %d harmful + %d harmless train prompts, responses=%s",
        len(harmful),
        len(harmless),
        sae_cfg.responses,
    )
    responses = sae_responses(cfg, loaded, harmful, harmless, "responses (train)")
    dataset = build_token_dataset(
        loaded.model,
        loaded.template,
        list(harmful) + list(harmless),
        sae_cfg.context_size,
        responses,
        seed=sae_cfg.seed,
    )
    try:
        result = fit_sae(
            loaded.model,
            sae_cfg,
            dataset,
            hook,
            fit_dir,
            tracker=tracker,
            progress=cfg.progress,
            extra_metadata={
                "template": loaded.template.name,
                "responses": sae_cfg.responses,
                "harmful_source": cfg.data.harmful_train,
                "harmless_source": cfg.data.harmless_train,
            },
        )
    except FitInterrupted as exc:
        raise SystemExit(
            f"saesteer {getattr(cfg, 'job', 'train-sae')}: {exc}; run the same command again to resume"
        ) from None
    return result.sae, {**result.metadata, "sae_path": str(result.path), "source": "fit"}


def finetune_stage(
    model_cfg: Any, loaded: LoadedModel, direction: DirectionArtifact, finetune: Any, progress: bool = False
):
    """(the organism fine-tuned by ``finetune`` (a DropoutFinetune) with ``direction`` cut, its DirectionCut): from
    the cache or fine-tuned now, loaded like ``loaded`` and under its name (the stage caches key on the weights'
    fingerprint and check the name)."""
    from saesteer.organism import load_or_train_organism
    from saesteer.organism.dropout import DirectionCut, load_or_finetune

    cut = DirectionCut.from_artifact(direction, every_layer=finetune.name == "direction_dropout_all")
    tuned = load_or_finetune(
        load_or_train_organism(model_cfg.organism, progress=progress), cut, finetune, progress=progress
    )
    meta = {"organism_path": str(tuned.path), **tuned.metadata}
    return LoadedModel(tuned.model.to(model_cfg.device), loaded.template, loaded.name, meta), cut


def sae_stage(cfg: Any, loaded: LoadedModel, tracker: Any, layer: int):
    """The SAE of ``cfg.sae`` (loaded, cached or fitted), at the direction's layer unless a hook is set."""
    from saesteer.sae.load import load_sae

    if cfg.sae.hook is None:
        cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, hook=f"blocks.{layer}.hook_resid_pre"))
    if cfg.sae.loads:
        return load_sae(cfg.sae, loaded.model, hook=cfg.sae.hook, device=loaded.model.cfg.device)
    sae, _ = train_or_reuse_sae(cfg, loaded, tracker)
    return sae


#: the prompt sets the organism and behaviour jobs judge the model on
EVAL_SETS = ("harmful_train", "harmful_val", "harmful_test", "harmless_val", "harmless_test", "overrefusal")


@dataclass
class SetRefusal:
    """Greedy refusal of a model on one prompt set: the rate, the prompts judged and a few examples."""

    role: str
    rate: float
    n: int
    examples: list[tuple[str, str, bool]]  # (prompt, response, refused)
    incoherent: float = 0.0  # share of responses the judge flags incoherent


def refusal_by_set(
    loaded: LoadedModel, data_cfg: Any, eval_cfg: Any, *, n_examples: int = 5, progress: bool = False
) -> list[SetRefusal]:
    """The model's greedy refusal rate on every set of :data:`EVAL_SETS`: the harmless sets limited to
    ``data.n_test_harmless``, the others (over-refusal included) to ``data.n_test`` (seeded samples)."""
    from saesteer.evaluate import refusal_eval

    out = []
    for role in EVAL_SETS:
        prompts = load_prompts(getattr(data_cfg, role))
        limit = data_cfg.n_test_harmless if role.startswith("harmless") else data_cfg.n_test
        if limit is not None and len(prompts) > limit:
            prompts = prompts.take(limit, seed=data_cfg.seed)
        res = refusal_eval(
            loaded.model,
            loaded.template,
            prompts.instructions,
            progress=progress,
            desc=role,
            **eval_cfg.refusal_kwargs(),
        )
        examples = list(zip(prompts.instructions, res.responses, res.refused))[:n_examples]
        out.append(SetRefusal(role, res.rate, len(res), examples, res.incoherent_rate))
    return out


def refusal_table(rows: Sequence[SetRefusal]) -> str:
    """A Markdown table of :func:`refusal_by_set`'s rates."""
    return "| set | n | refusal | incoherent |\n|---|---|---|---|\n" + "\n".join(
        f"| {r.role} | {r.n} | {r.rate:.3f} | {r.incoherent:.3f} |" for r in rows
    )
