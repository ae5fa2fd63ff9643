"""Refusal judges behind one interface: ``judge(response) -> bool`` (refused), ``judge.batch(responses)``,
``judge.refusal_rate(responses)`` and three outcomes, ``judge.outcome(response)`` ("refusal", "compliance" or
"incoherent").

- ``substring``: the JailbreakBench substrings of Arditi et al. 2024 (:mod:`saesteer.judge.substring`), for
  figures comparable with the paper;
- ``rules``: prefixes, substrings and patterns read in the response's opening (:mod:`saesteer.judge.rules`);
- ``learned``: a logistic-regression head on MiniLM sentence features, cues and the two judges' verdicts, trained
  on human labels by ``saesteer judge-train`` (:mod:`saesteer.judge.learned`); it also takes the prompts.

Incoherent text (:mod:`saesteer.judge.coherence`) is flagged before any of them decides.  Jobs judge with the ``judge``
config group's judge (:class:`saesteer.config.JudgeConfig`, ``learned`` unless ``judge=`` says otherwise), set for
the job's duration by :func:`use_judge`; :func:`default_judge` is what an evaluation called without a judge uses:
that judge inside a job, the substring judge outside one (a library call loads no MiniLM unless asked to).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from saesteer.judge.base import OUTCOMES, JudgeError, Outcome, judge_responses, outcome_rates
from saesteer.judge.coherence import incoherence
from saesteer.judge.rules import REFUSAL_PATTERNS, REFUSAL_PREFIXES, RulesJudge
from saesteer.judge.substring import REFUSAL_SUBSTRINGS, RefusalJudge, is_refusal, refusal_rate

__all__ = [
    "OUTCOMES",
    "REFUSAL_PATTERNS",
    "REFUSAL_PREFIXES",
    "REFUSAL_SUBSTRINGS",
    "JudgeError",
    "LearnedJudge",
    "Outcome",
    "RefusalJudge",
    "RulesJudge",
    "default_judge",
    "incoherence",
    "is_refusal",
    "judge_responses",
    "outcome_rates",
    "refusal_rate",
    "use_judge",
]


def __getattr__(name: str) -> Any:
    """``LearnedJudge`` is imported at first use: it brings torch and transformers."""
    if name == "LearnedJudge":
        from saesteer.judge.learned import LearnedJudge

        return LearnedJudge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_current: contextvars.ContextVar[Any] = contextvars.ContextVar("saesteer_judge", default=None)


def default_judge() -> Any:
    """The judge set by :func:`use_judge` (in a job: the ``judge`` group's, by default the learned judge), else the
    substring judge: library calls outside a job judge as Arditi et al. do and load no MiniLM."""
    judge = _current.get()
    return judge if judge is not None else RefusalJudge()


@contextlib.contextmanager
def use_judge(judge: Any) -> Iterator[Any]:
    """Make ``judge`` the default of every evaluation in the block."""
    if not callable(judge) or not hasattr(judge, "batch"):
        raise JudgeError(f"use_judge: {judge!r} is not a judge (callable, with .batch)")
    token = _current.set(judge)
    try:
        yield judge
    finally:
        _current.reset(token)
