"""Residual-stream activations at chosen hooks and positions, streamed and cached.

Prompts are formatted with the chat template and left-padded, so position ``-1``
is the last post-instruction token for every prompt, ``-n_post-1`` is t_inst (the
last instruction token), and ``post_instruction_positions`` are ``-n_post..-1``.

``mean_activations`` keeps float64 running sums, so memory does not grow with the
number of prompts; ``collect_activations`` keeps one [n_hooks, n_pos, d_model]
slice per prompt (float32) for projections and AUROCs.  Either can be cached on
disk as safetensors with metadata naming the model, hooks, positions and data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.artifacts import artifact_dir, cache_key
from saesteer.chat import ChatTemplate, encode_chat, suffix_ids
from saesteer.checks import check_prompts
from saesteer.generation import length_sorted_batches
from saesteer.interventions.directions import Intervention
from saesteer.interventions.steer import as_interventions, collect_hooks, gate_prepass
from saesteer.io import ArtifactError, hash_strings, load_tensors, save_tensors

log = logging.getLogger(__name__)


def resid_hooks(model: HookedTransformer, layers: Optional[Sequence[int]] = None, kind: str = "resid_pre") -> list[str]:
    layers = range(model.cfg.n_layers) if layers is None else layers
    return [f"blocks.{l}.hook_{kind}" for l in layers]


def n_post_tokens(model: HookedTransformer, template: ChatTemplate) -> int:
    return len(suffix_ids(model.tokenizer, template))


def check_hooks(model: HookedTransformer, hooks: Sequence[str]) -> None:
    valid = model.hook_dict
    for h in hooks:
        if h not in valid:
            example = next(iter(k for k in valid if "resid_pre" in k), "blocks.0.hook_resid_pre")
            raise ValueError(f"hook {h!r} does not exist in this model ({model.cfg.n_layers} layers; e.g. {example!r})")


def hook_layer(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" else -1


def stop_layer(model: HookedTransformer, hooks: Sequence[str]) -> Optional[int]:
    """``stop_at_layer`` for a forward pass that only has to reach ``hooks``: the blocks up to the
    last hooked one, without ``ln_final`` and the unembedding (most of a small model's compute:
    d_model x d_vocab per token), or None when a hook sits after the blocks."""
    if any(hook_layer(h) < 0 and not h.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")) for h in hooks):
        return None
    stop = max(hook_layer(h) for h in hooks) + 1
    return stop if 0 < stop <= model.cfg.n_layers else None


@torch.no_grad()
def model_fingerprint(model: HookedTransformer) -> str:
    """A short hash identifying the model's weights: its name, every parameter's name and shape, and a strided
    sample of each parameter (an edit of any one weight matrix, such as a LoRA merged into W_out, changes it)."""
    parts = [str(model.cfg.model_name), str(model.cfg.n_layers), str(model.cfg.d_model)]
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        parts += [name, str(tuple(p.shape)), sample.numpy().tobytes().hex()]
    return hash_strings(parts)


@torch.no_grad()
def _forward_batches(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    hooks: Sequence[str],
    positions: Optional[Sequence[int]],
    batch_size: int,
    interventions: Sequence[Intervention],
    progress: bool,
    desc: str,
):
    """Yield (indices, encoded batch, {hook: [B, n_pos or T, d_model] float32}) batch by batch (positions None: every position)."""
    if len(instructions) == 0:
        raise ValueError("no prompts given: the prompt set is empty")
    check_hooks(model, hooks)
    stop = stop_layer(model, hooks)
    edit_hooks = collect_hooks(model, as_interventions(interventions))
    store: dict[str, torch.Tensor] = {}
    pos = None if positions is None else list(positions)

    def grab(x: torch.Tensor, hook) -> None:
        store[hook.name] = (x if pos is None else x[:, pos]).detach().float()

    tok = model.tokenizer
    for idx in tqdm(
        length_sorted_batches([len(s) for s in instructions], batch_size), desc=desc, disable=not progress, leave=False
    ):
        enc = encode_chat(
            tok,
            template,
            [instructions[i] for i in idx],
            pad_token_id=tok.pad_token_id,
            max_length=model.cfg.n_ctx,
            length_note="the model's context, n_ctx",
            indices=idx,
        )
        store.clear()
        with (
            model.hooks(fwd_hooks=edit_hooks + [(h, grab) for h in hooks]),
            gate_prepass(model, as_interventions(interventions)),
        ):
            model(
                enc.tokens.to(model.cfg.device),
                attention_mask=enc.attention_mask.to(model.cfg.device),
                stop_at_layer=stop,
            )
        acts = {h: store[h] for h in hooks}
        for h, a in acts.items():
            if not torch.isfinite(a).all():
                raise ValueError(f"non-finite (NaN/inf) activations at {h}: check the model's dtype and weights")
        yield idx, enc, acts


def _batched_run(model, template, instructions, hooks, positions, batch_size, interventions, progress, desc):
    """Yield (indices, {hook: [B, n_pos, d_model]}) batch by batch."""
    for idx, _, acts in _forward_batches(
        model, template, instructions, hooks, positions, batch_size, interventions, progress, desc
    ):
        yield idx, acts


def mean_activations(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    hooks: Sequence[str],
    positions: Sequence[int],
    *,
    batch_size: int = 32,
    interventions: Sequence[Intervention] = (),
    progress: bool = False,
    desc: str = "activations",
) -> torch.Tensor:
    """Mean activation per hook and position: [n_hooks, n_pos, d_model] float64 (running sums)."""
    check_prompts(instructions, "instructions")
    total = torch.zeros(len(hooks), len(positions), model.cfg.d_model, dtype=torch.float64)
    for _, acts in _batched_run(
        model, template, instructions, hooks, positions, batch_size, interventions, progress, desc
    ):
        for i, h in enumerate(hooks):
            total[i] += acts[h].double().sum(0).cpu()
    return total / len(instructions)


def collect_activations(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    hooks: Sequence[str],
    positions: Sequence[int],
    *,
    batch_size: int = 32,
    interventions: Sequence[Intervention] = (),
    progress: bool = False,
    desc: str = "activations",
) -> torch.Tensor:
    """Per-prompt activations: [n_prompts, n_hooks, n_pos, d_model] float32 (prompt order kept)."""
    check_prompts(instructions, "instructions")
    out = torch.empty(len(instructions), len(hooks), len(positions), model.cfg.d_model)
    for idx, acts in _batched_run(
        model, template, instructions, hooks, positions, batch_size, interventions, progress, desc
    ):
        out[idx] = torch.stack([acts[h].cpu() for h in hooks], 1)
    return out


def collect_token_activations(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    hooks: Sequence[str],
    *,
    batch_size: int = 32,
    interventions: Sequence[Intervention] = (),
    progress: bool = False,
    desc: str = "token activations",
) -> list[torch.Tensor]:
    """Every real (non-padding) token of each chat-formatted prompt: one [n_tokens, n_hooks, d_model] float32 per prompt."""
    check_prompts(instructions, "instructions")
    out: list[torch.Tensor] = [torch.empty(0)] * len(instructions)
    for idx, enc, acts in _forward_batches(
        model, template, instructions, hooks, None, batch_size, interventions, progress, desc
    ):
        x = torch.stack([acts[h].cpu() for h in hooks], 2)  # [B, T, n_hooks, d]
        for j, i in enumerate(idx):
            out[i] = x[j][enc.attention_mask[j].bool()].clone()
    return out


@dataclass
class ActivationCache:
    """Disk cache of activation tensors keyed by model, hooks, positions and data."""

    root: Path

    @classmethod
    def default(cls) -> ActivationCache:
        return cls(artifact_dir("activations"))

    def key(
        self,
        model: HookedTransformer,
        hooks: Sequence[str],
        positions: Sequence[int],
        instructions: Sequence[str],
        kind: str,
    ) -> dict:
        return {
            "model": str(model.cfg.model_name),
            "model_fingerprint": model_fingerprint(model),
            "hooks": list(hooks),
            "positions": list(positions),
            "data_hash": hash_strings(list(instructions)),
            "n_prompts": len(instructions),
            "kind": kind,
        }

    def path(self, meta: dict) -> Path:
        return self.root / f"{cache_key(meta)}.safetensors"

    def get_or_compute(self, model, template, instructions, hooks, positions, kind: str = "mean", **kw) -> torch.Tensor:
        check_prompts(instructions, "instructions")
        meta = self.key(model, hooks, positions, instructions, kind)
        path = self.path(meta)
        if path.is_file():
            try:
                tensors, stored = load_tensors(path)
                if {k: stored.get(k) for k in meta} == meta:
                    return tensors["activations"]
                log.warning("activation cache %s was made for another model or data; recomputing", path)
            except ArtifactError as exc:
                log.warning("ignoring unreadable activation cache %s: %s", path, exc)
        fn = mean_activations if kind == "mean" else collect_activations
        acts = fn(model, template, instructions, hooks, positions, **kw)
        save_tensors(path, {"activations": acts}, meta, sidecar=False)
        return acts
