"""Hook names and their order in the forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: A TransformerLens forward hook: (activation, hook point) -> new activation.
HookFn = Callable[[torch.Tensor, object], torch.Tensor]


def hook_order(name: str) -> tuple[int, int]:
    """(layer, sub-position) of a hook in the forward pass, for ordering checks."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return (-1, 0) if "embed" in name else (10**6, 0)
    sub = {"hook_resid_pre": 0, "hook_attn_out": 1, "hook_resid_mid": 2, "hook_mlp_out": 3, "hook_resid_post": 4}
    return int(parts[1]), sub.get(parts[-1], 2)
