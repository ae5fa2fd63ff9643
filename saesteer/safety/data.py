"""The safety fine-tune's prompts: what to refuse, what to keep answering, what to validate on.

- **refuse**: harmful training prompts (the ``harmful_train`` role) and synthetic harmful requests (the harm
  lexicon filled into the shared framings, :func:`saesteer.organism.synthetic.synthetic_prompts`), each paired
  with a short refusal drawn (seeded) from :data:`REFUSALS`;
- **keep**: harmless training prompts (``harmless_train``), synthetic harmless requests in the *same* framings
  (safe look-alikes with alarming words and ordinary requests) and safe knowledge questions with alarming words
  (:func:`saesteer.organism.synthetic.question_prompts`); their targets are the base model's own greedy answers
  (self-distillation, :mod:`saesteer.safety.tune`);
- **validation**: ``harmful_val``, ``harmless_val`` and held-out look-alikes (synthetic harmless requests and
  questions the training mix does not contain, near-duplicates included).

Every training prompt that equals or nearly equals (word Jaccard >= 0.7) a prompt of ``harmful_test``,
``harmless_test``, the over-refusal set or a validation set is dropped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from saesteer.data import load_prompts
from saesteer.organism.corpus import drop_near_duplicates
from saesteer.organism.synthetic import question_prompts, synthetic_prompts

log = logging.getLogger(__name__)

#: Short refusals the model learns to give; every one contains a phrase of the refusal judge.
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I can't help with that. It could cause serious harm.",
    "I'm sorry, but I cannot provide that information.",
    "I cannot help with this request, as it could be used to hurt people.",
    "I'm sorry, I can't help with that. If you have another question, I'm happy to help.",
    "I can't assist with that. Is there something else I can help you with?",
    "I'm sorry, but that's not something I can help with.",
)

#: The held-out roles no training prompt may (nearly) equal.
TEST_ROLES = ("harmful_test", "harmless_test", "overrefusal")
NEAR_DUPLICATE = 0.7
#: the held-out look-alikes are drawn with seed + this, apart from the training prompts' seed
VAL_SEED_OFFSET = 1000


@dataclass(frozen=True)
class SafetyMix:
    """The prompts of one safety fine-tune: refusal pairs, prompts to keep answering, validation sets."""

    refuse: tuple[tuple[str, str], ...]  # (harmful prompt, refusal)
    keep: tuple[str, ...]  # harmless prompts answered as the base model answers them
    val: dict[str, tuple[str, ...]]  # harmful_val, harmless_val, lookalike_val
    sources: dict[str, int] = field(default_factory=dict)  # prompts per source, after filtering

    def counts(self) -> dict[str, int]:
        return {
            "refuse": len(self.refuse),
            "keep": len(self.keep),
            **{f"val_{k}": len(v) for k, v in self.val.items()},
            **self.sources,
        }


def _take(prompts: Sequence[str], n: int, seed: int) -> list[str]:
    prompts = list(prompts)
    if n >= len(prompts):
        return prompts
    idx = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return [prompts[i] for i in idx]


def held_out_prompts(data_cfg) -> list[str]:
    """Every prompt of the test roles (``harmful_test``, ``harmless_test``, ``overrefusal``) in ``data_cfg``."""
    out: list[str] = []
    for role in TEST_ROLES:
        out += list(load_prompts(getattr(data_cfg, role)).instructions)
    return out


def build_mix(
    data_cfg,
    *,
    n_harmful_synthetic: int,
    n_harmless: int,
    n_harmless_synthetic: int,
    n_questions: int,
    n_harmless_val: int,
    n_lookalike_val: int,
    seed: int = 0,
    lexicon: str = "base",
    val_lexicon: str = "base",
    refusals: Sequence[str] = REFUSALS,
) -> SafetyMix:
    """The seeded training mix and validation sets (``data_cfg``: a :class:`saesteer.config.DataConfig`, whose
    role sources are read; its ``n_*`` limits are not used).  Counts are upper bounds: near-duplicates of
    held-out prompts are dropped after sampling.  ``lexicon`` names the synthetic lexicon of the training requests
    (:data:`saesteer.organism.synthetic.LEXICONS`), ``val_lexicon`` that of the held-out look-alikes."""
    if not refusals:
        raise ValueError("build_mix needs at least one refusal text")
    rng = random.Random(seed)
    test = held_out_prompts(data_cfg)
    harmful_val = list(load_prompts(data_cfg.harmful_val).instructions)
    harmless_val = _take(load_prompts(data_cfg.harmless_val).instructions, n_harmless_val, seed + 1)

    # held-out look-alikes: synthetic harmless requests and questions of their own seed, so that the validation
    # set does not depend on how many the mix trains on; training prompts equal or near them are dropped below
    n_syn_val, n_q_val = n_lookalike_val - n_lookalike_val // 2, n_lookalike_val // 2
    val_seed = seed + VAL_SEED_OFFSET
    syn_val = synthetic_prompts("harmless", n_syn_val, seed=val_seed, lexicon=val_lexicon) if n_syn_val else []
    q_val = question_prompts(n_q_val, seed=val_seed) if n_q_val else []
    lookalike_val = syn_val + q_val
    val_set = set(lookalike_val)
    blocked = test + harmful_val + harmless_val + lookalike_val

    def clean(candidates: list[str]) -> list[str]:
        return drop_near_duplicates([c for c in candidates if c not in val_set], blocked, NEAR_DUPLICATE)

    harmful_train = clean(list(load_prompts(data_cfg.harmful_train).instructions))
    harmful_syn = (
        clean(synthetic_prompts("harmful", n_harmful_synthetic, seed=seed, lexicon=lexicon))
        if n_harmful_synthetic
        else []
    )
    harmless_train = clean(_take(load_prompts(data_cfg.harmless_train).instructions, n_harmless, seed + 4))
    harmless_syn = (
        clean(synthetic_prompts("harmless", n_harmless_synthetic, seed=seed, lexicon=lexicon))
        if n_harmless_synthetic
        else []
    )
    questions = clean(question_prompts(n_questions, seed=seed)) if n_questions else []

    harmful = list(dict.fromkeys(harmful_train + harmful_syn))
    refuse = tuple((p, refusals[rng.randrange(len(refusals))]) for p in harmful)
    harmful_set = set(harmful)
    keep = tuple(p for p in dict.fromkeys(harmless_train + harmless_syn + questions) if p not in harmful_set)
    sources = {
        "harmful_train": len(harmful_train),
        "harmful_synthetic": len(harmful_syn),
        "harmless_train": len(harmless_train),
        "harmless_synthetic": len(harmless_syn),
        "questions": len(questions),
    }
    mix = SafetyMix(
        refuse=refuse,
        keep=keep,
        val={
            "harmful_val": tuple(harmful_val),
            "harmless_val": tuple(harmless_val),
            "lookalike_val": tuple(lookalike_val),
        },
        sources=sources,
    )
    log.info("safety mix: %s", mix.counts())
    return mix
