"""Plots (matplotlib, Agg) and markdown tables for run reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".3f") -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def save_fig(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def heatmaps(
    grids: dict[str, Any], xlabels: Sequence[Any], ylabels: Sequence[Any], path: Path, title: str = "", marker=None
) -> Path:
    """One heatmap per named grid [n_y, n_x] side by side (e.g. score by layer x position)."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 0.35 * len(ylabels) + 2.2), squeeze=False)
    for ax, (name, grid) in zip(axes[0], grids.items()):
        im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
        ax.set_title(name)
        ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels])
        ax.set_yticks(range(len(ylabels)), [str(y) for y in ylabels])
        ax.set_xlabel("position")
        ax.set_ylabel("layer")
        if marker is not None:
            ax.scatter([marker[1]], [marker[0]], marker="*", s=160, c="red")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    return save_fig(fig, path)


def line_plot(
    series: dict[str, Sequence[float]], x: Sequence[Any], path: Path, xlabel: str, ylabel: str, title: str = ""
) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_fig(fig, path)


def scatter_plot(
    xs, ys, path: Path, xlabel: str, ylabel: str, title: str = "", highlight: Sequence[int] = (), labels=None
) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(xs, ys, s=8, alpha=0.5)
    for i in highlight:
        ax.scatter([xs[i]], [ys[i]], s=40, c="red")
        ax.annotate(str(labels[i] if labels is not None else i), (xs[i], ys[i]), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_fig(fig, path)
