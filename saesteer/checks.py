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
* :func:`check_choice_fields`: every field typed as a choice holds one of its values.  A choice
  is a ``Literal[...]`` type defined once (``saesteer.primitives.phase.ApplyTo``, ...); a
  settings field that Hydra composes is typed ``Annotated[str, TheLiteral]`` (OmegaConf 2.3
  cannot type a field as a ``Literal``: to it the field is a ``str``), and its values are
  checked in ``__post_init__``: ``group.field must be one of ('a', 'b'), got 'c'``.
* :func:`check_positive_ints`, :func:`check_number`, :func:`check_layers`: integer counts, bounded
  numbers and layer indices of a settings dataclass, named ``group.field``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, Optional, Union

__all__ = [
    "check_choice",
    "check_choice_fields",
    "check_finite",
    "check_finite_fields",
    "check_finite_tensor",
    "check_layers",
    "check_number",
    "check_positive_ints",
    "check_prompts",
    "choices",
    "non_finite",
]


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


def check_known_keys(cls: type, d: Mapping[str, Any], group: str) -> None:
    """A ValueError naming the keys of ``d`` that are not fields of the dataclass ``cls`` (the ``group`` config)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {group} config keys {sorted(unknown)}; expected some of {sorted(known)}")


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
        raise TypeError(
            f"{name} is a {type(prompts).__name__} ({_short(prompts)!r}); expected a list of prompt strings"
        )
    if not hasattr(prompts, "__len__") or not hasattr(prompts, "__iter__"):
        raise TypeError(f"{name} is a {type(prompts).__name__}; expected a list of prompt strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            shown = repr(p) if len(repr(p)) <= 40 else repr(p)[:40] + "..."
            kind = type(p).__name__
            raise TypeError(
                f"{name}[{i}] is {'an' if kind[:1] in 'aeiou' else 'a'} {kind} ({shown}); expected a list of prompt strings"
            )
    return prompts


# ----------------------------------------------------------------------------- choices and ranges of settings


def choices(kind: Any) -> tuple:
    """The values a choice type allows: a ``Literal[...]``, or the ``Literal`` in ``Annotated[str, Literal[...]]``."""
    if typing.get_origin(kind) is Annotated:
        for meta in kind.__metadata__:
            if typing.get_origin(meta) is Literal:
                return typing.get_args(meta)
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)
    raise TypeError(f"{kind!r} is not a choice type (Literal[...] or Annotated[str, Literal[...]])")


def check_choice(value: Any, kind: Any, what: str) -> Any:
    """``value`` if it is one of the values of choice type ``kind``, else ``what must be one of (...), got value``."""
    allowed = choices(kind)
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return value


@functools.cache
def _choice_fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(field, choice type, may be None) of every field of dataclass ``cls`` typed as a choice."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            hint = args[0] if len(args) == 1 else hint
        try:
            choices(hint)
        except TypeError:
            continue
        out.append((f.name, hint, optional))
    return tuple(out)


def check_choice_fields(obj: Any, prefix: str) -> None:
    """Every field of dataclass ``obj`` typed as a choice holds one of its values (None where it is Optional)."""
    for name, kind, optional in _choice_fields(type(obj)):
        value = getattr(obj, name)
        if value is None and optional:
            continue
        check_choice(value, kind, f"{prefix}.{name}")


def check_positive_ints(obj: Any, prefix: str, *names: str) -> None:
    """Each of the fields ``names`` of ``obj`` is a positive integer or None: ``prefix.name must be a positive integer``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{prefix}.{name} must be a positive integer, got {value!r}")


def check_number(
    obj: Any, prefix: str, name: str, *, low: float = 0.0, strict: bool = True, high: Optional[float] = None
) -> None:
    """Field ``name`` of ``obj`` is a finite number above ``low`` (at least ``low`` unless ``strict``), at most ``high``."""
    value = getattr(obj, name)
    ok = _is_real(value) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        rel = ">" if strict else ">="
        bound = f" and <= {high}" if high is not None else ""
        raise ValueError(f"{prefix}.{name} must be a number {rel} {low}{bound}, got {value!r}")


def check_layers(prefix: str, name: str, value: Any) -> None:
    """``value`` is None, a non-negative layer index or a non-empty list of them."""
    if value is None:
        return
    items = [value] if isinstance(value, int) else list(value)
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in items) or (
        not isinstance(value, int) and not items
    ):
        raise ValueError(
            f"{prefix}.{name} must be a non-negative layer index (or a non-empty list of them) or null, got {value!r}"
        )
