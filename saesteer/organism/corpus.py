"""The organism's training corpus, assembled from bundled prompt sets only.

Harmful training prompts come from ``harmful_train``, ``harmful_val`` and the
AdvBench prompts that are not in (nor near-duplicates of) ``harmful_test``;
harmless ones from ``harmless_train``.  ``harmful_test`` and ``harmless_test`` are
held out: they are never trained or selected on.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass

from saesteer.data import load_prompts
from saesteer.io import hash_strings

log = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[^a-z0-9 ]+")


def _words(text: str) -> frozenset[str]:
    return frozenset(_NON_WORD.sub(" ", text.lower()).split())


def near_duplicate(a: frozenset[str], b: frozenset[str], threshold: float = 0.7) -> bool:
    """Jaccard similarity of word sets at or above ``threshold``."""
    if not a or not b:
        return False
    return len(a & b) / len(a | b) >= threshold


def drop_near_duplicates(candidates: list[str], held_out: list[str], threshold: float = 0.7) -> list[str]:
    """Remove candidates equal or near-equal (word Jaccard) to any held-out prompt.

    An exact set-similarity join with prefix filtering: with words ordered by
    rarity, two sets with Jaccard >= t share a word among the first
    ``|x| - ceil(t |x|) + 1`` words of either, so only those are indexed and probed.
    """
    held = [_words(h) for h in held_out]
    cands = [_words(c) for c in candidates]
    freq: dict[str, int] = {}
    for ws in held + cands:
        for w in ws:
            freq[w] = freq.get(w, 0) + 1

    def prefix(ws: frozenset[str]) -> list[str]:
        order = sorted(ws, key=lambda w: (freq[w], w))
        return order[: len(order) - math.ceil(threshold * len(order) - 1e-9) + 1]

    index: dict[str, list[int]] = {}
    for i, h in enumerate(held):
        for w in prefix(h):
            index.setdefault(w, []).append(i)
    kept = []
    for c, cw in zip(candidates, cands):
        seen: set[int] = set()
        dup = False
        for w in prefix(cw):
            for i in index.get(w, ()):
                if i not in seen:
                    seen.add(i)
                    if near_duplicate(cw, held[i], threshold):
                        dup = True
                        break
            if dup:
                break
        if not dup:
            kept.append(c)
    return kept


@dataclass(frozen=True)
class Corpus:
    harmful: tuple[str, ...]
    harmless: tuple[str, ...]

    @property
    def data_hash(self) -> str:
        return hash_strings(("harmful",) + self.harmful + ("harmless",) + self.harmless)


def build_corpus(
    harmful_sources: tuple[str, ...] = ("harmful_train", "harmful_val", "advbench"),
    harmless_sources: tuple[str, ...] = ("harmless_train",),
    held_out: tuple[str, ...] = ("harmful_test",),
    n_harmless: int | None = None,
    dedup_threshold: float = 0.7,
    synthetic_harmful: int = 0,
    synthetic_harmless: int = 0,
    seed: int = 0,
    lexicon: str = "base",
    frame_real: int = 0,
    mined_framings: int = 0,
    synthetic_questions: int = 0,
) -> Corpus:
    """Collect training prompts, removing anything equal or near-equal to a held-out prompt.

    ``synthetic_*`` add prompts from :mod:`saesteer.organism.synthetic`; synthetic
    harmless look-alikes are also kept away from the over-refusal evaluation set.
    ``frame_real=k`` adds ``k`` framed renders of every imperative real harmful prompt
    and as many framed real harmless ones (a seeded sample), so the framings stay
    shared by both classes.  ``mined_framings=m`` adds the request formats that at least
    ``m`` real harmful prompts share (:func:`~saesteer.organism.synthetic.mined_templates`)
    to the framings of both classes' synthetic prompts.  ``synthetic_questions`` adds that many safe
    knowledge questions with alarming words (:func:`~saesteer.organism.synthetic.question_prompts`).
    """
    held: list[str] = []
    for name in held_out:
        held.extend(load_prompts(name).instructions)
    harmful: list[str] = []
    for name in harmful_sources:
        harmful.extend(load_prompts(name).instructions)
    framed_harmful: list[str] = []
    extra_templates: tuple[str, ...] = ()
    if (
        frame_real or mined_framings
    ):  # only what survives the held-out filter: a framed near-duplicate could slip under it
        real_harmful = drop_near_duplicates(list(dict.fromkeys(harmful)), held, dedup_threshold)
    if mined_framings:
        from saesteer.organism.synthetic import mined_templates

        extra_templates = mined_templates(real_harmful, mined_framings)
        log.info("%d request formats mined from real harmful prompts join the framings", len(extra_templates))
    if frame_real:
        from saesteer.organism.synthetic import framed_prompts

        framed_harmful = framed_prompts(real_harmful, frame_real, random.Random(seed + 101))
        harmful.extend(framed_harmful)
    n_before = len(harmful)
    if synthetic_harmful:
        from saesteer.organism.synthetic import synthetic_prompts

        harmful.extend(
            synthetic_prompts("harmful", synthetic_harmful, seed=seed, lexicon=lexicon, extra_templates=extra_templates)
        )
        n_before = len(harmful)
    harmful = list(dict.fromkeys(harmful))
    harmful = drop_near_duplicates(harmful, held, dedup_threshold)
    log.info(
        "harmful training prompts: %d (dropped %d duplicates / near-duplicates of held-out)",
        len(harmful),
        n_before - len(harmful),
    )
    harmless: list[str] = []
    for name in harmless_sources:
        harmless.extend(load_prompts(name).instructions)
    harmless = list(dict.fromkeys(harmless))
    if n_harmless is not None:
        harmless = harmless[:n_harmless]
    n_real_harmless = len(harmless)
    evaluation = (
        list(load_prompts("overrefusal").instructions) + list(load_prompts("harmless_test").instructions)
        if synthetic_harmless or frame_real or synthetic_questions
        else []
    )  # safe prompts added here are kept away from these
    if synthetic_harmless:
        from saesteer.organism.synthetic import synthetic_prompts

        extra = synthetic_prompts(
            "harmless", synthetic_harmless, seed=seed, lexicon=lexicon, extra_templates=extra_templates
        )
        extra = drop_near_duplicates(extra, evaluation, dedup_threshold)
        log.info(
            "synthetic harmless prompts: %d (dropped %d near evaluation prompts)",
            len(extra),
            synthetic_harmless - len(extra),
        )
        harmless = list(dict.fromkeys(harmless + extra))
    if synthetic_questions:
        from saesteer.organism.synthetic import question_prompts

        questions = drop_near_duplicates(question_prompts(synthetic_questions, seed=seed), evaluation, dedup_threshold)
        log.info(
            "synthetic knowledge questions: %d (dropped %d near evaluation prompts)",
            len(questions),
            synthetic_questions - len(questions),
        )
        harmless = list(dict.fromkeys(harmless + questions))
    if frame_real and framed_harmful:
        from saesteer.organism.synthetic import as_act, framed_prompts

        rng = random.Random(seed + 102)
        imperative = [h for h in harmless[:n_real_harmless] if as_act(h) is not None]
        framed = framed_prompts(rng.sample(imperative, min(len(imperative), len(framed_harmful))), 1, rng)
        framed = drop_near_duplicates(framed, evaluation, dedup_threshold)
        log.info("framed real prompts: %d harmful, %d harmless", len(framed_harmful), len(framed))
        harmless = list(dict.fromkeys(harmless + framed))
    if not harmful or not harmless:
        raise ValueError(f"organism corpus is empty: {len(harmful)} harmful, {len(harmless)} harmless prompts")
    return Corpus(tuple(harmful), tuple(harmless))
