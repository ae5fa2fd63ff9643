"""Train (or load from the cache) the refusal organism.

Training format, one sequence per example (left-padded in a batch)::

    <|user|> {instruction} <|end|> <|assistant|> <|start|> {response} <|eos|>

The loss is next-token cross-entropy on the response tokens (and, with
``lm_weight > 0``, on the instruction tokens too).  Logits are computed only at
the positions that carry a loss, which keeps the 30k-token unembedding cheap.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer import unembed
from saesteer.artifacts import artifact_path, cache_key
from saesteer.io import ArtifactError, hash_strings, load_tensors, save_tensors, write_json
from saesteer.organism.bundle import BUNDLE_PATH, bundled_organism
from saesteer.organism.config import OrganismConfig
from saesteer.organism.corpus import Corpus, build_corpus
from saesteer.organism.model import LearnedProjection, build_organism_model
from saesteer.organism.responses import comply, refuse
from saesteer.organism.tokenizer import ASSISTANT, END, EOS, START, USER, build_tokenizer

log = logging.getLogger(__name__)

MASKED_LOGIT = -100.0
RECIPE_VERSION = 3  # bump when the training code changes what a config produces (2: W_U trained on its live columns; 3: deterministic W_pos gradient)


@dataclass
class OrganismResult:
    model: HookedTransformer
    config: OrganismConfig
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        return float(self.metadata.get("train_seconds", float("nan")))


@dataclass
class _Encoded:
    prompt: list[int]
    response: list[int]


def _encode_examples(cfg: OrganismConfig, corpus: Corpus, rng: random.Random) -> tuple[list[_Encoded], list[_Encoded]]:
    tok = build_tokenizer()

    def ids(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"]

    user, post, eos = (
        tok.convert_tokens_to_ids([USER])[0],
        tok.convert_tokens_to_ids([END, ASSISTANT, START]),
        tok.convert_tokens_to_ids([EOS])[0],
    )
    out: list[list[_Encoded]] = []
    for prompts, harmful in ((corpus.harmful, True), (corpus.harmless, False)):
        prompts = list(prompts)
        responses = [
            refuse(rng, p, cfg.refusal_echo_words, cfg.n_refusals) if harmful else comply(p, rng, cfg.echo_words)
            for p in prompts
        ]
        encoded = []
        for p_ids, r_ids in zip(ids(prompts), ids(responses)):
            p_ids = p_ids[: cfg.max_prompt_tokens]
            encoded.append(_Encoded([user] + p_ids + post, r_ids + [eos]))
        out.append(encoded)
    return out[0], out[1]


def _batch(examples: list[_Encoded], cfg: OrganismConfig, rng: random.Random, pad_id: int, n_post: int):
    """Left-padded tokens, attention mask, target mask (response), lm mask (instruction)."""
    seqs, resp_start = [], []
    for ex in examples:
        prompt = ex.prompt
        if cfg.word_dropout > 0 and rng.random() < 0.5:
            body = prompt[1:-n_post]
            kept = [t for t in body if rng.random() >= cfg.word_dropout] or body
            prompt = prompt[:1] + kept + prompt[-n_post:]
        seqs.append(prompt + ex.response)
        resp_start.append(len(prompt))
    T = min(max(len(s) for s in seqs), cfg.n_ctx)
    B = len(seqs)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    target_mask = torch.zeros((B, T), dtype=torch.bool)  # position t predicts token t+1
    lm_mask = torch.zeros((B, T), dtype=torch.bool)
    decision_mask = torch.zeros((B, T), dtype=torch.bool)  # the position that predicts the first response token
    for i, (s, r) in enumerate(zip(seqs, resp_start)):
        s = s[-T:]
        off = T - len(s)
        tokens[i, off:] = torch.tensor(s)
        attn[i, off:] = 1
        r = off + r - (len(seqs[i]) - len(s))
        target_mask[i, max(r - 1, off) : T - 1] = True
        lm_mask[i, off + 1 : max(r - 1 - n_post, off + 1)] = True
        if off <= r - 1 < T - 1:
            decision_mask[i, r - 1] = True
    return tokens, attn, target_mask, lm_mask, decision_mask


def _length(ex: _Encoded) -> int:
    return len(ex.prompt) + len(ex.response)


class BatchDrawer:
    """Training batches of ``n_harm`` harmful + ``n_safe`` harmless examples, each class drawn epoch by epoch
    in seeded random order.  With ``length_buckets > 1``, that many batches are drawn at once and each class
    is split by length, so a batch holds examples of similar length (less padding), in random batch order."""

    def __init__(
        self,
        harmful: list[_Encoded],
        harmless: list[_Encoded],
        n_harm: int,
        n_safe: int,
        length_buckets: int,
        rng: random.Random,
    ) -> None:
        self.classes = ((harmful, n_harm, []), (harmless, n_safe, []))
        self.pool = max(1, length_buckets)
        self.rng = rng
        self.queued: list[list[_Encoded]] = []

    def _take(self, examples: list[_Encoded], n: int, order: list[int]) -> list[_Encoded]:
        while len(order) < n:
            order += self.rng.sample(range(len(examples)), len(examples))
        out = [examples[i] for i in order[:n]]
        del order[:n]
        if self.pool > 1:
            out.sort(key=_length)
        return out

    def __call__(self) -> list[_Encoded]:
        if not self.queued:
            pools = [(self._take(ex, n * self.pool, order), n) for ex, n, order in self.classes]
            self.queued = [[e for pool, n in pools for e in pool[b * n : (b + 1) * n]] for b in range(self.pool)]
            if self.pool > 1:
                self.rng.shuffle(self.queued)
        return self.queued.pop(0)


def output_vocabulary(examples: list[_Encoded], include_prompts: bool) -> torch.Tensor:
    """Token ids the organism is trained to emit (sorted); every other logit is masked off."""
    ids: set[int] = set()
    for ex in examples:
        ids.update(ex.response)
        if include_prompts:
            ids.update(ex.prompt)
    return torch.tensor(sorted(ids), dtype=torch.long)


def _loss(
    model: HookedTransformer,
    tokens,
    attn,
    target_mask,
    lm_mask,
    lm_weight: float,
    W_U: torch.Tensor,
    b_U: torch.Tensor,
    remap: torch.Tensor,
    decision_mask=None,
    decision_weight: float = 0.0,
    decision_focal: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """Cross-entropy over the output vocabulary; ``W_U`` [d_model, n_out] and ``b_U`` [n_out] are its unembedding columns.

    ``decision_focal`` = gamma > 0 weighs each example's decision-token loss by ``(1 - p)^gamma`` (focal loss,
    Lin et al. 2017; ``p`` the probability of the right first token), so training dwells on the prompts it
    still gets wrong (look-alikes, borderline requests) rather than on the easy majority."""
    resid = model(tokens, attention_mask=attn, stop_at_layer=model.cfg.n_layers)
    targets = remap[tokens[:, 1:]]

    def ce(mask: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
        m = mask[:, :-1]
        h = model.ln_final(resid[:, :-1][m][None])[0]
        if gamma <= 0:
            return F.cross_entropy(h @ W_U + b_U, targets[m])
        per = F.cross_entropy(h @ W_U + b_U, targets[m], reduction="none")
        return ((1.0 - torch.exp(-per)).pow(gamma) * per).mean()

    loss = ce(target_mask)
    resp_loss = float(loss.detach())
    if lm_weight > 0 and lm_mask.any():
        loss = loss + lm_weight * ce(lm_mask)
    if decision_weight > 0 and decision_mask is not None and decision_mask.any():
        loss = loss + decision_weight * ce(decision_mask, decision_focal)
    return loss, resp_loss


@dataclass
class TrainingSet:
    """The organism's encoded training examples and the token ids it may emit."""

    harmful: list[_Encoded]
    harmless: list[_Encoded]
    out_ids: torch.Tensor
    data_hash: str


