"""Shared argument checks: finite numbers and lists of prompts, each failing with one line.

This module imports nothing from saesteer, so every other module (configs, interventions,
evaluation) can use it without an import cycle; torch is imported only to check a tensor.

* :func:`check_finite_fields`: every float field of a settings dataclass (and every float in
  its list / tuple / dict fields) is finite; called first in each config ``__post_init__``.
  NaN or inf would otherwise pass range checks written as ``x > bound`` (``nan > 0.1`` is
  False) and silently switch a filter off.  No saesteer setting uses inf as a sentinel.
* :func:`check_finite` / :func:`check_finite_tensor`: one number or a tensor of values.
* :func:`check_prompts`: a list of prompt strings, not a ``str`` (which would be read
  character by character).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Iterator

__all__ = ["check_finite", "check_finite_fields", "check_finite_tensor", "check_prompts", "non_finite"]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def non_finite(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every NaN / inf number in ``value``: a number, or one inside lists, tuples and dicts."""
    if _is_real(value):
        if not math.isfinite(float(value)):
            yield path, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from non_finite(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from non_finite(v, f"{path}[{k!r}]")


def check_finite_fields(obj: Any, name: str | None = None) -> None:
    """ValueError naming the first field of dataclass ``obj`` that holds NaN or inf.

    ``ClassName.field=nan; expected a finite number`` (``field[i]`` inside a list).  Nested
    dataclasses are left to their own ``__post_init__``; tensors are not looked at."""
    prefix = name or type(obj).__name__
    for f in dataclasses.fields(obj):
        for path, value in non_finite(getattr(obj, f.name), f.name):
            raise ValueError(f"{prefix}.{path}={value!r}; expected a finite number")


def check_finite(value: Any, name: str) -> float:
    """``float(value)``, or a one-line error: TypeError when it is not a real number, ValueError when NaN / inf."""
    if not _is_real(value) and callable(getattr(value, "numel", None)) and value.numel() == 1:
        value = value.item()  # a one-element tensor
    if not _is_real(value):
        raise TypeError(f"{name}={value!r} is {type(value).__name__}; expected a finite number")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}={value!r}; expected a finite number")
    return float(value)


def check_finite_tensor(t: Any, name: str) -> Any:
    """Tensor ``t`` unchanged, or a one-line ValueError counting and locating its NaN / inf entries."""
    import torch  # here: configs import this module without torch

    if not torch.is_tensor(t):
        raise TypeError(f"{name} is {type(t).__name__}; expected a torch.Tensor")
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            n = int(bad.sum())
            first = [int(i) for i in bad.nonzero()[0].tolist()]
            at = f" (first at index {first[0] if len(first) == 1 else tuple(first)})" if first else ""
            raise ValueError(f"{name} contains NaN or inf values: {n} of {t.numel()}{at}; expected finite values")
    return t


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[:n] + "..."


def check_prompts(prompts: Any, name: str = "prompts") -> Any:
    """``prompts`` unchanged when it is a sized collection of strings (a list, tuple, PromptSet ...).

    TypeError otherwise, naming the argument: ``prompts is a str ('bomb'); expected a list of
    prompt strings``.  A plain string is the usual mistake: it would be read character by character."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{name} is a {type(prompts).__name__} ({_short(prompts)!r}); expected a list of prompt strings")
    if not hasattr(prompts, "__len__") or not hasattr(prompts, "__iter__"):
        raise TypeError(f"{name} is a {type(prompts).__name__}; expected a list of prompt strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            shown = repr(p) if len(repr(p)) <= 40 else repr(p)[:40] + "..."
            kind = type(p).__name__
            raise TypeError(f"{name}[{i}] is {'an' if kind[:1] in 'aeiou' else 'a'} {kind} ({shown}); expected a list of prompt strings")
    return prompts
