"""What every refusal judge shares: its errors and the three outcomes of a response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

from saesteer.checks import choices


class JudgeError(ValueError):
    """Bad input to a judge (a non-string response, an empty substring list, unknown outcomes)."""


#: A response is refused, complied with, or incoherent (broken text, counted as neither).
Outcome = Literal["refusal", "compliance", "incoherent"]
OUTCOMES: tuple[str, ...] = choices(Outcome)


def outcome_rates(outcomes: Sequence[str]) -> dict[str, float]:
    """The share of each outcome: {"refusal": ..., "compliance": ..., "incoherent": ...}."""
    if not outcomes:
        raise JudgeError("outcome_rates needs at least one outcome, got none")
    bad = sorted(set(outcomes) - set(OUTCOMES))
    if bad:
        raise JudgeError(f"unknown outcomes {bad}; expected some of {list(OUTCOMES)}")
    return {o: sum(1 for x in outcomes if x == o) / len(outcomes) for o in OUTCOMES}


def judge_responses(
    judge: Any, responses: Sequence[str], prompts: Optional[Sequence[str]] = None
) -> tuple[list[bool], list[str]]:
    """(refused, outcomes) of ``responses`` by ``judge`` (outcomes empty for a judge without ``.outcomes``); the
    prompts, one per response, go to a judge that reads them (``reads_prompts``)."""
    if prompts is not None and getattr(judge, "reads_prompts", False):
        refused = judge.batch(responses, prompts)
        return refused, judge.outcomes(responses, prompts)
    refused = judge.batch(responses)
    return refused, judge.outcomes(responses) if hasattr(judge, "outcomes") else []
