"""Refusal directions (Arditi et al. 2024): candidates, scores, selection.

Candidates are differences in means (harmful minus harmless) of ``resid_pre`` at
every layer and every post-instruction position, accumulated in float64.  Each is
scored on validation prompts exactly as the paper does:

- bypass: mean refusal score on harmful val with the direction ablated at every layer;
- induce: mean refusal score on harmless val with the direction added at its layer;
- KL: KL(base || ablated) of the last-position distribution on harmless val;

then candidates with KL > ``max_kl``, induce < ``min_induce`` or a layer in the last
``prune_layer_fraction`` of the model are dropped and the lowest bypass score wins.
The same scores are computed with affine ablation (ACE); ``ablation`` picks which one
selection uses.  The refusal score is the log-odds of the template's refusal first
tokens at the last position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.activations import mean_activations, n_post_tokens, resid_hooks
from saesteer.chat import ChatTemplate
from saesteer.checks import check_choice_fields, check_finite_fields, check_prompts
from saesteer.evaluate import kl_divergence, last_position_logprobs
from saesteer.generation import last_position_logits
from saesteer.interventions import Ablate, Add, Intervention, steer
from saesteer.interventions.directions import ABLATION_MODES, AblationMode
from saesteer.io import ArtifactError, load_tensors, save_tensors

log = logging.getLogger(__name__)


def refusal_token_ids(model: HookedTransformer, template: ChatTemplate) -> list[int]:
    """First token id of each of the template's refusal strings."""
    ids = []
    for s in template.refusal_tokens:
        toks = model.tokenizer(s, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"refusal token {s!r} of template {template.name!r} tokenizes to nothing")
        ids.append(toks[0])
    return sorted(set(ids))


