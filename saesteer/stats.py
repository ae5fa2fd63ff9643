"""Small statistics used across saesteer (AUROC, effect sizes), exact and dependency-free."""

from __future__ import annotations

import torch


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve for scores of positives vs negatives (ties count 1/2).

    Mann-Whitney U / (n_pos * n_neg) computed from average ranks."""
    pos = torch.as_tensor(pos, dtype=torch.float64).flatten()
    neg = torch.as_tensor(neg, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(f"auroc needs positives and negatives, got {pos.numel()} and {neg.numel()}")
    allv = torch.cat([pos, neg])
    ranks = average_ranks(allv)
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return float(u / (pos.numel() * neg.numel()))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank (float64)."""
    order = torch.argsort(x, stable=True)
    xs = x[order]
    ranks = torch.empty_like(x, dtype=torch.float64)
    n = x.numel()
    pos = torch.arange(1, n + 1, dtype=torch.float64)
    # group equal values
    change = torch.ones(n, dtype=torch.bool)
    change[1:] = xs[1:] != xs[:-1]
    group = torch.cumsum(change.long(), 0) - 1
    n_groups = int(group[-1]) + 1 if n else 0
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, pos)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, torch.ones(n, dtype=torch.float64))
    ranks[order] = (sums / counts)[group]
    return ranks


def cohens_d(pos_mean, neg_mean, pos_var, neg_var, n_pos: int, n_neg: int):
    """Standardized mean difference with pooled variance (works on tensors elementwise)."""
    pooled = ((n_pos - 1) * pos_var + (n_neg - 1) * neg_var) / max(n_pos + n_neg - 2, 1)
    return (pos_mean - neg_mean) / torch.sqrt(torch.as_tensor(pooled) + 1e-12)
