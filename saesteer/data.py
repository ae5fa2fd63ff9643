"""Prompt sets: bundled harmful/harmless splits, local files and Hugging Face datasets.

Every loader returns a :class:`PromptSet`, an immutable, validated, de-duplicated
tuple of instructions with optional categories::

    harmful = load_prompts("harmful_train")                # bundled (Arditi et al. 2024)
    mine = load_prompts("prompts.csv", column="text")      # local .json/.jsonl/.csv/.parquet
    hub = load_prompts("owner/dataset", split="test")      # Hugging Face Hub (needs network)

Instructions are whitespace-stripped; empty ones are dropped and duplicates are
dropped (first occurrence kept) with a logged warning.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesteer.io import hash_strings

logger = logging.getLogger(__name__)

__all__ = ["BUNDLED", "PromptError", "PromptSet", "bundled_path", "load_prompts"]

#: Bundled prompt sets: name -> path relative to ``saesteer/resources/prompts``.
BUNDLED: dict[str, str] = {
    "harmful_train": "splits/harmful_train.json",
    "harmful_val": "splits/harmful_val.json",
    "harmful_test": "splits/harmful_test.json",
    "harmless_train": "splits/harmless_train.json",
    "harmless_val": "splits/harmless_val.json",
    "harmless_test": "splits/harmless_test.json",
    "advbench": "processed/advbench.json",
    "harmbench_val": "processed/harmbench_val.json",
    "harmbench_test": "processed/harmbench_test.json",
    "jailbreakbench": "processed/jailbreakbench.json",
    "malicious_instruct": "processed/malicious_instruct.json",
    "strongreject": "processed/strongreject.json",
    "tdc2023": "processed/tdc2023.json",
    "overrefusal": "overrefusal.json",
    "overrefusal_train": "overrefusal_train.json",
    "overrefusal_val": "overrefusal_val.json",
    "donotanswer": "external/donotanswer.json",
}

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PromptError(ValueError):
    """A prompt source could not be found, loaded or validated."""


@dataclass(frozen=True)
class PromptSet:
    """An immutable list of instructions with one (optional) category each.

    Iterating yields the instructions; ``len`` is their number.
    """

    name: str
    instructions: tuple[str, ...]
    categories: tuple[str | None, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "instructions", tuple(self.instructions))
        object.__setattr__(self, "categories", tuple(self.categories))
        if len(self.instructions) != len(self.categories):
            raise PromptError(
                f"prompt set {self.name!r}: {len(self.instructions)} instructions but "
                f"{len(self.categories)} categories; expected one category (or None) per instruction"
            )

    def __len__(self) -> int:
        return len(self.instructions)

    def __iter__(self) -> Iterator[str]:
        return iter(self.instructions)

    @property
    def data_hash(self) -> str:
        """Short stable hash of the instructions (order-sensitive), for provenance."""
        return hash_strings(self.instructions)

    def category_counts(self) -> dict[str | None, int]:
        """Number of instructions per category, in first-seen order."""
        return dict(Counter(self.categories))

    def take(self, n: int, seed: int | None = None) -> PromptSet:
        """The first ``n`` prompts, or (with ``seed``) a seeded random subset kept in set order."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PromptError(f"take(n={n!r}) on prompt set {self.name!r}: expected a positive int")
        if n > len(self):
            raise PromptError(f"take(n={n}) on prompt set {self.name!r}, which has only {len(self)} prompts")
        if seed is None:
            idx: Sequence[int] = range(n)
        else:
            idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return PromptSet(
            self.name,
            tuple(self.instructions[i] for i in idx),
            tuple(self.categories[i] for i in idx),
        )

    def filter_categories(
        self,
        include: Iterable[str | None] | None = None,
        exclude: Iterable[str | None] | None = None,
    ) -> PromptSet:
        """Keep prompts whose category is in ``include`` (if given) and not in ``exclude``.

        Naming a category the set does not have is an error (it is usually a typo).
        """
        present = set(self.categories)
        inc = _category_set(include)
        exc = _category_set(exclude)
        for label, cats in (("include", inc), ("exclude", exc)):
            unknown = (cats or set()) - present
            if unknown:
                raise PromptError(
                    f"filter_categories({label}=...) on prompt set {self.name!r}: unknown categories "
                    f"{_fmt_categories(unknown)}; present: {_fmt_categories(present)}"
                )
        keep = [i for i, c in enumerate(self.categories) if (inc is None or c in inc) and (exc is None or c not in exc)]
        if not keep:
            raise PromptError(
                f"filter_categories left prompt set {self.name!r} empty (include={include}, exclude={exclude})"
            )
        return PromptSet(
            self.name,
            tuple(self.instructions[i] for i in keep),
            tuple(self.categories[i] for i in keep),
        )


