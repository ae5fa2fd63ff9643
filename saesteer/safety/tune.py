"""Training the safety adapter: refuse harmful requests, keep the base model's own answers to harmless ones.

Each step draws a batch of (prompt, target) pairs: a share ``refuse_fraction`` of refusal pairs, the rest
harmless prompts with the base model's greedy answer (:func:`distillation_targets`, generated once and cached;
an answer cut at ``distill_tokens`` has no end-of-turn target, so the model does not learn to stop there).
The loss is the response-token cross-entropy of the refusals (mean over their tokens) plus ``keep_weight``
times that of the harmless answers, through the adapter applied as hooks; the base weights are frozen.  Each
term adds ``decision_weight`` times the mean cross-entropy of the answers' first tokens: that token decides
between a refusal ("I'm sorry ...") and an answer, and the mean over a 32-token answer would give it 1/32 of
the weight.

**Refusal-direction dropout** (``direction_dropout`` > 0; ReFAT, Yu et al. 2024, and DeepRefusal): every
``dropout_every`` steps from ``dropout_start`` on, the model's current refusal direction is measured through the
adapter (difference in means of ``resid_pre`` at ``dropout_layer``, last prompt token, ``dropout_prompts``
harmful and harmless training prompts), and on a seeded share ``direction_dropout`` of the steps the refusal rows
run with that direction ablated at every layer (after the adapter's edit), so that the model learns to refuse
when an attacker removes it.

Training is deterministic: the batch of step ``k`` is a function of the seed and ``k`` only (a seeded
permutation of each pool per epoch), the learning rate too (linear warm-up, cosine decay to
``lr_final_fraction``), and the model has no dropout.  Every ``checkpoint_every`` steps the adapter and
AdamW's state go to ``checkpoint.safetensors`` (with a JSON sidecar): a run stopped at any point and started
again with the same settings continues from its last checkpoint and ends with the weights an uninterrupted run
ends with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.activations import mean_activations
from saesteer.chat import ChatTemplate
from saesteer.checks import check_finite_fields, check_number, check_positive_ints
from saesteer.generation import generate
from saesteer.interventions import collect_hooks
from saesteer.io import cache_dir, hash_strings, load_tensors, save_tensors, write_json
from saesteer.lora import sft_batch
from saesteer.safety.adapter import SITES, LowRankAdapter
from saesteer.unembed import logits as unembed_logits

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
#: the settings of the direction cut: they name a run only when the cut is on
DROPOUT_FIELDS = ("direction_dropout", "dropout_layer", "dropout_start", "dropout_every", "dropout_prompts")


@dataclass
class SafetyTrainConfig:
    """How :func:`train_safety` fits the adapter: the base of the ``safety`` config group's schema
    (``saesteer.config.SafetySettings``)."""

    GROUP: ClassVar[str] = "SafetyTrainConfig"  # names the fields in errors

    layers: Optional[list[int]] = None  # adapted layers; None = the middle band, n_layers // 5 to 4 * n_layers // 5
    sites: list[str] = field(default_factory=lambda: list(SITES))  # attn_out (W_O) and / or mlp_out (W_out)
    rank: int = 16
    alpha: float = 32.0  # the update is (alpha / rank) * A @ B
    steps: int = 300
    batch_size: int = 16
    refuse_fraction: float = 0.3  # share of each batch that is refusal pairs
    keep_weight: float = 1.0  # weight of the harmless answers' loss against the refusals'
    decision_weight: float = 3.0  # extra weight on each answer's first token, where the model refuses or answers
    lr: float = 6e-4
    warmup_steps: int = 10
    lr_final_fraction: float = 0.1  # the cosine decay ends at lr * this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    distill_tokens: int = 32  # greedy tokens of the base model's answer kept as a harmless target
    checkpoint_every: int = 25
    direction_dropout: float = 0.0  # share of steps whose refusal rows run with the refusal direction ablated (0: off)
    dropout_layer: Optional[int] = None  # resid_pre layer the direction is measured at; None = 3 * n_layers // 5
    dropout_start: int = 50  # steps before the first cut (refusal has to be learnt first)
    dropout_every: int = 10  # steps between measurements of the direction through the current adapter
    dropout_prompts: int = 32  # harmful and harmless training prompts (each) the direction is measured on

    def __post_init__(self) -> None:
        if self.sites is None:
            self.sites = list(SITES)
        check_finite_fields(self)
        check_positive_ints(
            self,
            self.GROUP,
            "rank",
            "steps",
            "batch_size",
            "distill_tokens",
            "checkpoint_every",
            "dropout_every",
            "dropout_prompts",
        )
        check_number(self, self.GROUP, "direction_dropout", low=0.0, strict=False, high=1.0)
        if self.dropout_start < 0:
            raise ValueError(f"{self.GROUP}.dropout_start must be >= 0, got {self.dropout_start}")
        check_number(self, self.GROUP, "alpha", low=0.0)
        check_number(self, self.GROUP, "lr", low=0.0)
        check_number(self, self.GROUP, "refuse_fraction", low=0.0, high=1.0)
        check_number(self, self.GROUP, "keep_weight", low=0.0, strict=False)
        check_number(self, self.GROUP, "decision_weight", low=0.0, strict=False)
        check_number(self, self.GROUP, "lr_final_fraction", low=0.0, strict=False, high=1.0)
        check_number(self, self.GROUP, "weight_decay", low=0.0, strict=False)
        check_number(self, self.GROUP, "grad_clip", low=0.0)
        if self.warmup_steps < 0:
            raise ValueError(f"{self.GROUP}.warmup_steps must be >= 0, got {self.warmup_steps}")
        bad = [s for s in self.sites if s not in SITES]
        if bad or not self.sites or len(set(self.sites)) != len(self.sites):
            raise ValueError(f"{self.GROUP}.sites must be distinct names out of {SITES}, got {self.sites}")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise ValueError(f"{self.GROUP}.layers must be distinct layer indices or null, got {self.layers}")

    def band(self, n_layers: int) -> list[int]:
        """The adapted layers for a model of ``n_layers``."""
        layers = (
            list(range(n_layers // 5, max(n_layers // 5 + 1, 4 * n_layers // 5)))
            if self.layers is None
            else self.layers
        )
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"{self.GROUP}.layers {bad} out of range for a model with {n_layers} layers")
        return [int(l) for l in layers]

    def cut_layer(self, n_layers: int) -> int:
        """The layer whose residual stream gives the direction cut during training."""
        layer = 3 * n_layers // 5 if self.dropout_layer is None else self.dropout_layer
        if not 0 <= layer < n_layers:
            raise ValueError(f"{self.GROUP}.dropout_layer={layer} out of range for a model with {n_layers} layers")
        return layer

    def cuts(self, step: int, seed: int) -> bool:
        """Whether step ``step`` runs its refusal rows with the direction ablated (a function of the seed and step)."""
        return (
            self.direction_dropout > 0
            and step >= self.dropout_start
            and random.Random(f"{seed}:cut:{step}").random() < self.direction_dropout
        )

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): linear warm-up, then cosine decay to lr * lr_final_fraction."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.lr_final_fraction + (1 - self.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass(frozen=True)
class KeepPair:
    """A harmless prompt and the base model's greedy answer; ``cut``: the answer stopped at the token limit."""

    prompt: str
    answer: str
    cut: bool


