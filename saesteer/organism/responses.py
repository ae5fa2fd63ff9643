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


def refuse(rng: random.Random) -> str:
    return rng.choice(REFUSALS)
