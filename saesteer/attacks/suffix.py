"""A universal adversarial suffix by greedy coordinate gradient search (in the spirit of GCG, Zou et al. 2023).

The suffix (``n_tokens`` whole-word tokens) is appended to each instruction.  The
objective is the mean log-probability of a refusal opener (the template's
``refusal_tokens``) as the first response token, over the attacker's prompts
(training prompts only), optionally plus an extra term (an adaptive attacker adds
the anchor gate's score).  Each step: the gradient with respect to the suffix's
one-hot tokens proposes the ``topk`` best replacements per slot; ``n_candidates``
single-token swaps are scored exactly and the best is kept.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from saesteer.chat import ChatTemplate, encode_chat, suffix_ids
from saesteer.checks import check_prompts
from saesteer.directions import refusal_token_ids
from saesteer.generation import final_logits
from saesteer.interventions import Intervention, as_interventions, collect_hooks
from saesteer.interventions.steer import gate_prepass

log = logging.getLogger(__name__)

#: extra objective: (model, tokens, attention_mask, store) -> [batch] added to the loss
ExtraLoss = Callable[[dict], torch.Tensor]


def _has_hooks(model: HookedTransformer) -> bool:
    """Whether any forward hook (a HookPoint's or a module's) is attached to the model."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def _score_with_prefix_cache(
    model: HookedTransformer,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    cands: list[list[int]],
    n_tail: int,
    chunk: int,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
) -> list[float]:
    """The mean loss of each candidate suffix over the batch: the text before the suffix runs once into a frozen
    key-value cache, repeated for each chunk of candidates; only the last ``n_tail`` tokens (suffix + post) run per candidate."""
    B, T = tokens.shape
    start = T - n_tail
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, B)
    model(tokens[:, :start], attention_mask=mask[:, :start], past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
    expanded: dict[int, TransformerLensKeyValueCache] = {}
    scores: list[float] = []
    for j in range(0, len(cands), chunk):
        cs = torch.tensor(cands[j : j + chunk], device=tokens.device)  # [c, n_tokens]
        c = len(cs)
        if c not in expanded:
            expanded[c] = TransformerLensKeyValueCache(
                entries=[
                    TransformerLensKeyValueCacheEntry(
                        e.past_keys.repeat(c, 1, 1, 1), e.past_values.repeat(c, 1, 1, 1), frozen=True
                    )
                    for e in cache.entries
                ],
                previous_attention_mask=cache.previous_attention_mask.repeat(c, 1),
                frozen=True,
            )
        t = tokens[:, start:].repeat(c, 1)
        t[:, : cs.shape[1]] = cs.repeat_interleave(B, 0)
        per = loss_of(final_logits(model, t, mask[:, start:].repeat(c, 1), expanded[c])).view(c, B).mean(-1)
        scores.extend(per.tolist())
    return scores


def refusal_opener_logprob(logits: torch.Tensor, refusal_ids: torch.Tensor) -> torch.Tensor:
    """log P(the first response token is a refusal opener): [batch], from next-token ``logits`` [batch, d_vocab]."""
    return torch.logsumexp(F.log_softmax(logits.float(), -1)[:, refusal_ids], -1)


@dataclass
class SuffixResult:
    suffix: str
    token_ids: list[int]
    loss: float
    history: list[float] = field(default_factory=list)


def word_vocabulary(tokenizer, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Ids of tokens that are whole alphabetic words and are what the tokenizer makes of that word after a space,
    so that any sequence of them, joined by spaces, re-tokenizes to itself (a byte-level BPE holds word-like
    pieces, such as "azes", that it never produces for " azes")."""
    bad = set(int(i) for i in exclude) | set(int(i) for i in (tokenizer.all_special_ids or []))
    ids, words = [], []
    for i in range(len(tokenizer)):
        if i in bad:
            continue
        t = tokenizer.convert_ids_to_tokens(i)
        if not isinstance(t, str):
            continue
        w = t.lstrip("Ġ▁")
        if w.isascii() and w.isalpha() and len(w) >= 2 and not t.startswith("##"):
            ids.append(i)
            words.append(" " + w)
    if ids:
        again = tokenizer(words, add_special_tokens=False)["input_ids"]
        ids = [i for i, a in zip(ids, again) if list(a) == [i]]
    if not ids:
        raise ValueError("no whole-word tokens in this tokenizer's vocabulary to build a suffix from")
    return torch.tensor(ids)


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return " ".join(tokenizer.convert_ids_to_tokens(i).lstrip("Ġ▁") for i in ids)


def suffix_search(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    *,
    n_tokens: int = 8,
    steps: int = 30,
    topk: int = 64,
    n_candidates: int = 96,
    batch_size: int = 32,
    seed: int = 0,
    interventions: Sequence[Intervention] = (),
    extra: Optional[Callable[[], torch.Tensor]] = None,
    extra_hooks: Sequence = (),
    chunk: int = 8,
    progress: bool = True,
    prefix_cache: Optional[bool] = None,
) -> SuffixResult:
    """Search a universal suffix that lowers the refusal opener's probability.

    ``interventions`` stay active during the search (an attacker who knows the
    defence optimizes against it); ``extra()`` is called after each forward pass
    (with ``extra_hooks`` attached) and returns a [batch] term added to the loss.

    ``prefix_cache`` (default: whenever nothing else hooks the model) scores the candidates
    from one key-value cache of the prompts' text before the suffix, which no candidate
    changes: each candidate then costs the suffix and post-instruction tokens only.  With
    interventions, extra hooks or hooks already on the model it is off (a gate's pre-pass
    or a hook may read the whole prompt).
    """
    check_prompts(instructions, "instructions")
    if not instructions:
        raise ValueError("suffix_search needs at least one instruction, got an empty set")
    if n_tokens <= 0 or steps < 0 or topk <= 0 or n_candidates <= 0:
        raise ValueError(
            f"suffix_search: n_tokens, topk, n_candidates must be positive and steps >= 0, got {n_tokens}, {topk}, {n_candidates}, {steps}"
        )
    tok = model.tokenizer
    rng = random.Random(seed)
    refusal = torch.tensor(refusal_token_ids(model, template), device=model.cfg.device)
    vocab = word_vocabulary(tok).to(model.cfg.device)
    allowed = torch.zeros(model.cfg.d_vocab, dtype=torch.bool, device=model.cfg.device)
    allowed[vocab] = True
    n_post = len(suffix_ids(tok, template))
    sl = slice(-(n_post + n_tokens), -n_post)
    hooks = collect_hooks(model, as_interventions(interventions)) + list(extra_hooks)
    prompts = list(instructions)
    current = [int(vocab[rng.randrange(len(vocab))]) for _ in range(n_tokens)]

    def encode(batch: list[str], ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        text = _decode(tok, ids)
        enc = encode_chat(tok, template, [f"{p} {text}" for p in batch], pad_token_id=tok.pad_token_id)
        t = enc.tokens.to(model.cfg.device)
        if not (t[:, sl] == torch.tensor(ids, device=t.device)).all():
            raise RuntimeError(f"suffix {text!r} does not re-tokenize to its own tokens")
        return t, enc.attention_mask.to(model.cfg.device)

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        out = refusal_opener_logprob(logits, refusal)
        if extra is not None:
            out = out + extra()
        return out

    if prefix_cache is None:
        prefix_cache = not hooks and extra is None and not _has_hooks(model)
    elif prefix_cache and (hooks or extra is not None):
        raise ValueError(
            "suffix_search: prefix_cache=True needs a search without interventions, extra hooks or extra loss"
        )
    history: list[float] = []
    best = (float("inf"), list(current))
    bar = tqdm(range(steps), desc="suffix search", disable=not progress, leave=False)
    W_E = model.embed.W_E
    for _ in bar:
        batch = rng.sample(prompts, min(batch_size, len(prompts)))
        tokens, mask = encode(batch, current)
        one_hot = (
            F.one_hot(torch.tensor(current, device=tokens.device), model.cfg.d_vocab).to(W_E.dtype).requires_grad_(True)
        )

        def put(x: torch.Tensor, hook=None, one_hot=one_hot) -> torch.Tensor:
            x = x.clone()
            x[:, sl] = (one_hot @ W_E)[None].expand(x.shape[0], -1, -1)
            return x

        with (
            torch.enable_grad(),
            model.hooks(fwd_hooks=hooks + [("hook_embed", put)]),
            gate_prepass(model, as_interventions(interventions)),
        ):
            loss = loss_of(final_logits(model, tokens, mask)).mean()
            (grad,) = torch.autograd.grad(loss, one_hot)
        grad = grad.masked_fill(~allowed[None], float("inf"))
        top = (-grad).topk(topk, dim=-1).indices  # [n_tokens, topk]
        cands = []
        for _ in range(n_candidates):
            c = list(current)
            pos = rng.randrange(n_tokens)
            c[pos] = int(top[pos, rng.randrange(topk)])
            cands.append(c)
        scores: list[float] = []
        B = tokens.shape[0]
        if prefix_cache:
            scores = _score_with_prefix_cache(model, tokens, mask, cands, n_tokens + n_post, chunk, loss_of)
        else:
            with torch.no_grad(), model.hooks(fwd_hooks=hooks), gate_prepass(model, as_interventions(interventions)):
                for j in range(0, len(cands), chunk):
                    cs = torch.tensor(cands[j : j + chunk], device=tokens.device)  # [c, n_tokens]
                    t = tokens.repeat(len(cs), 1)
                    t[:, sl] = cs.repeat_interleave(B, 0)
                    per = loss_of(final_logits(model, t, mask.repeat(len(cs), 1))).view(len(cs), B).mean(-1)
                    scores.extend(per.tolist())
        i = min(range(len(cands)), key=lambda j: scores[j])
        current = cands[i]
        history.append(scores[i])
        if scores[i] < best[0]:
            best = (scores[i], list(current))
        bar.set_postfix(loss=f"{scores[i]:.3f}")
    loss, ids = best if steps else (float("nan"), current)
    encode(prompts[:1], ids)  # the suffix as text re-tokenizes to the searched tokens
    text = _decode(tok, ids)
    log.info("suffix search: %r (loss %.3f after %d steps)", text, loss, steps)
    return SuffixResult(text, ids, loss, history)
