"""Batched greedy generation for any HookedTransformer with a chat template.

Hooks attached to the model (``with steer(model, ...)`` or ``model.hooks(...)``)
stay active for every step, prompt and generated tokens alike.  Prompts are
sorted by length into batches (less padding) and the answers returned in the
original order.  A key-value cache makes each new token cost one position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from saesteer.chat import ChatTemplate, encode_chat
from saesteer.checks import check_prompts
from saesteer.primitives.phase import phase
from saesteer.unembed import logits as unembed_logits

log = logging.getLogger(__name__)


def final_logits(
    model: HookedTransformer, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, past_kv_cache=None
) -> torch.Tensor:
    """Next-token logits at the last position only: [batch, d_vocab].

    The same computation as ``model(tokens)[:, -1]`` (every block, final norm,
    unembedding, logit soft-cap) without unembedding every prompt position, or the
    columns of tokens the model never emits (:mod:`saesteer.unembed`); these dominate
    the cost of small models with large vocabularies.
    """
    resid = model(tokens, attention_mask=attention_mask, past_kv_cache=past_kv_cache, stop_at_layer=model.cfg.n_layers)[
        :, -1:
    ]
    return unembed_logits(model, resid)[:, -1]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def last_position_logits(
    model: HookedTransformer, template: ChatTemplate, instructions: Sequence[str], batch_size: int = 64
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Next-token logits at the last prompt position, a length-sorted batch at a time: (the batch's prompt
    indices, logits [batch, d_vocab]). A prompt longer than the model's context is a clear error naming it."""
    check_prompts(instructions, "instructions")
    for idx in length_sorted_batches([len(s) for s in instructions], batch_size):
        enc = encode_chat(
            model.tokenizer,
            template,
            [instructions[i] for i in idx],
            pad_token_id=model.tokenizer.pad_token_id,
            max_length=model.cfg.n_ctx,
            length_note="the model's context, n_ctx",
            indices=idx,
        )
        yield idx, final_logits(model, enc.tokens.to(model.cfg.device), enc.attention_mask.to(model.cfg.device))


@torch.no_grad()
def generate(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions of ``instructions`` (formatted with ``template``)."""
    check_prompts(instructions, "instructions")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    tok = model.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    lengths = [len(s) for s in instructions]
    out: list[str | None] = [None] * len(instructions)
    batches = length_sorted_batches(lengths, batch_size)
    device = model.cfg.device
    max_prompt = model.cfg.n_ctx - max_new_tokens
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        enc = encode_chat(
            tok,
            template,
            [instructions[i] for i in idx],
            pad_token_id=pad,
            max_length=max_prompt,
            length_note=f"the model's context n_ctx={model.cfg.n_ctx} less max_new_tokens={max_new_tokens}",
            indices=idx,
        )
        tokens = enc.tokens.to(device)
        mask = enc.attention_mask.to(device)
        B = tokens.shape[0]
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, B)
        logits = final_logits(model, tokens, mask, cache)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        new: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1)
            if eos is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done |= nxt == eos
            new.append(nxt)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            with phase("generated"):
                logits = final_logits(model, nxt[:, None], torch.ones(B, 1, dtype=mask.dtype, device=device), cache)
        gen = torch.stack(new, 1).tolist()
        for row, i in zip(gen, idx):
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out[i] = tok.decode(row, skip_special_tokens=True).strip()
    return [o if o is not None else "" for o in out]