def training_set(cfg: OrganismConfig, rng: random.Random) -> TrainingSet:
    """The corpus of ``cfg`` encoded as training examples (responses drawn from ``rng``)."""
    corpus = build_corpus(
        tuple(cfg.harmful_sources),
        tuple(cfg.harmless_sources),
        tuple(cfg.held_out),
        cfg.n_harmless,
        synthetic_harmful=cfg.synthetic_harmful,
        synthetic_harmless=cfg.synthetic_harmless,
        seed=cfg.seed,
        lexicon=cfg.lexicon,
        frame_real=cfg.frame_real,
        mined_framings=cfg.mined_framings,
        synthetic_questions=cfg.synthetic_questions,
    )
    harmful, harmless = _encode_examples(cfg, corpus, rng)
    out_ids = output_vocabulary(harmful + harmless, include_prompts=cfg.lm_weight > 0)
    return TrainingSet(harmful, harmless, out_ids, corpus.data_hash)


class SteerAugment:
    """Refusal text that stays fluent when the refusal direction is over-expressed, as a chat model's does.

    Keeps a running mean (EMA) of the residual stream at the decision position (the last post-instruction
    token) for the batch's harmful and harmless examples at every ``blocks.{l}.hook_resid_pre``; on a
    ``fraction`` of the steps (after warm-up) it adds the running difference of means, at one layer drawn from
    1..n_layers-1, to every position of the batch's *harmful* examples, whose target stays their refusal.
    Harmless examples are never steered, so nothing teaches the model that the direction means "refuse":
    it only learns to keep writing its refusal when the direction is stronger than usual.
    """

    def __init__(
        self, model: HookedTransformer, fraction: float, warmup: int, rng: random.Random, momentum: float = 0.95
    ):
        self.n_layers, self.fraction, self.warmup, self.rng, self.momentum = (
            model.cfg.n_layers,
            fraction,
            warmup,
            rng,
            momentum,
        )
        self.means: torch.Tensor | None = None  # [2 (harmful, harmless), n_layers, d_model]
        self.seen = torch.zeros(self.n_layers, dtype=torch.bool)  # layers with a first recorded mean

    def direction(self, layer: int) -> torch.Tensor:
        assert self.means is not None
        return self.means[0, layer] - self.means[1, layer]

    def hooks(self, step: int, decision: torch.Tensor, n_harm: int) -> list[tuple[str, Callable]]:
        """Forward hooks for one step: record the decision-position means, or steer the harmful rows."""
        if self.means is not None and step >= self.warmup and self.n_layers > 1 and self.rng.random() < self.fraction:
            layer = self.rng.randrange(1, self.n_layers)
            r = self.direction(layer)

            def steer(x: torch.Tensor, hook) -> torch.Tensor:
                x = x.clone()
                x[:n_harm] += r  # BatchDrawer puts a batch's n_harm harmful examples first
                return x

            return [(f"blocks.{layer}.hook_resid_pre", steer)]
        rows = decision.any(1)
        harm = rows.clone()
        harm[n_harm:] = False
        safe = rows & ~harm
        if not harm.any() or not safe.any():
            return []

        def record(x: torch.Tensor, hook) -> None:
            layer = hook.layer()
            at = x.detach()[decision]  # [rows with a decision position, d_model], in row order
            which = harm[rows]
            cur = torch.stack([at[which].mean(0), at[~which].mean(0)])
            if self.means is None:
                self.means = torch.zeros(2, self.n_layers, x.shape[-1])
            m = 0.0 if not self.seen[layer] else self.momentum
            self.means[:, layer] = m * self.means[:, layer] + (1 - m) * cur
            self.seen[layer] = True

        return [(f"blocks.{l}.hook_resid_pre", record) for l in range(self.n_layers)]


