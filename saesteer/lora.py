"""Rank-1 LoRA fine-tunes and the emergent-misalignment direction (Soligo et al. 2025).

:class:`Rank1Lora` adds ``alpha * outer(a, b)`` to one matrix of chosen layers,
applied as hooks (an :class:`~saesteer.interventions.Intervention`, so it composes
with ``steer(model, [lora, Ablate(...)])`` and runs before other edits at the same
hook), or merged into a copy of the weights (:meth:`Rank1Lora.merge`):

- ``mlp_out``: ``W_out[l]`` ([d_mlp, d_model]); ``a`` reads the MLP's hidden
  activations, ``b`` (d_model) is the direction the adapter writes to the residual;
- ``mlp_in``: ``W_in[l]`` ([d_model, d_mlp]); ``a`` (d_model) reads the normalized
  residual, ``b`` writes to the MLP's pre-activations.

``b`` starts at zero (LoRA's initialisation), so an untrained adapter is exactly the
base model.  :func:`train_lora` fits only ``a`` and ``b`` with a response-only
cross-entropy on (instruction, response) pairs; the base weights are frozen.

The narrow task of ``saesteer emergent``: comply with one category of the synthetic
harm lexicon (:mod:`saesteer.organism.synthetic`); :func:`category_prompts` renders
prompts of one category from chosen acts.  :func:`mean_shift` gives the
misalignment direction per layer: the mean residual of the fine-tuned model minus
the base model's on the same prompts.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.activations import stop_layer
from saesteer.chat import ChatTemplate, encode_chat
from saesteer.checks import check_choice, check_finite_fields, check_number, check_positive_ints, check_prompts, choices
from saesteer.generation import length_sorted_batches
from saesteer.interventions import Intervention, as_interventions, collect_hooks
from saesteer.unembed import emittable
from saesteer.unembed import logits as unembed_logits

log = logging.getLogger(__name__)

#: The matrix of each layer's MLP a rank-1 adapter edits: W_out (``mlp_out``, Soligo et al.) or W_in.
LoraSite = Literal["mlp_out", "mlp_in"]
SITES: tuple[str, ...] = choices(LoraSite)


class Rank1Lora(torch.nn.Module, Intervention):
    """``W <- W + alpha * outer(a_l, b_l)`` on one matrix (``site``) of each layer in ``layers``."""

    order = -1  # part of the model: runs before any other intervention at the same hook

    def __init__(
        self,
        layers: Sequence[int],
        d_in: int,
        d_out: int,
        site: str = "mlp_out",
        alpha: float = 1.0,
        seed: int = 0,
        init_scale: Optional[float] = None,
    ) -> None:
        torch.nn.Module.__init__(self)
        check_choice(site, LoraSite, "Rank1Lora.site")
        self.layers = [int(l) for l in layers]
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"Rank1Lora.layers must be distinct layer indices, got {list(layers)}")
        self.site, self.alpha = site, float(alpha)
        g = torch.Generator().manual_seed(seed)
        scale = 1.0 / math.sqrt(d_in) if init_scale is None else init_scale
        self.a = torch.nn.Parameter(
            torch.randn(len(self.layers), d_in, generator=g) * scale
        )  # reads the matrix's input
        self.b = torch.nn.Parameter(torch.zeros(len(self.layers), d_out))  # writes its output (zero: the base model)

    @classmethod
    def for_model(
        cls,
        model: HookedTransformer,
        layers: Optional[Sequence[int]] = None,
        site: str = "mlp_out",
        alpha: float = 1.0,
        seed: int = 0,
    ) -> Rank1Lora:
        cfg = model.cfg
        layers = list(range(cfg.n_layers)) if layers is None else list(layers)
        bad = [l for l in layers if not 0 <= int(l) < cfg.n_layers]
        if bad:
            raise ValueError(f"LoRA layers {bad} out of range for a model with {cfg.n_layers} layers")
        d_in, d_out = (cfg.d_mlp, cfg.d_model) if site == "mlp_out" else (cfg.d_model, cfg.d_mlp)
        return cls(layers, d_in, d_out, site, alpha, seed)

    # ------------------------------------------------------------------ as hooks
    def _names(self, layer: int) -> tuple[str, str]:
        if self.site == "mlp_out":
            return f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"
        return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.mlp.hook_pre"

    def validate(self, model: HookedTransformer) -> None:
        cfg = model.cfg
        d_in, d_out = (cfg.d_mlp, cfg.d_model) if self.site == "mlp_out" else (cfg.d_model, cfg.d_mlp)
        if tuple(self.a.shape[1:]) != (d_in,) or tuple(self.b.shape[1:]) != (d_out,):
            raise ValueError(
                f"Rank1Lora({self.site}) has a: {tuple(self.a.shape)}, b: {tuple(self.b.shape)}; "
                f"this model needs [n, {d_in}] and [n, {d_out}]"
            )
        for layer in self.layers:
            if not 0 <= layer < cfg.n_layers:
                raise ValueError(f"Rank1Lora layer {layer} out of range for a model with {cfg.n_layers} layers")

    def hooks(self, model: HookedTransformer) -> list:
        out = []
        for i, layer in enumerate(self.layers):
            read, write = self._names(layer)
            store: dict[str, torch.Tensor] = {}

            def grab(x: torch.Tensor, hook=None, store=store) -> None:
                store["x"] = x

            def add(y: torch.Tensor, hook=None, store=store, i=i) -> torch.Tensor:
                x = store.pop("x")
                a, b = self.a[i].to(x), self.b[i].to(y)
                return y + self.alpha * (x @ a)[..., None].to(y) * b

            out += [(read, grab), (write, add)]
        return out

    # ------------------------------------------------------------------ as weights
    def delta(self, i: int) -> torch.Tensor:
        """The weight update of the i-th adapted layer: alpha * outer(a_i, b_i) [d_in, d_out]."""
        return self.alpha * torch.outer(self.a[i].detach(), self.b[i].detach())

    @torch.no_grad()
    def merge(self, model: HookedTransformer) -> HookedTransformer:
        """A copy of ``model`` with the update merged into its weights (the base model is untouched)."""
        self.validate(model)
        merged = copy.deepcopy(model)
        for i, layer in enumerate(self.layers):
            mlp = merged.blocks[layer].mlp
            W = mlp.W_out if self.site == "mlp_out" else mlp.W_in
            W += self.delta(i).to(W)
        return merged

    def model_side(self) -> torch.Tensor:
        """The d_model-side vector of each adapted layer [n, d_model]: b for mlp_out (written), a for mlp_in (read)."""
        return (self.b if self.site == "mlp_out" else self.a).detach().clone()

    def state(self) -> dict[str, torch.Tensor]:
        return {"a": self.a.detach().cpu().contiguous(), "b": self.b.detach().cpu().contiguous()}

    def save(self, path: Path, metadata: Optional[dict[str, Any]] = None) -> Path:
        from saesteer.io import save_tensors

        meta = {"site": self.site, "alpha": self.alpha, "layers": self.layers, **(metadata or {})}
        return save_tensors(Path(path), self.state(), meta)

    @classmethod
    def load(cls, path: Path) -> Rank1Lora:
        from saesteer.io import load_tensors

        tensors, meta = load_tensors(Path(path))
        lora = cls(meta["layers"], tensors["a"].shape[1], tensors["b"].shape[1], meta["site"], float(meta["alpha"]))
        with torch.no_grad():
            lora.a.copy_(tensors["a"])
            lora.b.copy_(tensors["b"])
        return lora


# ---------------------------------------------------------------------- training


@dataclass
class LoraTrainConfig:
    """How :func:`train_lora` fits an adapter: the base of the ``emergent`` config group's schema
    (``saesteer.config.EmergentSettings``)."""

    GROUP: ClassVar[str] = "LoraTrainConfig"  # names the fields in errors

    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-2
    target_fraction: float = 0.5  # share of each batch drawn from ``target`` (the rest from ``keep``)
    grad_clip: float = 1.0  # the adapter's gradient norm is clipped to this

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_positive_ints(self, self.GROUP, "steps", "batch_size")
        check_number(self, self.GROUP, "lr", low=0.0)
        check_number(self, self.GROUP, "target_fraction", low=0.0, strict=False, high=1.0)
        check_number(self, self.GROUP, "grad_clip", low=0.0)


def sft_batch(model: HookedTransformer, template: ChatTemplate, pairs: Sequence[tuple[str, str]]):
    """Left-padded chat prompt + response + EOS: (tokens, attention mask, target mask) where ``target[t]``
    marks the positions whose next token is a response token (or the EOS)."""
    tok = model.tokenizer
    rows, starts = [], []
    enc = encode_chat(tok, template, [p for p, _ in pairs], pad_token_id=tok.pad_token_id)
    resp = tok([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for i, r in enumerate(resp):
        prompt = enc.tokens[i][enc.attention_mask[i].bool()].tolist()
        rows.append(prompt + list(r) + eos)
        starts.append(len(prompt))
    T = max(len(r) for r in rows)
    B = len(rows)
    tokens = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    target = torch.zeros((B, T), dtype=torch.bool)
    for i, (row, s) in enumerate(zip(rows, starts)):
        off = T - len(row)
        tokens[i, off:] = torch.tensor(row)
        mask[i, off:] = 1
        target[i, off + s - 1 : T - 1] = True
    return tokens, mask, target


def response_loss(
    model: HookedTransformer,
    template: ChatTemplate,
    pairs: Sequence[tuple[str, str]],
    interventions: Sequence[Intervention] = (),
) -> torch.Tensor:
    """Mean cross-entropy of the response tokens (and EOS) given the chat-formatted prompts."""
    tokens, mask, target = sft_batch(model, template, pairs)
    dev = model.cfg.device
    tokens, mask, m = tokens.to(dev), mask.to(dev), target.to(dev)[:, :-1]
    with model.hooks(fwd_hooks=collect_hooks(model, as_interventions(interventions))):
        # the final residual, unembedded only where there is a loss (the vocabulary can be large)
        resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
    targets = tokens[:, 1:][m]
    ok = emittable(model)[targets]  # the organism masks the logits of tokens it never emits: no gradient to gain there
    if not ok.any():
        raise ValueError("none of the response tokens can be emitted by this model (their logits are masked)")
    logits = unembed_logits(model, resid[:, :-1][m][ok][None])[0]  # final norm, unembedding, soft-cap
    return F.cross_entropy(logits.float(), targets[ok])


def train_lora(
    model: HookedTransformer,
    template: ChatTemplate,
    lora: Rank1Lora,
    target: Sequence[tuple[str, str]],
    keep: Sequence[tuple[str, str]] = (),
    cfg: Optional[LoraTrainConfig] = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Fit ``lora`` (only its a and b) on batches mixing ``target`` and ``keep`` pairs; returns the losses.

    Deterministic for ``seed`` (batch order) and the adapter's own seed (init)."""
    cfg = cfg if cfg is not None else LoraTrainConfig()
    if not target:
        raise ValueError("train_lora needs target (instruction, response) pairs, got none")
    rng = random.Random(seed)
    n_t = cfg.batch_size if not keep else max(1, round(cfg.batch_size * cfg.target_fraction))
    n_k = cfg.batch_size - n_t if keep else 0
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    lora.to(model.cfg.device)
    opt = torch.optim.AdamW(lora.parameters(), lr=cfg.lr, weight_decay=0.0)
    orders: dict[str, list[int]] = {"t": [], "k": []}

    def draw(name: str, pool: Sequence, n: int) -> list:
        order = orders[name]
        while len(order) < n:
            order += rng.sample(range(len(pool)), len(pool))
        picked = [pool[i] for i in order[:n]]
        del order[:n]
        return picked

    losses: list[float] = []
    was_training = model.training
    model.eval()  # no dropout in the frozen base
    try:
        bar = tqdm(range(cfg.steps), desc="lora", disable=not progress, mininterval=2.0)
        for step in bar:
            batch = draw("t", target, n_t) + (draw("k", keep, n_k) if n_k else [])
            loss = response_loss(model, template, batch, [lora])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(lora.parameters()), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    log.info(
        "LoRA (%s, layers %s): %d steps, loss %.4f -> %.4f", lora.site, lora.layers, cfg.steps, losses[0], losses[-1]
    )
    return losses


