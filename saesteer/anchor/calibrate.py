"""Calibrating an anchor of the refusal activation (fits on train / val prompts only).

- floors: at every anchored hook (from the layer before the refusal direction's to the last),
  a low quantile of the projection on the unit refusal direction over *refused*
  harmful training prompts: ``quantile`` at t_inst and at each post-instruction position for
  those prompt tokens (``floor_positions="post"``; the instruction's earlier tokens get
  t_inst's: a direction read at one post-instruction position is not the same coordinate at
  the next, so each position needs its own floor), ``generated_quantile`` over the generated
  tokens of their own greedy refusals for decoding (refusal tokens such as "to" in "not able
  to" sit low on r, so the decoding floor is lower than the prompt's).  Low quantiles
  suffice: an attacked harmful prompt needs only to be lifted back into the refused range, and
  the push a misfiring gate gives a harmless prompt is smaller; the prompt floor's quantile
  trades attack success against KL on harmless prompts (docs/anchoring.md);
- gate: a harm detector read from the prompt (Zhao et al. 2025: harmfulness is
  encoded apart from refusal): an L2-regularized logistic probe on the residual at
  t_inst and the post-instruction tokens of the layer before the direction's and of
  the direction's own layer (one weight vector per layer and position; when that is
  later than the first anchored layer, ``steer`` runs a pre-pass over the prompt in
  which the gate decides, and the anchor then acts from its first layer), with the
  refusal direction projected out of every feature, so that removing r cannot blind
  it directly.  It is fitted on refused harmful training prompts plus synthetic
  harmful requests against harmless training prompts plus synthetic safe look-alikes,
  optionally also under anticipated attacks (``gate_robust``: e.g. the weight-
  orthogonalized model, whose edited embeddings otherwise blind a clean-fitted
  probe), and its threshold is set so that it fires on at most ``gate_fpr`` of the
  harmless calibration prompts the model does not already refuse: the rise in
  over-refusal it may cause.

- feature bounds (optional, ``calibrate_feature_anchor``): at the SAE's hook, floors on the
  coordinates along the decoder directions of the top refusal features and ceilings on
  those of the top comply features (the search's signed ranking), the ``feature_quantile``
  of refused harmful training prompts toward refusal (prompt: post-instruction tokens;
  decoding: their own refusals' tokens).  The direction's floor alone does not stop a
  feature-space bypass: that attacker moves the features' decoder directions, not r.

The result, :class:`AnchorArtifact`, builds the defences the attack suite compares:
the anchor itself, CAST-style conditional addition (same gate) and unconditional
addition.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from saesteer.activations import collect_activations, collect_token_activations, n_post_tokens, stop_layer
from saesteer.anchor.artifact import AnchorArtifact, FeatureAnchor, TextClassifier
from saesteer.anchor.settings import AnchorCalibration
from saesteer.anchor.thresholds import center_in_gap, union_thresholds
from saesteer.chat import ChatTemplate, encode_chat, head_ids
from saesteer.checks import check_prompts
from saesteer.interventions import AnchorProjections
from saesteer.interventions.anchors import anchor_hooks
from saesteer.interventions.gates import ProbeGate, TokenProbeGate, decode_instructions
from saesteer.stats import auroc

log = logging.getLogger(__name__)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def logistic_probe(
    pos: torch.Tensor, neg: torch.Tensor, l2: float, exclude: Optional[torch.Tensor] = None, steps: int = 200
) -> torch.Tensor:
    """Weights w of an L2-regularized logistic regression pos vs neg ([n, d] float64), in input units.

    With ``exclude`` (a unit vector) the features have that direction projected out
    first, so w is orthogonal to it.  Features are standardized for the fit.
    """
    x = torch.cat([pos, neg]).double()
    if exclude is not None:
        x = x - (x @ exclude)[:, None] * exclude
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach() / sd


def token_probe(
    pos: Sequence[torch.Tensor],
    neg: Sequence[torch.Tensor],
    l2: float,
    steps: int = 300,
    seed: int = 0,
    tau: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """A linear per-token probe whose max over a prompt's tokens separates pos from neg prompts
    (multiple-instance logistic regression: a prompt is harmful if some token is).

    ``pos``/``neg``: per-prompt token features [n_tokens, d].  Fitted on standardized features with
    Adam on the log-sum-exp (temperature ``tau``) of the token scores, classes weighted equally;
    returns (w [d], bias) in input units.
    """
    seqs = list(pos) + list(neg)
    if not pos or not neg:
        raise ValueError(f"token_probe needs prompts of both classes, got {len(pos)} positive and {len(neg)} negative")
    lengths = torch.tensor([len(x) for x in seqs])
    if (lengths == 0).any():
        raise ValueError(f"token_probe: prompt {int((lengths == 0).nonzero()[0])} has no tokens")
    # packed tokens [n_tokens, d] with their prompt's index: no padding (a padded batch of ~50k prompts took 11 GB and 20 min)
    Z = torch.cat([x.float() for x in seqs])
    seg = torch.repeat_interleave(torch.arange(len(seqs)), lengths)
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    mu, sd = Z.mean(0), Z.std(0).clamp_min(1e-6)
    Z.sub_(mu).div_(sd)  # standardized in place
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(Z.shape[1], generator=gen) * 1e-3).requires_grad_(True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.02)
    pos_weight = torch.tensor(len(neg) / len(pos))
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            s = (Z @ w + b) / tau
            m = torch.full((len(seqs),), float("-inf")).scatter_reduce(0, seg, s.detach(), "amax")  # stabilizer only
            pooled = tau * (
                m + torch.zeros(len(seqs)).index_add(0, seg, (s - m[seg]).exp()).log()
            )  # per-prompt logsumexp
            loss = F.binary_cross_entropy_with_logits(pooled, y, pos_weight=pos_weight) + l2 * (w * w).sum()
            loss.backward()
            opt.step()
    w_in = (w.detach() / sd).double()
    return w_in, float(b.detach() - (mu.double() / sd.double()) @ w.detach().double())


@torch.no_grad()
def generated_projections(
    model, template, prompts: Sequence[str], hooks: Sequence[str], r: torch.Tensor, max_new_tokens: int, batch_size: int
) -> torch.Tensor:
    """Projections on ``r`` at ``hooks`` over the generated tokens of the prompts' greedy completions: [n_tokens, n_hooks]."""
    from saesteer.evaluate import prompt_completion_batch
    from saesteer.generation import generate, length_sorted_batches

    check_prompts(prompts, "prompts")
    comps = generate(
        model, template, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False
    )
    out, stop = [], stop_layer(model, hooks)
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = prompt_completion_batch(model.tokenizer, template, [prompts[i] for i in idx], [comps[i] for i in idx])
        if batch is None:
            continue
        tokens, mask, sel = batch
        store: dict[str, torch.Tensor] = {}
        grab = [(h, lambda x, hook, store=store: store.__setitem__(hook.name, x.detach())) for h in hooks]
        with model.hooks(fwd_hooks=grab):
            model(tokens.to(model.cfg.device), attention_mask=mask.to(model.cfg.device), stop_at_layer=stop)
        out.append(torch.stack([store[h].float().cpu()[sel] @ r for h in hooks], 1))
    if not out:
        raise ValueError(
            "the refused prompts' greedy completions are empty: no generated tokens to calibrate the anchor on"
        )
    return torch.cat(out)


