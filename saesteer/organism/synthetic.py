"""Synthetic training prompts: hand-written acts filled into shared, neutral framings.

The organism must refuse harmful instructions by *concept*, not by the style of
the few hundred AdvBench-like imperatives it would otherwise see.  This module
builds varied prompts from three bundled, hand-written files under
``saesteer/resources/prompts/synthetic``:

* ``harmful_acts.json`` / ``harmless_acts.json``: ``{"category": ["act", ...]}``.
  An *act* is a lowercase verb phrase in base form that completes "how to ..."
  ("write fake one-star reviews of my rival's restaurant").  Harmless categories
  are either ``lookalike_*`` (safe requests with alarming words: killing a
  process, recognizing a scam, history of a war) or ``ordinary_*`` (everyday
  requests in the same first-person styles as the harmful ones).
* ``framings.json``: ``{"templates", "personas", "contexts"}``.  Templates hold
  ``{act}`` and optionally ``{persona}`` ("a nurse") and ``{context}`` (a neutral
  first-person sentence).  Harmful and harmless prompts use the *same* templates,
  so only the act tells them apart.

Example::

    harmful = synthetic_prompts("harmful", 3000, seed=0)
    harmless = synthetic_prompts("harmless", 3000, seed=0)

None of the acts were written from, or checked against, the held-out benchmark
prompts; filter them with :func:`saesteer.organism.corpus.drop_near_duplicates`
before training all the same.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "LEXICONS",
    "Framings",
    "as_act",
    "framed_prompts",
    "lexicon_texts",
    "load_framings",
    "load_lexicon",
    "load_questions",
    "max_prompts",
    "max_questions",
    "mined_templates",
    "question_prompts",
    "questions_text",
    "synthetic_prompts",
    "with_templates",
]

#: Lexicons (``base``: the organism's default; ``extended``: a superset with 390 more harmful acts and 613 more
#: safe look-alikes in 5 more categories) -> kind -> file under ``saesteer/resources/prompts/synthetic``.
LEXICONS: dict[str, dict[str, str]] = {
    "base": {"harmful": "harmful_acts.json", "harmless": "harmless_acts.json"},
    "extended": {"harmful": "harmful_acts_extended.json", "harmless": "harmless_acts_extended.json"},
    "broad": {"harmful": "harmful_acts_broad.json", "harmless": "harmless_acts_broad.json"},
}
KINDS: dict[str, str] = LEXICONS["base"]
FRAMINGS_FILE = "framings.json"
QUESTIONS_FILE = "questions.json"
PLACEHOLDERS = ("act", "persona", "context")

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Give up on random draws for a category after this many consecutive repeats and
# enumerate what is left instead (only reached when n is close to the maximum).
_MAX_REJECTIONS = 64


@dataclass(frozen=True)
class Framings:
    """Prompt templates and the personas/contexts that fill them."""

    templates: tuple[str, ...]
    personas: tuple[str, ...]
    contexts: tuple[str, ...]

    def fills_per_act(self, template: str) -> int:
        """How many distinct prompts one act yields with ``template``."""
        n = 1
        if "{persona}" in template:
            n *= len(self.personas)
        if "{context}" in template:
            n *= len(self.contexts)
        return n


def _resource_text(name: str) -> str:
    res = importlib.resources.files("saesteer") / "resources" / "prompts" / "synthetic" / name
    return res.read_text(encoding="utf-8")


def _files(lexicon: str) -> dict[str, str]:
    if lexicon not in LEXICONS:
        raise ValueError(f"unknown lexicon {lexicon!r}; expected one of {sorted(LEXICONS)}")
    return LEXICONS[lexicon]


def lexicon_texts(lexicon: str = "base") -> list[str]:
    """The raw text of the lexicon's files and the framings (for cache keys)."""
    return [f"{name}\n{_resource_text(name)}" for name in (*_files(lexicon).values(), FRAMINGS_FILE)]


def _string_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of strings")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise ValueError(f"{where}[{i}] = {item!r}: expected a non-empty, whitespace-stripped string")
        out.append(item)
    if len(set(out)) != len(out):
        dups = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"{where}: duplicate entries {dups[:5]}")
    return tuple(out)


@functools.cache
def _lexicon(kind: str, lexicon: str = "base") -> tuple[tuple[str, tuple[str, ...]], ...]:
    files = _files(lexicon)
    if kind not in files:
        raise ValueError(f"unknown lexicon kind {kind!r}; expected one of {sorted(files)}")
    name = files[kind]
    data = json.loads(_resource_text(name))
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{name}: expected a non-empty object of category -> list of acts")
    seen: dict[str, str] = {}
    out = []
    for category, acts in data.items():
        acts = _string_list(acts, f"{name}[{category!r}]")
        for act in acts:
            if "{" in act or "}" in act:
                raise ValueError(f"{name}[{category!r}]: act {act!r} contains a brace")
            if act in seen:
                raise ValueError(f"{name}: act {act!r} is in both {seen[act]!r} and {category!r}")
            seen[act] = category
        out.append((category, acts))
    return tuple(out)


