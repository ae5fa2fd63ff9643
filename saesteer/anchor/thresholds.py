"""Gate thresholds from calibration scores: a threshold never sits on a score or splits scores tied within float
noise, so the rates the calibration reports are the deployed gate's decisions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: scores closer than this (relative) count as tied: float noise between the calibration's reads and a deployed
#: forward pass (about 1e-7 relative in float32) must not carry a prompt across a threshold
TIE_TOLERANCE = 1e-6


def _tied(a, b) -> bool:
    return abs(float(a) - float(b)) <= TIE_TOLERANCE * (1.0 + max(abs(float(a)), abs(float(b))))


def top_threshold(scores: torch.Tensor, m: int) -> float:
    """A threshold with the ``m`` highest scores above it (fewer where scores tie across it, within
    :data:`TIE_TOLERANCE`): halfway between the m-th and the (m+1)-th highest, so that no calibration prompt sits on
    it and float noise between batched forward passes cannot flip a decision there; ``m = 0``: just above the top
    score."""
    s = scores.double().sort(descending=True).values
    m = min(max(int(m), 0), len(s))
    while 0 < m < len(s) and _tied(s[m - 1], s[m]):
        m -= 1
    if m == 0:
        return float(s[0] + 1e-4 * (1 + s[0].abs()))
    if m == len(s):
        return float(s[-1] - 1e-4 * (1 + s[-1].abs()))
    return float((s[m - 1] + s[m]) / 2)


def union_thresholds(scores: Sequence[torch.Tensor], fpr: float) -> list[float]:
    """One threshold per gate member (``scores``: each member's [n] scores on the same prompts) such that the union
    of the members fires on at most ``fpr`` of the prompts: each member fires on its top m, for the largest m whose
    union stays within the bound (m = 0 where even one prompt would break it).  Members that fire on the same
    prompts share the budget instead of each getting ``fpr / n_members``."""
    n = len(scores[0])
    limit = math.floor(fpr * n + 1e-9)
    best = [top_threshold(x, 0) for x in scores]
    for m in range(1, limit + 1):
        t = [top_threshold(x, m) for x in scores]
        if int(torch.stack([x > ti for x, ti in zip(scores, t)]).any(0).sum()) > limit:
            break
        best = t
    return best


def center_in_gap(threshold: float, scores: Sequence[torch.Tensor]) -> float:
    """``threshold`` kept clear of ``scores`` (every calibration score of one gate member), so that float noise
    between the calibration's reads and a deployed forward pass cannot flip a decision: scores tied across it
    (within :data:`TIE_TOLERANCE`) it is raised past (the member then fires on fewer prompts, never more); a score
    within ten times that of it, it is moved to the middle of the gap between its nearest scores below and above
    (no score changes side); otherwise, and with no score on one side, it is kept."""
    s = torch.cat([x.double().flatten() for x in scores]) if scores else torch.zeros(0, dtype=torch.float64)
    while True:
        below, above = s[s <= threshold], s[s > threshold]
        if len(below) == 0 or len(above) == 0:
            return float(threshold)
        lo, hi = float(below.max()), float(above.min())
        if _tied(lo, hi):
            threshold = hi  # the near-tie now lies at or below it
            continue
        margin = 10 * TIE_TOLERANCE * (1.0 + abs(float(threshold)))
        if threshold - lo > margin and hi - threshold > margin:
            return float(threshold)
        return (lo + hi) / 2
