"""Refusal-feature search: rank every SAE feature by three signals in one streamed pass.

For each feature f of an SAE at hook h:

- ``cosine``: cos(W_dec[f], r) with the refusal direction r;
- activation contrast at the chosen positions, harmful vs harmless: mean difference,
  standardized effect size (Cohen's d) and AUROC (per prompt: the mean activation over
  the positions);
- ``attribution``: activation x gradient of the refusal score (attribution patching):
  mean over harmful prompts of sum_pos a_f * (W_dec[f] . d score / d x), i.e. the
  first-order drop of the refusal score when f is zeroed (and the same with the gradient
  projected on r, for edits kept along r);

combined into one ranking (z-scores, configurable weights) after an activity filter
(cosine alone ranks near-dead features first).  ``ranking`` lists refusal features
(combined score descending); ``signed_ranking`` lists features of either sign by
|combined|, so it also holds "comply" features (negative cosine / contrast: more active
on harmless prompts), each kept by the activity filter on the class it points to.  The
pass also keeps the harmless and harmful mean of the direction's coordinate x.r at the
same positions: the reference of a one-hook affine ablation, the feature means' analogue.  Memory is O(d_sae): running sums,
sums of squares, activity counts and a fixed-bin histogram per feature and class for
a screening AUROC (exact up to pairs within one log-spaced bin, see ``HIST_EDGES``);
a second pass over the ``top_n`` ranked features keeps their per-prompt activations
and replaces their AUROC by the exact one.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.activations import stop_layer
from saesteer.chat import ChatTemplate, encode_chat
from saesteer.checks import check_choice, check_finite_fields, check_positive_ints, check_prompts, choices
from saesteer.generation import final_logits, length_sorted_batches
from saesteer.io import atomic_path
from saesteer.primitives.sae_weights import SaeWeights
from saesteer.stats import auroc

log = logging.getLogger(__name__)

#: histogram bin edges for positive activations (bin 0 holds exact zeros)
HIST_EDGES = torch.logspace(-3, 3, 255, dtype=torch.float64)


#: The per-feature signals the ranking combines (module docstring).
Signal = Literal["cosine", "mean_diff", "effect_size", "auroc", "attribution"]
SIGNALS: tuple[str, ...] = choices(Signal)
#: What a bypass sets the selected features to (FeatureScores.bypass_values): 0, or their mean on harmless prompts.
BypassValue = Literal["zero", "harmless_mean"]


@dataclass
class SearchConfig:
    """The feature search: the base of the ``search`` config group's schema (``saesteer.config.SearchJobSettings``).

    A feature's combined score is the sum over the signals of ``weight_<signal>`` x the signal's z-score over the
    eligible features; a signal of weight 0 is left out."""

    positions: Optional[list[int]] = (
        None  # negative offsets from the end of the prompt; None = every post-instruction position
    )
    weight_cosine: float = 1.0
    weight_mean_diff: float = 0.0
    weight_effect_size: float = 1.0
    weight_auroc: float = 0.0
    weight_attribution: float = 1.0
    min_active_fraction: float = (
        0.02  # activity filter: a feature is eligible when it fires on at least this share of harmful prompts
    )
    top_n: int = 20  # the top features whose per-prompt activations (exact AUROC, top prompts) are kept
    n_top_prompts: int = 5  # the prompts that activate each of them most
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if not 0 <= self.min_active_fraction < 1:
            raise ValueError(f"search.min_active_fraction must be in [0, 1), got {self.min_active_fraction}")
        check_positive_ints(self, "search", "top_n", "batch_size")

    @property
    def weights(self) -> dict[str, float]:
        """{signal: weight} of the signals with a non-zero weight, in the order of :data:`SIGNALS`."""
        return {s: w for s in SIGNALS if (w := getattr(self, f"weight_{s}")) != 0}


class _ClassStats:
    def __init__(self, d_sae: int) -> None:
        self.n = 0
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.sumsq = torch.zeros(d_sae, dtype=torch.float64)
        self.active = torch.zeros(d_sae, dtype=torch.float64)
        self.hist = torch.zeros(d_sae, len(HIST_EDGES) + 1, dtype=torch.float64)

    def update(self, per_prompt: torch.Tensor) -> None:  # [B, d_sae]
        a = per_prompt.double().cpu()
        self.n += a.shape[0]
        self.sum += a.sum(0)
        self.sumsq += (a * a).sum(0)
        self.active += (a > 0).double().sum(0)
        bins = torch.where(a > 0, torch.bucketize(a, HIST_EDGES) + 1, torch.zeros_like(a, dtype=torch.long)).clamp(
            max=len(HIST_EDGES)
        )
        self.hist.scatter_add_(1, bins.T.contiguous(), torch.ones_like(bins.T, dtype=torch.float64))

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n, 1)

    @property
    def var(self) -> torch.Tensor:
        return (self.sumsq / max(self.n, 1) - self.mean**2).clamp_min(0) * self.n / max(self.n - 1, 1)


def histogram_auroc(pos_hist: torch.Tensor, neg_hist: torch.Tensor) -> torch.Tensor:
    """P(X_pos > X_neg) + P(same bin) / 2 from per-feature histograms [d_sae, n_bins]."""
    n_pos = pos_hist.sum(1).clamp_min(1)
    n_neg = neg_hist.sum(1).clamp_min(1)
    neg_below = torch.cumsum(neg_hist, 1) - neg_hist
    wins = (pos_hist * neg_below).sum(1) + 0.5 * (pos_hist * neg_hist).sum(1)
    return wins / (n_pos * n_neg)


@dataclass
class FeatureScores:
    hook: str
    positions: list[int]
    cosine: torch.Tensor
    harmful_mean: torch.Tensor
    harmless_mean: torch.Tensor
    mean_diff: torch.Tensor
    effect_size: torch.Tensor
    auroc: torch.Tensor
    attribution: torch.Tensor
    active_fraction: torch.Tensor  # on harmful prompts
    combined: torch.Tensor
    eligible: torch.Tensor  # bool: passes the activity filter
    ranking: list[int]  # eligible features, best first
    top_prompts: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    harmless_active_fraction: Optional[torch.Tensor] = None
    signed_score: Optional[torch.Tensor] = None  # the combined score of every feature (no filter): < 0 = comply
    signed_eligible: Optional[torch.Tensor] = None  # fires on >= min_active_fraction of the class its sign points to
    signed_ranking: list[int] = field(default_factory=list)  # signed-eligible features by |signed_score|, best first
    harmful_coordinate: float = float("nan")  # mean of x.r (unit r) at the positions, harmful prompts
    harmless_coordinate: float = float("nan")  # the same on harmless prompts
    # mean over harmful prompts of sum_pos W_dec[f] . d score / d x: the first-order change of the refusal score per
    # unit added to feature f at the positions (None when attribution was not computed)
    grad_sum: Optional[torch.Tensor] = None
    min_active_fraction: float = 0.0  # the activity filter the scores were computed with
    direction: Optional[torch.Tensor] = None  # the unit refusal direction r [d_in] the scores were computed against
    decoder_along: Optional[torch.Tensor] = None  # W_dec[f] . r for every feature [d_sae]
    # the same first-order terms with the gradient projected on r: mean over harmful prompts of sum_pos a_f (r . g)
    # per feature, and of sum_pos r . g (one number); g = d score / d x (None when attribution was not computed)
    attribution_along: Optional[torch.Tensor] = None
    grad_along: Optional[float] = None

    def edit_attribution(self, values: torch.Tensor) -> torch.Tensor:
        """The first-order drop of the refusal score (mean over harmful prompts) when each feature is set to its
        value in ``values`` [d_sae] at the searched positions: sum_pos (a_f - v_f) (W_dec[f] . d score / d x).
        ``values`` = 0 gives :attr:`attribution`."""
        if self.grad_sum is None:
            raise ValueError("these scores hold no gradients: search with weight_attribution != 0")
        return self.attribution - values.double() * self.grad_sum

    def edit_attribution_along(self, values: torch.Tensor) -> torch.Tensor:
        """:meth:`edit_attribution` for the edit kept only along r (each feature's decoder coordinate on r moved to
        its value at ``values``): (W_dec[f] . r) sum_pos (a_f - v_f) (r . d score / d x)."""
        if self.attribution_along is None or self.decoder_along is None or self.grad_along is None:
            raise ValueError("these scores hold no gradients: search with weight_attribution != 0")
        return self.decoder_along * (self.attribution_along - values.double() * self.grad_along)

    @property
    def harmful_active_mean(self) -> torch.Tensor:
        """Mean activation on the harmful prompts where the feature fires (0 where it never does)."""
        return torch.where(
            self.active_fraction > 0,
            self.harmful_mean / self.active_fraction.clamp_min(1e-12),
            torch.zeros_like(self.harmful_mean),
        )

    def top(self, k: int, signed: bool = False) -> list[int]:
        """The top ``k`` refusal features, or with ``signed`` the top ``k`` of either sign (refusal or comply)."""
        ranking = self.signed_ranking if signed else self.ranking
        if k > len(ranking):
            raise ValueError(f"asked for the top {k} features but only {len(ranking)} pass the activity filter")
        return ranking[:k]

    def bypass_values(self, features: Sequence[int], ablation: str = "harmless_mean") -> list[float]:
        """Values a bypass sets ``features`` to: 0 (``zero``) or their mean on harmless prompts at the
        searched positions (``harmless_mean``: the feature-level analogue of affine ablation, which turns
        refusal features down and comply features up)."""
        check_choice(ablation, BypassValue, "ablation")
        return [0.0 if ablation == "zero" else float(self.harmless_mean[f]) for f in features]

    def write_csv(self, path: Path) -> Path:
        rank_of = {f: i for i, f in enumerate(self.ranking)}
        signed_rank_of = {f: i for i, f in enumerate(self.signed_ranking)}
        cols = [
            "feature",
            "rank",
            "combined",
            "cosine",
            "mean_diff",
            "effect_size",
            "auroc",
            "attribution",
            "harmful_mean",
            "harmless_mean",
            "active_fraction",
            "eligible",
        ]
        extra = ["signed_rank", "signed_score", "harmless_active_fraction"] if self.signed_score is not None else []
        order = self.ranking + [f for f in range(len(self.cosine)) if f not in rank_of]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols + extra)
                for f in order:
                    row = [
                        f,
                        rank_of.get(f, ""),
                        *(f"{float(getattr(self, c)[f]):.6g}" for c in cols[2:-1]),
                        bool(self.eligible[f]),
                    ]
                    if extra:
                        row += [
                            signed_rank_of.get(f, ""),
                            f"{float(self.signed_score[f]):.6g}",
                            f"{float(self.harmless_active_fraction[f]):.6g}",
                        ]
                    w.writerow(row)
        return path


def _zscore(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    v = x[mask]
    if v.numel() < 2 or float(v.std()) == 0:
        return torch.zeros_like(x)
    return (x - v.mean()) / v.std()


def search_features(
    model: HookedTransformer,
    template: ChatTemplate,
    sae: Any,
    direction: torch.Tensor,
    harmful: Sequence[str],
    harmless: Sequence[str],
    cfg: Optional[SearchConfig] = None,
    *,
    refusal_ids: Optional[Sequence[int]] = None,
    hook: Optional[str] = None,
    progress: bool = False,
) -> FeatureScores:
    """Score every feature of ``sae`` (at ``hook``) against the refusal mechanism."""
    cfg = cfg if cfg is not None else SearchConfig()
    from saesteer.activations import check_hooks, n_post_tokens
    from saesteer.directions import refusal_token_ids

    check_prompts(harmful, "harmful")
    check_prompts(harmless, "harmless")
    w = SaeWeights.from_sae(sae)
    hook = hook or w.hook_name
    check_hooks(model, [hook])
    if w.d_in != model.cfg.d_model:
        raise ValueError(f"SAE d_in={w.d_in} does not match the model's d_model={model.cfg.d_model}")
    if direction.shape != (model.cfg.d_model,):
        raise ValueError(f"direction has shape {tuple(direction.shape)}, expected ({model.cfg.d_model},)")
    if not harmful or not harmless:
        raise ValueError(f"feature search needs harmful and harmless prompts, got {len(harmful)} and {len(harmless)}")
    positions = list(cfg.positions) if cfg.positions is not None else list(range(-n_post_tokens(model, template), 0))
    ids = torch.tensor(list(refusal_ids) if refusal_ids is not None else refusal_token_ids(model, template))
    d_sae = w.d_sae
    stats = {"harmful": _ClassStats(d_sae), "harmless": _ClassStats(d_sae)}
    attribution = torch.zeros(d_sae, dtype=torch.float64)
    grad_sum = torch.zeros(d_sae, dtype=torch.float64)
    attribution_along = torch.zeros(d_sae, dtype=torch.float64)
    grad_along = 0.0
    coordinate = {"harmful": 0.0, "harmless": 0.0}  # sum over prompts of the mean of x.r over positions
    r_unit = (direction.float() / direction.float().norm()).to(model.cfg.device)
    W_dec = w.W_dec.float()
    tok = model.tokenizer
    captured: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor, hook=None) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        captured["x"] = x
        return x

    for label, prompts in (("harmful", harmful), ("harmless", harmless)):
        want_grad = label == "harmful" and cfg.weights.get("attribution", 0) != 0
        for idx in tqdm(
            length_sorted_batches([len(p) for p in prompts], cfg.batch_size),
            desc=f"search {label}",
            disable=not progress,
            leave=False,
        ):
            enc = encode_chat(tok, template, [prompts[i] for i in idx], pad_token_id=tok.pad_token_id)
            with torch.set_grad_enabled(want_grad), model.hooks(fwd_hooks=[(hook, grab)]):
                logits = final_logits(model, enc.tokens.to(model.cfg.device), enc.attention_mask.to(model.cfg.device))
            x = captured["x"][:, positions].float()  # [B, P, d]
            acts = w.encode(x.detach())  # [B, P, d_sae]
            stats[label].update(acts.mean(1))
            coordinate[label] += float((x.detach() @ r_unit.to(x)).mean(1).double().sum())
            if want_grad:
                lp = F.log_softmax(logits.float(), -1)
                p = lp[:, ids.to(lp.device)].exp().sum(-1).clamp(1e-6, 1 - 1e-6)
                score = (torch.log(p) - torch.log1p(-p)).sum()
                (grad,) = torch.autograd.grad(score, captured["x"])
                g = grad[:, positions].float()  # [B, P, d]
                g_dec = g @ W_dec.T.to(g)  # [B, P, d_sae]
                attribution += (acts * g_dec).sum((0, 1)).double().cpu()
                grad_sum += g_dec.sum((0, 1)).double().cpu()
                g_r = g @ r_unit.to(g)  # [B, P]
                attribution_along += (acts * g_r[..., None]).sum((0, 1)).double().cpu()
                grad_along += float(g_r.double().sum())
            captured.clear()
    hs, ls = stats["harmful"], stats["harmless"]
    r = direction.double() / direction.double().norm()
    cosine = F.cosine_similarity(W_dec.double(), r[None].to(W_dec.device), dim=-1).cpu()
    mean_diff = hs.mean - ls.mean
    pooled = ((hs.n - 1) * hs.var + (ls.n - 1) * ls.var) / max(hs.n + ls.n - 2, 1)
    effect = mean_diff / (pooled.sqrt() + 1e-8)
    au = histogram_auroc(hs.hist, ls.hist)
    attribution = attribution / max(hs.n, 1)
    with_grad = cfg.weights.get("attribution", 0) != 0
    active_fraction = hs.active / max(hs.n, 1)
    eligible = active_fraction >= cfg.min_active_fraction
    signals = {"cosine": cosine, "mean_diff": mean_diff, "effect_size": effect, "auroc": au, "attribution": attribution}
    combined = torch.zeros(d_sae, dtype=torch.float64)
    for name, weight in cfg.weights.items():
        combined += weight * _zscore(signals[name], eligible)
    signed_score = combined
    harmless_active = ls.active / max(ls.n, 1)
    signed_eligible = torch.where(signed_score >= 0, eligible, harmless_active >= cfg.min_active_fraction)
    combined = torch.where(eligible, combined, torch.full_like(combined, -math.inf))
    ranking = [int(f) for f in torch.argsort(combined, descending=True, stable=True) if eligible[f]]
    signed_ranking = [
        int(f) for f in torch.argsort(signed_score.abs(), descending=True, stable=True) if signed_eligible[f]
    ]
    scores = FeatureScores(
        hook,
        positions,
        cosine,
        hs.mean,
        ls.mean,
        mean_diff,
        effect,
        au,
        attribution,
        active_fraction,
        combined,
        eligible,
        ranking,
        harmless_active_fraction=harmless_active,
        signed_score=signed_score,
        signed_eligible=signed_eligible,
        signed_ranking=signed_ranking,
        harmful_coordinate=coordinate["harmful"] / max(hs.n, 1),
        harmless_coordinate=coordinate["harmless"] / max(ls.n, 1),
        grad_sum=grad_sum / max(hs.n, 1) if with_grad else None,
        min_active_fraction=cfg.min_active_fraction,
        direction=r.float().cpu(),
        decoder_along=(W_dec.double() @ r.to(W_dec.device)).cpu(),
        attribution_along=attribution_along / max(hs.n, 1) if with_grad else None,
        grad_along=grad_along / max(hs.n, 1) if with_grad else None,
    )
    if ranking or signed_ranking:
        top = list(dict.fromkeys(ranking[: cfg.top_n] + signed_ranking[: cfg.top_n]))
        per_prompt = prompt_activations(
            model, template, w, hook, positions, list(harmful) + list(harmless), top, cfg.batch_size
        )
        nh = len(harmful)
        for j, f in enumerate(top):
            scores.auroc[f] = auroc(per_prompt[:nh, j], per_prompt[nh:, j])
        if cfg.n_top_prompts > 0:
            prompts = list(harmful) + list(harmless)
            for j, f in enumerate(top):
                order = torch.argsort(per_prompt[:, j], descending=True, stable=True)[: cfg.n_top_prompts]
                scores.top_prompts[f] = [(prompts[i], float(per_prompt[i, j])) for i in order.tolist()]
    return scores


@torch.no_grad()
def prompt_activations(
    model,
    template,
    w: SaeWeights,
    hook: str,
    positions: list[int],
    prompts: Sequence[str],
    features: list[int],
    batch_size: int,
) -> torch.Tensor:
    """Mean activation over ``positions`` of ``features`` for every prompt: [n_prompts, |features|] float64."""
    check_prompts(prompts, "prompts")
    tok = model.tokenizer
    out = torch.empty(len(prompts), len(features), dtype=torch.float64)
    full = w.architecture == "topk"
    stop = stop_layer(model, [hook])
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        enc = encode_chat(tok, template, [prompts[i] for i in idx], pad_token_id=tok.pad_token_id)
        store = {}
        with model.hooks(
            fwd_hooks=[(hook, lambda x, hook=None, store=store: store.__setitem__("x", x[:, positions].float()))]
        ):
            model(
                enc.tokens.to(model.cfg.device),
                attention_mask=enc.attention_mask.to(model.cfg.device),
                stop_at_layer=stop,
            )
        a = w.encode(store["x"])[..., features] if full else w.encode_columns(store["x"], features)
        out[idx] = a.mean(1).double().cpu()
    return out