def _category_set(cats: Iterable[str | None] | None) -> set[str | None] | None:
    if cats is None:
        return None
    if isinstance(cats, str):
        return {cats}
    return set(cats)


def _fmt_categories(cats: Iterable[str | None]) -> str:
    items = sorted(cats, key=lambda c: (c is None, str(c)))
    shown = ", ".join(repr(c) for c in items[:20])
    return shown + (f", ... ({len(items)} in all)" if len(items) > 20 else "")


def bundled_path(name: str) -> Path:
    """Filesystem path of the bundled prompt set ``name``."""
    if name not in BUNDLED:
        raise PromptError(_unknown_source_message(name))
    res = importlib.resources.files("saesteer") / "resources" / "prompts" / BUNDLED[name]
    return Path(str(res))


def load_prompts(
    source: str | os.PathLike,
    *,
    column: str = "instruction",
    category_column: str = "category",
    split: str = "train",
    limit: int | None = None,
    seed: int | None = None,
) -> PromptSet:
    """Load and validate a prompt set.

    Args:
        source: a bundled name (see :data:`BUNDLED`), a local ``.json`` (list of
            objects or of strings), ``.jsonl``, ``.csv`` or ``.parquet`` file, or a
            Hugging Face dataset name ``owner/name``.
        column: field holding the instruction text.
        category_column: field holding the category; optional (absent -> None).
        split: dataset split, for Hugging Face datasets only.
        limit: keep at most this many prompts (the first ones, or a seeded random
            subset when ``seed`` is given).
        seed: seed of the random subset taken when ``limit`` is set.

    Raises:
        PromptError: unknown source, unreadable file, missing column, non-string
            instruction, empty set, or a set made only of one repeated prompt.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PromptError(f"limit={limit!r}: expected a positive int or None")

    name, records = _read_source(source, split=split)
    instructions, categories = _extract(records, column=column, category_column=category_column, name=name)
    prompts = _validate(name, instructions, categories)

    if limit is not None and limit < len(prompts):
        prompts = prompts.take(limit, seed=seed)
    elif limit is not None and limit > len(prompts):
        logger.info("prompt set %r has %d prompts, fewer than limit=%d; using all", name, len(prompts), limit)
    logger.debug("loaded %d prompts from %r (hash %s)", len(prompts), name, prompts.data_hash)
    return prompts


# ----------------------------------------------------------------------------- sources


def _read_source(source: str | os.PathLike, *, split: str) -> tuple[str, list[Any]]:
    """Resolve ``source`` to (name, raw records)."""
    if isinstance(source, str) and source in BUNDLED:
        return source, _read_file(bundled_path(source))
    if not isinstance(source, (str, os.PathLike)):
        raise PromptError(f"prompt source must be a str or path, got {type(source).__name__}")
    path = Path(source)
    if path.is_file():
        return path.stem, _read_file(path)
    if path.is_dir():
        raise PromptError(f"prompt source {str(path)!r} is a directory; expected a {'/'.join(FILE_SUFFIXES)} file")
    text = os.fspath(source)
    if path.suffix.lower() in FILE_SUFFIXES or not isinstance(source, str):
        raise PromptError(f"prompt file not found: {text}")
    if _HF_NAME.match(text):
        return f"{text}:{split}", _read_hf(text, split)
    raise PromptError(_unknown_source_message(text))


def _unknown_source_message(text: str) -> str:
    close = difflib.get_close_matches(text, list(BUNDLED), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return (
        f"unknown prompt source {text!r}: not a bundled set, an existing file, or a Hugging Face "
        f"dataset name 'owner/name'.{hint} Bundled sets: {', '.join(BUNDLED)}"
    )


def _read_file(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, list):
                raise PromptError(
                    f"{path}: top-level JSON is {type(data).__name__}; expected a list of objects or of strings"
                )
            return data
        if suffix == ".jsonl":
            records = []
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise PromptError(f"{path}:{lineno}: invalid JSON line: {exc.msg}") from None
            return records
        if suffix in (".csv", ".parquet"):
            import pandas as pd

            if suffix == ".csv":
                # dtype=str and no NA parsing: an empty cell stays "", and is dropped as empty.
                df = pd.read_csv(path, dtype=str, keep_default_na=False)
            else:
                df = pd.read_parquet(path)
            return df.to_dict(orient="records")
    except PromptError:
        raise
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as exc:
        raise PromptError(f"could not read prompt file {path}: {type(exc).__name__}: {exc}") from None
    raise PromptError(
        f"prompt file {path} has unsupported extension {suffix!r}; expected one of {', '.join(FILE_SUFFIXES)}"
    )


def _read_hf(name: str, split: str) -> list[Any]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
        return ds.to_list()
    except Exception as exc:  # noqa: BLE001 - any failure means "could not load", reported in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PromptError(
            f"could not load Hugging Face dataset {name!r} (split {split!r}): {type(exc).__name__}: {first}. "
            "The Hub may be unreachable (offline?); pass a local .json/.jsonl/.csv/.parquet file instead"
        ) from None


# ----------------------------------------------------------------------------- validation


def _extract(records: list[Any], *, column: str, category_column: str, name: str) -> tuple[list[str], list[str | None]]:
    """Pull (instruction, category) pairs out of raw records, checking types."""
    if records and isinstance(records[0], str):  # a plain list of strings
        for i, text in enumerate(records):
            if not isinstance(text, str):
                raise PromptError(f"{name}: instruction {i} is {type(text).__name__}, expected str")
        return list(records), [None] * len(records)
    instructions: list[str] = []
    categories: list[str | None] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise PromptError(
                f"{name}: record {i} is {type(rec).__name__}; expected an object with a {column!r} field or a string"
            )
        if column not in rec:
            raise PromptError(f"{name}: record {i} has no column {column!r}; columns present: {sorted(rec)}")
        text = rec[column]
        if not isinstance(text, str):
            raise PromptError(f"{name}: instruction {i} (column {column!r}) is {type(text).__name__}, expected str")
        instructions.append(text)
        categories.append(_category(rec.get(category_column)))
    return instructions, categories


def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else str(value)


def _validate(name: str, instructions: list[str], categories: list[str | None]) -> PromptSet:
    n_raw = len(instructions)
    if n_raw == 0:
        raise PromptError(f"prompt set {name!r} is empty")
    kept_text: list[str] = []
    kept_cat: list[str | None] = []
    seen: set[str] = set()
    n_empty = n_dup = 0
    for text, cat in zip(instructions, categories):
        text = text.strip()
        if not text:
            n_empty += 1
            continue
        if text in seen:
            n_dup += 1
            continue
        seen.add(text)
        kept_text.append(text)
        kept_cat.append(cat)
    if not kept_text:
        raise PromptError(
            f"prompt set {name!r} has no non-empty instructions ({n_raw} entries, all empty or whitespace)"
        )
    if len(kept_text) == 1 and n_dup > 0:
        raise PromptError(f"prompt set {name!r} is one prompt repeated {n_dup + 1} times: {kept_text[0][:80]!r}")
    if n_empty:
        logger.warning("prompt set %r: dropped %d empty instruction(s)", name, n_empty)
    if n_dup:
        logger.warning("prompt set %r: dropped %d duplicate instruction(s), kept first occurrences", name, n_dup)
    return PromptSet(name, tuple(kept_text), tuple(kept_cat))


#: the prompt roles a data config names (each a bundled set, a local file or a dataset)
ROLES = (
    "harmful_train",
    "harmless_train",
    "harmful_val",
    "harmless_val",
    "harmful_test",
    "harmless_test",
    "overrefusal",
    "overrefusal_train",
    "overrefusal_val",
)


def load_role(data_cfg: Any, role: str):
    """The prompt set for a data role (``harmful_train`` ...), limited as the data config says."""
    if role not in ROLES:
        raise ValueError(f"unknown data role {role!r}; expected one of {', '.join(ROLES)}")
    source = getattr(data_cfg, role)
    limit = {
        "harmful_train": data_cfg.n_train,
        "harmless_train": data_cfg.n_train,
        "harmful_val": data_cfg.n_val,
        "harmless_val": data_cfg.n_val,
        "harmful_test": data_cfg.n_test,
        "harmless_test": data_cfg.n_test_harmless,
    }.get(role)
    prompts = load_prompts(source)
    if limit is not None and len(prompts) > limit:
        prompts = prompts.take(limit, seed=data_cfg.seed)
    return prompts