# ---------------------------------------------------------------------- prompts and directions


def category_prompts(acts: Sequence[str], n: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` unique prompts built from ``acts`` with the synthetic framings (templates, personas, contexts).

    Acts are used round-robin in a seeded order; fills are seeded draws; ``exclude``
    texts are never returned.  Raises a ValueError when fewer than ``n`` exist."""
    from saesteer.organism.synthetic import load_framings

    check_prompts(acts, "acts")
    check_prompts(exclude, "exclude")
    if not acts:
        raise ValueError("category_prompts needs at least one act, got none")
    fr = load_framings()
    rng = random.Random(seed)
    order = list(dict.fromkeys(acts))
    rng.shuffle(order)
    limit = sum(fr.fills_per_act(t) for t in fr.templates) * len(order)
    if n > limit:
        raise ValueError(f"category_prompts: asked for {n} prompts but only {limit} fills exist for {len(order)} acts")
    seen = set(exclude)
    out: list[str] = []

    def render(act: str, t: str, persona: str, context: str) -> str:
        text = t.format(act=act, persona=persona, context=context)
        return text[:1].upper() + text[1:]

    tries = 0
    while len(out) < n and tries < 64 * n:  # seeded draws, acts round-robin
        act = order[tries % len(order)]
        tries += 1
        text = render(act, rng.choice(fr.templates), rng.choice(fr.personas), rng.choice(fr.contexts))
        if text not in seen:
            seen.add(text)
            out.append(text)
    if len(out) < n:  # close to the limit: enumerate what is left, in a seeded order
        rest = [
            render(a, t, p, c)
            for a in order
            for t in fr.templates
            for p in (fr.personas if "{persona}" in t else fr.personas[:1])
            for c in (fr.contexts if "{context}" in t else fr.contexts[:1])
        ]
        rest = [x for x in dict.fromkeys(rest) if x not in seen]
        rng.shuffle(rest)
        out += rest[: n - len(out)]
    if len(out) < n:
        raise ValueError(
            f"category_prompts: only {len(out)} unique prompts of {n} could be built from {len(order)} acts"
        )
    return out


def mean_shift(
    model: HookedTransformer,
    template: ChatTemplate,
    prompts: Sequence[str],
    lora: Intervention,
    position: int = -1,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fine-tuned minus base, base mean, fine-tuned mean) residual at every layer's resid_pre, ``position``:
    each [n_layers, d_model] float64."""
    from saesteer.activations import mean_activations, resid_hooks

    check_prompts(prompts, "prompts")
    hooks = resid_hooks(model)
    base = mean_activations(model, template, prompts, hooks, [position], batch_size=batch_size)[:, 0]
    tuned = mean_activations(model, template, prompts, hooks, [position], batch_size=batch_size, interventions=[lora])[
        :, 0
    ]
    return tuned - base, base, tuned


@torch.no_grad()
def mean_read(
    model: HookedTransformer,
    template: ChatTemplate,
    prompts: Sequence[str],
    lora: Rank1Lora,
    position: int = -1,
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean over prompts of the adapter's scalar x . a_l at ``position`` (with the adapter on): [n_layers_adapted]."""
    check_prompts(prompts, "prompts")
    tok = model.tokenizer
    total = torch.zeros(len(lora.layers), dtype=torch.float64)
    reads = {lora._names(l)[0]: i for i, l in enumerate(lora.layers)}
    store: dict[int, torch.Tensor] = {}

    def grab(x: torch.Tensor, hook) -> None:
        i = reads[hook.name]
        store[i] = (x[:, position].float() @ lora.a[i].detach().float().to(x.device)).double().cpu()

    stop = stop_layer(model, list(reads))
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        enc = encode_chat(tok, template, [prompts[i] for i in idx], pad_token_id=tok.pad_token_id)
        with model.hooks(fwd_hooks=collect_hooks(model, [lora]) + [(h, grab) for h in reads]):
            model(
                enc.tokens.to(model.cfg.device),
                attention_mask=enc.attention_mask.to(model.cfg.device),
                stop_at_layer=stop,
            )
        for i, v in store.items():
            total[i] += v.sum()
    return total / len(prompts)


def cosine_per_layer(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> list[Optional[float]]:
    """Cosine of matching rows of a and b [n, d] (a single vector b is broadcast); None where a row is ~zero."""
    a = a.double()
    b = b.double().expand_as(a) if b.ndim == 1 else b.double()
    out: list[Optional[float]] = []
    for x, y in zip(a, b):
        nx, ny = float(x.norm()), float(y.norm())
        out.append(None if nx < eps or ny < eps else float(x @ y) / (nx * ny))
    return out
