"""Batched greedy generation for any HookedTransformer with a chat template.

Hooks attached to the model (``with steer(model, ...)`` or ``model.hooks(...)``)
stay active for every step, prompt and generated tokens alike.  Prompts are
sorted by length into batches (less padding) and the answers returned in the
original order.  A key-value cache makes each new token cost one position.

Two things make TransformerLens's decoding loop cheaper without changing a single logit
(``scripts/bench_smollm2.py`` measures them):

* the key-value cache is preallocated for the prompt and every new token (:class:`PreallocatedKVEntry`):
  TransformerLens's own cache concatenates, copying every earlier position at each step;
* while ``generate`` runs, the weight matrices TransformerLens copies into another memory layout at
  every forward pass (``W.T.contiguous()`` of a gated MLP and the unembedding, the head-merging rearranges
  of ``W_Q``, ``W_K``, ``W_V``, ``W_O``) are stored in that layout already (:func:`matmul_layout`), so the
  copies are no-ops; the values, and the matrices the matmuls receive, are the same.  The original tensors
  are put back afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components import Attention, GatedMLP, GroupedQueryAttention, Unembed
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

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


class PreallocatedKVEntry:
    """One layer's key-value cache in buffers of ``capacity`` positions, for TransformerLens's attention.

    ``append`` writes the new positions in place and returns views of every position so far, with the values
    TransformerLens's ``TransformerLensKeyValueCacheEntry.append`` returns (it concatenates instead, copying the
    whole cache at every step).  ``past_keys`` / ``past_values`` are those views ([batch, pos_so_far, heads,
    d_head]; their length is what TransformerLens and :func:`saesteer.interventions.steer.infer_phase` read as the
    cached positions).  Appending past ``capacity`` doubles the buffers; a frozen entry returns the
    concatenation and keeps nothing.
    """

    def __init__(
        self, batch: int, capacity: int, n_heads: int, d_head: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        self.keys = torch.empty(batch, capacity, n_heads, d_head, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0
        self.frozen = False

    @property
    def past_keys(self) -> torch.Tensor:
        return self.keys[:, : self.length]

    @property
    def past_values(self) -> torch.Tensor:
        return self.values[:, : self.length]

    def append(self, new_keys: torch.Tensor, new_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every cached position followed by the new ones: [batch, pos_so_far + new, heads, d]."""
        end = self.length + new_keys.shape[1]
        if self.frozen:
            return torch.cat([self.past_keys, new_keys], 1), torch.cat([self.past_values, new_values], 1)
        if end > self.keys.shape[1]:
            grown = max(end, 2 * self.keys.shape[1])
            keys = self.keys.new_empty(self.keys.shape[0], grown, *self.keys.shape[2:])
            values = torch.empty_like(keys)
            keys[:, : self.length] = self.past_keys
            values[:, : self.length] = self.past_values
            self.keys, self.values = keys, values
        self.keys[:, self.length : end] = new_keys
        self.values[:, self.length : end] = new_values
        self.length = end
        return self.keys[:, :end], self.values[:, :end]


def preallocated_cache(model: HookedTransformer, batch: int, capacity: int) -> TransformerLensKeyValueCache:
    """A TransformerLens key-value cache for ``batch`` rows whose layers hold ``capacity`` positions in place
    (on each block's device, in the model's dtype, as ``TransformerLensKeyValueCache.init_cache`` makes them)."""
    cfg = model.cfg
    n_heads = cfg.n_key_value_heads if cfg.n_key_value_heads is not None else cfg.n_heads
    return TransformerLensKeyValueCache(
        entries=[
            PreallocatedKVEntry(
                batch, capacity, n_heads, cfg.d_head, get_device_for_block_index(i, cfg, cfg.device), cfg.dtype
            )
            for i in range(cfg.n_layers)
        ],
        previous_attention_mask=torch.empty((batch, 0), device=cfg.device, dtype=torch.int),
    )


#: ``generate`` stores weights in their matmul layout (keeping the originals) only up to this many bytes of them
MAX_RELAYOUT_BYTES = 2 * 1024**3


