"""``steer(model, [specs])``: the one way saesteer edits a running model."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from transformer_lens import HookedTransformer

from saesteer.generation import PHASE, phase
from saesteer.interventions.directions import Intervention
from saesteer.interventions.gates import hook_order


def as_interventions(interventions: Intervention | Sequence[Intervention]) -> list[Intervention]:
    """A list of intervention specs: one spec on its own is taken as a list of one (``steer(model, Ablate(r))``).

    TypeError for anything else, naming what was passed."""
    if isinstance(interventions, Intervention):
        return [interventions]
    if interventions is None or isinstance(interventions, (str, bytes, torch.Tensor)) or not hasattr(interventions, "__iter__"):
        raise TypeError(f"interventions is {type(interventions).__name__}; expected a list of interventions "
                        f"(Ablate, Add, EditFeatures, ...) or a single one")
    out = list(interventions)
    for i, spec in enumerate(out):
        if not isinstance(spec, Intervention):
            raise TypeError(f"interventions[{i}] is {type(spec).__name__}; expected an intervention (Ablate, Add, EditFeatures, ...)")
    return out


def collect_hooks(model: HookedTransformer, interventions: Intervention | Sequence[Intervention]) -> list:
    """Validate every spec, then expand into hooks ordered so anchors (higher ``order``) run last."""
    valid = set(model.hook_dict)
    hooks = []
    for spec in sorted(as_interventions(interventions), key=lambda s: s.order):
        spec.validate(model)
        for name, fn in spec.hooks(model):
            if name not in valid:
                raise ValueError(f"hook {name!r} does not exist in this model (e.g. blocks.0.hook_resid_pre)")
            hooks.append((name, fn))
    return hooks


@contextlib.contextmanager
def gate_prepass(model: HookedTransformer, interventions: Intervention | Sequence[Intervention]) -> Iterator[None]:
    """For gates that decide later than the edits they gate (e.g. an anchor from layer 1 gated by a probe
    read at layer 2): before every prompt pass over token ids, run the model on the same tokens up to the
    gates' last layer in phase "gate", where the gates decide and defences do not act (the gates see
    the prompt as any other edit, an attacker's included, left it); the prompt pass then uses the decisions."""
    gates = [g for spec in as_interventions(interventions) for g in spec.prepass_gates(model)]
    if not gates:
        yield
        return
    stop = max(hook_order(g.hook)[0] for g in gates) + 1

    def pre(module, args, kwargs):
        if PHASE.get() != "prompt" or kwargs.get("start_at_layer") is not None:
            return None
        x = args[0] if args else kwargs.get("input")
        if not torch.is_tensor(x) or x.is_floating_point():
            return None
        with phase("gate"):
            module(x, attention_mask=kwargs.get("attention_mask"), stop_at_layer=stop)
        return None

    for g in gates:
        g.prepass = True
    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for g in gates:
            g.prepass = False


@contextlib.contextmanager
def steer(model: HookedTransformer, interventions: Intervention | Sequence[Intervention]) -> Iterator[HookedTransformer]:
    """Apply interventions (a list, or a single one) as forward hooks for the duration of the block (with a gate
    pre-pass where one is needed)."""
    specs = as_interventions(interventions)
    hooks = collect_hooks(model, specs)
    with model.hooks(fwd_hooks=hooks), gate_prepass(model, specs):
        yield model
