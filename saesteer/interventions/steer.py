"""``steer(model, [specs])``: the one way saesteer edits a running model."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from transformer_lens import HookedTransformer

from saesteer.interventions.directions import Intervention


def collect_hooks(model: HookedTransformer, interventions: Sequence[Intervention]) -> list:
    """Validate every spec, then expand into hooks ordered so anchors (higher ``order``) run last."""
    valid = set(model.hook_dict)
    hooks = []
    for spec in sorted(interventions, key=lambda s: s.order):
        spec.validate(model)
        for name, fn in spec.hooks(model):
            if name not in valid:
                raise ValueError(f"hook {name!r} does not exist in this model (e.g. blocks.0.hook_resid_pre)")
            hooks.append((name, fn))
    return hooks


@contextlib.contextmanager
def steer(model: HookedTransformer, interventions: Sequence[Intervention]) -> Iterator[HookedTransformer]:
    """Apply interventions as forward hooks for the duration of the block."""
    hooks = collect_hooks(model, list(interventions))
    with model.hooks(fwd_hooks=hooks):
        yield model