@torch.no_grad()
def first_token_refusal_margin(
    model: HookedTransformer, template: ChatTemplate, instructions: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Best refusal-opener log-prob minus the best other token's, at the last prompt position: [n].

    ``> 0`` exactly where the greedy first token opens a refusal (``template.refusal_tokens``); one forward pass."""
    check_prompts(instructions, "instructions")
    lp = last_position_logprobs(model, template, instructions, batch_size)
    ids = torch.tensor(refusal_token_ids(model, template))
    other = lp.clone()
    other[:, ids] = float("-inf")
    return lp[:, ids].max(-1).values - other.max(-1).values


@torch.no_grad()
def refusal_scores(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    refusal_ids: Sequence[int],
    *,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 64,
    return_logprobs: bool = False,
):
    """log(p_refuse / (1 - p_refuse)) at the last position, per prompt ([n] float64).

    With ``return_logprobs`` also returns the last-position log-probs [n, d_vocab]."""
    check_prompts(instructions, "instructions")
    scores = torch.empty(len(instructions), dtype=torch.float64)
    logprobs = torch.empty(len(instructions), model.cfg.d_vocab_out) if return_logprobs else None
    ids = torch.tensor(list(refusal_ids))
    with steer(model, interventions):
        for idx, logits in last_position_logits(model, template, instructions, batch_size):
            lp = F.log_softmax(logits.double().cpu(), -1)
            p = lp[:, ids].exp().sum(-1).clamp(1e-12, 1 - 1e-12)
            scores[idx] = torch.log(p) - torch.log1p(-p)
            if logprobs is not None:
                logprobs[idx] = lp.float()
    return (scores, logprobs) if return_logprobs else scores


@dataclass
class Candidates:
    """Difference-in-means candidates at every layer x position."""

    harmful_mean: torch.Tensor  # [n_layers, n_pos, d_model] float64
    harmless_mean: torch.Tensor  # [n_layers, n_pos, d_model] float64
    layers: list[int]
    positions: list[int]

    @property
    def diff(self) -> torch.Tensor:
        return self.harmful_mean - self.harmless_mean

    def direction(self, layer: int, position: int) -> torch.Tensor:
        return self.diff[self.layers.index(layer), self.positions.index(position)].float()


def compute_candidates(
    model: HookedTransformer,
    template: ChatTemplate,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    positions: Optional[Sequence[int]] = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Candidates:
    """Difference-in-means of resid_pre at every layer and post-instruction position."""
    check_prompts(harmful, "harmful")
    check_prompts(harmless, "harmless")
    n_post = n_post_tokens(model, template)
    positions = list(positions) if positions is not None else list(range(-n_post, 0))
    hooks = resid_hooks(model)
    kw = dict(batch_size=batch_size, progress=progress)
    hm = mean_activations(model, template, harmful, hooks, positions, desc="harmful acts", **kw)
    hl = mean_activations(model, template, harmless, hooks, positions, desc="harmless acts", **kw)
    return Candidates(hm, hl, list(range(model.cfg.n_layers)), positions)


@dataclass
class SelectionConfig:
    """How the refusal direction is selected among the candidates (Arditi et al. 2024).

    The base of the ``directions`` config group's schema (``saesteer.config.DirectionsConfig``)."""

    max_kl: float = 0.1  # a candidate is dropped when ablating it moves harmless_val's next token by a KL above this
    min_induce: float = (
        0.0  # ... or when adding it (add_alpha x the candidate) leaves harmless_val's mean refusal score below this
    )
    prune_layer_fraction: float = 0.2  # ... or when it sits in this last share of the layers
    ablation: Annotated[str, AblationMode] = (
        "affine"  # the ablation selection scores: plain (the paper) or affine (ACE); both are reported
    )
    add_alpha: float = 1.0  # scale of the addition that checks induction
    # the layers whose candidates are scored (a coarser grid for deep models on a CPU); None: every layer
    layers: Optional[list[int]] = None

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice_fields(self, "directions")
        if self.layers is not None:
            layers = list(self.layers)
            if not layers or any(isinstance(l, bool) or not isinstance(l, int) or l < 0 for l in layers):
                raise ValueError(
                    f"directions.layers must be null or a non-empty list of layer indices >= 0, got {layers}"
                )
            if len(set(layers)) != len(layers):
                raise ValueError(f"directions.layers has repeated layers: {layers}")
            self.layers = sorted(layers)
        if not 0 <= self.prune_layer_fraction < 1:
            raise ValueError(f"directions.prune_layer_fraction must be in [0, 1), got {self.prune_layer_fraction}")
        if self.max_kl <= 0:
            raise ValueError(f"directions.max_kl must be > 0, got {self.max_kl}")


@dataclass
class CandidateScore:
    layer: int
    position: int
    bypass_plain: float
    kl_plain: float
    bypass_affine: float
    kl_affine: float
    induce: float
    sign_ok: bool
    filtered_by: list[str] = field(default_factory=list)

    def bypass(self, ablation: str) -> float:
        return self.bypass_affine if ablation == "affine" else self.bypass_plain

    def kl(self, ablation: str) -> float:
        return self.kl_affine if ablation == "affine" else self.kl_plain


@dataclass
class Selection:
    layer: int
    position: int
    direction: torch.Tensor  # raw difference in means (not unit)
    reference: torch.Tensor  # harmless-mean coordinate along the unit direction per layer [n_layers]
    scores: list[CandidateScore]
    ablation: str
    fallback: Optional[str] = None  # why the paper's rule found nothing, and what was taken instead
    baseline_bypass: float = float("nan")
    baseline_induce: float = float("nan")

    @property
    def unit(self) -> torch.Tensor:
        return self.direction / self.direction.norm()

    def ablate(self, mode: Optional[str] = None) -> Ablate:
        mode = mode or self.ablation
        return Ablate(self.direction, mode=mode, reference=self.reference if mode == "affine" else None)

    def add(self, alpha: float = 1.0) -> Add:
        return Add(self.direction, alpha=alpha, layer=self.layer)


def affine_reference(cands: Candidates, direction: torch.Tensor, position: Optional[int] = None) -> torch.Tensor:
    """Harmless-mean coordinate along unit ``direction`` at each layer, at ``position``
    (the candidate's own post-instruction position, where the model reads its decision;
    None = the mean over positions)."""
    r = (direction / direction.norm()).double()
    means = cands.harmless_mean.mean(1) if position is None else cands.harmless_mean[:, cands.positions.index(position)]
    return (means @ r).float()


def refusal_subspace(
    direction: torch.Tensor, harmful_acts: torch.Tensor, harmless_acts: torch.Tensor, k: int
) -> torch.Tensor:
    """An orthonormal basis [k, d_model] of a k-dimensional refusal subspace: the unit ``direction`` first, then the
    top ``k - 1`` right singular vectors of the harmful activations minus the harmless mean (``harmful_acts``
    [n, d_model], ``harmless_acts`` [m, d_model], one layer and position), with their component along the
    direction removed: the directions along which harmful prompts sit furthest from the harmless mean besides the
    direction itself.  Computed in float64; ``k = 1`` gives the unit direction alone."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"refusal_subspace(k={k!r}): expected a positive int")
    d = direction.shape[-1]
    for name, acts in (("harmful_acts", harmful_acts), ("harmless_acts", harmless_acts)):
        if acts.ndim != 2 or acts.shape[1] != d or acts.shape[0] == 0:
            raise ValueError(f"refusal_subspace: {name} has shape {tuple(acts.shape)}, expected (n > 0, {d})")
    if k > min(d, harmful_acts.shape[0] + 1):
        raise ValueError(
            f"refusal_subspace(k={k}): at most min(d_model, n_harmful + 1) = {min(d, harmful_acts.shape[0] + 1)}"
        )
    r = direction.double() / direction.double().norm()
    diffs = harmful_acts.double() - harmless_acts.double().mean(0)
    diffs = diffs - (diffs @ r)[:, None] * r[None]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    q, _ = torch.linalg.qr(torch.cat([r[None], vh[: k - 1]]).T)  # re-orthonormalized; the first column is +-r
    basis = q.T.clone()
    basis[0] = r
    return basis.float()


def score_candidates(
    model: HookedTransformer,
    template: ChatTemplate,
    cands: Candidates,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    cfg: SelectionConfig,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[CandidateScore], float, float, torch.Tensor]:
    check_prompts(harmful_val, "harmful_val")
    check_prompts(harmless_val, "harmless_val")
    ids = refusal_token_ids(model, template)
    base_harm = refusal_scores(model, template, harmful_val, ids, batch_size=batch_size)
    base_safe, base_lp = refusal_scores(model, template, harmless_val, ids, batch_size=batch_size, return_logprobs=True)
    scores: list[CandidateScore] = []
    layers = cands.layers
    if cfg.layers is not None:
        outside = [l for l in cfg.layers if l not in cands.layers]
        if outside:
            raise ValueError(
                f"directions.layers has {outside}, outside the model's layers 0..{max(cands.layers)}; "
                "expected layer indices of this model"
            )
        layers = list(cfg.layers)
    grid = [(l, p) for l in layers for p in cands.positions]
    for layer, pos in tqdm(grid, desc="score candidates", disable=not progress, leave=False):
        d = cands.direction(layer, pos)
        if not torch.isfinite(d).all() or d.norm() == 0:
            continue
        ref = affine_reference(cands, d, pos)
        row: dict[str, Any] = {}
        for mode in ABLATION_MODES:
            abl = Ablate(d, mode=mode, reference=ref if mode == "affine" else None)
            row[f"bypass_{mode}"] = float(
                refusal_scores(model, template, harmful_val, ids, interventions=[abl], batch_size=batch_size).mean()
            )
            _, lp = refusal_scores(
                model, template, harmless_val, ids, interventions=[abl], batch_size=batch_size, return_logprobs=True
            )
            row[f"kl_{mode}"] = kl_divergence(base_lp, lp)
        induce = float(
            refusal_scores(
                model, template, harmless_val, ids, interventions=[Add(d, cfg.add_alpha, layer)], batch_size=batch_size
            ).mean()
        )
        sign_ok = bool(
            float(
                d.double()
                @ (cands.harmful_mean - cands.harmless_mean)[cands.layers.index(layer), cands.positions.index(pos)]
            )
            > 0
        )
        scores.append(CandidateScore(layer, pos, induce=induce, sign_ok=sign_ok, **row))
    return scores, float(base_harm.mean()), float(base_safe.mean()), base_lp


def apply_filters(scores: list[CandidateScore], n_layers: int, cfg: SelectionConfig) -> None:
    max_layer = int(n_layers * (1.0 - cfg.prune_layer_fraction))
    for s in scores:
        s.filtered_by = []
        if not math.isfinite(s.bypass(cfg.ablation)):
            s.filtered_by.append("nan")
        if s.kl(cfg.ablation) > cfg.max_kl:
            s.filtered_by.append("kl")
        if s.induce < cfg.min_induce:
            s.filtered_by.append("induce")
        if s.layer >= max_layer:
            s.filtered_by.append("layer")


def relax_kl(scores: Sequence[CandidateScore], cfg: SelectionConfig) -> Optional[tuple[float, list[CandidateScore]]]:
    """When only the KL filter stands between candidates and the pool: the bound ``max_kl * 2**k`` for the
    smallest ``k`` under which some candidate that passes every other filter also passes it, and those candidates.
    None when no candidate passes the other filters (then the KL bound is not what empties the pool)."""
    only_kl = [s for s in scores if s.filtered_by == ["kl"] and math.isfinite(s.kl(cfg.ablation))]
    if not only_kl:
        return None
    bound = cfg.max_kl
    while not any(s.kl(cfg.ablation) <= bound for s in only_kl):
        bound *= 2
    return bound, [s for s in only_kl if s.kl(cfg.ablation) <= bound]


def select_direction(
    model: HookedTransformer,
    template: ChatTemplate,
    cands: Candidates,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    cfg: Optional[SelectionConfig] = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> Selection:
    """Score every candidate and pick one by the paper's rule: the lowest bypass score among candidates that pass
    every filter.  When none does, the fallback is stated in ``Selection.fallback``: if candidates fail the KL
    filter alone, the KL bound is doubled until some pass (:func:`relax_kl`), else the fewest failed filters."""
    cfg = cfg if cfg is not None else SelectionConfig()
    check_prompts(harmful_val, "harmful_val")
    check_prompts(harmless_val, "harmless_val")
    if not harmful_val or not harmless_val:
        raise ValueError(
            f"selection needs harmful and harmless val prompts, got {len(harmful_val)} and {len(harmless_val)}"
        )
    scores, base_bypass, base_induce, _ = score_candidates(
        model, template, cands, harmful_val, harmless_val, cfg, batch_size=batch_size, progress=progress
    )
    apply_filters(scores, model.cfg.n_layers, cfg)
    passing = [s for s in scores if not s.filtered_by]
    fallback = None
    if passing:
        best = min(passing, key=lambda s: s.bypass(cfg.ablation))
    else:
        # Which filter emptied the pool: apply them in the paper's order.
        pool = list(scores)
        emptied = "no candidates"
        for name in ("nan", "kl", "induce", "layer"):
            nxt = [s for s in pool if name not in s.filtered_by]
            if not nxt:
                emptied = name
                break
            pool = nxt
        relaxed = relax_kl(scores, cfg)
        if relaxed is not None:
            bound, pool = relaxed
            best = min(pool, key=lambda s: s.bypass(cfg.ablation))
            fallback = (
                f"no candidate passed every filter (the '{emptied}' filter emptied the pool); fallback rule: the KL "
                f"bound doubled from {cfg.max_kl:g} to {bound:g}, the first bound under which candidates pass the "
                f"other filters, then lowest bypass score -> layer {best.layer}, position {best.position} "
                f"(KL {best.kl(cfg.ablation):.3f})"
            )
        else:
            best = min(scores, key=lambda s: (len(s.filtered_by), s.bypass(cfg.ablation)))
            fallback = (
                f"no candidate passed every filter (the '{emptied}' filter emptied the pool); fallback rule: fewest "
                f"failed filters, then lowest bypass score -> layer {best.layer}, position {best.position} "
                f"(fails {best.filtered_by})"
            )
        log.warning(fallback)
    d = cands.direction(best.layer, best.position)
    return Selection(
        best.layer,
        best.position,
        d,
        affine_reference(cands, d, best.position),
        scores,
        cfg.ablation,
        fallback,
        base_bypass,
        base_induce,
    )


def save_direction(path: str | Path, sel: Selection, metadata: dict[str, Any]) -> Path:
    meta = {
        "kind": "refusal_direction",
        "layer": sel.layer,
        "position": sel.position,
        "hook": f"blocks.{sel.layer}.hook_resid_pre",
        "ablation": sel.ablation,
        "fallback": sel.fallback,
        **metadata,
    }
    return save_tensors(path, {"direction": sel.direction, "affine_reference": sel.reference}, meta)


def load_direction(
    path: str | Path, d_model: Optional[int] = None, model_name: Optional[str] = None, fingerprint: Optional[str] = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A saved direction; checks its size, values and (when given) model name and weights fingerprint
    (``saesteer.activations.model_fingerprint``) against the model in hand."""
    tensors, meta = load_tensors(path)
    if "direction" not in tensors:
        raise ArtifactError(f"{path} holds no 'direction' tensor (found {sorted(tensors)})")
    d = tensors["direction"]
    if d_model is not None and d.shape != (d_model,):
        raise ValueError(f"direction in {path} has shape {tuple(d.shape)}, expected ({d_model},) for this model")
    if not torch.isfinite(d).all() or (
        "affine_reference" in tensors and not torch.isfinite(tensors["affine_reference"]).all()
    ):
        raise ValueError(
            f"direction in {path} contains NaN/inf values; expected finite values (re-extract it with `saesteer directions`)"
        )
    if d.norm() == 0:
        raise ValueError(f"direction in {path} is all zeros; expected a non-zero direction")
    if model_name is not None and meta.get("model") not in (None, model_name):
        raise ValueError(f"direction in {path} was made for model {meta.get('model')!r}, not {model_name!r}")
    if fingerprint is not None and meta.get("model_fingerprint") not in (None, fingerprint):
        raise ValueError(
            f"direction in {path} was made for other weights of {meta.get('model')!r} (fingerprint "
            f"{meta.get('model_fingerprint')!r}, this model's is {fingerprint!r}); re-extract it for this model"
        )
    if "affine_reference" in tensors:
        meta["affine_reference"] = tensors["affine_reference"]
    return d, meta
