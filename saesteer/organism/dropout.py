"""Organism fine-tunes that grow backup refusal routes: fine-tune with the refusal direction cut on a share of batches.

``direction_dropout``: start from a trained organism, take its refusal direction ``r``
(unit) at layer ``L`` and the harmless-mean coordinate ``mu`` there, and fine-tune
with the organism's own loss and batches (:func:`saesteer.organism.train.optimize`)
while on a random share ``p`` of the steps the residual stream entering block ``L``
is affinely ablated at every position::

    x <- x - (x.r - mu) r          at blocks.L.hook_resid_pre

On those steps harmful prompts still have to be refused, so the blocks from ``L`` on
(or earlier blocks, through directions other than ``r``) must learn a second route to
refusal: the dormant backups of Prakash et al. 2025, if the route only matters when
``r`` is gone.  The fine-tuned weights are cached like the organism
(``model.safetensors`` + ``organism.json`` under ``cache_dir()/organism_finetunes/<key>``);
the key hashes the base organism's key, the cut and the fine-tune settings.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.artifacts import artifact_path, cache_key
from saesteer.checks import check_finite, check_finite_fields, check_finite_tensor, choices
from saesteer.interventions.directions import Intervention
from saesteer.io import hash_strings
from saesteer.organism.train import OrganismResult, load_organism, optimize, organism_key, save_organism, training_set

log = logging.getLogger(__name__)

#: Backup-growing fine-tunes: ``none`` (the organism as trained), ``direction_dropout`` (the refusal direction affinely
#: ablated at its layer on a share of the fine-tune's steps) or ``direction_dropout_all`` (ablated at every layer).
Finetune = Literal["none", "direction_dropout", "direction_dropout_all"]
FINETUNES: tuple[str, ...] = choices(Finetune)
FINETUNE_VERSION = 1  # bump when the fine-tune code changes what the same settings produce


@dataclass
class DirectionCut(Intervention):
    """Affine ablation of ``direction`` to ``reference`` at ``blocks.{layer}.hook_resid_pre``, every position.

    An intervention (``steer(model, [cut])``) and, through :meth:`hooks`, the training-time cut."""

    direction: torch.Tensor
    reference: float
    layer: int
    #: per-layer references [n_layers]: cut at every layer instead (Ablate(mode='affine'): resid_pre of each layer to its
    #: reference, attn_out / mlp_out projected out), so no block can rewrite the direction
    every_layer: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        d = self.direction.detach().float().cpu()
        if d.ndim != 1 or not torch.isfinite(d).all() or float(d.norm()) == 0:
            raise ValueError(f"DirectionCut.direction must be a finite non-zero vector, got shape {tuple(d.shape)}")
        self.direction = d
        self.reference = check_finite(self.reference, "DirectionCut.reference")
        self.layer = int(self.layer)
        if self.every_layer is not None:
            self.every_layer = check_finite_tensor(self.every_layer.detach().float().cpu(), "DirectionCut.every_layer")

    @property
    def unit(self) -> torch.Tensor:
        return self.direction / self.direction.norm()

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    def __call__(self, x: torch.Tensor, hook: object = None) -> torch.Tensor:
        r = self.unit.to(device=x.device, dtype=x.dtype)
        return x - ((x @ r) - self.reference)[..., None] * r

    def validate(self, model: HookedTransformer) -> None:
        if not 0 <= self.layer < model.cfg.n_layers or self.direction.shape[0] != model.cfg.d_model:
            raise ValueError(
                f"DirectionCut at layer {self.layer} with d_model {self.direction.shape[0]} does not fit a model with "
                f"{model.cfg.n_layers} layers and d_model {model.cfg.d_model}"
            )

    def hooks(self, model: Optional[HookedTransformer] = None) -> list[tuple[str, Callable]]:
        if self.every_layer is None:
            return [(self.hook_name, self)]
        from saesteer.interventions.directions import Ablate

        if model is None:
            raise ValueError("DirectionCut(every_layer=...) needs the model to expand its hooks")
        return Ablate(self.direction, mode="affine", reference=self.every_layer).hooks(model)

    def key_dict(self) -> dict[str, Any]:
        d = {
            "layer": self.layer,
            "reference": self.reference,
            "direction": hash_strings([self.direction.numpy().astype("float32").tobytes().hex()]),
        }
        if self.every_layer is not None:
            d["every_layer"] = [round(float(v), 6) for v in self.every_layer]
        return d

    @classmethod
    def from_artifact(cls, artifact: Any, every_layer: bool = False) -> DirectionCut:
        """The cut of a :class:`saesteer.stages.DirectionArtifact`: its direction, layer and harmless-mean reference there
        (``every_layer``: at every layer, to each layer's harmless mean)."""
        return cls(
            artifact.direction,
            float(artifact.reference[artifact.layer]),
            artifact.layer,
            artifact.reference.detach().float().clone() if every_layer else None,
        )


@dataclass
class DropoutFinetune:
    """Fine-tune settings: ``steps`` AdamW steps (peak ``lr``, ``warmup_steps``), the cut on a share ``p`` of them."""

    name: str = "direction_dropout"  # one of FINETUNES but none
    p: float = 0.5  # share of the fine-tune's steps with the cut
    steps: int = 160  # AdamW steps
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 16
    batch_size: Optional[int] = 32  # None: the organism's
    seed: int = 0  # the schedule of cut steps and the batches

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.name not in FINETUNES or self.name == "none":
            raise ValueError(f"DropoutFinetune.name must be one of {FINETUNES[1:]}, got {self.name!r}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"DropoutFinetune.p must be in [0, 1], got {self.p!r}")
        for name in ("steps", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (1 if name == "steps" else 0):
                raise ValueError(
                    f"DropoutFinetune.{name} must be a {'positive' if name == 'steps' else 'non-negative'} integer, "
                    f"got {getattr(self, name)!r}"
                )
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size <= 0):
            raise ValueError(f"DropoutFinetune.batch_size must be a positive integer or None, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"DropoutFinetune.lr must be > 0, got {self.lr!r}")

    def schedule(self) -> list[bool]:
        """Per step, whether the cut is on (seeded; about a share ``p`` of the steps)."""
        rng = random.Random(f"{self.name}:{self.seed}")
        return [rng.random() < self.p for _ in range(self.steps)]


def finetune_with_cut(
    model: HookedTransformer, cfg: Any, cut: DirectionCut, finetune: DropoutFinetune, progress: bool = False
) -> tuple[HookedTransformer, dict[str, Any]]:
    """A copy of ``model`` (an organism trained with ``cfg``) fine-tuned with ``cut`` on the steps of ``finetune.schedule()``.

    Same corpus, loss, batch mix and optimiser as the organism (:func:`saesteer.organism.train.optimize`), with the
    schedule of ``finetune``; deterministic for ``finetune.seed`` and the thread count."""
    cut.validate(model)
    ft_cfg = dataclasses.replace(
        cfg,
        steps=finetune.steps,
        lr=finetune.lr,
        warmup_steps=finetune.warmup_steps,
        batch_size=finetune.batch_size or cfg.batch_size,
    )
    data = training_set(cfg, random.Random(cfg.seed))  # the organism's own examples and responses
    rng = random.Random(f"{finetune.name}-batches:{finetune.seed}")
    on = finetune.schedule()
    tuned = copy.deepcopy(model)
    t0 = time.perf_counter()
    hooks = cut.hooks(tuned)
    losses = optimize(
        tuned,
        ft_cfg,
        data,
        rng,
        step_hooks=lambda step: hooks if on[step] else [],
        progress=progress,
        desc=finetune.name,
    )
    cut_losses = [l for l, c in zip(losses, on) if c]
    free_losses = [l for l, c in zip(losses, on) if not c]
    tail = max(1, finetune.steps // 4)
    meta = {
        "finetune_seconds": time.perf_counter() - t0,
        "n_cut_steps": sum(on),
        "final_loss": sum(losses[-tail:]) / len(losses[-tail:]),
        "first_cut_loss": cut_losses[0] if cut_losses else None,
        "final_cut_loss": sum(cut_losses[-tail // 2 or 1 :]) / len(cut_losses[-tail // 2 or 1 :])
        if cut_losses
        else None,
        "final_free_loss": sum(free_losses[-tail // 2 or 1 :]) / len(free_losses[-tail // 2 or 1 :])
        if free_losses
        else None,
        "losses": losses,
    }
    log.info(
        "%s: %d steps (%d cut) in %.1fs, final response loss %.4f (cut steps %s)",
        finetune.name,
        finetune.steps,
        sum(on),
        meta["finetune_seconds"],
        meta["final_loss"],
        meta["final_cut_loss"],
    )
    return tuned, meta


def finetune_key(cfg: Any, cut: DirectionCut, finetune: DropoutFinetune) -> str:
    blob = {
        "base": organism_key(cfg),
        "cut": cut.key_dict(),
        "finetune": dataclasses.asdict(finetune),
        "version": FINETUNE_VERSION,
    }
    return cache_key(blob)


def finetune_path(cfg: Any, cut: DirectionCut, finetune: DropoutFinetune, root: Optional[Path] = None) -> Path:
    return artifact_path("organism_finetunes", finetune_key(cfg, cut, finetune), root)


def _named(result: OrganismResult, finetune: DropoutFinetune) -> OrganismResult:
    # a distinct model name: stage caches (directions, SAEs) never mistake it for the base organism
    result.model.cfg.model_name = f"{result.model.cfg.model_name}-{finetune.name}"  # W&B artifact names: [A-Za-z0-9._-]
    return result


def load_or_finetune(
    base: OrganismResult,
    cut: DirectionCut,
    finetune: DropoutFinetune,
    root: Optional[Path] = None,
    progress: bool = False,
) -> OrganismResult:
    """The organism ``base`` fine-tuned by ``finetune`` with ``cut``: from the cache, or fine-tuned now and cached."""
    path = finetune_path(base.config, cut, finetune, root)
    if (path / "model.safetensors").is_file():
        log.info("loading cached %s organism from %s", finetune.name, path)
        return _named(load_organism(path), finetune)
    model, meta = finetune_with_cut(base.model, base.config, cut, finetune, progress=progress)
    meta = {
        **meta,
        "dropout_finetune": dataclasses.asdict(finetune),
        "cut": cut.key_dict(),
        "base_organism": organism_key(base.config),
    }
    save_organism(model, base.config, meta, path)
    return _named(OrganismResult(model, base.config, path, {"model": "organism", **meta}), finetune)
