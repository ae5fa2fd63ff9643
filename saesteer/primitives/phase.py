"""The generation phase: which kind of token a forward pass reads.

``PHASE`` is ``"prompt"`` while the model reads a prompt, ``"generated"`` while it decodes new
tokens through a key-value cache, ``"gate"`` in the pre-pass over the prompt in which gates that
read later than the edits they gate decide (defences do not act in it), and ``None`` where nobody
said: ``steer`` then infers it for each forward pass from the pass itself (a pass that continues a
non-empty key-value cache reads generated tokens), so edits limited to prompt or generated tokens
act the same under saesteer's ``generate``, TransformerLens's ``model.generate`` and a hand-written
decoding loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal, Optional

from saesteer.checks import check_choice, choices

#: Which tokens an edit acts on.
ApplyTo = Literal["prompt", "generated", "both"]
APPLY_TO: tuple[str, ...] = choices(ApplyTo)

PHASE: ContextVar[Optional[str]] = ContextVar("saesteer_phase", default=None)


def check_apply_to(value: str, what: str) -> str:
    """``value`` if it is one of :data:`APPLY_TO`, else ``what must be one of (...), got value``."""
    return check_choice(value, ApplyTo, what)


def token_phase() -> str:
    """ "prompt" or "generated": the kind of token being read (the gate pre-pass reads the prompt)."""
    return "generated" if PHASE.get() == "generated" else "prompt"


def reading_prompt() -> bool:
    """True in a pass over the prompt proper (not the gate pre-pass, not decoding)."""
    return PHASE.get() in (None, "prompt")


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Set the phase for the forward passes run inside the block."""
    token = PHASE.set(name)
    try:
        yield
    finally:
        PHASE.reset(token)


#: The model, token ids [batch, pos] and attention mask (or None) of the forward pass being run, set by ``steer``
#: around every pass over token ids, for readers that need the text rather than the residual stream (a gate that
#: classifies the prompt's words); None outside ``steer`` or in a pass over embeddings.
INPUT: ContextVar[Optional[tuple[Any, Any, Any]]] = ContextVar("saesteer_input", default=None)


@contextlib.contextmanager
def reading_input(model: Any, tokens: Any, attention_mask: Any = None) -> Iterator[None]:
    """Make ``(model, tokens, attention_mask)`` the :data:`INPUT` of the forward passes run inside the block."""
    token = INPUT.set((model, tokens, attention_mask))
    try:
        yield
    finally:
        INPUT.reset(token)
