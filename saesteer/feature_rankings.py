"""Which SAE features to edit, and how refusal falls with their number.

A ranking orders the features of one SAE for a bypass edit (``zero``: set to 0; ``harmless_mean``: set to their
mean on harmless prompts, which turns refusal features down and comply features up; ``harmless_mean_along_r``: the
``harmless_mean`` edit kept only along the refusal direction r, so the features' decoder coordinate on r moves to its
harmless value and the rest of the residual stream stays):

- ``cosine``: cos(W_dec[f], r);
- ``contrast``: the standardized activation difference harmful vs harmless (Cohen's d);
- ``combined``: the search's combined z-score (:func:`saesteer.search.search_features`);
- ``attribution``: the first-order drop of the refusal score under the edit (attribution patching,
  :meth:`saesteer.search.FeatureScores.edit_attribution`);
- ``greedy``: forward selection by real edits: each step adds the feature, of a pool of the attribution ranking's
  best, whose edit together with those chosen gives the lowest mean refusal score on the attacker's prompts.

For ``zero`` only refusal features are ranked (signal descending; zeroing a comply feature raises refusal); for
the harmless-mean edits with ``signed`` both kinds are, by the signal's magnitude (the predicted drop for attribution).
Only features that pass the search's activity filter for the class they point to are ranked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.chat import ChatTemplate
from saesteer.checks import check_choice, check_prompts, choices
from saesteer.directions import refusal_scores
from saesteer.interventions.features import EditFeatures
from saesteer.search import FeatureScores

log = logging.getLogger(__name__)

Ranking = Literal["cosine", "contrast", "combined", "attribution", "greedy"]
RANKINGS: tuple[str, ...] = choices(Ranking)
#: The bypass edits a ranking is made for (module docstring).
Edit = Literal["zero", "harmless_mean", "harmless_mean_along_r"]
EDITS: tuple[str, ...] = choices(Edit)


def edit_values(scores: FeatureScores, edit: str) -> torch.Tensor:
    """What the bypass ``edit`` sets every feature to: [d_sae] float64."""
    check_choice(edit, Edit, "edit")
    return torch.zeros_like(scores.harmless_mean) if edit == "zero" else scores.harmless_mean.double()


def predicted_drop(scores: FeatureScores, edit: str) -> torch.Tensor:
    """The first-order drop of the refusal score under ``edit`` of each feature alone: [d_sae] float64."""
    values = edit_values(scores, edit)
    if edit == "harmless_mean_along_r":
        return scores.edit_attribution_along(values)
    return scores.edit_attribution(values)


def ranked_features(scores: FeatureScores, ranking: str, edit: str, signed: bool = True) -> list[int]:
    """The eligible features in the order of ``ranking`` for ``edit`` (``greedy`` is not a static order: use
    :func:`greedy_selection`)."""
    check_choice(ranking, Ranking, "ranking")
    check_choice(edit, Edit, "edit")
    if ranking == "greedy":
        raise ValueError("the greedy ranking is found by real edits: use greedy_selection")
    both_signs = signed and edit != "zero"
    if ranking == "attribution":
        key = predicted_drop(scores, edit)
        keep = _active(scores, scores.mean_diff if both_signs else None) & (key > 0)
    else:
        signal = {
            "combined": scores.signed_score if scores.signed_score is not None else scores.combined,
            "cosine": scores.cosine,
            "contrast": scores.effect_size,
        }[ranking].double()
        if both_signs:
            key, keep = signal.abs(), _active(scores, signal) & (signal != 0)
        else:
            key, keep = signal, scores.eligible & (signal > 0)
    order = torch.argsort(torch.where(keep, key, torch.full_like(key, -torch.inf)), descending=True, stable=True)
    return [int(f) for f in order if keep[f]]


def _active(scores: FeatureScores, side: Optional[torch.Tensor]) -> torch.Tensor:
    """The activity filter: on harmful prompts, or (``side`` < 0: a comply feature) on harmless ones."""
    if side is None or scores.harmless_active_fraction is None:
        return scores.eligible.clone()
    return torch.where(side >= 0, scores.eligible, scores.harmless_active_fraction >= scores.min_active_fraction)


def feature_edit(sae: Any, scores: FeatureScores, features: Sequence[int], edit: str, apply_to: str) -> EditFeatures:
    """The bypass ``edit`` of ``features`` at the searched hook."""
    values = edit_values(scores, edit)
    along = None
    if edit == "harmless_mean_along_r":
        if scores.direction is None:
            raise ValueError("the harmless_mean_along_r edit needs scores that hold the refusal direction")
        along = scores.direction
    return EditFeatures(
        sae,
        list(features),
        mode="set",
        values=[float(values[f]) for f in features],
        apply_to=apply_to,
        hook=scores.hook,
        along=along,
    )


@dataclass
class GreedyResult:
    features: list[int]  # in the order chosen
    scores: list[float]  # mean refusal score on the prompts after each addition
    baseline: float  # mean refusal score without an edit


def greedy_selection(
    model: HookedTransformer,
    template: ChatTemplate,
    sae: Any,
    scores: FeatureScores,
    prompts: Sequence[str],
    pool: Sequence[int],
    k: int,
    *,
    edit: str = "harmless_mean",
    apply_to: str = "both",
    refusal_ids: Sequence[int],
    batch_size: int = 64,
    progress: bool = False,
) -> GreedyResult:
    """Forward selection of ``k`` features from ``pool``: each step adds the feature whose ``edit``, with the
    features already chosen, gives the lowest mean refusal score (log-odds of a refusal opener) on ``prompts``."""
    check_prompts(prompts, "prompts")
    if not prompts:
        raise ValueError("greedy_selection needs prompts, got none")
    pool = list(dict.fromkeys(int(f) for f in pool))
    if not 1 <= k <= len(pool):
        raise ValueError(f"greedy_selection: k={k} must be between 1 and the pool's size {len(pool)}")

    def mean_score(features: list[int]) -> float:
        specs = [feature_edit(sae, scores, features, edit, apply_to)] if features else []
        return float(
            refusal_scores(model, template, prompts, refusal_ids, interventions=specs, batch_size=batch_size).mean()
        )

    chosen: list[int] = []
    trace: list[float] = []
    baseline = mean_score([])
    bar = tqdm(total=sum(len(pool) - i for i in range(k)), desc=f"greedy {edit}", disable=not progress, leave=False)
    for _ in range(k):
        best: Optional[tuple[float, int]] = None
        for f in pool:
            if f in chosen:
                continue
            value = mean_score(chosen + [f])
            if best is None or value < best[0]:
                best = (value, f)
            bar.update()
        assert best is not None
        chosen.append(best[1])
        trace.append(best[0])
    bar.close()
    log.info("greedy %s selection: %s, mean refusal score %.3f -> %.3f", edit, chosen, baseline, trace[-1])
    return GreedyResult(chosen, trace, baseline)


@dataclass
class CurvePoint:
    ranking: str
    edit: str
    k: int
    features: list[int]
    refusal: float  # harmful prompts refused under the edit
    kl: float  # next-token KL on harmless prompts, edited vs not


def refusal_vs_k(
    model: HookedTransformer,
    template: ChatTemplate,
    sae: Any,
    scores: FeatureScores,
    orders: dict[tuple[str, str], list[int]],
    ks: Sequence[int],
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    apply_to: str = "both",
    max_new_tokens: int = 12,
    batch_size: int = 64,
    progress: bool = False,
) -> list[CurvePoint]:
    """Refusal of ``harmful`` and KL on ``harmless`` when the first k features of each order
    (``orders[(ranking, edit)]``) get the edit, for every k of ``ks`` the order is long enough for."""
    from saesteer.evaluate import kl_divergence, last_position_logprobs, refusal_eval
    from saesteer.interventions import steer

    check_prompts(harmful, "harmful")
    check_prompts(harmless, "harmless")
    base = last_position_logprobs(model, template, list(harmless), batch_size=batch_size)
    points = []
    todo = [(key, k) for key, order in orders.items() for k in sorted(set(ks)) if k <= len(order)]
    for (ranking, edit), k in tqdm(todo, desc="refusal vs k", disable=not progress, leave=False):
        feats = orders[(ranking, edit)][:k]
        with steer(model, [feature_edit(sae, scores, feats, edit, apply_to)]):
            rate = refusal_eval(
                model, template, list(harmful), max_new_tokens=max_new_tokens, batch_size=batch_size
            ).rate
            kl = kl_divergence(base, last_position_logprobs(model, template, list(harmless), batch_size=batch_size))
        points.append(CurvePoint(ranking, edit, k, feats, rate, kl))
    return points


def k_at_bypass(
    points: Sequence[CurvePoint], ranking: str, max_refusal: float = 0.10, max_kl: float = 0.1
) -> Optional[int]:
    """The smallest k at which some edit of ``ranking``'s first k features takes refusal to ``max_refusal`` or
    less at a KL of ``max_kl`` or less (None: no k measured does)."""
    ok = [p.k for p in points if p.ranking == ranking and p.refusal <= max_refusal and p.kl <= max_kl]
    return min(ok) if ok else None
