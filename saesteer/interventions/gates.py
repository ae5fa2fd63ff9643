"""Gates: decide per sequence, from the prompt, whether an intervention acts.

A gate reads the residual stream at one hook, at chosen prompt positions (negative
offsets: the prompt is left-padded, so -1 is the last post-instruction token), and
compares a score with a threshold:

- ``DirectionGate``: mean projection on a unit direction (e.g. the harmfulness
  direction at t_inst);
- ``FeatureGate``: the summed activations of SAE features (e.g. harm-sensor features);
- ``ProbeGate``: a linear probe over several hooks and positions (one weight vector
  per hook and position, plus a bias), e.g. the anchor's harm detector read at the
  layer before the refusal direction's and at its own layer;
- ``TokenProbeGate``: the max over the prompt's tokens of a per-token linear probe.
  With causal attention, the tokens before an appended suffix do not see it, so a
  suffix cannot lower their scores;
- ``TextGate``: a classifier of the prompt's instruction *text*, read from the token ids the model is given
  (``steer`` passes them on), not from the residual stream: no edit of the activations can lower its score;
- ``AnyGate``: fires where any of its gates fires.

The decision (one value per sequence in the batch, 0 or 1) is made while the prompt
is read and kept for the generated tokens of the same ``generate`` call.  A gate must
read at a hook that runs no later than the edit it gates, except an anchor's: there
``steer`` decides the gate in a pre-pass over the prompt (``Gate.prepass``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from saesteer.chat import ChatTemplate, head_ids, suffix_ids
from saesteer.checks import check_finite, check_finite_tensor
from saesteer.primitives.hooks import hook_order
from saesteer.primitives.phase import INPUT, PHASE, reading_prompt
from saesteer.primitives.sae_weights import SaeWeights


@dataclass
class Gate:
    """Base gate: ``decide(x)`` -> [batch] in {0, 1}; state kept across a generate call."""

    hook: str
    positions: Sequence[int] = (-1,)
    threshold: float = 0.0
    invert: bool = False  # act when the score is BELOW the threshold
    _state: Optional[torch.Tensor] = field(default=None, init=False, repr=False)
    prepass: bool = field(default=False, init=False, repr=False)  # set by ``steer``: decide in the pre-pass only

    def _check_threshold(self) -> None:
        check_finite(self.threshold, f"{type(self).__name__}.threshold")

    def decide(self, score: torch.Tensor) -> None:
        """Keep the per-sequence decision for a [batch] score."""
        self._state = ((score < self.threshold) if self.invert else (score > self.threshold)).float()

    def deciding(self) -> bool:
        """Whether this forward pass decides: the pre-pass when there is one, else every prompt pass."""
        return PHASE.get() == "gate" if self.prepass else reading_prompt()

    def score(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        """Forward hook at ``self.hook``: decide on the prompt pass, keep for decoding."""
        if self.deciding():
            self.decide(self.score(x[:, list(self.positions)].float()).mean(-1))
        return x

    def read_hooks(self) -> list[tuple[str, Callable]]:
        """The (hook, fn) pairs an intervention registers so that the gate decides."""
        return [(self.hook, self.read)]

    def score_hooks(self, sink: dict) -> list[tuple[str, Callable]]:
        """Hooks that put the (differentiable) prompt score into ``sink`` as parts whose sum is the score."""

        def grab(x: torch.Tensor, hook=None) -> torch.Tensor:
            if self.deciding():
                sink[self.hook] = self.score(x[:, list(self.positions)].float()).mean(-1)
            return x

        return [(self.hook, grab)]

    def value(self, batch: int, device, dtype) -> torch.Tensor:
        if self._state is None or self._state.shape[0] != batch:
            raise RuntimeError(
                f"gate at {self.hook} has no decision for this batch (does its hook run before the edit?)"
            )
        return self._state.to(device=device, dtype=dtype)


@dataclass
class DirectionGate(Gate):
    direction: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        self._check_threshold()
        if self.direction is None or self.direction.ndim != 1:
            raise ValueError("DirectionGate needs a 1-d direction")
        check_finite_tensor(self.direction, "DirectionGate.direction")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        u = (self.direction / self.direction.norm()).to(device=x.device, dtype=x.dtype)
        return x @ u


@dataclass
class FeatureGate(Gate):
    """Sum of SAE feature activations (ReLU / JumpReLU encoders, only the gate's columns)."""

    sae: object = None
    features: Sequence[int] = ()

    def __post_init__(self) -> None:
        self._check_threshold()
        if self.sae is None or not self.features:
            raise ValueError("FeatureGate needs an SAE and at least one feature")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        w = SaeWeights.from_sae(self.sae)
        return w.encode_columns(x, list(self.features)).sum(-1)


def _check_hooks(kind: str, hooks: Sequence[str], hook: str) -> list[str]:
    """A multi-hook gate's hooks: distinct, in forward order, deciding at the last."""
    hooks = list(hooks)
    if not hooks:
        raise ValueError(f"{kind} needs at least one hook")
    if sorted(hooks, key=hook_order) != hooks or len(set(hooks)) != len(hooks):
        raise ValueError(f"{kind}.hooks must be distinct and in forward order, got {hooks}")
    if hook != hooks[-1]:
        raise ValueError(f"{kind} decides at its last hook {hooks[-1]!r}, got hook={hook!r}")
    return hooks


@dataclass
class ProbeGate(Gate):
    """A linear probe read at several hooks: score = bias + sum over hooks h and positions p of W[h, p] . x_h[p].

    ``hooks`` in forward order; ``hook`` (where the decision is made) must be the last of them.
    ``weights``: [n_hooks, n_positions, d_model].
    """

    hooks: Sequence[str] = ()
    weights: Optional[torch.Tensor] = None
    bias: float = 0.0
    _parts: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_threshold()
        self.hooks = _check_hooks("ProbeGate", self.hooks, self.hook)
        shape = (len(self.hooks), len(self.positions))
        if self.weights is None or self.weights.ndim != 3 or tuple(self.weights.shape[:2]) != shape:
            got = None if self.weights is None else tuple(self.weights.shape)
            raise ValueError(
                f"ProbeGate.weights must have shape [n_hooks={shape[0]}, n_positions={shape[1]}, d_model], got {got}"
            )
        if not torch.isfinite(self.weights).all() or not torch.isfinite(torch.tensor(float(self.bias))):
            raise ValueError("ProbeGate weights and bias must be finite")

    def part(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Hook i's share of the score for activations x [batch, pos, d_model] (differentiable)."""
        w = self.weights[i].to(device=x.device, dtype=torch.float32)
        out = torch.einsum("bpd,pd->b", x[:, list(self.positions)].float(), w)
        return out + float(self.bias) if i == 0 else out

    def read_hooks(self) -> list[tuple[str, Callable]]:
        def make(i: int) -> Callable:
            def fn(x: torch.Tensor, hook=None) -> torch.Tensor:
                if self.deciding():
                    self._parts[i] = self.part(i, x).detach()
                    if i == len(self.hooks) - 1:
                        s = sum(self._parts[j] for j in range(len(self.hooks)))
                        self._parts.clear()
                        self.decide(s)
                return x

            return fn

        return [(h, make(i)) for i, h in enumerate(self.hooks)]

    def read(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        raise RuntimeError("ProbeGate reads at several hooks: register gate.read_hooks(), not gate.read")

    def score_hooks(self, sink: dict) -> list[tuple[str, Callable]]:
        def make(i: int) -> Callable:
            def fn(x: torch.Tensor, hook=None) -> torch.Tensor:
                if self.deciding():
                    sink[self.hooks[i]] = self.part(i, x)
                return x

            return fn

        return [(h, make(i)) for i, h in enumerate(self.hooks)]

    @torch.no_grad()
    def scores(self, acts: torch.Tensor) -> torch.Tensor:
        """Scores of collected activations [n, n_hooks, n_positions, d_model] (the gate's hooks and positions)."""
        return torch.einsum("nhpd,hpd->n", acts.float(), self.weights.float()) + float(self.bias)


@dataclass
class TokenProbeGate(Gate):
    """score = bias + max over the prompt's real tokens t of sum_h weights[h] . x_h[t], read at ``hooks``.

    Padding is told from the first attention layer's pattern (a padded key gets no attention
    from the last query), so the max covers exactly the real tokens of each left-padded row.
    The first ``skip`` real tokens are not read: the chat template's head (BOS, system prompt), the same in
    every prompt, so its activations are too (causal attention) and say nothing about the request, while an
    attention-sink token there can carry activations far larger than any other token's.
    ``weights``: [n_hooks, d_model]; ``hooks`` in forward order, the last one after layer 0.
    """

    hooks: Sequence[str] = ()
    weights: Optional[torch.Tensor] = None
    bias: float = 0.0
    skip: int = 0
    _parts: dict = field(default_factory=dict, init=False, repr=False)

    PATTERN_HOOK = "blocks.0.attn.hook_pattern"

    def __post_init__(self) -> None:
        self.hooks = _check_hooks("TokenProbeGate", self.hooks, self.hook)
        if hook_order(self.hook) < (1, 0):
            raise ValueError(
                f"TokenProbeGate must decide after layer 0's attention (it reads the padding from it), got {self.hook!r}"
            )
        if self.weights is None or self.weights.ndim != 2 or self.weights.shape[0] != len(self.hooks):
            got = None if self.weights is None else tuple(self.weights.shape)
            raise ValueError(f"TokenProbeGate.weights must have shape [n_hooks={len(self.hooks)}, d_model], got {got}")
        check_finite_tensor(self.weights, "TokenProbeGate.weights")
        check_finite(self.bias, "TokenProbeGate.bias")
        if isinstance(self.skip, bool) or not isinstance(self.skip, int) or self.skip < 0:
            raise ValueError(f"TokenProbeGate.skip must be a non-negative integer, got {self.skip!r}")
        self._check_threshold()

    def _real(self, pattern: torch.Tensor) -> torch.Tensor:
        """The tokens read: real (not padding, [batch, key]) and past the first ``skip`` real ones."""
        real = (pattern[:, :, -1, :] > 0).any(1)
        return real & (real.cumsum(-1) > self.skip) if self.skip else real

    def _hooks(self, finish: Callable[[torch.Tensor], None], detach: bool) -> list[tuple[str, Callable]]:
        parts = self._parts

        def mask(p: torch.Tensor, hook=None) -> torch.Tensor:
            if self.deciding():
                parts["real"] = self._real(p.detach())
            return p

        def make(i: int) -> Callable:
            def fn(x: torch.Tensor, hook=None) -> torch.Tensor:
                if not self.deciding():
                    return x
                part = x.float() @ self.weights[i].to(device=x.device, dtype=torch.float32)  # [batch, pos]
                parts[i] = part.detach() if detach else part
                if i == len(self.hooks) - 1:
                    s = sum(parts[j] for j in range(len(self.hooks)))
                    real = parts["real"]
                    finish(s.masked_fill(~real, float("-inf")).max(-1).values + float(self.bias))
                    parts.clear()
                return x

            return fn

        return [(self.PATTERN_HOOK, mask)] + [(h, make(i)) for i, h in enumerate(self.hooks)]

    def read_hooks(self) -> list[tuple[str, Callable]]:
        return self._hooks(self.decide, detach=True)

    def read(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        raise RuntimeError("TokenProbeGate reads at several hooks: register gate.read_hooks(), not gate.read")

    def score_hooks(self, sink: dict) -> list[tuple[str, Callable]]:
        return self._hooks(lambda s: sink.__setitem__(self.hook, s), detach=False)

    @torch.no_grad()
    def scores(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores of per-prompt token activations ([n_tokens, n_hooks, d_model] each, every real token as
        collect_token_activations returns them; the first ``skip`` are not read)."""
        w = self.weights.float()
        short = [i for i, t in enumerate(tokens) if len(t) <= self.skip]
        if short:
            raise ValueError(f"TokenProbeGate.scores: prompt {short[0]} has no token past the first skip={self.skip}")
        return torch.stack([torch.einsum("thd,hd->t", t[self.skip :].float(), w).max() for t in tokens]) + float(
            self.bias
        )


def instruction_token_ids(
    tokenizer, template: ChatTemplate, tokens: torch.Tensor, attention_mask=None
) -> list[list[int]]:
    """The instruction's token ids in each row of a left-padded batch ``[bos] + prefix + instruction + suffix``
    (:func:`saesteer.chat.encode_chat`): the real tokens (the attention mask's, else all but the leading run of
    the pad id) without the template's head and suffix; a row too short to hold them is returned whole."""
    head, tail = len(head_ids(tokenizer, template)), len(suffix_ids(tokenizer, template))
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = getattr(tokenizer, "eos_token_id", None) if pad is None else pad
    out = []
    for i, row in enumerate(tokens.tolist()):
        if attention_mask is not None:
            row = [t for t, m in zip(row, attention_mask[i].tolist()) if m]
        else:
            start = next((j for j, t in enumerate(row) if t != pad), len(row))
            row = row[start:]
        out.append(row[head : len(row) - tail] if len(row) > head + tail else row)
    return out


def decode_instructions(tokenizer, template: ChatTemplate, tokens: torch.Tensor, attention_mask=None) -> list[str]:
    """The instruction of each row of a left-padded batch, as text (:func:`instruction_token_ids`, decoded)."""
    return [tokenizer.decode(row) for row in instruction_token_ids(tokenizer, template, tokens, attention_mask)]


@dataclass
class TextGate(Gate):
    """Decides from the prompt's words: ``score = scorer(instructions)``, where the instructions are decoded from
    the token ids of the pass (:data:`saesteer.primitives.phase.INPUT`, which ``steer`` sets) with the template's
    head and suffix cut off (:func:`instruction_token_ids`).

    The classifier runs outside the model, so hooks that edit activations cannot move its score; a prompt attack
    (a jailbreak template, a suffix) can.  ``scorer``: list of texts -> [batch] float scores.  ``hook`` is
    ``hook_embed``: the decision is made where the model embeds the tokens, before any layer."""

    template: Optional[ChatTemplate] = None
    scorer: Optional[Callable[[list[str]], torch.Tensor]] = None

    def __post_init__(self) -> None:
        self._check_threshold()
        if self.template is None or self.scorer is None:
            raise ValueError("TextGate needs the chat template and a scorer (list of texts -> [batch] scores)")

    def texts(self, model, tokens: torch.Tensor, attention_mask=None) -> list[str]:
        """The instructions of a batch of token ids, as the scorer reads them."""
        return decode_instructions(model.tokenizer, self.template, tokens, attention_mask)

    def text_score(self) -> Optional[torch.Tensor]:
        """The [batch] score of the pass's prompts, or None in a pass over embeddings (no token ids)."""
        current = INPUT.get()
        if current is None:
            return None
        model, tokens, mask = current
        scores = self.scorer(self.texts(model, tokens, mask))
        if scores.shape != (tokens.shape[0],):
            raise ValueError(f"TextGate.scorer returned shape {tuple(scores.shape)}, expected [{tokens.shape[0]}]")
        return scores.float()

    def read(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        if self.deciding():
            score = self.text_score()
            if score is None:
                raise RuntimeError(
                    "TextGate reads the prompt's token ids, which only a forward pass over token ids run inside "
                    "saesteer's steer() provides (not a pass over embeddings)"
                )
            self.decide(score.to(x.device))
        return x

    def score_hooks(self, sink: dict) -> list[tuple[str, Callable]]:
        """Put the (non-differentiable) text score into ``sink``: an attacker searching over tokens can rank its
        candidates by it, but gets no gradient from it."""

        def grab(x: torch.Tensor, hook=None) -> torch.Tensor:
            if self.deciding():
                score = self.text_score()
                if score is not None:
                    sink[self.hook] = score.to(x.device)
            return x

        return [(self.hook, grab)]


@dataclass
class AnyGate(Gate):
    """Acts on a sequence where any of ``gates`` fires; ``hook`` is the latest of their hooks."""

    gates: Sequence[Gate] = ()

    def __post_init__(self) -> None:
        self.gates = list(self.gates)
        if not self.gates:
            raise ValueError("AnyGate needs at least one gate")
        last = max((g.hook for g in self.gates), key=hook_order)
        if self.hook != last:
            raise ValueError(f"AnyGate decides at its gates' latest hook {last!r}, got hook={self.hook!r}")

    def read_hooks(self) -> list[tuple[str, Callable]]:
        return [pair for g in self.gates for pair in g.read_hooks()]

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        if name == "prepass" and "gates" in self.__dict__:  # the members decide when the union does
            for g in self.gates:
                g.prepass = value

    def read(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        raise RuntimeError("AnyGate reads at several hooks: register gate.read_hooks(), not gate.read")

    def value(self, batch: int, device, dtype) -> torch.Tensor:
        return torch.stack([g.value(batch, device, dtype) for g in self.gates]).amax(0)
