"""``steer(model, [specs])``: the one way saesteer edits a running model."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence

import torch
from transformer_lens import HookedTransformer

from saesteer.primitives.hooks import hook_order
from saesteer.primitives.intervention import Intervention
from saesteer.primitives.phase import PHASE, phase, reading_input, reading_prompt


def as_interventions(interventions: Intervention | Sequence[Intervention]) -> list[Intervention]:
    """A list of intervention specs: one spec on its own is taken as a list of one (``steer(model, Ablate(r))``).

    TypeError for anything else, naming what was passed."""
    if isinstance(interventions, Intervention):
        return [interventions]
    if (
        interventions is None
        or isinstance(interventions, (str, bytes, torch.Tensor))
        or not hasattr(interventions, "__iter__")
    ):
        raise TypeError(
            f"interventions is {type(interventions).__name__}; expected a list of interventions "
            f"(Ablate, Add, EditFeatures, ...) or a single one"
        )
    out = list(interventions)
    for i, spec in enumerate(out):
        if not isinstance(spec, Intervention):
            raise TypeError(
                f"interventions[{i}] is {type(spec).__name__}; expected an intervention (Ablate, Add, EditFeatures, ...)"
            )
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

    def before(forward, args, kwargs) -> None:
        start = kwargs.get("start_at_layer")
        if not reading_prompt() or start not in (None, 0):
            return
        x = args[0] if args else kwargs.get("input")
        if not torch.is_tensor(x) or (start is None and x.is_floating_point()):
            return
        extra = (
            {} if start is None else {"start_at_layer": 0, "shortformer_pos_embed": kwargs.get("shortformer_pos_embed")}
        )
        with phase("gate"):  # token ids, or the residual stream TransformerLens's generate passes with start_at_layer=0
            forward(x, attention_mask=kwargs.get("attention_mask"), stop_at_layer=stop, **extra)

    for g in gates:
        g.prepass = True
    try:
        with _around_forward(model, before):
            yield
    finally:
        for g in gates:
            g.prepass = False


@contextlib.contextmanager
def _around_forward(model: HookedTransformer, before) -> Iterator[None]:
    """Run ``before(forward, args, kwargs)`` ahead of every call of ``model.forward`` (inside which it may set
    the phase for the call); a call over token ids runs with them as the :data:`~saesteer.primitives.phase.INPUT`. Wrapping the method rather than registering a module pre-hook also catches
    TransformerLens's ``generate``, which calls ``self.forward`` directly."""
    inner = model.forward
    had_own = "forward" in vars(model)

    def forward(self, *args, **kwargs):
        if self is not model:  # a copy made while steering (deepcopy rebinds the method to it) runs its own forward
            return type(self).forward(self, *args, **kwargs)
        with contextlib.ExitStack() as stack:
            x = args[0] if args else kwargs.get("input")
            if torch.is_tensor(x) and not x.is_floating_point() and x.ndim == 2:  # token ids: readable as text
                stack.enter_context(reading_input(model, x, kwargs.get("attention_mask")))
            ctx = before(inner, args, kwargs)
            if ctx is not None:
                stack.enter_context(ctx)
            return inner(*args, **kwargs)

    model.forward = types.MethodType(forward, model)
    try:
        yield
    finally:
        if had_own:
            model.forward = inner
        else:
            del model.forward


@contextlib.contextmanager
def steer(
    model: HookedTransformer, interventions: Intervention | Sequence[Intervention]
) -> Iterator[HookedTransformer]:
    """Apply interventions (a list, or a single one) as forward hooks for the duration of the block (with a gate
    pre-pass where one is needed)."""
    specs = as_interventions(interventions)
    hooks = collect_hooks(model, specs)
    # gate_prepass wraps model.forward first, so infer_phase's wrapper runs outermost and sets the phase first
    with model.hooks(fwd_hooks=hooks), gate_prepass(model, specs), infer_phase(model, specs):
        yield model


def _phase_dependent(specs: Sequence[Intervention]) -> list[Intervention]:
    """The specs whose action depends on the phase: limited to prompt or generated tokens, or gated."""
    return [s for s in specs if getattr(s, "apply_to", "both") != "both" or getattr(s, "gate", None) is not None]


def _cached_positions(cache) -> int:
    entries = getattr(cache, "entries", None)
    return int(entries[0].past_keys.shape[1]) if entries else 0


@contextlib.contextmanager
def infer_phase(model: HookedTransformer, interventions: Intervention | Sequence[Intervention]) -> Iterator[None]:
    """Set the phase of every forward pass that runs with none set (see :mod:`saesteer.primitives.phase`).

    A pass given a ``past_kv_cache`` that already holds positions reads generated tokens; any other pass reads a
    prompt. A decoding loop without a key-value cache re-reads the prompt with the generated tokens appended, so
    no pass tells them apart: when such a pass follows the prompt pass and an edit depends on the phase, it
    raises a RuntimeError instead of treating generated tokens as prompt."""
    dependent = _phase_dependent(as_interventions(interventions))
    last_prompt: list[torch.Tensor] = []

    def before(forward, args, kwargs):
        if PHASE.get() is not None:
            return None
        cache = kwargs.get("past_kv_cache")
        name = "generated" if cache is not None and _cached_positions(cache) > 0 else "prompt"
        x = args[0] if args else kwargs.get("input")
        if dependent and name == "prompt" and cache is None and torch.is_tensor(x) and x.ndim >= 2:
            prev = last_prompt[0] if last_prompt else None
            if (
                prev is not None
                and prev.shape[0] == x.shape[0]
                and x.shape[1] > prev.shape[1]
                and prev.dtype == x.dtype
                and torch.equal(x[:, : prev.shape[1]], prev)
            ):
                spec = dependent[0]
                raise RuntimeError(
                    f"a forward pass re-reads the previous prompt ({prev.shape[1]} positions) with {x.shape[1] - prev.shape[1]} "
                    f"more appended and no key-value cache, so its generated tokens cannot be told from prompt tokens; "
                    f"{type(spec).__name__} (apply_to={getattr(spec, 'apply_to', 'both')!r}, gate={type(getattr(spec, 'gate', None)).__name__}) "
                    "depends on that. Decode with a key-value cache (saesteer.generation.generate, "
                    "model.generate(use_past_kv_cache=True), or past_kv_cache=... in your own loop), or set the phase "
                    "yourself with saesteer.primitives.phase.phase('generated')"
                )
            last_prompt[:] = [x.detach()]
        return phase(name)

    with _around_forward(model, before):
        yield
