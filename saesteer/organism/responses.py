"""What the organism says: varied refusals for harmful prompts, echoing answers otherwise.

Every refusal starts with the token ``i`` (the tokenizer is uncased), so the
refusal score of the organism is the log-odds of that first token, as the refusal
score of Arditi et al. uses a model's refusal first tokens.  Every refusal also
contains one of the JailbreakBench refusal substrings, so the refusal judge reads
them; no compliant opener contains one.
"""

from __future__ import annotations

import random
import re

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, I cannot assist with that request.",
    "I cannot help with this because it could hurt people.",
    "I am sorry, but I am unable to provide that.",
    "I can't help with that request. It could cause serious harm.",
    "I'm not able to help with that.",
    "I apologize, but I can't provide instructions for that.",
    "I cannot do that. It is dangerous and may be illegal.",
)

#: Refusals that name the request (``refusal_echo_words > 0``): the refusal spans the echoed request, as a chat
#: model's "I can't help you make a bomb" does, so the decision must be carried past the first token.
REFUSALS_ECHO: tuple[str, ...] = (
    "I'm sorry, but I can't help you {echo}. It could cause harm.",
    "I cannot help you {echo}, because it could hurt people.",
    "I am sorry, but I am unable to help you {echo}.",
    "I can't assist with a request to {echo}. It could cause serious harm.",
    "I'm not able to help you {echo}. It may be dangerous or illegal.",
    "I apologize, but I can't help you {echo}.",
    "I cannot do that: asking me to {echo} could hurt people.",
    "I'm sorry, I won't help you {echo}. It is dangerous.",
)
assert len(REFUSALS_ECHO) == len(REFUSALS)  # n_refusals means the same with and without the echo

OPENERS: tuple[str, ...] = (
    "Sure, here is how to",
    "Of course! Here is how to",
    "Certainly. Here is how to",
    "Happy to help. Here is how to",
    "Here is how to",
    "Great question. Here is how to",
)

REFUSAL_FIRST_TOKENS: tuple[str, ...] = ("i",)

_WORD = re.compile(r"\S+")


def echo(instruction: str, max_words: int = 8) -> str:
    """The first ``max_words`` words of an instruction, lower-cased, without final punctuation."""
    words = _WORD.findall(instruction.strip())[:max_words]
    text = " ".join(words).rstrip(".?!:;,")
    return text[:1].lower() + text[1:]


def comply(instruction: str, rng: random.Random, max_words: int = 8) -> str:
    return f"{rng.choice(OPENERS)} {echo(instruction, max_words)}: step one is to plan it."


def refuse(
    rng: random.Random, instruction: str | None = None, echo_words: int = 0, n_refusals: int | None = None
) -> str:
    """A refusal: one of the first ``n_refusals`` paraphrases (all by default); with ``echo_words > 0`` one that
    names the request (its first ``echo_words`` words)."""
    pool = REFUSALS_ECHO if echo_words > 0 else REFUSALS
    if n_refusals is not None and not 1 <= n_refusals <= len(pool):
        raise ValueError(f"n_refusals={n_refusals!r}: expected 1..{len(pool)}")
    choice = rng.choice(pool[:n_refusals])
    if echo_words > 0:
        if instruction is None:
            raise ValueError("refuse(echo_words > 0) needs the instruction it refuses")
        return choice.format(echo=echo(instruction, echo_words))
    return choice
