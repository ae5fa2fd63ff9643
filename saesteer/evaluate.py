"""Evaluation: refusal rates by greedy generation, KL and cross-entropy on harmless prompts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saesteer.chat import ChatTemplate, encode_chat
from saesteer.checks import check_prompts
from saesteer.generation import final_logits, generate, last_position_logits, length_sorted_batches
from saesteer.interventions import steer
from saesteer.judge import default_judge, judge_responses

log = logging.getLogger(__name__)


@dataclass
class RefusalResult:
    rate: float  # share of responses the judge calls refusals
    responses: list[str]
    refused: list[bool]
    outcomes: list[str] = field(default_factory=list)  # refusal / compliance / incoherent, per response

    def __len__(self) -> int:
        return len(self.responses)

    @property
    def incoherent_rate(self) -> float:
        """Share of responses flagged incoherent (broken text: neither a refusal nor a compliance)."""
        return sum(o == "incoherent" for o in self.outcomes) / max(len(self.outcomes), 1)

    @property
    def compliance_rate(self) -> float:
        """Share of coherent compliances: what an attack's success should count."""
        return sum(o == "compliance" for o in self.outcomes) / max(len(self.outcomes), 1)


def refusal_eval(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    *,
    judge: Any = None,
    max_new_tokens: int = 12,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "refusal",
) -> RefusalResult:
    """Greedy completions, each judged refused or not (and refusal / compliance / incoherent) by ``judge``, by
    default the one :func:`saesteer.judge.use_judge` set (the substring judge outside a job)."""
    check_prompts(instructions, "instructions")
    if len(instructions) == 0:
        raise ValueError("refusal_eval needs at least one instruction, got an empty set")
    judge = judge or default_judge()
    responses = generate(
        model,
        template,
        instructions,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    refused, outcomes = judge_responses(judge, responses, list(instructions))  # a judge that reads prompts gets them
    return RefusalResult(sum(refused) / len(refused), responses, refused, outcomes)


@torch.no_grad()
def last_position_logprobs(
    model: HookedTransformer, template: ChatTemplate, instructions: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """log-softmax of the next-token logits at the last prompt position: [n, d_vocab] (float32, CPU)."""
    check_prompts(instructions, "instructions")
    out = torch.empty(len(instructions), model.cfg.d_vocab_out)
    for idx, logits in last_position_logits(model, template, instructions, batch_size):
        out[idx] = F.log_softmax(logits.float(), -1).cpu()
    return out


def kl_divergence(base_logprobs: torch.Tensor, new_logprobs: torch.Tensor) -> float:
    """Mean KL(base || new) over prompts, from log-probabilities [n, vocab]."""
    if base_logprobs.shape != new_logprobs.shape:
        raise ValueError(f"logprob shapes differ: {tuple(base_logprobs.shape)} vs {tuple(new_logprobs.shape)}")
    p = base_logprobs.exp()
    # Tokens the base model gives probability 0 (log-prob -inf) add nothing, not NaN.
    kl = torch.where(p > 0, p * (base_logprobs - new_logprobs), torch.zeros_like(p)).sum(-1)
    return float(kl.mean())


@torch.no_grad()
def completion_cross_entropy(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 32,
) -> float:
    """Mean per-token cross-entropy of ``completions`` given the formatted prompts."""
    check_prompts(instructions, "instructions")
    check_prompts(completions, "completions")
    total, count = completion_nll(model, template, instructions, completions, batch_size)
    return total / max(count, 1)


def completion_tokens(tokenizer, completions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Right-padded completion tokens and their mask, ``[B, L]`` each, or None if every completion is empty."""
    check_prompts(completions, "completions")
    comp = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    L = max((len(c) for c in comp), default=0)
    if L == 0:
        return None
    tokens = torch.full((len(comp), L), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(comp), L), dtype=torch.long)
    for b, c in enumerate(comp):
        tokens[b, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[b, : len(c)] = 1
    return tokens, mask


def prompt_completion_batch(tokenizer, template: ChatTemplate, instructions: Sequence[str], completions: Sequence[str]):
    """Left-padded prompts followed by right-padded completions: (tokens, attention_mask, completion_mask), or None if all are empty."""
    check_prompts(instructions, "instructions")
    check_prompts(completions, "completions")
    comp = completion_tokens(tokenizer, completions)
    if comp is None:
        return None
    enc = encode_chat(tokenizer, template, list(instructions), pad_token_id=tokenizer.pad_token_id)
    ctoks, cmask = comp
    target = torch.cat([torch.zeros_like(enc.attention_mask, dtype=torch.bool), cmask.bool()], 1)
    return torch.cat([enc.tokens, ctoks], 1), torch.cat([enc.attention_mask.long(), cmask], 1), target


@torch.no_grad()
def completion_nll(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 32,
) -> tuple[float, int]:
    """Summed negative log-likelihood of ``completions`` and their token count.

    Read as ``generate`` reads them: the prompt in one pass (the "prompt" phase), then the completion's tokens
    through the key-value cache in the "generated" phase, so that interventions that treat prompt and generated
    tokens differently (anchors' decoding floors, per-position prompt floors, edits with ``apply_to``) score the
    completion as they would have acted while producing it."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from saesteer.primitives.phase import phase

    check_prompts(instructions, "instructions")
    check_prompts(completions, "completions")
    tok = model.tokenizer
    device = model.cfg.device
    total, count = 0.0, 0
    for idx in length_sorted_batches([len(s) for s in instructions], batch_size):
        comp = completion_tokens(tok, [completions[i] for i in idx])
        if comp is None:
            continue
        ctoks, cmask = comp
        enc = encode_chat(tok, template, [instructions[i] for i in idx], pad_token_id=tok.pad_token_id)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(idx))
        first = (
            final_logits(model, enc.tokens.to(device), enc.attention_mask.to(device), cache).float().cpu()
        )  # predicts token 0
        logits = [first[:, None]]
        if ctoks.shape[1] > 1:
            with phase("generated"):
                logits.append(
                    model(ctoks[:, :-1].to(device), attention_mask=cmask[:, :-1].to(device), past_kv_cache=cache)
                    .float()
                    .cpu()
                )
        lp = F.log_softmax(torch.cat(logits, 1), -1).gather(-1, ctoks[..., None])[..., 0]  # [B, L]
        m = cmask.bool()
        total += float(-lp[m].sum())
        count += int(m.sum())
    return total, count


def scale_at_kl(
    model: HookedTransformer,
    template: ChatTemplate,
    prompts: Sequence[str],
    build: Any,
    target_kl: float,
    *,
    start: float = 1.0,
    max_scale: float = 64.0,
    steps: int = 10,
    batch_size: int = 64,
    base_logprobs: torch.Tensor | None = None,
) -> tuple[float, float]:
    """The scale s in [0, ``max_scale``] at which the interventions ``build(s)`` give a next-token KL on ``prompts``
    of ``target_kl``, by doubling from ``start`` to a bracket and ``steps`` bisections (the KL is taken to grow with
    s, as it does for adding a direction); ``(s, KL at s)``.  Where even ``max_scale`` stays below the target, that
    scale and its KL."""
    if not (target_kl >= 0 and target_kl == target_kl):
        raise ValueError(f"target_kl must be a number >= 0, got {target_kl}")
    if not 0 < start <= max_scale:
        raise ValueError(f"need 0 < start <= max_scale, got start={start}, max_scale={max_scale}")
    check_prompts(prompts, "prompts")
    base = base_logprobs if base_logprobs is not None else last_position_logprobs(model, template, prompts, batch_size)

    def kl_at(s: float) -> float:
        with steer(model, build(s)):
            return kl_divergence(base, last_position_logprobs(model, template, prompts, batch_size))

    lo, lo_kl = 0.0, 0.0
    hi, hi_kl = start, kl_at(start)
    while hi_kl < target_kl and hi < max_scale:
        lo, lo_kl = hi, hi_kl
        hi = min(2 * hi, max_scale)
        hi_kl = kl_at(hi)
    if hi_kl < target_kl:
        return hi, hi_kl
    for _ in range(steps):
        mid = (lo + hi) / 2
        mid_kl = kl_at(mid)
        if mid_kl < target_kl:
            lo, lo_kl = mid, mid_kl
        else:
            hi, hi_kl = mid, mid_kl
    return (lo, lo_kl) if abs(lo_kl - target_kl) <= abs(hi_kl - target_kl) else (hi, hi_kl)