def _matmul_layouts(model: HookedTransformer) -> list[tuple[torch.nn.Parameter, tuple[int, ...]]]:
    """(weight, storage order) for each weight that TransformerLens 3 copies at every forward pass into the layout
    whose outermost-to-innermost dimensions are that order: ``W_gate``, ``W_in``, ``W_out`` of a ``GatedMLP`` and
    ``W_U`` (``W.T.contiguous()``), ``W_Q``, ``W_K``, ``W_V`` (``(head d_head) d_model`` for ``F.linear``) and
    ``W_O`` (``d_model (head d_head)``) of ``Attention`` / ``GroupedQueryAttention``; only where the forward pass
    takes that path (not 4-bit, no split or per-head attention inputs, no per-head results)."""
    cfg = model.cfg
    if getattr(cfg, "load_in_4bit", False):
        return []
    out: list[tuple[torch.nn.Parameter, tuple[int, ...]]] = []
    for block in getattr(model, "blocks", []):
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if type(attn) in (Attention, GroupedQueryAttention):
            if not (cfg.use_split_qkv_input or cfg.use_attn_in):
                names = ["W_Q", "W_K", "W_V"]
                if type(attn) is GroupedQueryAttention:
                    names = ["W_Q"] + ([] if cfg.ungroup_grouped_query_attention else ["_W_K", "_W_V"])
                out += [(attn._parameters[n], (0, 2, 1)) for n in names if attn._parameters.get(n) is not None]
            if not cfg.use_attn_result and attn._parameters.get("W_O") is not None:
                out.append((attn._parameters["W_O"], (2, 0, 1)))
        if type(mlp) is GatedMLP:
            out += [(mlp._parameters[n], (1, 0)) for n in ("W_gate", "W_in", "W_out")]
    unembed = getattr(model, "unembed", None)
    if type(unembed) is Unembed:
        out.append((unembed._parameters["W_U"], (1, 0)))
    unique: dict[int, tuple[torch.nn.Parameter, tuple[int, ...]]] = {}
    for p, order in out:
        if p.ndim == len(order):
            unique.setdefault(id(p), (p, order))  # a parameter shared by two modules once
    return list(unique.values())


@contextlib.contextmanager
def matmul_layout(model: HookedTransformer) -> Iterator[int]:
    """Within the block, the weights of :func:`_matmul_layouts` hold the same values stored in the layout their
    matmul reads, so TransformerLens's per-pass ``.contiguous()`` / rearrange copies of them return views (the
    tensors the matmuls receive are unchanged, hence so is every logit). Each parameter object stays the same;
    its original tensor is put back on exit, exception or not. Yields the number of weights re-laid out: none
    when they total more than :data:`MAX_RELAYOUT_BYTES` (a second copy is held meanwhile).

    Where a TransformerLens release reads one of these weights otherwise, the logits could change in their last
    bits: ``tests/test_generation.py`` checks them bit for bit against the weights as stored."""
    todo = [(p, o) for p, o in _matmul_layouts(model) if not p.detach().permute(*o).is_contiguous()]
    if sum(p.numel() * p.element_size() for p, _ in todo) > MAX_RELAYOUT_BYTES:
        log.debug("weights too large to re-lay out for generation; TransformerLens copies them every pass")
        todo = []
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for p, order in todo:
                old = p.data
                inverse = [order.index(i) for i in range(old.ndim)]
                p.data = old.permute(*order).contiguous().permute(*inverse)
                swapped.append((p, old))
        yield len(swapped)
    finally:
        with torch.no_grad():
            for p, old in reversed(swapped):
                p.data = old


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
    with matmul_layout(model):
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
            # the prompt and every new token but the last, which is never fed back
            cache = preallocated_cache(model, B, tokens.shape[1] + max_new_tokens - 1)
            logits = final_logits(model, tokens, mask, cache)
            done = torch.zeros(B, dtype=torch.bool, device=device)
            ones = torch.ones(B, 1, dtype=mask.dtype, device=device)
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
                    logits = final_logits(model, nxt[:, None], ones, cache)
            gen = torch.stack(new, 1).tolist()
            for row, i in zip(gen, idx):
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
    return [o if o is not None else "" for o in out]
