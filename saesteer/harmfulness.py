"""Harmfulness vs refusal (Zhao et al. 2025): two directions, and a latent harm detector.

- harmfulness direction: harmful minus harmless mean at t_inst (the last
  instruction token), per layer;
- refusal direction by behaviour: mean over prompts the model refused minus those it
  complied with, at the last post-instruction position, per layer;
- latent harm detector: s(x) = mean over layers of cos(h_l, c_harmful_l) -
  cos(h_l, c_harmless_l) at t_inst, with class centroids c from training prompts; its
  AUROC on held-out prompts, also with the refusal direction ablated (does the
  harm signal survive the bypass?).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saesteer.activations import collect_activations, n_post_tokens, resid_hooks
from saesteer.chat import ChatTemplate
from saesteer.checks import check_prompts
from saesteer.interventions import Intervention
from saesteer.stats import auroc


@dataclass
class HarmDetector:
    harmful_centroid: torch.Tensor  # [n_layers, d_model]
    harmless_centroid: torch.Tensor  # [n_layers, d_model]
    position: int  # t_inst (negative offset)

    def score_acts(self, acts: torch.Tensor) -> torch.Tensor:
        """acts: [n, n_layers, d_model] at t_inst -> [n] detector scores."""
        a = F.cosine_similarity(acts, self.harmful_centroid[None], dim=-1)
        b = F.cosine_similarity(acts, self.harmless_centroid[None], dim=-1)
        return (a - b).mean(-1)

    def score(
        self, model, template, instructions, interventions: Sequence[Intervention] = (), batch_size: int = 32
    ) -> torch.Tensor:
        check_prompts(instructions, "instructions")
        acts = collect_activations(
            model,
            template,
            instructions,
            resid_hooks(model),
            [self.position],
            batch_size=batch_size,
            interventions=interventions,
        )
        return self.score_acts(acts[:, :, 0])


def t_inst_position(model: HookedTransformer, template: ChatTemplate) -> int:
    return -n_post_tokens(model, template) - 1


def fit_harm_detector(
    model, template, harmful: Sequence[str], harmless: Sequence[str], batch_size: int = 32
) -> tuple[HarmDetector, torch.Tensor]:
    """Centroids at t_inst; returns the detector and the harmfulness directions [n_layers, d_model]."""
    check_prompts(harmful, "harmful")
    check_prompts(harmless, "harmless")
    pos = t_inst_position(model, template)
    hooks = resid_hooks(model)
    hm = collect_activations(model, template, harmful, hooks, [pos], batch_size=batch_size)[:, :, 0].double().mean(0)
    hl = collect_activations(model, template, harmless, hooks, [pos], batch_size=batch_size)[:, :, 0].double().mean(0)
    return HarmDetector(hm.float(), hl.float(), pos), (hm - hl).float()


def behavioural_refusal_directions(
    model, template, instructions: Sequence[str], refused: Sequence[bool], batch_size: int = 32
) -> torch.Tensor:
    """Mean(refused) - mean(complied) at the last post-instruction position, per layer [n_layers, d_model]."""
    check_prompts(instructions, "instructions")
    refused_t = torch.tensor(list(refused), dtype=torch.bool)
    if refused_t.all() or not refused_t.any():
        raise ValueError(
            f"need both refused and complied prompts, got {int(refused_t.sum())} refused of {len(refused_t)}"
        )
    acts = collect_activations(model, template, instructions, resid_hooks(model), [-1], batch_size=batch_size)[
        :, :, 0
    ].double()
    return (acts[refused_t].mean(0) - acts[~refused_t].mean(0)).float()


def detector_auroc(
    det: HarmDetector,
    model,
    template,
    harmful: Sequence[str],
    harmless: Sequence[str],
    interventions: Sequence[Intervention] = (),
) -> float:
    check_prompts(harmful, "harmful")
    check_prompts(harmless, "harmless")
    return auroc(
        det.score(model, template, harmful, interventions), det.score(model, template, harmless, interventions)
    )


def layerwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1).float()