def calibrate_feature_anchor(
    model: HookedTransformer,
    template: ChatTemplate,
    sae: Any,
    features: Sequence[int],
    signs: Sequence[int],
    hook: str,
    harmful_refused: Sequence[str],
    quantile: float = 0.75,
    max_new_tokens: int = 12,
    batch_size: int = 32,
    progress: bool = False,
    apply_to: str = "generated",
) -> FeatureAnchor:
    """Bounds on the coordinates along the unit decoder directions of ``features`` at ``hook``.

    A refusal feature (sign +1) gets a floor at the ``quantile`` of the refused harmful
    prompts' coordinates, a comply feature (sign -1) a ceiling at ``1 - quantile``:
    over their post-instruction tokens for prompt tokens, over the generated tokens of
    their own greedy refusals for decoding.  ``apply_to``: the tokens the bounds act on.  On the
    organism the default, generated tokens only, stops the feature bypass as well as both (ASR
    0.126 vs 0.119 on harmful_test) without touching the next-token distribution on the prompts a
    gate misfires on (KL on harmless_test 0.050 vs 0.062): the bypass works through decoding.
    """
    check_prompts(harmful_refused, "harmful_refused")
    if not harmful_refused:
        raise ValueError("calibrate_feature_anchor: the harmful_refused prompt set is empty")
    if hook not in model.hook_dict:
        raise ValueError(
            f"calibrate_feature_anchor: hook {hook!r} does not exist in this model (e.g. blocks.0.hook_resid_pre)"
        )
    proto = AnchorProjections.from_sae(
        sae, features, signs, torch.zeros(len(list(features))), hook=hook, apply_to=apply_to
    )  # checks every argument
    proto.validate(model)
    U = proto.units  # [m, d_model]
    n_post = n_post_tokens(model, template)
    acts = collect_activations(
        model,
        template,
        list(harmful_refused),
        [hook],
        list(range(-n_post, 0)),
        batch_size=batch_size,
        progress=progress,
        desc="feature anchor bounds",
    )
    prompt_coords = acts[:, 0].reshape(-1, acts.shape[-1]) @ U.T  # [n * n_post, m]
    gen_coords = generated_projections(model, template, list(harmful_refused), [hook], U.T, max_new_tokens, batch_size)[
        :, 0
    ]  # [n_gen, m]
    sg = torch.tensor(proto.signs, dtype=torch.float64)
    q = torch.where(
        sg > 0, torch.tensor(quantile, dtype=torch.float64), torch.tensor(1.0 - quantile, dtype=torch.float64)
    )

    def bounds(coords: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.quantile(coords[:, i].double(), q[i]) for i in range(len(q))]).float()

    fa = FeatureAnchor(
        hook, [int(f) for f in features], proto.signs, U.clone(), bounds(prompt_coords), bounds(gen_coords), apply_to
    )
    log.info(
        "feature anchor at %s: %d features, bounds %s (prompt) %s (decoding)",
        hook,
        len(fa.features),
        [round(b, 2) for b in fa.bounds.tolist()],
        [round(b, 2) for b in fa.generated_bounds.tolist()],
    )
    return fa


