"""Backup refusal features: what rises when the top refusal features are cut (Prakash et al. 2025).

Refusal in chat models looks less like one feature than like upstream harm sensors
that trigger several downstream refusal features, some of them dormant backups that
fire only when others are cut.  This module measures that with rates over prompt
sets rather than single prompts:

- :func:`edit_curve` edits the top k features of one SAE for k = 0..K (k = 0: no edit;
  ``set`` to 0 = a cut, ``set`` to a high value = induction), with the SAE error term
  kept (:class:`~saesteer.interventions.features.EditFeatures`), and per k measures

  * the refusal rate of greedy completions of ``refusal_prompts``;
  * the mean activation of every *monitored* feature (refusal-ranked features at the
    same and later layers) over ``monitor_prompts``, at the post-instruction
    positions, with vs without the edit;

- :func:`find_backups` applies the :class:`BackupRule`: a monitored feature that is
  not itself edited is a backup when its mean activation rises by more than
  ``backup_threshold`` relative, ``(cut - intact) / max(intact, backup_min_rise)``, *and* by
  more than ``backup_min_rise`` in activation units (so a dormant feature, intact mean ~0,
  counts once it rises by ``backup_min_rise``).

Monitors at the edited hook see the *edited* residual: a rise there comes from
re-encoding ``x - sum a_f W_dec[f]`` (a TopK SAE fills the freed slots), not from
the network, because no position's residual at a layer depends on an edit at that
same layer.  :class:`CutStep` therefore counts backups only at the hooks the caller
names (``count_hooks``; the backups job counts later layers unless told otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.activations import check_hooks, hook_layer, n_post_tokens, stop_layer
from saesteer.chat import ChatTemplate, encode_chat
from saesteer.checks import check_finite_fields, check_number, check_prompts
from saesteer.evaluate import refusal_eval
from saesteer.generation import length_sorted_batches
from saesteer.interventions import Intervention, as_interventions, collect_hooks, steer
from saesteer.interventions.features import EditFeatures
from saesteer.primitives.sae_weights import SaeWeights

log = logging.getLogger(__name__)


def resid_hook(layer: int) -> str:
    return f"blocks.{int(layer)}.hook_resid_pre"


@dataclass
class FeatureSet:
    """Features of one SAE watched at its hook (``hook`` defaults to the SAE's own)."""

    sae: Any
    features: list[int]
    hook: Optional[str] = None

    def __post_init__(self) -> None:
        w = SaeWeights.from_sae(self.sae)
        self.hook = self.hook or w.hook_name
        if not self.hook:
            raise ValueError("FeatureSet needs hook= (the SAE's metadata names no hook)")
        self.features = [int(f) for f in self.features]
        bad = [f for f in self.features if not 0 <= f < w.d_sae]
        if bad:
            raise ValueError(f"FeatureSet at {self.hook}: feature indices {bad[:5]} out of range for d_sae={w.d_sae}")


@dataclass
class BackupRule:
    """A monitored feature is a backup when it rises by > ``backup_threshold`` relative and > ``backup_min_rise`` absolute.

    The base of the ``backups`` config group's schema (``saesteer.config.BackupsSettings``)."""

    GROUP: ClassVar[str] = "BackupRule"  # names the fields in errors

    backup_threshold: float = 0.25  # relative rise: (cut - intact) / max(intact, backup_min_rise)
    backup_min_rise: float = 0.05  # absolute rise in activation units (the denominator's floor, for dormant features)

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_number(self, self.GROUP, "backup_threshold", low=0.0, strict=False)
        check_number(self, self.GROUP, "backup_min_rise", low=0.0)

    def relative(self, intact: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        """(edited - intact) / max(intact, backup_min_rise), elementwise."""
        intact, edited = intact.double(), edited.double()
        return (edited - intact) / intact.clamp_min(self.backup_min_rise)

    def is_backup(self, intact: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        rise = edited.double() - intact.double()
        return (self.relative(intact, edited) > self.backup_threshold) & (rise > self.backup_min_rise)


def find_backups(
    intact: torch.Tensor,
    edited: torch.Tensor,
    rule: Optional[BackupRule] = None,
    excluded: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(backup mask, relative change) of monitored features from their mean activations [n].

    ``excluded``: features that cannot be backups (the edited ones themselves)."""
    rule = rule if rule is not None else BackupRule()
    if intact.shape != edited.shape:
        raise ValueError(
            f"intact and edited activations differ in shape: {tuple(intact.shape)} vs {tuple(edited.shape)}"
        )
    rel = rule.relative(intact, edited)
    mask = rule.is_backup(intact, edited)
    if excluded is not None:
        mask = mask & ~excluded.bool()
    return mask, rel


@torch.no_grad()
def monitored_activations(
    model: HookedTransformer,
    template: ChatTemplate,
    prompts: Sequence[str],
    sets: Sequence[FeatureSet],
    *,
    interventions: Sequence[Intervention] = (),
    positions: Optional[Sequence[int]] = None,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "monitor",
) -> dict[str, torch.Tensor]:
    """Per prompt, the mean activation over ``positions`` (default: post-instruction) of each set's features.

    Returns {hook: [n_prompts, |features|] float64}.  The residual is read after the
    ``interventions`` at the same hook point (an edit's own hook included)."""
    check_prompts(prompts, "prompts")
    if not prompts:
        raise ValueError("monitored_activations needs at least one prompt, got none")
    hooks = sorted({s.hook for s in sets}, key=hook_layer)
    if len(hooks) != len(sets):
        raise ValueError(f"monitored_activations takes one FeatureSet per hook, got hooks {[s.hook for s in sets]}")
    check_hooks(model, hooks)
    pos = list(positions) if positions is not None else list(range(-n_post_tokens(model, template), 0))
    weights = {s.hook: SaeWeights.from_sae(s.sae) for s in sets}
    stop = stop_layer(model, hooks)
    out = {s.hook: torch.empty(len(prompts), len(s.features), dtype=torch.float64) for s in sets}
    by_hook = {s.hook: s for s in sets}
    edit_hooks = collect_hooks(model, as_interventions(interventions))
    store: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor, hook) -> None:
        store[hook.name] = x[:, pos].detach().float()

    tok = model.tokenizer
    for idx in tqdm(
        length_sorted_batches([len(p) for p in prompts], batch_size), desc=desc, disable=not progress, leave=False
    ):
        enc = encode_chat(tok, template, [prompts[i] for i in idx], pad_token_id=tok.pad_token_id)
        store.clear()
        with model.hooks(fwd_hooks=edit_hooks + [(h, grab) for h in hooks]):
            model(
                enc.tokens.to(model.cfg.device),
                attention_mask=enc.attention_mask.to(model.cfg.device),
                stop_at_layer=stop,
            )
        for h in hooks:
            w = weights[h]
            acts = w.encode(store[h].to(w.W_enc.device))  # [B, P, d_sae]
            out[h][idx] = acts[..., by_hook[h].features].mean(1).double().cpu()
    return out


@dataclass
class FeatureChange:
    """Monitored features of one hook at one k: intact vs edited mean activations."""

    hook: str
    features: list[int]
    intact: torch.Tensor  # [n] mean over prompts
    edited: torch.Tensor  # [n]
    relative: torch.Tensor  # [n] (edited - intact) / max(intact, min_rise)
    backup: torch.Tensor  # [n] bool
    edited_mask: torch.Tensor  # [n] bool: the feature is one of those edited (never a backup)
    rise_rate: torch.Tensor  # [n] share of prompts on which the feature rises by the rule's margins

    @property
    def absolute(self) -> torch.Tensor:
        return self.edited - self.intact

    def backups(self) -> list[int]:
        return [f for f, b in zip(self.features, self.backup.tolist()) if b]


@dataclass
class CutStep:
    k: int
    features: list[int]  # the edited features (top k)
    refusal: float
    changes: dict[str, FeatureChange] = field(default_factory=dict)
    count_hooks: list[str] = field(default_factory=list)
    incoherent: float = 0.0  # share of the answers the judge flags incoherent (broken text, not a bypass)

    def counted(self) -> list[FeatureChange]:
        return [c for h, c in self.changes.items() if h in self.count_hooks]

    @property
    def n_backups(self) -> int:
        return int(sum(int(c.backup.sum()) for c in self.counted()))

    def backup_gain(self) -> tuple[float, str]:
        """Mean relative rise of the backups, or of every counted, unedited monitored feature if there is none."""
        rel_b = [c.relative[c.backup] for c in self.counted()]
        rel_b = torch.cat(rel_b) if rel_b else torch.zeros(0, dtype=torch.float64)
        if rel_b.numel():
            return float(rel_b.mean()), "backups"
        rel = [c.relative[~c.edited_mask] for c in self.counted()]
        rel = torch.cat(rel) if rel else torch.zeros(0, dtype=torch.float64)
        return (float(rel.mean()) if rel.numel() else float("nan")), "all_monitored"

    def mean_relative_change(self, hook: str) -> float:
        c = self.changes[hook]
        rel = c.relative[~c.edited_mask]
        return float(rel.mean()) if rel.numel() else float("nan")


@dataclass
class EditCurve:
    """Refusal and monitored activations vs k for one SAE's ranked features."""

    hook: str
    ranking: list[int]
    mode: str
    steps: list[CutStep]

    @property
    def ks(self) -> list[int]:
        return [s.k for s in self.steps]

    @property
    def refusal(self) -> list[float]:
        return [s.refusal for s in self.steps]

    @property
    def incoherent(self) -> list[float]:
        return [s.incoherent for s in self.steps]

    @property
    def n_backups(self) -> list[int]:
        return [s.n_backups for s in self.steps]

    def at(self, k: int) -> CutStep:
        for s in self.steps:
            if s.k == k:
                return s
        raise KeyError(f"no step with k={k} (ks {self.ks})")


def edit_curve(
    model: HookedTransformer,
    template: ChatTemplate,
    sae: Any,
    ranking: Sequence[int],
    k_max: int,
    refusal_prompts: Sequence[str],
    *,
    monitor_prompts: Optional[Sequence[str]] = None,
    monitors: Sequence[FeatureSet] = (),
    count_hooks: Optional[Sequence[str]] = None,
    rule: Optional[BackupRule] = None,
    values: float | Sequence[float] = 0.0,
    hook: Optional[str] = None,
    apply_to: str = "both",
    max_new_tokens: int = 12,
    batch_size: int = 64,
    monitor_batch_size: int = 32,
    progress: bool = False,
    desc: str = "cut",
) -> EditCurve:
    """Set the top k of ``ranking`` to ``values`` (0: a cut) for k = 0..``k_max``; refusal and monitors per k.

    ``values``: one number, or one per ranked feature (the first k are used at step k).
    ``count_hooks``: hooks whose monitored features count as backups (default: every
    monitored hook other than the edited one)."""
    rule = rule if rule is not None else BackupRule()
    check_prompts(refusal_prompts, "refusal_prompts")
    if monitor_prompts is not None:
        check_prompts(monitor_prompts, "monitor_prompts")
    ranking = [int(f) for f in ranking]
    if k_max < 0:
        raise ValueError(f"k_max must be >= 0, got {k_max}")
    if k_max > len(ranking):
        raise ValueError(f"k_max={k_max} but only {len(ranking)} features are ranked")
    if not refusal_prompts:
        raise ValueError("edit_curve needs refusal prompts, got none")
    vals = [float(values)] * len(ranking) if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) < k_max:
        raise ValueError(f"got {len(vals)} values for k_max={k_max} features")
    hook = hook or SaeWeights.from_sae(sae).hook_name
    monitor_prompts = list(refusal_prompts if monitor_prompts is None else monitor_prompts)
    monitors = list(monitors)
    counted = [m.hook for m in monitors if m.hook != hook] if count_hooks is None else list(count_hooks)
    kw = dict(batch_size=monitor_batch_size)
    intact = (
        monitored_activations(model, template, monitor_prompts, monitors, desc=f"{desc} monitors k=0", **kw)
        if monitors
        else {}
    )
    steps = []
    for k in tqdm(range(k_max + 1), desc=desc, disable=not progress, leave=False):
        feats = ranking[:k]
        specs = [] if k == 0 else [EditFeatures(sae, feats, mode="set", values=vals[:k], apply_to=apply_to, hook=hook)]
        with steer(model, specs):
            judged = refusal_eval(
                model,
                template,
                list(refusal_prompts),
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                desc=f"{desc} k={k}",
            )
        rate = judged.rate
        edited = (
            intact
            if k == 0
            else (
                monitored_activations(
                    model, template, monitor_prompts, monitors, interventions=specs, desc=f"{desc} monitors k={k}", **kw
                )
                if monitors
                else {}
            )
        )
        changes = {}
        for m in monitors:
            a, b = intact[m.hook], edited[m.hook]
            excluded = torch.tensor([m.hook == hook and f in set(feats) for f in m.features], dtype=torch.bool)
            mask, rel = find_backups(a.mean(0), b.mean(0), rule, excluded)
            per_prompt = rule.is_backup(a, b) & ~excluded[None]
            changes[m.hook] = FeatureChange(
                m.hook, list(m.features), a.mean(0), b.mean(0), rel, mask, excluded, per_prompt.double().mean(0)
            )
        step = CutStep(k, feats, rate, changes, counted, judged.incoherent_rate)
        log.info("%s k=%d: refusal %.3f, backups %d", desc, k, rate, step.n_backups)
        steps.append(step)
    return EditCurve(hook, ranking, "cut" if all(v == 0.0 for v in vals[:k_max]) else "clamp", steps)


def random_features(eligible: Sequence[int], exclude: Sequence[int], k: int, seed: int) -> list[int]:
    """``k`` features drawn (seeded) from ``eligible`` minus ``exclude``."""
    import random

    pool = [int(f) for f in eligible if int(f) not in set(int(e) for e in exclude)]
    return random.Random(seed).sample(pool, min(k, len(pool)))


@dataclass
class Restoration:
    """How much of the refusal-direction coordinate a cut removes, and how much rising features give back."""

    lost: float  # sum over the cut features of (intact - value) x (W_dec[f] . r_cut): the coordinate they carried
    restored: float  # sum over unedited counted features that rise of rise x (W_dec[f] . r_layer)
    share: float  # restored / lost (nan when nothing was lost)


def hydra_restoration(
    step: CutStep,
    monitors: Sequence[FeatureSet],
    cut_hook: str,
    directions: dict[str, torch.Tensor],
    values: float = 0.0,
) -> Restoration:
    """The hydra as a rate: the refusal-direction coordinate the cut features carried (their intact mean activation
    minus the value they were set to, times their decoder's component along the unit refusal direction at the cut
    hook) against what the monitored, unedited features of the counted hooks add back along each hook's refusal
    direction as they rise (mean activations over the monitor prompts and positions, as in ``step.changes``).

    The cut features must be among the monitored ones at ``cut_hook`` (``backups.n_monitor >= k``)."""
    sets = {m.hook: m for m in monitors}
    if cut_hook not in step.changes or cut_hook not in sets:
        raise ValueError(f"hydra_restoration: {cut_hook} is not monitored; monitor the cut layer's features")
    c = step.changes[cut_hook]
    missing = sorted(set(step.features) - set(c.features))
    if missing:
        raise ValueError(
            f"hydra_restoration: cut features {missing[:5]} are not monitored at {cut_hook}; "
            f"monitor at least as many features as are cut (backups.n_monitor >= {len(step.features)})"
        )

    def along(hook: str, features: list[int]) -> torch.Tensor:
        if hook not in directions:
            raise ValueError(f"hydra_restoration: no refusal direction given for {hook}")
        r = directions[hook].double()
        w = SaeWeights.from_sae(sets[hook].sae).W_dec.double()
        return w[features].to(r.device) @ (r / r.norm())

    lost = float(((c.intact.double() - values) * along(cut_hook, c.features).cpu())[c.edited_mask].sum())
    restored = 0.0
    for h in step.count_hooks:
        if h == cut_hook or h not in step.changes:
            continue
        ch = step.changes[h]
        rise = ch.absolute.double().clamp_min(0.0)
        restored += float((rise * along(h, ch.features).cpu())[~ch.edited_mask].sum())
    return Restoration(lost, restored, restored / lost if lost > 0 else float("nan"))