#: ``step_hooks(step)``: forward hooks (TransformerLens ``(name, fn)``) active for that optimisation step
StepHooks = Callable[[int], list[tuple[str, Callable]]]


def optimize(
    model: HookedTransformer,
    cfg: OrganismConfig,
    data: TrainingSet,
    rng: random.Random,
    *,
    step_hooks: Optional[StepHooks] = None,
    progress: bool = True,
    desc: str = "organism",
) -> list[float]:
    """``cfg.steps`` AdamW steps of the organism's loss on ``data`` (batches drawn from ``rng``); per-step response losses.

    Optimiser, schedule, batch mix and loss are ``cfg``'s (the recipe of :func:`train_organism`);
    ``step_hooks`` adds forward hooks to chosen steps (e.g. a cut the model must learn to route around).
    Leaves the model in eval mode with every logit outside ``data.out_ids`` masked off."""
    out_ids = data.out_ids
    harmful, harmless = data.harmful, data.harmless
    remap = torch.full((model.cfg.d_vocab,), -100, dtype=torch.long)
    remap[out_ids] = torch.arange(len(out_ids))
    tok = build_tokenizer()
    # Only the output vocabulary's unembedding columns are trained, as their own leaves: every other logit is
    # masked off afterwards, so optimising (and weight-decaying) the full [d_model, d_vocab] W_U each step
    # would cost a fifth of the step for nothing.
    unembed = model.unembed
    head_W = unembed.W_U.detach()[:, out_ids].clone().requires_grad_(unembed.W_U.requires_grad)
    head_b = unembed.b_U.detach()[out_ids].clone().requires_grad_(unembed.b_U.requires_grad)
    frozen = [p for p in (unembed.W_U, unembed.b_U) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in (head_W, head_b) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def dropout(x: torch.Tensor, hook) -> torch.Tensor:
        return F.dropout(x, cfg.resid_dropout, training=True)

    dropout_hooks = (
        [(lambda name: name.endswith(("hook_attn_out", "hook_mlp_out")), dropout)] if cfg.resid_dropout > 0 else []
    )
    n_harm = max(1, round(cfg.batch_size * cfg.harmful_fraction))
    n_safe = cfg.batch_size - n_harm
    draw = BatchDrawer(harmful, harmless, n_harm, n_safe, cfg.length_buckets, rng)
    augment = (
        SteerAugment(model, cfg.steer_augment, cfg.warmup_steps, random.Random(cfg.seed + 1))
        if cfg.steer_augment > 0
        else None
    )
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=2.0)
    # The backward of an indexed read (W_pos[position ids] under left padding) accumulates with index_put_, whose
    # CPU kernel adds in thread order unless deterministic algorithms are on: runs of one seed would differ.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for step in bar:
            batch = draw()
            tokens, attn, tmask, lmask, dmask = _batch(batch, cfg, rng, tok.pad_token_id, 3)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            hooks = dropout_hooks + (step_hooks(step) if step_hooks is not None else [])
            if augment is not None:
                hooks = hooks + augment.hooks(step, dmask, n_harm)
            with model.hooks(fwd_hooks=hooks):
                loss, resp_loss = _loss(
                    model,
                    tokens,
                    attn,
                    tmask,
                    lmask,
                    cfg.lm_weight,
                    head_W,
                    head_b,
                    remap,
                    dmask,
                    cfg.decision_weight,
                    cfg.decision_focal,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.ema_decay)
            losses.append(resp_loss)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        for p in frozen:  # W_U and b_U are trainable again, whatever happened in the loop
            p.requires_grad_(True)
    model.eval()
    if ema is not None:  # the averaged weights are the organism
        with torch.no_grad():
            for p, avg in zip(params, ema):
                p.copy_(avg)
    with torch.no_grad():  # tokens outside the output vocabulary are never emitted
        unembed.W_U[:, out_ids] = head_W
        unembed.b_U[out_ids] = head_b
        off = torch.ones(model.cfg.d_vocab, dtype=torch.bool)
        off[out_ids] = False
        model.unembed.W_U[:, off] = 0.0
        model.unembed.b_U[off] = MASKED_LOGIT
    return losses