def load_lexicon(kind: str, lexicon: str = "base") -> dict[str, list[str]]:
    """The bundled acts of ``kind`` ("harmful" or "harmless") in ``lexicon``: category -> acts, in file order.

    Raises:
        ValueError: ``kind`` is unknown, or the file is malformed (empty lists,
            duplicate acts, braces in an act).
    """
    return {category: list(acts) for category, acts in _lexicon(kind, lexicon)}


@functools.cache
def load_framings() -> Framings:
    """The bundled templates, personas and contexts, validated.

    Every template holds ``{act}`` exactly once and no placeholder other than
    ``{act}``, ``{persona}`` and ``{context}`` (each at most once).
    """
    data = json.loads(_resource_text(FRAMINGS_FILE))
    if not isinstance(data, dict):
        raise ValueError(f"{FRAMINGS_FILE}: expected an object with templates, personas and contexts")
    framings = Framings(
        templates=_string_list(data.get("templates"), f"{FRAMINGS_FILE}[templates]"),
        personas=_string_list(data.get("personas"), f"{FRAMINGS_FILE}[personas]"),
        contexts=_string_list(data.get("contexts"), f"{FRAMINGS_FILE}[contexts]"),
    )
    for template in framings.templates:
        names = _PLACEHOLDER.findall(template)
        if names.count("act") != 1 or any(names.count(p) > 1 for p in PLACEHOLDERS):
            raise ValueError(
                f"{FRAMINGS_FILE}: template {template!r} must hold {{act}} once and each other placeholder at most once"
            )
        unknown = set(names) - set(PLACEHOLDERS)
        if unknown:
            raise ValueError(f"{FRAMINGS_FILE}: template {template!r} has unknown placeholders {sorted(unknown)}")
    for label, fills in (("personas", framings.personas), ("contexts", framings.contexts)):
        if any("{" in s or "}" in s for s in fills):
            raise ValueError(f"{FRAMINGS_FILE}[{label}]: entries must not contain braces")
    return framings


def with_templates(extra_templates: tuple[str, ...] = ()) -> Framings:
    """The bundled framings with ``extra_templates`` appended (those already there are skipped)."""
    framings = load_framings()
    extra = tuple(t for t in dict.fromkeys(extra_templates) if t not in framings.templates)
    for template in extra:
        if _PLACEHOLDER.findall(template) != ["act"]:
            raise ValueError(f"extra template {template!r} must hold {{act}} once and no other placeholder")
    return Framings(framings.templates + extra, framings.personas, framings.contexts) if extra else framings


_HOW_TO = re.compile(r"^(?P<prefix>[A-Za-z][A-Za-z ,'-]{2,60}?\b(?:how to))\s+\S", re.IGNORECASE)


