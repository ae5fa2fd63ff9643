"""Calibrating an anchor of the refusal activation (fits on train / val prompts only).

- floors: at every anchored hook (from the layer before the direction's to the
  last), the ``quantile`` of the projection on the unit refusal direction over
  *refused* harmful training prompts: at the last post-instruction position for
  prompt tokens, and over the generated tokens of their own greedy refusals for
  decoding (one floor for both made the anchored text degenerate, "i'i'i'");
- gate: a harm detector read from the prompt (Zhao et al. 2025: harmfulness is
  encoded apart from refusal): an L2-regularized logistic probe (or the
  difference-in-means harmfulness direction) on the residual at t_inst and the
  post-instruction tokens, fitted on features with the refusal direction
  projected out (so ablating r cannot blind it), at the layer that separates
  harmful_val from harmless_val best among the layers no later than the first
  anchor; its threshold is the ``1 - gate_fpr`` quantile of harmless calibration
  scores.

The result, :class:`AnchorArtifact`, builds the defences the attack suite compares:
the anchor itself, CAST-style conditional addition (same gate) and unconditional
addition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from transformer_lens import HookedTransformer

from saesteer.activations import collect_activations, n_post_tokens
from saesteer.chat import ChatTemplate
from saesteer.interventions import Add, AnchorDirection
from saesteer.interventions.anchors import anchor_hooks
from saesteer.interventions.gates import DirectionGate
from saesteer.io import load_tensors, save_tensors
from saesteer.stats import auroc

log = logging.getLogger(__name__)


@dataclass
class AnchorCalibration:
    quantile: float = 0.25  # floor = this quantile of refused harmful prompts' projections
    layers: Optional[list[int]] = None  # None = from the layer before the direction's to the last
    final: bool = True  # also anchor the last layer's resid_post
    gate_layer: Optional[int] = None  # None = best validation AUROC among eligible layers
    gate_fpr: float = 0.05  # share of harmless calibration prompts the gate may fire on
    gate_orthogonal: bool = True  # remove the refusal direction from the gate's direction
    batch_size: int = 32
    gate_positions: Optional[list[int]] = None  # None = t_inst and every post-instruction position (score: their mean)
    gate_probe: str = "logistic"  # logistic (L2-regularized probe) or mean_diff (the harmfulness direction)
    gate_l2: float = 1e-3  # L2 penalty of the logistic probe (on standardized features)
    max_new_tokens: int = 12  # greedy refusals whose generated tokens calibrate the decoding floors

    def __post_init__(self) -> None:
        if self.gate_probe not in ("logistic", "mean_diff"):
            raise ValueError(f"anchor.gate_probe must be 'logistic' or 'mean_diff', got {self.gate_probe!r}")
        if not self.gate_l2 >= 0:
            raise ValueError(f"anchor.gate_l2 must be >= 0, got {self.gate_l2!r}")
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"anchor.quantile must be in [0, 1], got {self.quantile!r}")
        if not 0.0 < self.gate_fpr < 1.0:
            raise ValueError(f"anchor.gate_fpr must be in (0, 1), got {self.gate_fpr!r}")
        if self.layers is not None and not self.layers:
            raise ValueError("anchor.layers must be null (automatic) or a non-empty list, got []")


@dataclass
class AnchorArtifact:
    direction: torch.Tensor  # [d_model] refusal direction (raw difference in means)
    layer: int  # the direction's own layer (for additions)
    layers: list[int]
    final: bool
    floors: torch.Tensor  # [n_anchored_hooks] prompt tokens
    generated_floors: torch.Tensor  # [n_anchored_hooks] generated tokens
    gate_direction: torch.Tensor  # [d_model] unit
    gate_layer: int
    gate_positions: list[int]  # negative offsets (t_inst = -n_post - 1)
    gate_threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def gate_hook(self) -> str:
        return f"blocks.{self.gate_layer}.hook_resid_pre"

    def gate(self) -> DirectionGate:
        """A fresh gate (gates hold per-batch state: one per intervention)."""
        return DirectionGate(hook=self.gate_hook, positions=tuple(self.gate_positions), threshold=self.gate_threshold, direction=self.gate_direction)

    def anchor(self, gated: bool = True) -> AnchorDirection:
        return AnchorDirection(self.direction, self.layers, self.floors, gate=self.gate() if gated else None, final=self.final,
                               generated_floors=self.generated_floors)

    def cast(self, alpha: float = 1.0) -> Add:
        """Conditional activation steering (CAST-style): add alpha * r where the gate fires."""
        return Add(self.direction, alpha=alpha, layer=self.layer, gate=self.gate())

    def addition(self, alpha: float = 1.0) -> Add:
        return Add(self.direction, alpha=alpha, layer=self.layer)

    def save(self, path: str | Path) -> Path:
        meta = {
            "kind": "anchor", "layer": self.layer, "layers": self.layers, "final": self.final,
            "gate_layer": self.gate_layer, "gate_positions": self.gate_positions, "gate_threshold": self.gate_threshold,
            **self.metadata,
        }
        tensors = {"direction": self.direction, "floors": self.floors, "generated_floors": self.generated_floors, "gate_direction": self.gate_direction}
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, d_model: Optional[int] = None) -> "AnchorArtifact":
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "anchor":
            raise ValueError(f"{path} is not an anchor artifact (metadata kind={meta.get('kind')!r})")
        if d_model is not None and tensors["direction"].shape[-1] != d_model:
            raise ValueError(f"anchor {path} has d_model={tensors['direction'].shape[-1]}, the model has {d_model}")
        keys = ("kind", "layer", "layers", "final", "gate_layer", "gate_positions", "gate_threshold")
        return cls(tensors["direction"], int(meta["layer"]), [int(l) for l in meta["layers"]], bool(meta["final"]), tensors["floors"],
                   tensors["generated_floors"], tensors["gate_direction"], int(meta["gate_layer"]), [int(p) for p in meta["gate_positions"]], float(meta["gate_threshold"]),
                   {k: v for k, v in meta.items() if k not in keys})


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def logistic_probe(pos: torch.Tensor, neg: torch.Tensor, l2: float, exclude: Optional[torch.Tensor] = None, steps: int = 200) -> torch.Tensor:
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
    return (w.detach() / sd)


@torch.no_grad()
def generated_projections(model, template, prompts: Sequence[str], hooks: Sequence[str], r: torch.Tensor,
                          max_new_tokens: int, batch_size: int) -> torch.Tensor:
    """Projections on ``r`` at ``hooks`` over the generated tokens of the prompts' greedy completions: [n_tokens, n_hooks]."""
    from saesteer.evaluate import prompt_completion_batch
    from saesteer.generation import generate, length_sorted_batches

    comps = generate(model, template, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    out = []
    for idx in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = prompt_completion_batch(model.tokenizer, template, [prompts[i] for i in idx], [comps[i] for i in idx])
        if batch is None:
            continue
        tokens, mask, sel = batch
        store: dict[str, torch.Tensor] = {}
        grab = [(h, lambda x, hook: store.__setitem__(hook.name, x.detach())) for h in hooks]
        with model.hooks(fwd_hooks=grab):
            model(tokens.to(model.cfg.device), attention_mask=mask.to(model.cfg.device))
        out.append(torch.stack([store[h].float().cpu()[sel] @ r for h in hooks], 1))
    if not out:
        raise ValueError("the refused prompts' greedy completions are empty: no generated tokens to calibrate the anchor on")
    return torch.cat(out)


def calibrate_anchor(
    model: HookedTransformer,
    template: ChatTemplate,
    direction: torch.Tensor,
    layer: int,
    harmful_refused: Sequence[str],
    harmful_val: Sequence[str],
    harmless_train: Sequence[str],
    harmless_val: Sequence[str],
    cfg: AnchorCalibration = AnchorCalibration(),
    progress: bool = False,
    robust_to: Sequence = (),
) -> AnchorArtifact:
    """Fit floors on refused harmful training prompts and the gate on train/val prompts.

    ``robust_to``: interventions (e.g. the affine ablation of the refusal direction)
    under which the gate's probe is also fitted, so that the attack it anticipates
    does not blind it; the threshold is still set on clean harmless prompts.
    """
    for name, prompts in (("harmful_refused", harmful_refused), ("harmful_val", harmful_val), ("harmless_train", harmless_train), ("harmless_val", harmless_val)):
        if len(prompts) == 0:
            raise ValueError(f"calibrate_anchor: the {name} prompt set is empty")
    n_layers = model.cfg.n_layers
    layers = list(range(max(layer - 1, 0), n_layers)) if cfg.layers is None else [int(l) for l in cfg.layers]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"anchor.layers {bad} out of range for a model with {n_layers} layers")
    r = _unit(direction.float())
    hooks = anchor_hooks(model, layers, cfg.final)
    acts = collect_activations(model, template, list(harmful_refused), hooks, [-1], batch_size=cfg.batch_size, progress=progress, desc="anchor floors")
    proj = acts[:, :, 0] @ r  # [n, n_hooks]
    floors = torch.quantile(proj.double(), cfg.quantile, dim=0).float()
    gen = generated_projections(model, template, list(harmful_refused), hooks, r, cfg.max_new_tokens, cfg.batch_size)
    generated_floors = torch.quantile(gen.double(), cfg.quantile, dim=0).float()

    # the gate: harmfulness, orthogonal to r, at the best eligible layer
    n_post = n_post_tokens(model, template)
    positions = list(cfg.gate_positions) if cfg.gate_positions is not None else list(range(-n_post - 1, 0))
    gate_layers = list(range(min(layers) + 1))
    gh = [f"blocks.{l}.hook_resid_pre" for l in gate_layers]
    half = len(harmless_train) // 2
    fit_harmless, thr_harmless = list(harmless_train[:half]) or list(harmless_train), list(harmless_train[half:]) or list(harmless_train)

    def read(prompts: Sequence[str], desc: str, edits: Sequence = ()) -> torch.Tensor:  # [n, n_gate_layers, n_pos, d_model]
        return collect_activations(model, template, list(prompts), gh, positions, batch_size=cfg.batch_size, progress=progress, desc=desc,
                                   interventions=list(edits))

    h_fit, s_fit = read(harmful_refused, "gate fit (harmful)"), read(fit_harmless, "gate fit (harmless)")
    for edit in robust_to:  # the same prompts under the anticipated attack
        h_fit = torch.cat([h_fit, read(harmful_refused, "gate fit (harmful, attacked)", [edit])])
        s_fit = torch.cat([s_fit, read(fit_harmless, "gate fit (harmless, attacked)", [edit])])
    h_val, s_val = read(harmful_val, "gate val (harmful)"), read(harmless_val, "gate val (harmless)")
    s_thr = read(thr_harmless, "gate threshold")
    rd = r.double()
    if cfg.gate_probe == "mean_diff":
        dirs = h_fit.double().mean((0, 2)) - s_fit.double().mean((0, 2))  # [n_gate_layers, d_model]
    else:
        dirs = torch.stack([logistic_probe(h_fit[:, i].double().mean(1), s_fit[:, i].double().mean(1), cfg.gate_l2,
                                           rd if cfg.gate_orthogonal else None) for i in range(len(gate_layers))])
    if cfg.gate_orthogonal:
        dirs = dirs - (dirs @ rd)[:, None] * rd
    units = dirs / dirs.norm(dim=-1, keepdim=True)

    def score(acts: torch.Tensor, i: int, u: torch.Tensor) -> torch.Tensor:
        return (acts[:, i].double() @ u.double()).mean(-1)

    aurocs = [auroc(score(h_val, i, units[i]), score(s_val, i, units[i])) for i in range(len(gate_layers))]
    if cfg.gate_layer is not None and cfg.gate_layer not in gate_layers:
        raise ValueError(f"anchor.gate_layer={cfg.gate_layer} must be <= the first anchored layer {min(layers)}")
    gi = gate_layers.index(cfg.gate_layer) if cfg.gate_layer is not None else max(range(len(gate_layers)), key=lambda i: aurocs[i])
    u = units[gi].float()
    threshold = float(torch.quantile(score(s_thr, gi, u), 1.0 - cfg.gate_fpr))
    tpr_val = float((score(h_val, gi, u) > threshold).float().mean())
    fpr_val = float((score(s_val, gi, u) > threshold).float().mean())
    meta = {
        "quantile": cfg.quantile, "gate_fpr_target": cfg.gate_fpr, "gate_orthogonal": cfg.gate_orthogonal,
        "gate_auroc_val_by_layer": aurocs, "gate_tpr_val": tpr_val, "gate_fpr_val": fpr_val,
        "n_floor_prompts": len(harmful_refused), "gate_refusal_cosine": float(torch.dot(u, r)),
    }
    log.info("anchor: layers %s floors %s; gate layer %d positions %s (val AUROC %.3f, TPR %.3f, FPR %.3f)", layers,
             [round(f, 3) for f in floors.tolist()], gate_layers[gi], positions, aurocs[gi], tpr_val, fpr_val)
    return AnchorArtifact(direction.float(), layer, layers, cfg.final, floors, generated_floors, u, gate_layers[gi], positions, threshold, meta)