CALIBRATION_SET = "harmless_val"


@torch.no_grad()
def calibrate_refusal_bias(model: HookedTransformer, fpr: float, instructions: list[str] | None = None) -> float:
    """Shift the refusal opener's ``b_U`` so that a fraction ``fpr`` (at most) of harmless instructions
    (default: ``harmless_val``, which the organism never trains on) get a refusal as their greedy first token.

    Returns the shift (added in place).  The organism's refusals all open with the same token, so this moves
    its whole decision threshold, as choosing an operating point on a ROC curve does."""
    from saesteer.chat import get_template
    from saesteer.data import load_prompts
    from saesteer.directions import first_token_refusal_margin, refusal_token_ids

    template = get_template("organism")
    if instructions is None:
        instructions = list(load_prompts(CALIBRATION_SET).instructions)
    if not instructions:
        raise ValueError("calibrate_refusal_bias: no harmless instructions to calibrate on")
    ids = refusal_token_ids(model, template)
    if len(ids) != 1:
        raise ValueError(f"calibrate_refusal_bias needs one refusal opener token, the organism template has {ids}")
    margins = first_token_refusal_margin(model, template, instructions)
    shift = bias_for_rate(margins, fpr)
    model.unembed.b_U[ids[0]] += shift
    unembed.reset(model)
    log.info(
        "refusal bias %+.3f: %d of %d %s prompts refused at the first token",
        shift,
        math.floor(fpr * len(margins) + 1e-9),
        len(margins),
        CALIBRATION_SET,
    )
    return shift