def mined_templates(instructions: list[str], min_count: int = 2) -> tuple[str, ...]:
    """Request formats of real prompts as templates: the opening up to "how to" of every instruction
    ("Create a tutorial on how to make a bomb" -> "Create a tutorial on how to {act}."), kept when at least
    ``min_count`` instructions share it; most frequent first.  Used by both classes, a format mined from
    harmful prompts stops being a cue for refusal."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"mined_templates(min_count={min_count!r}): expected a positive int")
    counts: dict[str, int] = {}
    for text in instructions:
        m = _HOW_TO.match(text.strip())
        if m:
            prefix = m.group("prefix")
            prefix = prefix[:1].upper() + prefix[1:]
            counts[prefix] = counts.get(prefix, 0) + 1
    ranked = sorted((p for p, c in counts.items() if c >= min_count), key=lambda p: (-counts[p], p))
    return tuple(f"{p} {{act}}." for p in ranked)


def max_prompts(kind: str, lexicon: str = "base", extra_templates: tuple[str, ...] = ()) -> int:
    """How many distinct prompts :func:`synthetic_prompts` can build for ``kind``."""
    framings = with_templates(extra_templates)
    per_act = sum(framings.fills_per_act(t) for t in framings.templates)
    return per_act * sum(len(acts) for _, acts in _lexicon(kind, lexicon))


def _render(framings: Framings, act: str, template: int, persona: int, context: int) -> str:
    text = framings.templates[template].format(
        act=act, persona=framings.personas[persona], context=framings.contexts[context]
    )
    return text[:1].upper() + text[1:]


class _CategorySampler:
    """Draws unique (act, template, persona, context) fills for one category.

    Acts are visited in a shuffled cycle so they are used evenly; the template,
    persona and context are uniform draws.  A repeat is redrawn; after
    ``_MAX_REJECTIONS`` repeats in a row the remaining fills are enumerated in a
    shuffled order, so the category is only exhausted when every fill is used.
    """

    def __init__(self, acts: tuple[str, ...], framings: Framings, rng: random.Random) -> None:
        self.acts = acts
        self.framings = framings
        self.rng = rng
        self.order = list(range(len(acts)))
        rng.shuffle(self.order)
        self.pos = 0
        self.used: set[tuple[int, int, int, int]] = set()
        self.remaining: list[tuple[int, int, int, int]] | None = None

    def _random_key(self) -> tuple[int, int, int, int]:
        a = self.order[self.pos]
        self.pos += 1
        if self.pos == len(self.order):
            self.pos = 0
            self.rng.shuffle(self.order)
        f = self.framings
        t = self.rng.randrange(len(f.templates))
        template = f.templates[t]
        p = self.rng.randrange(len(f.personas)) if "{persona}" in template else 0
        c = self.rng.randrange(len(f.contexts)) if "{context}" in template else 0
        return a, t, p, c

    def _enumerate_remaining(self) -> list[tuple[int, int, int, int]]:
        f = self.framings
        keys = []
        for a in range(len(self.acts)):
            for t, template in enumerate(f.templates):
                ps = range(len(f.personas)) if "{persona}" in template else (0,)
                cs = range(len(f.contexts)) if "{context}" in template else (0,)
                keys.extend((a, t, p, c) for p in ps for c in cs if (a, t, p, c) not in self.used)
        self.rng.shuffle(keys)
        return keys

    def keys(self) -> Iterator[tuple[int, int, int, int]]:
        """Unused fills, each yielded once, until the category is exhausted."""
        while self.remaining is None:
            for _ in range(_MAX_REJECTIONS):
                key = self._random_key()
                if key not in self.used:
                    self.used.add(key)
                    yield key
                    break
            else:
                self.remaining = self._enumerate_remaining()
        while self.remaining:
            key = self.remaining.pop()
            self.used.add(key)
            yield key

    def prompts(self, seen: set[str]) -> Iterator[str]:
        """Rendered prompts not already in ``seen`` (which the caller updates)."""
        for a, t, p, c in self.keys():
            text = _render(self.framings, self.acts[a], t, p, c)
            if text not in seen:
                yield text


def synthetic_prompts(
    kind: str, n: int, seed: int = 0, lexicon: str = "base", extra_templates: tuple[str, ...] = ()
) -> list[str]:
    """``n`` unique synthetic prompts of ``kind`` ("harmful" or "harmless") from ``lexicon`` ("base" or "extended").

    Prompts cycle through the categories round-robin in file order (prompt ``i``
    comes from category ``i % n_categories`` while no category is exhausted), so
    every category is represented once ``n`` reaches the number of categories.
    Each prompt is a template filled with an act (and a persona/context where the
    template has them), with its first letter capitalized.  The result depends
    only on ``(kind, n, seed)``: all randomness comes from ``random.Random(seed)``,
    and the first ``m`` prompts for ``n`` equal the prompts for ``m`` (same seed).

    Raises:
        ValueError: unknown ``kind``; ``n`` not a positive int; or ``n`` larger than
            the number of unique prompts the lexicon and framings can make.
    """
    acts_by_category = _lexicon(kind, lexicon)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"synthetic_prompts(n={n!r}): expected a positive int")
    limit = max_prompts(kind, lexicon, extra_templates)
    if n > limit:
        raise ValueError(f"synthetic_prompts({kind!r}, n={n}): at most {limit} unique prompts can be generated")
    rng = random.Random(seed)
    framings = with_templates(extra_templates)
    samplers = [_CategorySampler(acts, framings, rng).prompts for _, acts in acts_by_category]
    seen: set[str] = set()
    streams = [sampler(seen) for sampler in samplers]
    out: list[str] = []
    while len(out) < n and streams:
        alive = []
        for stream in streams:
            if len(out) == n:
                alive.append(stream)
                continue
            text = next(stream, None)
            if text is None:
                continue  # category exhausted: drop it from the rotation
            seen.add(text)
            out.append(text)
            alive.append(stream)
        streams = alive
    if len(out) < n:  # only if distinct fills render to the same text
        raise ValueError(f"synthetic_prompts({kind!r}, n={n}): only {len(out)} unique prompts could be generated")
    return out


_NOT_IMPERATIVE = frozenset(
    "how what why who whom whose where when which can could would should will shall is are was were do does did "
    "i i'm my we our you your it there this that these those if in as for".split()
)
MAX_ACT_WORDS = 40


def as_act(instruction: str) -> str | None:
    """An imperative instruction as an act ("Write a poem." -> "write a poem"), or None when it is not one
    (a question, a statement, several sentences or lines, or longer than ``MAX_ACT_WORDS`` words)."""
    text = instruction.strip()
    words = text.split()
    if not words or len(words) > MAX_ACT_WORDS or "\n" in text or text.endswith("?") or "{" in text or "}" in text:
        return None
    if words[0].lower().strip(",:;") in _NOT_IMPERATIVE or not words[0][:1].isalpha():
        return None
    text = text.rstrip(".!")
    if any(mark in text for mark in (". ", "? ", "! ")):
        return None
    if not (len(words[0]) > 1 and words[0][1:2].isupper()):  # keep acronyms ("HTML"), lowercase the verb
        text = text[:1].lower() + text[1:]
    return text


def framed_prompts(instructions: list[str], copies: int, rng: random.Random) -> list[str]:
    """``copies`` renders of each imperative instruction (see :func:`as_act`) in random shared framings:
    real prompts in the first-person styles of the synthetic ones ("As a nurse, how should I {act}?")."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ValueError(f"framed_prompts(copies={copies!r}): expected a non-negative int")
    f = load_framings()
    out: list[str] = []
    for instruction in instructions:
        act = as_act(instruction)
        if act is None:
            continue
        for _ in range(copies):
            t = rng.randrange(len(f.templates))
            out.append(_render(f, act, t, rng.randrange(len(f.personas)), rng.randrange(len(f.contexts))))
    return list(dict.fromkeys(out))


