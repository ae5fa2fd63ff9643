"""A universal soft suffix: an attack in the input-embedding space (after Schwinn et al. 2024, the attack that took
circuit breakers to full ASR).

``n_tokens`` continuous vectors stand where a suffix's token embeddings would be (the prompt carries placeholder
tokens there, :class:`saesteer.interventions.embeddings.SoftSuffix` writes the vectors over them).  They are
optimized with Adam on the attacker's prompts (training prompts only) to lower the log-probability of a refusal
opener as the first response token, the objective of :func:`saesteer.attacks.suffix.suffix_search`, optionally plus
an extra term (an adaptive attacker adds the anchor gate's score).  Each vector's norm is kept within ``radius``
times the largest norm of a real token embedding, so the suffix stays in the range of inputs the model sees.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.attacks.base import Attack
from saesteer.attacks.suffix import refusal_opener_logprob, word_vocabulary
from saesteer.chat import ChatTemplate, encode_chat, suffix_ids
from saesteer.checks import check_prompts
from saesteer.directions import refusal_token_ids
from saesteer.generation import final_logits
from saesteer.interventions import Intervention, as_interventions, collect_hooks
from saesteer.interventions.embeddings import SoftSuffix
from saesteer.interventions.steer import gate_prepass

log = logging.getLogger(__name__)


@dataclass
class EmbeddingResult:
    embeddings: torch.Tensor  # [n_tokens, d_model]: the soft suffix
    placeholder: int  # the token id the prompt carries n_tokens times where the suffix goes
    placeholder_text: str  # those placeholders as text, appended to an instruction after a space
    loss: float  # the objective at ``embeddings`` (mean over a batch of the attacker's prompts)
    history: list[float] = field(default_factory=list)

    def attack(self, name: str = "embedding_suffix", family: str = "embedding") -> Attack:
        text = self.placeholder_text
        return Attack(
            name,
            family,
            [SoftSuffix(self.embeddings.detach().clone(), self.placeholder)],
            rewrite=lambda s: f"{s} {text}",
            description=f"a soft suffix of {len(self.embeddings)} optimized input embeddings",
        )


def embedding_search(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    *,
    n_tokens: int = 8,
    steps: int = 50,
    lr: float = 0.1,
    radius: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    interventions: Sequence[Intervention] = (),
    extra: Optional[Callable[[], torch.Tensor]] = None,
    extra_hooks: Sequence = (),
    progress: bool = True,
) -> EmbeddingResult:
    """Optimize a universal soft suffix that lowers the refusal opener's probability.

    ``lr`` is Adam's step in units of the root-mean-square coordinate of the token embeddings; ``radius`` bounds
    each vector's norm by that many times the largest token-embedding norm.  ``interventions`` stay active during
    the search (an attacker who knows the defence optimizes against it); ``extra()`` is called after each forward
    pass (with ``extra_hooks`` attached) and returns a [batch] term added to the loss.  The vectors start at the
    embeddings of ``n_tokens`` seeded random word tokens; the result is the step with the lowest loss.
    """
    check_prompts(instructions, "instructions")
    if not instructions:
        raise ValueError("embedding_search needs at least one instruction, got an empty set")
    if n_tokens <= 0 or steps < 0 or batch_size <= 0:
        raise ValueError(
            f"embedding_search: n_tokens and batch_size must be positive and steps >= 0, got {n_tokens}, {batch_size}, {steps}"
        )
    if not (lr > 0 and math.isfinite(lr)) or not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"embedding_search: lr and radius must be positive and finite, got {lr}, {radius}")
    tok = model.tokenizer
    rng = random.Random(seed)
    device = model.cfg.device
    refusal = torch.tensor(refusal_token_ids(model, template), device=device)
    vocab = word_vocabulary(tok)
    placeholder = int(vocab[0])
    word = tok.convert_ids_to_tokens(placeholder).lstrip("Ġ▁")
    text = " ".join([word] * n_tokens)
    n_post = len(suffix_ids(tok, template))
    sl = slice(-(n_post + n_tokens), -n_post)
    W_E = model.embed.W_E.detach()
    norms = W_E.float().norm(dim=-1)
    max_norm = radius * float(norms.max())
    step_size = lr * float(norms.mean()) / math.sqrt(model.cfg.d_model)
    init = torch.tensor([int(vocab[rng.randrange(len(vocab))]) for _ in range(n_tokens)], device=W_E.device)
    soft = W_E[init].float().clone().requires_grad_(True)
    opt = torch.optim.Adam([soft], lr=step_size)
    hooks = collect_hooks(model, as_interventions(interventions)) + list(extra_hooks)
    prompts = list(instructions)

    def encode(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = encode_chat(tok, template, [f"{p} {text}" for p in batch], pad_token_id=tok.pad_token_id)
        t = enc.tokens.to(device)
        if not (t[:, sl] == placeholder).all():
            raise RuntimeError(f"the placeholder suffix {text!r} does not re-tokenize to {n_tokens} placeholder tokens")
        return t, enc.attention_mask.to(device)

    def project() -> None:
        with torch.no_grad():
            scale = (max_norm / soft.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
            soft.mul_(scale[:, None])

    project()
    history: list[float] = []
    best = (float("inf"), soft.detach().clone())
    bar = tqdm(range(steps), desc="embedding attack", disable=not progress, leave=False)
    for _ in bar:
        tokens, mask = encode(rng.sample(prompts, min(batch_size, len(prompts))))
        write = SoftSuffix(soft, placeholder).hooks(model)
        with (
            torch.enable_grad(),
            model.hooks(fwd_hooks=hooks + write),
            gate_prepass(model, as_interventions(interventions)),
        ):
            per = refusal_opener_logprob(final_logits(model, tokens, mask), refusal)
            if extra is not None:
                per = per + extra()
            loss = per.mean()
            (grad,) = torch.autograd.grad(loss, soft)
        value = float(loss.detach())
        history.append(value)
        if value < best[0]:
            best = (value, soft.detach().clone())
        opt.zero_grad()
        soft.grad = grad
        opt.step()
        project()
        bar.set_postfix(loss=f"{value:.3f}")
    loss, emb = best if steps else (float("nan"), soft.detach().clone())
    encode(prompts[:1])
    log.info("embedding attack: loss %.3f after %d steps (%d vectors, norm <= %.3g)", loss, steps, n_tokens, max_norm)
    return EmbeddingResult(emb.to(W_E.dtype), placeholder, text, loss, history)