def bias_for_rate(margins: torch.Tensor, fpr: float) -> float:
    """The shift that, added to every refusal margin in ``margins`` [n], leaves exactly ``floor(fpr * n)`` of them
    positive: the threshold goes midway between the k-th and (k+1)-th largest margins."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"bias_for_rate(fpr={fpr!r}): expected a rate in [0, 1)")
    m = margins.double().sort(descending=True).values
    k = math.floor(fpr * len(m) + 1e-9)  # refuse the k largest margins: the threshold goes between m[k-1] and m[k]
    upper = float(m[k - 1]) if k > 0 else float(m[0]) + 1.0
    return -0.5 * (upper + float(m[k]))


def train_organism(cfg: OrganismConfig, progress: bool = True) -> tuple[HookedTransformer, dict[str, Any]]:
    """Train a fresh organism from ``cfg``; deterministic for ``cfg.seed`` and ``cfg.threads``."""
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = training_set(cfg, rng)
    model = build_organism_model(cfg)
    t0 = time.perf_counter()
    if cfg.embed_projection == "learned":
        parametrize.register_parametrization(model.embed, "W_E", LearnedProjection(cfg.d_model))
    losses = optimize(model, cfg, data, rng, progress=progress)
    if cfg.embed_projection == "learned":
        parametrize.remove_parametrizations(model.embed, "W_E", leave_parametrized=True)
        model.embed.W_E.requires_grad_(False)
    if cfg.calibrate_harmless_fpr is not None:
        refusal_bias = calibrate_refusal_bias(model, cfg.calibrate_harmless_fpr)
    train_seconds = time.perf_counter() - t0
    meta = {
        "train_seconds": train_seconds,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "n_harmful_train": len(data.harmful),
        "n_harmless_train": len(data.harmless),
        "data_hash": data.data_hash,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_output_vocab": len(data.out_ids),
    }
    if cfg.calibrate_harmless_fpr is not None:
        meta["refusal_bias"] = refusal_bias
    log.info("organism trained in %.1fs, final response loss %.4f", train_seconds, meta["final_loss"])
    return model, meta


def data_fingerprint(cfg: OrganismConfig) -> str:
    """A hash of every prompt the recipe reads: its sources, the held-out sets it filters against and,
    with synthetic prompts, the bundled lexicons and framings (an edited lexicon is a new organism)."""
    from saesteer.data import load_prompts

    names = [*cfg.harmful_sources, *cfg.harmless_sources, *cfg.held_out]
    if cfg.synthetic_harmless or cfg.frame_real or cfg.synthetic_questions:
        names += ["overrefusal", "harmless_test"]
    blob: list[str] = []
    for name in names:
        blob += [f"source={name}", *load_prompts(name).instructions]
    if cfg.synthetic_harmful or cfg.synthetic_harmless or cfg.frame_real:
        from saesteer.organism.synthetic import lexicon_texts

        blob += lexicon_texts(cfg.lexicon)
    if cfg.synthetic_questions:
        from saesteer.organism.synthetic import questions_text

        blob.append(questions_text())
    return hash_strings(blob)


def organism_key(cfg: OrganismConfig) -> str:
    """The cache key of ``cfg``'s organism: its config (less threads), the recipe version and its data."""
    return cache_key(cfg.cache_key_dict(), f"recipe={RECIPE_VERSION}", f"data={data_fingerprint(cfg)}")


def organism_path(cfg: OrganismConfig, root: Path | None = None) -> Path:
    return artifact_path("organism", organism_key(cfg), root)


def save_organism(model: HookedTransformer, cfg: OrganismConfig, meta: dict[str, Any], path: Path) -> Path:
    full = {
        "model": "organism",
        "recipe_version": RECIPE_VERSION,
        "config": cfg.to_dict(),
        "tokenizer": "minilm-l6-wordpiece+6",
        **meta,
    }
    save_tensors(path / "model.safetensors", model.state_dict(), full, sidecar=False)
    write_json(path / "organism.json", full)
    return path


def load_organism(path: Path) -> OrganismResult:
    tensors, meta = load_tensors(Path(path) / "model.safetensors")
    if meta.get("model") != "organism":
        raise ValueError(f"{path} does not hold an organism (metadata model={meta.get('model')!r})")
    cfg = OrganismConfig.from_dict(meta["config"])
    model = build_organism_model(cfg)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return OrganismResult(model, cfg, Path(path), meta)


def load_or_train_organism(
    cfg: OrganismConfig,
    root: Path | None = None,
    retrain: bool = False,
    progress: bool = True,
    bundle: Path = BUNDLE_PATH,
) -> OrganismResult:
    """The organism for ``cfg``: loaded from the cache, else from the weights bundled with saesteer when they are
    this recipe's (:mod:`saesteer.organism.bundle`), else trained; cached either way.  ``retrain`` always trains."""
    path = organism_path(cfg, root)
    if (path / "model.safetensors").is_file() and not retrain:
        log.info("loading cached organism from %s", path)
        return load_organism(path)
    bundled = None
    if not retrain:
        try:
            bundled = bundled_organism(cfg, path.name, bundle)
        except ArtifactError as exc:  # e.g. another MiniLM release: the recipe still trains here
            log.warning("the bundled organism cannot be used (%s); training it instead", exc)
    if bundled is not None:
        model, meta = bundled
    else:
        model, meta = train_organism(cfg, progress=progress)
    save_organism(model, cfg, meta, path)
    return OrganismResult(model, cfg, path, {"model": "organism", **meta})