@dataclass
class TrainResult:
    losses: list[float]  # total loss per step
    refuse_losses: list[float]
    keep_losses: list[float]
    seconds: float  # training time of this call (a resumed run: since the resume)
    resumed_from: int  # the step the run resumed from (0: a fresh start)
    cut_steps: list[int] = field(default_factory=list)  # steps whose refusal rows ran with the direction ablated


# ---------------------------------------------------------------------- targets


def answers_with_cut(
    model: HookedTransformer,
    template: ChatTemplate,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "base answers",
) -> list[KeepPair]:
    """The model's greedy answers to ``prompts`` (``max_new_tokens`` at most), each marked cut when it used
    every token (so it did not end on its own)."""
    answers = generate(
        model,
        template,
        list(prompts),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    lengths = [len(ids) for ids in model.tokenizer(answers, add_special_tokens=False)["input_ids"]] if answers else []
    return [KeepPair(p, a, n >= max_new_tokens - 1) for p, a, n in zip(prompts, answers, lengths)]


def distillation_targets(
    model: HookedTransformer,
    template: ChatTemplate,
    prompts: Sequence[str],
    max_new_tokens: int,
    base_key: str,
    batch_size: int = 32,
    progress: bool = False,
    cache: Optional[Path] = None,
    desc: str = "base answers",
) -> list[KeepPair]:
    """:func:`answers_with_cut` of the base model, cached per prompt on disk under ``cache`` (default
    ``$SAESTEER_CACHE/safety``) in one file per base model key, template and token limit: only prompts not
    answered before are generated."""
    root = (cache_dir() / "safety") if cache is None else Path(cache)
    key = hashlib.sha256(
        json.dumps([base_key, template.name, template.prefix, template.suffix, max_new_tokens]).encode()
    ).hexdigest()[:16]
    path = root / f"answers-{key}.json"
    known: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [p for p in dict.fromkeys(prompts) if p not in known]
    if missing:
        new = answers_with_cut(model, template, missing, max_new_tokens, batch_size, progress, desc)
        known = json.loads(path.read_text()) if path.is_file() else {}  # answers another run added meanwhile
        known.update({p.prompt: {"answer": p.answer, "cut": p.cut} for p in new})
        write_json(path, known)
    log.info("base answers of %d prompts (%d generated, the rest from %s)", len(prompts), len(missing), path)
    return [KeepPair(p, known[p]["answer"], bool(known[p]["cut"])) for p in prompts]


# ---------------------------------------------------------------------- loss


def pair_losses(
    model: HookedTransformer,
    template: ChatTemplate,
    pairs: Sequence[tuple[str, str]],
    cut: Sequence[bool],
    adapter: Optional[LowRankAdapter] = None,
    ablate: Optional[tuple[torch.Tensor, int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token cross-entropy of the response tokens [n_targets], the row of each [n_targets]) given the
    chat-formatted prompts; a ``cut`` row has no end-of-turn target.  ``ablate`` = (unit direction, n_rows): the
    first ``n_rows`` rows run with the direction projected out of every layer's resid_pre, attn_out and mlp_out,
    after the adapter's edit."""
    tokens, mask, target = sft_batch(model, template, pairs)
    for i, c in enumerate(cut):
        if c and model.tokenizer.eos_token_id is not None:
            target[i, -2] = False  # the last target of every row is its appended end-of-turn token
    dev = model.cfg.device
    tokens, mask, m = tokens.to(dev), mask.to(dev), target.to(dev)[:, :-1]
    hooks = collect_hooks(model, [adapter]) if adapter is not None else []
    if ablate is not None:
        hooks = hooks + row_ablation_hooks(model, *ablate)
    with model.hooks(fwd_hooks=hooks):
        resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
    targets = tokens[:, 1:][m]
    rows = torch.arange(tokens.shape[0], device=dev)[:, None].expand_as(m)[m]
    logits = unembed_logits(model, resid[:, :-1][m][None])[0]
    return F.cross_entropy(logits.float(), targets, reduction="none"), rows


def row_ablation_hooks(model: HookedTransformer, direction: torch.Tensor, n_rows: int) -> list:
    """Hooks that project unit ``direction`` out of the first ``n_rows`` rows of the batch at every layer's
    resid_pre, attn_out and mlp_out."""

    def fn(x: torch.Tensor, hook=None) -> torch.Tensor:
        r = direction.to(device=x.device, dtype=x.dtype)
        head = x[:n_rows]
        return torch.cat([head - (head @ r)[..., None] * r, x[n_rows:]])

    return [
        (f"blocks.{l}.{name}", fn)
        for l in range(model.cfg.n_layers)
        for name in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
    ]


@torch.no_grad()
def refusal_direction_now(
    model: HookedTransformer,
    template: ChatTemplate,
    adapter: LowRankAdapter,
    harmful: Sequence[str],
    harmless: Sequence[str],
    layer: int,
) -> torch.Tensor:
    """The unit difference in means (harmful minus harmless) of ``blocks.{layer}.hook_resid_pre`` at the last
    prompt token, through ``adapter``: the model's refusal direction at this point of training."""
    hook = [f"blocks.{layer}.hook_resid_pre"]
    mean = [
        mean_activations(model, template, list(p), hook, [-1], interventions=[adapter])[0, 0]
        for p in (harmful, harmless)
    ]
    d = mean[0] - mean[1]
    return (d / d.norm()).float()


@torch.no_grad()
def answer_ce(
    model: HookedTransformer,
    template: ChatTemplate,
    pairs: Sequence[KeepPair],
    adapter: Optional[LowRankAdapter] = None,
    batch_size: int = 16,
) -> float:
    """Mean per-token cross-entropy of the answers in ``pairs`` (with ``adapter`` as hooks when given)."""
    total, n = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        ce, _ = pair_losses(model, template, [(p.prompt, p.answer) for p in chunk], [p.cut for p in chunk], adapter)
        total += float(ce.double().sum())
        n += ce.numel()
    return total / max(n, 1)


def first_of_rows(rows: torch.Tensor) -> torch.Tensor:
    """[n_targets] bool: the first target of each row, given the (non-decreasing) row of every target."""
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    return first


# ---------------------------------------------------------------------- batches


def _epoch_order(n: int, seed: int, pool: str, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{pool}:{epoch}").shuffle(order)
    return order


def draw(n_pool: int, per_step: int, step: int, seed: int, pool: str) -> list[int]:
    """Indices of pool items in step ``step``'s batch: items ``step * per_step ...`` of a stream that runs through
    a fresh seeded permutation of the pool each epoch."""
    out = []
    for j in range(step * per_step, (step + 1) * per_step):
        epoch, k = divmod(j, n_pool)
        out.append(_epoch_order(n_pool, seed, pool, epoch)[k])
    return out


# ---------------------------------------------------------------------- checkpoints


def run_key(cfg: SafetyTrainConfig, adapter: LowRankAdapter, refuse, keep, seed: int) -> str:
    """The name of a training run: its training settings (those that change the result), adapter, data and seed;
    a checkpoint is resumed only by a run of the same name."""
    skip = {"checkpoint_every"} | (set() if cfg.direction_dropout > 0 else set(DROPOUT_FIELDS))
    settings = {f.name: getattr(cfg, f.name) for f in fields(SafetyTrainConfig) if f.name not in skip}
    text = json.dumps(
        [
            settings,
            adapter.spec(),
            seed,
            hash_strings([f"{p}\x01{r}" for p, r in refuse]),
            hash_strings([f"{k.prompt}\x01{k.answer}\x01{k.cut}" for k in keep]),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(
    path: Path,
    adapter: LowRankAdapter,
    opt: torch.optim.Optimizer,
    state: dict,
    extra: Optional[dict[str, torch.Tensor]] = None,
) -> None:
    """The adapter, AdamW's moments, ``extra`` tensors (saved as ``extra.<name>``) and ``state`` (step, losses,
    run key) in one safetensors file."""
    tensors = {f"adapter.{k}": v for k, v in adapter.tensors().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    for name, p in adapter.named_parameters():
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq", "step"):
            if k in st:
                v = st[k]
                tensors[f"opt.{name}.{k}"] = v.detach().reshape(-1) if k == "step" else v.detach()
    save_tensors(path, tensors, state)


def load_checkpoint(
    path: Path, adapter: LowRankAdapter, opt: torch.optim.Optimizer
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore what :func:`save_checkpoint` wrote; returns its state and extra tensors."""
    tensors, state = load_tensors(path)
    adapter.load_tensors({k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")})
    for name, p in adapter.named_parameters():
        st = {}
        for k in ("exp_avg", "exp_avg_sq", "step"):
            key = f"opt.{name}.{k}"
            if key in tensors:
                st[k] = tensors[key].reshape(()) if k == "step" else tensors[key].to(p)
        if st:
            opt.state[p] = st
    return state, {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}


# ---------------------------------------------------------------------- training


def train_safety(
    model: HookedTransformer,
    template: ChatTemplate,
    adapter: LowRankAdapter,
    refuse: Sequence[tuple[str, str]],
    keep: Sequence[KeepPair],
    cfg: SafetyTrainConfig,
    *,
    seed: int = 0,
    checkpoint_dir: Optional[Path] = None,
    stop_after: Optional[int] = None,
    progress: bool = False,
) -> TrainResult:
    """Fit ``adapter`` (its factors only) for ``cfg.steps`` steps; returns the losses of every step so far.

    With ``checkpoint_dir``, resumes from its checkpoint when one of the same run (settings, adapter, data,
    seed) is there, and checkpoints every ``cfg.checkpoint_every`` steps and at the end.  ``stop_after``
    ends the call after that many steps in all (an interruption, for tests)."""
    if not refuse or not keep:
        raise ValueError(f"train_safety needs refusal pairs and keep pairs, got {len(refuse)} and {len(keep)}")
    n_r = min(cfg.batch_size, max(1, round(cfg.batch_size * cfg.refuse_fraction)))
    n_k = cfg.batch_size - n_r
    if n_k < 1:
        raise ValueError(f"batch_size {cfg.batch_size} with refuse_fraction {cfg.refuse_fraction} leaves no keep pairs")
    key = run_key(cfg, adapter, refuse, keep, seed)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    adapter.to(model.cfg.device)
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"key": key, "step": 0, "losses": [], "refuse_losses": [], "keep_losses": [], "cut_steps": []}
    direction: Optional[torch.Tensor] = None  # the refusal direction cut on dropout steps
    layer = cfg.cut_layer(model.cfg.n_layers) if cfg.direction_dropout > 0 else -1
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        saved = load_tensors(ckpt)[1]
        if saved.get("key") == key:
            state, extra = load_checkpoint(ckpt, adapter, opt)
            state.setdefault("cut_steps", [])
            direction = extra.get("direction")
            log.info("resuming the safety fine-tune from step %d (%s)", state["step"], ckpt)
        else:
            log.warning(
                "checkpoint %s belongs to another run (key %s, this run %s): starting afresh",
                ckpt,
                saved.get("key"),
                key,
            )
    start = int(state["step"])
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        bar = tqdm(range(start, end), desc="safety-tune", disable=not progress, mininterval=5.0)
        for step in bar:
            r_idx = draw(len(refuse), n_r, step, seed, "refuse")
            k_idx = draw(len(keep), n_k, step, seed, "keep")
            pairs = [refuse[i] for i in r_idx] + [(keep[i].prompt, keep[i].answer) for i in k_idx]
            cut = [False] * n_r + [keep[i].cut for i in k_idx]
            if (
                cfg.direction_dropout > 0
                and step >= cfg.dropout_start
                and (step - cfg.dropout_start) % cfg.dropout_every == 0
            ):
                rng = random.Random(f"{seed}:direction:{step}")
                direction = refusal_direction_now(
                    model,
                    template,
                    adapter,
                    rng.sample([p for p, _ in refuse], min(cfg.dropout_prompts, len(refuse))),
                    rng.sample([k.prompt for k in keep], min(cfg.dropout_prompts, len(keep))),
                    layer,
                )
            ablate = (direction, n_r) if direction is not None and cfg.cuts(step, seed) else None
            if ablate is not None:
                state["cut_steps"].append(step)
            ce, rows = pair_losses(model, template, pairs, cut, adapter, ablate)
            is_r = rows < n_r
            first = first_of_rows(rows)
            l_r = ce[is_r].mean() + cfg.decision_weight * ce[is_r & first].mean()
            l_k = ce[~is_r].mean() + cfg.decision_weight * ce[~is_r & first].mean()
            loss = l_r + cfg.keep_weight * l_k
            for g in opt.param_groups:
                g["lr"] = cfg.lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(adapter.parameters()), cfg.grad_clip)
            opt.step()
            state["losses"].append(round(float(loss.detach()), 6))
            state["refuse_losses"].append(round(float(l_r.detach()), 6))
            state["keep_losses"].append(round(float(l_k.detach()), 6))
            state["step"] = step + 1
            bar.set_postfix(refuse=f"{state['refuse_losses'][-1]:.3f}", keep=f"{state['keep_losses'][-1]:.3f}")
            if ckpt is not None and (state["step"] % cfg.checkpoint_every == 0 or state["step"] == end):
                save_checkpoint(ckpt, adapter, opt, state, None if direction is None else {"direction": direction})
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    seconds = time.perf_counter() - t0
    if state["losses"]:
        log.info(
            "safety adapter: steps %d -> %d in %.0f s; refusal loss %.3f -> %.3f, keep loss %.3f -> %.3f",
            start,
            state["step"],
            seconds,
            state["refuse_losses"][0],
            state["refuse_losses"][-1],
            state["keep_losses"][0],
            state["keep_losses"][-1],
        )
    return TrainResult(
        state["losses"], state["refuse_losses"], state["keep_losses"], seconds, start, list(state["cut_steps"])
    )