@functools.cache
def load_questions() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The bundled knowledge questions (``questions.json``): group -> (templates, fills), validated.

    A group ("term", "idiom", "event", ...) pairs templates holding ``{x}`` exactly once ("What does the
    expression '{x}' mean?") with fills ("kill time").  Keys starting with ``_`` are comments.
    """
    data = json.loads(_resource_text(QUESTIONS_FILE))
    if not isinstance(data, dict):
        raise ValueError(f"{QUESTIONS_FILE}: expected an object of group -> {{templates, fills}}")
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for group, spec in data.items():
        if group.startswith("_"):
            continue
        if not isinstance(spec, dict) or set(spec) != {"templates", "fills"}:
            raise ValueError(
                f"{QUESTIONS_FILE}[{group!r}]: expected exactly the keys templates and fills, got {spec!r:.80}"
            )
        templates = _string_list(spec["templates"], f"{QUESTIONS_FILE}[{group!r}][templates]")
        fills = _string_list(spec["fills"], f"{QUESTIONS_FILE}[{group!r}][fills]")
        for t in templates:
            if _PLACEHOLDER.findall(t) != ["x"]:
                raise ValueError(
                    f"{QUESTIONS_FILE}[{group!r}]: template {t!r} must hold {{x}} once and no other placeholder"
                )
        bad = [f for f in fills if "{" in f or "}" in f]
        if bad:
            raise ValueError(f"{QUESTIONS_FILE}[{group!r}]: fills must not contain braces, got {bad[:3]}")
        out[group] = (templates, fills)
    if not out:
        raise ValueError(f"{QUESTIONS_FILE}: no question groups")
    return out


def max_questions() -> int:
    """How many distinct questions :func:`question_prompts` can build."""
    return sum(len(t) * len(f) for t, f in load_questions().values())


def questions_text() -> str:
    """The raw text of the questions file (for cache keys)."""
    return f"{QUESTIONS_FILE}\n{_resource_text(QUESTIONS_FILE)}"


def question_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` unique safe knowledge questions with alarming words ("What is a zombie process?", "Why do people
    say 'kill time'?", "What caused the Chernobyl disaster?"): the look-alikes the act lexicons cannot write,
    since every act completes "how to ...".  Groups take turns in file order; within a group every
    (template, fill) pair is drawn once, in an order fixed by ``seed``.

    Raises:
        ValueError: ``n`` not a positive int, or more than the groups can make.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"question_prompts(n={n!r}): expected a positive int")
    groups = load_questions()
    limit = max_questions()
    if n > limit:
        raise ValueError(f"question_prompts(n={n}): at most {limit} unique questions can be generated")
    rng = random.Random(seed)
    queues = []
    for templates, fills in groups.values():
        pairs = [(t, f) for t in templates for f in fills]
        rng.shuffle(pairs)
        queues.append([t.replace("{x}", f) for t, f in pairs])
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n and any(queues):
        for queue in queues:
            while queue and len(out) < n:
                text = queue.pop()
                if text not in seen:
                    seen.add(text)
                    out.append(text)
                    break
    if len(out) < n:  # only if two groups render the same text
        raise ValueError(f"question_prompts(n={n}): only {len(out)} unique questions could be generated")
    return out