def instruction_texts(model: HookedTransformer, template: ChatTemplate, prompts: Sequence[str]) -> list[str]:
    """The instructions as the text gate reads them: formatted, tokenized, and decoded back without the template."""
    enc = encode_chat(model.tokenizer, template, list(prompts), pad_token_id=model.tokenizer.pad_token_id)
    return decode_instructions(model.tokenizer, template, enc.tokens, enc.attention_mask)


def fit_text_classifier(
    model: HookedTransformer,
    template: ChatTemplate,
    harmful: Sequence[str],
    harmless: Sequence[str],
    l2: float,
    max_tokens: int,
    hidden: int = 0,
    steps: int = 400,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> TextClassifier:
    """A classifier of harmful vs harmless instructions on their MiniLM-L6 embeddings (threshold 0 until the caller
    sets it): L2-regularized logistic (``hidden=0``), or one GELU hidden layer of ``hidden`` units trained with AdamW
    (``steps`` full-batch steps, ``weight_decay``, the two classes weighted equally, seeded)."""
    from saesteer.judge.learned import embed

    xh = embed(instruction_texts(model, template, harmful), max_tokens).double()
    xs = embed(instruction_texts(model, template, harmless), max_tokens).double()
    if hidden == 0:
        w = logistic_probe(xh, xs, l2)
        bias = -float(torch.cat([xh, xs]).mean(0) @ w)  # centred: the threshold, set on held-out prompts, decides
        return TextClassifier(w.float().contiguous(), bias, 0.0, template.name, max_tokens)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([xh, xs]).float()
    y = torch.cat([torch.ones(len(xh)), torch.zeros(len(xs))])
    weight = torch.where(y > 0, 0.5 / len(xh), 0.5 / len(xs))
    d = x.shape[1]
    w1 = (torch.randn(hidden, d, generator=gen) / d**0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=gen) / hidden**0.5).requires_grad_()
    b2 = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([w1, b1, w2, b2], lr=3e-3, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            logits = torch.nn.functional.gelu(x @ w1.T + b1) @ w2 + b2
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum()
            loss.backward()
            opt.step()
    return TextClassifier(
        w2.detach().contiguous(),
        float(b2.detach()),
        0.0,
        template.name,
        max_tokens,
        hidden_weights=w1.detach().contiguous(),
        hidden_bias=b1.detach().contiguous(),
    )


def calibrate_anchor(
    model: HookedTransformer,
    template: ChatTemplate,
    direction: torch.Tensor,
    layer: int,
    harmful_refused: Sequence[str],
    harmful_val: Sequence[str],
    harmless_train: Sequence[str],
    harmless_val: Sequence[str],
    cfg: Optional[AnchorCalibration] = None,
    progress: bool = False,
    robust_to: Sequence = (),
    harmful_extra: Sequence[str] = (),
    harmless_extra: Sequence[str] = (),
    lookalike_val: Sequence[str] = (),
) -> AnchorArtifact:
    """Fit floors on refused harmful training prompts and the gate on train/val prompts.

    The gate's probe is fitted on ``harmful_refused + harmful_extra`` against the first
    half of ``harmless_train`` plus ``harmless_extra``; the members' thresholds are set together
    (:func:`union_thresholds`) so that the gate fires on at most ``gate_fpr`` of the second half's
    prompts that the model does not refuse.
    ``robust_to``: attacks (:class:`saesteer.attacks.base.Attack`: a weight edit and/or
    hooks) under which the probe is also fitted, on the same prompts, so that the
    attack it anticipates does not blind it; the threshold is still set on the clean model.
    ``lookalike_val``: safe prompts that sound alarming; the thresholds are set the same way on those the model
    does not refuse (bound ``gate_lookalike_fpr``) and each member keeps the higher of its two.
    """
    cfg = cfg if cfg is not None else AnchorCalibration()
    from saesteer.evaluate import refusal_eval

    check_prompts(harmful_refused, "harmful_refused")
    check_prompts(harmful_val, "harmful_val")
    check_prompts(harmless_train, "harmless_train")
    check_prompts(harmless_val, "harmless_val")
    check_prompts(harmful_extra, "harmful_extra")
    check_prompts(harmless_extra, "harmless_extra")
    check_prompts(lookalike_val, "lookalike_val")
    for name, prompts in (
        ("harmful_refused", harmful_refused),
        ("harmful_val", harmful_val),
        ("harmless_train", harmless_train),
        ("harmless_val", harmless_val),
    ):
        if len(prompts) == 0:
            raise ValueError(f"calibrate_anchor: the {name} prompt set is empty")
    n_layers = model.cfg.n_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"calibrate_anchor: direction layer {layer} out of range for a model with {n_layers} layers")
    layers = list(range(max(layer - 1, 0), n_layers)) if cfg.layers is None else [int(l) for l in cfg.layers]
    gate_layers = (
        sorted({max(layer - 1, 0), layer, min(layer + 1, n_layers - 1)})
        if cfg.gate_layers is None
        else sorted({int(l) for l in cfg.gate_layers})
    )
    bad = [l for l in layers + gate_layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"anchor.layers / anchor.gate_layers {bad} out of range for a model with {n_layers} layers")
    r = _unit(direction.float())
    hooks = anchor_hooks(model, layers, cfg.final)
    n_post = n_post_tokens(model, template)
    floor_pos = list(range(-n_post - 1, 0)) if cfg.floor_positions == "post" else [-1]
    acts = collect_activations(
        model,
        template,
        list(harmful_refused),
        hooks,
        floor_pos,
        batch_size=cfg.batch_size,
        progress=progress,
        desc="anchor floors",
    )
    position_floors = torch.quantile((acts @ r).double(), cfg.quantile, dim=0).float()  # [n_hooks, n_pos]
    floors = position_floors[:, 0].clone()  # "post": t_inst's floor for the instruction's earlier tokens
    if cfg.floor_positions == "last":
        position_floors = None
    gen = generated_projections(model, template, list(harmful_refused), hooks, r, cfg.max_new_tokens, cfg.batch_size)
    generated_floors = torch.quantile(gen.double(), cfg.generated_quantile, dim=0).float()

    # the gate: harmfulness with r projected out, at the gate layers and positions
    positions = list(cfg.gate_positions) if cfg.gate_positions is not None else list(range(-n_post - 1, 0))
    gh = [f"blocks.{l}.hook_resid_pre" for l in gate_layers]
    half = len(harmless_train) // 2
    fit_harmless = (list(harmless_train[:half]) or list(harmless_train)) + list(harmless_extra)
    thr_harmless = list(harmless_train[half:]) or list(harmless_train)
    fit_harmful = list(harmful_refused) + list(harmful_extra)
    rd = r.double()

    def read(
        prompts: Sequence[str], desc: str, attack=None
    ) -> list[torch.Tensor]:  # per prompt [n_tokens, n_gate_layers, d_model], r projected out
        target = model if attack is None else attack.model(model)
        edits = [] if attack is None else list(attack.interventions)
        prompts = list(prompts) if attack is None else attack.prompts(list(prompts))  # a prompt attack rewrites them
        xs = collect_token_activations(
            target, template, prompts, gh, batch_size=cfg.batch_size, progress=progress, desc=desc, interventions=edits
        )
        return [x - (x @ r)[..., None] * r for x in xs] if cfg.gate_orthogonal else xs

    def at_positions(xs: Sequence[torch.Tensor]) -> torch.Tensor:  # [n, n_gate_layers, n_pos, d_model] float64
        return torch.stack([x[positions].transpose(0, 1) for x in xs]).double()

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.mean(2).flatten(1) if cfg.gate_pooling == "mean" else x.flatten(1)

    # one forward pass per prompt set: the position probe reads the last positions of the token activations
    t_h, t_s = read(fit_harmful, "gate fit (harmful)"), read(fit_harmless, "gate fit (harmless)")
    rng = random.Random(f"gate robust:{len(fit_harmful)}:{len(fit_harmless)}")

    def sample(prompts: list[str]) -> list[str]:  # a seeded share of the fit prompts, in their order
        keep = sorted(rng.sample(range(len(prompts)), max(1, round(cfg.gate_robust_share * len(prompts)))))
        return [prompts[i] for i in keep]

    robust_fit = [(attack, sample(fit_harmful), sample(fit_harmless)) for attack in robust_to]
    for attack, harmful_part, harmless_part in robust_fit:  # a share of the same prompts under the anticipated attack
        t_h += read(harmful_part, f"gate fit (harmful, {attack.name})", attack)
        t_s += read(harmless_part, f"gate fit (harmless, {attack.name})", attack)
    h_fit, s_fit = at_positions(t_h), at_positions(t_s)
    if cfg.gate_probe == "mean_diff":
        w = flat(h_fit).mean(0) - flat(s_fit).mean(0)
    else:
        w = logistic_probe(flat(h_fit), flat(s_fit), cfg.gate_l2)
    del h_fit, s_fit
    n_pos = len(positions)
    w = w.view(len(gate_layers), 1 if cfg.gate_pooling == "mean" else n_pos, -1)
    w = (w / n_pos).expand(-1, n_pos, -1) if cfg.gate_pooling == "mean" else w
    if cfg.gate_orthogonal:
        w = w - (w @ rd)[..., None] * rd
    weights = (w / w.norm()).float().contiguous()
    probe = ProbeGate(hook=gh[-1], positions=tuple(positions), hooks=gh, weights=weights)

    def refusals(prompts: Sequence[str], desc: str) -> torch.Tensor:
        kw = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, desc=desc)
        return torch.tensor(refusal_eval(model, template, list(prompts), **kw).refused, dtype=torch.bool)

    thr_refused = refusals(thr_harmless, "gate threshold (refusals)")
    look = list(lookalike_val)
    look_refused = refusals(look, "gate threshold (look-alike refusals)") if look else None
    t_look = read(look, "gate threshold (look-alikes)") if look else []
    t_thr, t_hval, t_sval = (
        read(thr_harmless, "gate threshold"),
        read(harmful_val, "gate val (harmful)"),
        read(harmless_val, "gate val (harmless)"),
    )
    # every member's scores on (threshold harmless, look-alikes, harmful_val, harmless_val)
    members: list[tuple[torch.Tensor, ...]] = [
        tuple(probe.scores(at_positions(t)) if t else torch.zeros(0) for t in (t_thr, t_look, t_hval, t_sval))
    ]
    h_val, s_val = members[0][2], members[0][3]

    tok_w, tok_b, tok_auroc = None, 0.0, float("nan")
    skip = len(head_ids(model.tokenizer, template))  # the template's head: the same tokens in every prompt
    if cfg.gate_tokens:
        w_tok, tok_b = token_probe(
            [x[skip:].flatten(1) for x in t_h],
            [x[skip:].flatten(1) for x in t_s],
            cfg.gate_l2,
            steps=cfg.gate_token_steps,
        )
        w_tok = w_tok.view(len(gate_layers), -1)
        if cfg.gate_orthogonal:
            w_tok = w_tok - (w_tok @ rd)[:, None] * rd
        scale = float(w_tok.norm())
        tok_w, tok_b = (w_tok / scale).float().contiguous(), tok_b / scale
        tgate = TokenProbeGate(hook=gh[-1], hooks=gh, weights=tok_w, bias=tok_b, skip=skip)
        members.append(tuple(tgate.scores(t) if t else torch.zeros(0) for t in (t_thr, t_look, t_hval, t_sval)))
        tok_auroc = auroc(members[-1][2], members[-1][3])
    del t_h, t_s
    text, text_auroc = None, float("nan")
    if cfg.gate_text:
        text_fit = [(list(fit_harmful), list(fit_harmless))] + [
            (attack.prompts(harmful_part), attack.prompts(harmless_part))
            for attack, harmful_part, harmless_part in robust_fit
            if attack.rewrite
        ]
        text = fit_text_classifier(
            model,
            template,
            [p for h, _ in text_fit for p in h],
            [p for _, s in text_fit for p in s],
            cfg.gate_l2,
            cfg.gate_text_tokens,
            hidden=cfg.gate_text_hidden,
            steps=cfg.gate_text_steps,
        )
        members.append(
            tuple(
                text.scores(instruction_texts(model, template, ps)) if ps else torch.zeros(0)
                for ps in (thr_harmless, look, harmful_val, harmless_val)
            )
        )
        text_auroc = auroc(members[-1][2], members[-1][3])

    def free(i: int, refused: torch.Tensor) -> list[torch.Tensor]:  # the prompts the model does not refuse
        return [m[i][~refused] if (~refused).any() else m[i] for m in members]

    thresholds = union_thresholds(free(0, thr_refused), cfg.gate_fpr)
    if look and cfg.gate_lookalike_fpr < 1.0:
        bounded = union_thresholds(free(1, look_refused), cfg.gate_lookalike_fpr)
        thresholds = [max(a, b) for a, b in zip(thresholds, bounded)]
        # each member's threshold was halfway between two scores of one set; the other set's may lie next to it
        thresholds = [center_in_gap(t, list(m)) for t, m in zip(thresholds, members)]

    def fires(i: int) -> torch.Tensor:  # the union's decision on score set i
        return torch.stack([m[i] > t for m, t in zip(members, thresholds)]).any(0)

    threshold = thresholds[0]
    tok_thr = thresholds[1] if cfg.gate_tokens else 0.0
    if text is not None:
        text.threshold = thresholds[-1]
    fire_thr, fire_h, fire_s = fires(0), fires(2), fires(3)
    fire_look = fires(1) if look else None
    tpr_val, fpr_val = float(fire_h.float().mean()), float(fire_s.float().mean())
    meta = {
        "quantile": cfg.quantile,
        "generated_quantile": cfg.generated_quantile,
        "floor_positions": cfg.floor_positions,
        "gate_fpr_target": cfg.gate_fpr,
        "gate_orthogonal": cfg.gate_orthogonal,
        "gate_pooling": cfg.gate_pooling,
        "gate_auroc_val": auroc(h_val, s_val),
        "gate_tpr_val": tpr_val,
        "gate_fpr_val": fpr_val,
        "gate_fpr_calibration": float(fire_thr.float().mean()),
        "gate_lookalike_fpr_target": cfg.gate_lookalike_fpr,
        "gate_fpr_lookalike_calibration": float(fire_look[~look_refused].float().mean())
        if look and (~look_refused).any()
        else float("nan"),
        "n_lookalike_val": len(look),
        "gate_tokens": cfg.gate_tokens,
        "token_gate_auroc_val": tok_auroc,
        "gate_text": cfg.gate_text,
        "text_gate_auroc_val": text_auroc,
        "gate_robust": list(getattr(a, "name", str(a)) for a in robust_to),
        "n_floor_prompts": len(harmful_refused),
        "n_gate_fit": [len(fit_harmful), len(fit_harmless)],
        "gate_robust_share": cfg.gate_robust_share,
        "gate_refusal_cosine": float((weights.double() @ rd).abs().max()),
    }
    log.info(
        "anchor: layers %s floors %s; gate layers %s positions %s (val AUROC %.3f, TPR %.3f, FPR %.3f)",
        layers,
        [round(f, 3) for f in floors.tolist()],
        gate_layers,
        positions,
        meta["gate_auroc_val"],
        tpr_val,
        fpr_val,
    )
    return AnchorArtifact(
        direction.float(),
        layer,
        layers,
        cfg.final,
        floors,
        generated_floors,
        weights,
        gate_layers,
        positions,
        threshold,
        0.0,
        tok_w,
        tok_thr,
        tok_b,
        meta,
        position_floors=position_floors,
        text=text,
        token_skip=skip,
    )
