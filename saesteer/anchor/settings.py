"""The anchor's calibration settings: the base of the ``anchor`` config group's schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from saesteer.checks import check_choice_fields, check_finite_fields
from saesteer.primitives.phase import ApplyTo

#: attacks of the suite (saesteer anchor) the gate can also be fitted under
GATE_ROBUST = (
    "ablation_affine",
    "ablation_plain",
    "orthogonalized",
    "orthogonalized_affine",
    "sae_feature_bypass",
    "sae_feature_ablation",
    "negative_addition_1",
    "negative_addition_2",
    "negative_addition_4",
    "gcg_suffix",
    "jailbreak_prefix_injection",
    "jailbreak_refusal_suppression",
    "jailbreak_roleplay",
    "jailbreak_instruction_wrapping",
    "jailbreak_distractor",
    "jailbreak_research_framing",
    "jailbreak_few_shot",
)


#: Prompt-token floors: ``post``, one per position (t_inst and each post-instruction token, from that position's
#: projections; the instruction's earlier tokens get t_inst's); ``last``, one for every prompt token, from the last position's.
FloorPositions = Literal["post", "last"]
#: The gate's probe: an L2-regularized logistic probe, or the harmfulness direction (difference in means).
GateProbe = Literal["logistic", "mean_diff"]
#: The gate's features: ``concat``, one weight vector per layer and position; ``mean``, one per layer on the positions' mean.
GatePooling = Literal["concat", "mean"]


@dataclass
class AnchorCalibration:
    """How the anchor is calibrated (train / val prompts only).

    The base of the ``anchor`` config group's schema: ``saesteer.config.AnchorSettings`` adds the job's gate-fit
    prompts and attack suite."""

    quantile: float = (
        0.3  # prompt-token floor = this quantile of refused harmful prompts' projections on r (see floor_positions)
    )
    floor_positions: Annotated[str, FloorPositions] = "post"
    generated_quantile: float = (
        0.1  # generated-token floor = this quantile over the tokens of their own greedy refusals
    )
    layers: Optional[list[int]] = None  # anchored layers; None = from the layer before the direction's to the last
    final: bool = True  # also anchor the last layer's resid_post
    gate_layers: Optional[list[int]] = (
        None  # None = the layer before the direction's, its own and the one after (within the model)
    )
    gate_fpr: float = (
        0.01  # the gate may fire on this share of the harmless calibration prompts the model does not refuse
    )
    gate_lookalike_fpr: float = 0.05  # ... and on at most this share of the look-alike validation prompts (safe, alarming-sounding) it does not refuse; 1: no bound
    gate_orthogonal: bool = True  # the refusal direction is projected out of the gate's features
    batch_size: int = 32
    gate_positions: Optional[list[int]] = None  # None = t_inst and every post-instruction position
    gate_probe: Annotated[str, GateProbe] = "logistic"
    gate_l2: float = 1e-3  # L2 penalty of the logistic probes (on standardized features)
    max_new_tokens: int = (
        12  # greedy tokens of the refusals that calibrate the generated-token floors and set the gate's threshold
    )
    gate_pooling: Annotated[str, GatePooling] = "concat"
    gate_synthetic: int = 4000  # synthetic harmful requests and safe look-alikes added to the gate's fit (saesteer.organism.synthetic); 0: none
    # attacks of the suite (GATE_ROBUST) the gate is also fitted under, on the same prompts (gcg_suffix: the suffix found on the train prompts)
    gate_robust: list[str] = field(
        default_factory=lambda: [
            "orthogonalized_affine",
            "sae_feature_bypass",
            "gcg_suffix",
            "negative_addition_4",
            "jailbreak_roleplay",
            "jailbreak_instruction_wrapping",
            "jailbreak_few_shot",
        ]
    )  # a jailbreak_<template> here must not be among the templates the job tests (anchor.jailbreaks)
    gate_robust_share: float = 0.25  # each gate_robust attack is applied to this seeded share of the gate's fit prompts
    gate_tokens: bool = (
        True  # OR a per-token probe, max over the prompt's tokens (an appended suffix cannot lower what came before it)
    )
    gate_token_steps: int = (
        300  # Adam steps of the per-token (multiple-instance) probe; each of the two gates gets half of gate_fpr
    )
    gate_text: bool = True  # OR a classifier of the prompt's text (MiniLM-L6 embedding; gate_text_hidden): no activation edit can lower its score
    gate_text_tokens: int = 256  # MiniLM tokens of the instruction the text gate reads
    gate_text_hidden: int = (
        256  # GELU hidden units of the text classifier (AdamW, weight decay 0.01); 0: logistic (gate_l2)
    )
    gate_text_steps: int = 400  # its full-batch AdamW steps (with a hidden layer)
    sae_features: int = 16  # top signed SAE features (the search's ranking) whose decoder coordinates are also bounded; 0: the direction only
    feature_quantile: float = 0.75  # their floors (refusal features) at this quantile of refused prompts' coordinates, ceilings (comply) at 1 - it
    feature_apply_to: Annotated[str, ApplyTo] = "generated"  # tokens the feature bounds act on

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice_fields(self, "anchor")
        if self.sae_features < 0:
            raise ValueError(f"anchor.sae_features must be >= 0, got {self.sae_features!r}")
        if not 0.0 <= self.feature_quantile <= 1.0:
            raise ValueError(f"anchor.feature_quantile must be in [0, 1], got {self.feature_quantile!r}")
        if not self.gate_l2 >= 0:
            raise ValueError(f"anchor.gate_l2 must be >= 0, got {self.gate_l2!r}")
        for name in ("quantile", "generated_quantile"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"anchor.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 < self.gate_fpr < 1.0:
            raise ValueError(f"anchor.gate_fpr must be in (0, 1), got {self.gate_fpr!r}")
        if not 0.0 < self.gate_lookalike_fpr <= 1.0:
            raise ValueError(f"anchor.gate_lookalike_fpr must be in (0, 1], got {self.gate_lookalike_fpr!r}")
        if self.layers is not None and not self.layers:
            raise ValueError("anchor.layers must be null (automatic) or a non-empty list, got []")
        if self.gate_layers is not None and not self.gate_layers:
            raise ValueError("anchor.gate_layers must be null (automatic) or a non-empty list, got []")
        if self.gate_tokens and self.gate_token_steps < 1:
            raise ValueError(f"anchor.gate_token_steps must be >= 1, got {self.gate_token_steps!r}")
        if not 0.0 < self.gate_robust_share <= 1.0:
            raise ValueError(f"anchor.gate_robust_share must be in (0, 1], got {self.gate_robust_share!r}")
        if self.gate_text_hidden < 0:
            raise ValueError(f"anchor.gate_text_hidden must be >= 0, got {self.gate_text_hidden!r}")
        if self.gate_text_steps < 1:
            raise ValueError(f"anchor.gate_text_steps must be >= 1, got {self.gate_text_steps!r}")
        if self.gate_text_tokens < 1:
            raise ValueError(f"anchor.gate_text_tokens must be >= 1, got {self.gate_text_tokens!r}")
        if self.gate_synthetic < 0:
            raise ValueError(f"anchor.gate_synthetic must be >= 0, got {self.gate_synthetic!r}")
        self.gate_robust = list(self.gate_robust)
        bad = [g for g in self.gate_robust if g not in GATE_ROBUST]
        if bad:
            raise ValueError(f"anchor.gate_robust has unknown attacks {bad}; expected some of {list(GATE_ROBUST)}")
