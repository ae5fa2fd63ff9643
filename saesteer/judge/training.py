"""Training the learned judge's head (:mod:`saesteer.judge.learned`): an L2-penalised logistic regression on
standardised features, fitted in float64 by L-BFGS (the loss is strictly convex, so the fit is the same on every
run), with the penalty chosen by stratified cross-validation on the training rows only."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from saesteer.judge.base import JudgeError
from saesteer.judge.learned import Head

log = logging.getLogger(__name__)


def fit_head(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 500) -> Head:
    """The logistic regression minimising ``mean BCE(z . w + b, y) + l2 / 2 * |w|^2`` on the standardised features
    ``z = (x - mean) / scale`` of ``x`` [n, d] (mean and population std of each column; a constant column keeps
    scale 1), labels ``y`` [n] (True: refusal).  The bias is not penalised."""
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise JudgeError(f"fit_head needs features [n, d] and labels [n], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not math.isfinite(l2) or l2 <= 0:
        raise JudgeError(f"l2 must be a positive finite number, got {l2!r}")
    x, t = x.double(), y.double()
    if not bool(torch.isfinite(x).all()):
        raise JudgeError("fit_head: the features hold NaN or inf")
    if t.min() == t.max():
        raise JudgeError("fit_head needs both refusals and compliances among the labels, got one class only")
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    prior = t.mean().clamp(1e-6, 1 - 1e-6)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, t) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return Head(w.detach().clone(), b.detach().clone(), mean, scale)


def stratified_folds(y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """[n] fold index of each row: each class shuffled (seeded) and dealt round-robin, so every fold holds about
    the same share of refusals."""
    if folds < 2:
        raise JudgeError(f"cross-validation needs at least 2 folds, got {folds}")
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    for cls in (False, True):
        idx = (y == cls).nonzero().flatten()
        if len(idx) < folds:
            raise JudgeError(
                f"{len(idx)} {'refusal' if cls else 'compliance'} labels for {folds} folds; "
                "label more responses or lower cv_folds"
            )
        idx = idx[torch.randperm(len(idx), generator=gen)]
        fold[idx] = torch.arange(len(idx)) % folds
    return fold


@dataclass
class CrossValidation:
    """Accuracy and log-loss of each penalty, averaged over every held-out fold of every repeat."""

    l2: list[float]
    accuracy: list[float]
    log_loss: list[float]
    best: float = field(default=0.0)

    def best_accuracy(self) -> float:
        return self.accuracy[self.l2.index(self.best)]


def cross_validate(
    x: torch.Tensor, y: torch.Tensor, l2s: Sequence[float], folds: int = 5, repeats: int = 4, seed: int = 0
) -> CrossValidation:
    """Each penalty of ``l2s`` fitted on all folds but one and scored on the one left out, for ``repeats`` seeded
    fold assignments; ``best`` is the penalty of the highest mean accuracy (ties: the lowest log-loss, then the
    largest penalty)."""
    if not l2s:
        raise JudgeError("cross_validate needs at least one l2 value")
    y = y.bool()
    acc = torch.zeros(len(l2s), dtype=torch.float64)
    nll = torch.zeros(len(l2s), dtype=torch.float64)
    for r in range(repeats):
        fold = stratified_folds(y, folds, seed + r)
        for k in range(folds):
            tr, te = fold != k, fold == k
            for j, l2 in enumerate(l2s):
                logits = fit_head(x[tr], y[tr], l2).logits(x[te])
                acc[j] += ((logits >= 0) == y[te]).double().mean()
                nll[j] += F.binary_cross_entropy_with_logits(logits, y[te].double())
    acc, nll = acc / (folds * repeats), nll / (folds * repeats)
    order = sorted(range(len(l2s)), key=lambda j: (-round(float(acc[j]), 12), float(nll[j]), -l2s[j]))
    return CrossValidation(list(map(float, l2s)), acc.tolist(), nll.tolist(), best=float(l2s[order[0]]))
