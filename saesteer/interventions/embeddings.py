"""Input-embedding edits: a soft suffix, vectors written over the embeddings of a run of placeholder tokens.

An embedding-space attacker (Schwinn et al. 2024) optimizes continuous vectors where a suffix's token embeddings
would be.  The prompt carries ``n`` copies of a placeholder token at the suffix's place; at ``hook_embed`` the last
run of ``n`` consecutive placeholders in each sequence gets the ``n`` vectors instead.  Sequences without such a run
(other prompts, each generated token) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from saesteer.checks import check_finite_tensor
from saesteer.primitives.hooks import HookFn
from saesteer.primitives.intervention import Intervention

EMBED_HOOK = "hook_embed"


def placeholder_runs(is_placeholder: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, starts): the sequences of ``is_placeholder`` ([batch, seq] bool) that hold a run of ``n`` consecutive
    True values, and where the last such run starts in each."""
    b, t = is_placeholder.shape
    if t < n:
        empty = torch.zeros(0, dtype=torch.long, device=is_placeholder.device)
        return empty, empty
    windows = is_placeholder.long().unfold(1, n, 1).sum(-1) == n  # [batch, t - n + 1]: a run starts here
    has = windows.any(1)
    last = (t - n) - windows.flip(1).long().argmax(1)
    rows = has.nonzero().squeeze(1)
    return rows, last[rows]


@dataclass
class SoftSuffix(Intervention):
    """Writes ``embeddings`` ([n, d_model]) over the last run of ``n`` consecutive ``placeholder`` tokens of each
    sequence, at ``hook_embed`` (the token embeddings before any positional term)."""

    embeddings: torch.Tensor
    placeholder: int

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.embeddings) or self.embeddings.ndim != 2 or self.embeddings.shape[0] == 0:
            raise ValueError(
                f"SoftSuffix.embeddings: expected a [n >= 1, d_model] tensor, got "
                f"{tuple(self.embeddings.shape) if torch.is_tensor(self.embeddings) else type(self.embeddings).__name__}"
            )
        check_finite_tensor(self.embeddings, "SoftSuffix.embeddings")

    def validate(self, model: HookedTransformer) -> None:
        if self.embeddings.shape[1] != model.cfg.d_model:
            raise ValueError(
                f"SoftSuffix.embeddings has d_model {self.embeddings.shape[1]}, the model {model.cfg.d_model}"
            )
        if not 0 <= self.placeholder < model.cfg.d_vocab:
            raise ValueError(
                f"SoftSuffix.placeholder={self.placeholder}: not a token id of this model (d_vocab {model.cfg.d_vocab})"
            )

    def hooks(self, model: HookedTransformer) -> list[tuple[str, HookFn]]:
        n = self.embeddings.shape[0]
        with torch.no_grad():
            marker = model.embed(torch.tensor([[self.placeholder]], device=model.cfg.device))[0, 0]

        def fn(x: torch.Tensor, hook: object = None) -> torch.Tensor:
            rows, starts = placeholder_runs((x == marker.to(x.dtype)).all(-1), n)
            if len(rows) == 0:
                return x
            x = x.clone()
            cols = starts[:, None] + torch.arange(n, device=x.device)
            x[rows[:, None], cols] = self.embeddings.to(device=x.device, dtype=x.dtype)
            return x

        return [(EMBED_HOOK, fn)]
