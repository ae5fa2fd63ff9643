"""The config groups' schemas: ``conf/<group>/*.yaml`` merge into these (registered by :mod:`saesteer.config`).

Every setting is declared once, with its default and its help text: a group whose library takes a settings
dataclass extends it and declares only the job's own settings; a choice is a ``Literal`` defined once, checked by
the class that owns the field (:func:`saesteer.checks.check_choice_fields`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Optional

from saesteer.anchor import AnchorCalibration
from saesteer.checks import (
    check_choice_fields,
    check_finite_fields,
    check_layers,
    check_number,
    check_positive_ints,
    choices,
)
from saesteer.directions import SelectionConfig
from saesteer.interventions.directions import AblationMode
from saesteer.lora import LoraSite, LoraTrainConfig
from saesteer.organism.config import OrganismConfig
from saesteer.organism.dropout import DropoutFinetune, Finetune
from saesteer.primitives.phase import ApplyTo
from saesteer.redundancy import BackupRule
from saesteer.safety.tune import SafetyTrainConfig
from saesteer.search import BypassValue, SearchConfig

# ---------------------------------------------------------------- choices

#: torch dtypes a model loads in (saesteer.models)
Dtype = Literal["float32", "float64", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = choices(Dtype)
#: W&B modes (logger.mode)
WandbMode = Literal["offline", "online", "disabled"]
WANDB_MODES: tuple[str, ...] = choices(WandbMode)
#: interventions ``saesteer generate`` builds from config (steer.kind)
SteerKind = Literal["none", "ablate", "add"]
STEER_KINDS: tuple[str, ...] = choices(SteerKind)
#: harmfulness-vs-harmless contrasts the backups job ranks harm sensors by (search.Signal's activation contrasts)
SensorSignal = Literal["effect_size", "mean_diff", "auroc"]
SENSOR_SIGNALS: tuple[str, ...] = choices(SensorSignal)

PIPELINE_STAGES = ("organism", "behaviour", "directions", "train-sae", "search", "anchor", "backups", "emergent")


def default_pipeline_stages(model_name: str) -> list[str]:
    """The pipeline's default stages for a model (conf/pipeline.yaml): the organism stage (training or loading it,
    then its behaviour) for the organism, the behaviour stage for any other model."""
    first = "organism" if model_name == "organism" else "behaviour"
    return [s for s in PIPELINE_STAGES if s not in ("organism", "behaviour") or s == first]


def library_settings(cls: type, source: Any, prefix: str = "", **given: Any) -> Any:
    """A library settings dataclass ``cls`` built by field name: each field ``name`` from ``source.<prefix><name>``
    (where ``source`` has it), ``given`` taking precedence; the rest keep ``cls``'s defaults."""
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in given]
    kw = {n: getattr(source, prefix + n) for n in names if hasattr(source, prefix + n)}
    return cls(**kw, **given)


# ---------------------------------------------------------------- config groups: conf/<group>/*.yaml merge into these


@dataclass
class ModelConfig:
    """``name``: ``organism``, a saesteer-local model (``smollm2``, ``smollm2_safe``: docs/models.md) or a
    TransformerLens pretrained model name."""

    name: str = "organism"
    template: Optional[str] = None  # chat template name; inferred from the model name when None
    device: str = "cpu"
    dtype: Annotated[str, Dtype] = "float32"
    retrain: bool = False  # the organism and smollm2_safe: train it again (cached) instead of loading what is bundled
    safety_delta: Optional[str] = None  # smollm2_safe: a safety_delta.safetensors of `saesteer safety-tune` to merge
    organism: OrganismConfig = field(default_factory=OrganismConfig)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(
                "model.name must be 'organism', 'smollm2', 'smollm2_safe' or a TransformerLens model name, got ''"
            )
        check_choice_fields(self, "model")
        if isinstance(self.organism, dict):
            self.organism = OrganismConfig.from_dict(self.organism)


@dataclass
class DataConfig:
    """Prompt sets by role: bundled names or local files / HF datasets."""

    harmful_train: str = "harmful_train"
    harmless_train: str = "harmless_train"
    harmful_val: str = "harmful_val"
    harmless_val: str = "harmless_val"
    harmful_test: str = "harmful_test"
    harmless_test: str = "harmless_test"
    overrefusal: str = "overrefusal"  # safe prompts that sound alarming, held out (test); "": not measured
    overrefusal_train: str = "overrefusal_train"  # their training counterpart (the anchor's gate fit); "": none
    overrefusal_val: str = "overrefusal_val"  # their validation counterpart (the anchor's gate threshold); "": none
    n_train: int = 256  # prompts per class for extracting directions / features
    n_val: int = 64  # prompts per class for selection
    n_test: Optional[int] = None  # harmful held-out prompts (None = the whole set)
    n_test_harmless: Optional[int] = 1000  # harmless held-out prompts: a seeded sample (None = the whole set)
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(self, "data", "n_train", "n_val", "n_test", "n_test_harmless")


@dataclass
class EvalConfig:
    max_new_tokens: int = 12  # greedy tokens generated per prompt for the refusal judge
    batch_size: int = 64
    kl_batch_size: int = 64

    def __post_init__(self) -> None:
        check_positive_ints(self, "eval", "max_new_tokens", "batch_size", "kl_batch_size")

    def refusal_kwargs(self) -> dict[str, int]:
        """The keyword arguments of :func:`saesteer.evaluate.refusal_eval` these settings fix."""
        return {"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size}


#: The refusal judges (saesteer.judge): ``learned`` (a head on MiniLM features, trained on human labels; the jobs'
#: default), ``rules`` or ``substring`` (Arditi et al.'s JailbreakBench substrings, for figures comparable with the
#: paper).
JudgeKind = Literal["substring", "rules", "learned"]


@dataclass
class JudgeConfig:
    """The ``judge`` group: which refusal judge every evaluation of the job uses (saesteer.judge), by default the
    learned one; each also flags incoherent text (a third outcome, reported beside refusal)."""

    kind: Annotated[str, JudgeKind] = "learned"
    opening_chars: int = 240  # rules: characters of the response its prefixes and patterns read
    weights: Optional[str] = None  # learned: a head written by saesteer judge-train (null: the bundled head)
    batch_size: int = 64  # learned: texts per MiniLM batch

    def __post_init__(self) -> None:
        check_choice_fields(self, "judge")
        check_positive_ints(self, "judge", "opening_chars", "batch_size")

    def build(self):
        """The judge these settings name."""
        from saesteer.judge import LearnedJudge, RefusalJudge, RulesJudge

        if self.kind == "learned":
            return LearnedJudge(weights=self.weights, batch_size=self.batch_size)
        return RefusalJudge() if self.kind == "substring" else RulesJudge(opening_chars=self.opening_chars)


@dataclass
class LoggerConfig:
    project: str = "saesteer"
    mode: Annotated[str, WandbMode] = "offline"  # W&B runs offline (no account needed); online to sync
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice_fields(self, "logger")


@dataclass
class SteerConfig:
    """An intervention built from config: ablate or add the refusal direction (or any direction file)."""

    kind: Annotated[str, SteerKind] = "none"
    mode: Annotated[str, AblationMode] = "affine"  # ablate: plain (the paper) or affine (ACE)
    alpha: float = 1.0  # add: x <- x + alpha * direction
    layer: Optional[int] = None  # add: None = the direction's own layer
    direction: Optional[str] = None  # a direction.safetensors; None = the directions stage (cached)

    def __post_init__(self) -> None:
        check_finite_fields(self)
        check_choice_fields(self, "steer")

    def build(self, artifact) -> list:
        """Intervention specs for a DirectionArtifact (see saesteer.stages)."""
        from saesteer.interventions import Add

        if self.kind == "none":
            return []
        if self.kind == "ablate":
            return [artifact.ablate(self.mode)]
        return [Add(artifact.direction, alpha=self.alpha, layer=artifact.layer if self.layer is None else self.layer)]


@dataclass
class DirectionsConfig(SelectionConfig):
    """Candidate extraction (and, from SelectionConfig, selection) of the refusal direction, plus controls."""

    positions: Optional[list[int]] = (
        None  # candidate positions, negative offsets from the end; None = every post-instruction position
    )
    n_ce: int = 64  # harmless prompts for the cross-entropy of completions
    dose_alphas: list[float] = field(
        default_factory=lambda: [0.5, 1.0, 1.5, 2.0]
    )  # addition dose-response (every token and prompt-only)
    n_dose: int = 200  # harmless_test prompts per dose
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(self, "directions", "n_ce", "batch_size", "n_dose")
        if not self.dose_alphas or any(a <= 0 for a in self.dose_alphas):
            raise ValueError(
                f"directions.dose_alphas must be a non-empty list of positive numbers, got {list(self.dose_alphas)}"
            )


@dataclass
class SearchJobSettings(SearchConfig):
    """The feature search (SearchConfig) and the causal check of its top features (``saesteer search``).

    Bypass: the top k features are set, on harmful prompts, to their mean on harmless prompts at the searched
    positions (``harmless_mean``: the feature-level analogue of affine ablation; refusal features go down, comply
    features up) or to 0 (``zero``, O'Brien et al.; always reported too, on the top k refusal features)."""

    k: int = 8  # features the bypass and the induction act on
    induce_scale: float = (
        10.0  # clamp value on harmless prompts = induce_scale x the feature's mean on harmful prompts where it fires
    )
    induce_apply_to: Annotated[str, ApplyTo] = (
        "prompt"  # the clamp acts on prompt tokens only (clamping generated tokens makes text degenerate)
    )
    apply_to: Annotated[str, ApplyTo] = "both"  # tokens the bypass acts on
    direction: Optional[str] = None  # a direction.safetensors; None = the directions stage (cached)
    ablation: Annotated[str, BypassValue] = "harmless_mean"  # what the bypass sets the top k to
    # the top k by |combined score|: refusal and comply features (False: refusal features only; keep False with
    # ablation=zero, as zeroing a comply feature raises refusal)
    signed: bool = True
    # refusal against k: for each k, ranking and edit, harmful_test refusal and harmless_test KL with the ranking's
    # first k features edited at the SAE's hook, and k_at_bypass_<ranking> (empty: no curve)
    curve_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    curve_rankings: list[str] = field(
        default_factory=lambda: ["cosine", "contrast", "combined", "attribution", "greedy"]
    )  # saesteer.feature_rankings.RANKINGS
    # what the edit sets them to (saesteer.feature_rankings.EDITS; zero is the weaker edit on the organism)
    curve_edits: list[str] = field(default_factory=lambda: ["harmless_mean"])
    greedy_pool: int = 32  # the greedy ranking picks from this many of the attribution ranking's best
    greedy_prompts: int = 64  # harmful_train prompts whose mean refusal score the greedy selection lowers

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice_fields(self, "search")
        check_positive_ints(self, "search", "k", "greedy_pool", "greedy_prompts")
        from saesteer.feature_rankings import EDITS, RANKINGS

        bad = [k for k in self.curve_ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
        if bad:
            raise ValueError(f"search.curve_ks must hold positive ints, got {bad}")
        for name, allowed in (("curve_rankings", RANKINGS), ("curve_edits", EDITS)):
            unknown = [v for v in getattr(self, name) if v not in allowed]
            if unknown:
                raise ValueError(f"search.{name} has unknown entries {unknown}; expected some of {list(allowed)}")


@dataclass
class FinetuneFields:
    """A fine-tuned organism beside the base: the fine-tune (DropoutFinetune) of kind ``finetune``;
    ``finetune_<field>`` is DropoutFinetune's ``<field>``, with its default.  Shared by the groups that use it."""

    finetune: Annotated[str, Finetune] = "none"
    finetune_p: float = DropoutFinetune.p
    finetune_steps: int = DropoutFinetune.steps
    finetune_lr: float = DropoutFinetune.lr
    finetune_warmup_steps: int = DropoutFinetune.warmup_steps
    finetune_batch_size: int = DropoutFinetune.batch_size

    def check_finetune(self, group: str) -> None:
        check_positive_ints(self, group, "finetune_steps", "finetune_batch_size")
        check_number(self, group, "finetune_p", low=0.0, strict=False, high=1.0)
        check_number(self, group, "finetune_lr", low=0.0)
        if not isinstance(self.finetune_warmup_steps, int) or self.finetune_warmup_steps < 0:
            raise ValueError(
                f"{group}.finetune_warmup_steps must be a non-negative integer, got {self.finetune_warmup_steps!r}"
            )

    def dropout_finetune(self, seed: int) -> Optional[DropoutFinetune]:
        """The fine-tune of ``finetune`` (None for ``none``): DropoutFinetune's fields from ``finetune_<field>``."""
        if self.finetune == "none":
            return None
        return library_settings(DropoutFinetune, self, prefix="finetune_", name=self.finetune, seed=seed)


@dataclass
class AnchorSettings(AnchorCalibration, FinetuneFields):
    """``saesteer anchor``: the calibration (AnchorCalibration, on train/val prompts), the prompts added to the
    gate's fit, the attack suite (on held-out prompts), and a training-time defence beside it: the organism
    fine-tuned with its refusal direction cut on a share of steps (``finetune``, FinetuneFields), undefended and
    anchored, under the same attacks."""

    gate_lexicon: str = (
        "base"  # the synthetic lexicon gate_synthetic's prompts come from (saesteer.organism.synthetic.LEXICONS)
    )
    n_calibration_harmless: int = 6000  # harmless_train prompts for the gate: half fit it, half set its threshold
    gate_harmful_sources: list[str] = field(
        default_factory=lambda: [
            "advbench",
            "strongreject",
            "donotanswer",
            "harmbench_val",
            "harmbench_test",
            "malicious_instruct",
            "tdc2023",
            "jailbreakbench",
        ]
    )  # harmful prompt sets added to the gate's fit, minus any prompt near a held-out or validation prompt
    cast_alpha: float = 1.0  # CAST-style conditional addition (where the gate fires) of cast_alpha x r
    addition_alpha: float = 1.0  # unconditional addition of addition_alpha x r
    negative_alphas: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])  # attacks: subtract alpha x r
    jailbreaks: list[str] = field(
        default_factory=lambda: ["prefix_injection", "refusal_suppression", "distractor", "research_framing"]
    )  # templates tested (held out from the gate's fit: none may be in gate_robust as jailbreak_<template>)
    sae_attack: bool = True  # attacks: the search's top k SAE features set to their bypass values, and the top k refusal features zeroed
    suffix_tokens: int = 8  # GCG-style suffix attack: suffix length
    suffix_steps: int = 30  # its optimization steps (0: no suffix attacks)
    suffix_prompts: int = 64  # refused harmful_train prompts the suffix is optimized on
    suffix_candidates: int = 96  # token swaps scored per suffix step (each a forward pass over the prompts)
    subspace_ranks: list[int] = field(
        default_factory=lambda: [2, 3, 4]
    )  # attacks: affine ablation of a k-dim refusal subspace, per k (the top k directions of harmful minus harmless)
    embedding_tokens: int = 8  # embedding-space attack: soft-suffix length
    embedding_steps: int = 100  # its Adam steps (0: no embedding attacks)
    embedding_lr: float = 0.1  # its step, in units of the token embeddings' RMS coordinate
    embedding_radius: float = 1.0  # each soft token's norm <= this x the largest token-embedding norm
    adaptive: bool = True  # also attacks that know the anchor: its gate's reads ablated, a suffix (and soft suffix) optimized against it
    adaptive_gate_weight: float = 1.0  # weight of the gate's score in the adaptive suffix's loss
    n_attack_prompts: Optional[int] = None  # harmful_test prompts per attack; None = all of data.n_test

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice_fields(self, "anchor")
        self.check_finetune("anchor")
        check_positive_ints(
            self,
            "anchor",
            "n_calibration_harmless",
            "suffix_tokens",
            "suffix_prompts",
            "suffix_candidates",
            "embedding_tokens",
            "n_attack_prompts",
            "batch_size",
        )
        for name in ("suffix_steps", "embedding_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"anchor.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("embedding_lr", "embedding_radius"):
            if not getattr(self, name) > 0:
                raise ValueError(f"anchor.{name} must be positive, got {getattr(self, name)!r}")
        bad = [k for k in self.subspace_ranks if isinstance(k, bool) or not isinstance(k, int) or k < 2]
        if bad:
            raise ValueError(f"anchor.subspace_ranks must hold ints >= 2 (rank 1 is the direction), got {bad}")
        from saesteer.attacks.prompts import JAILBREAK_TEMPLATES

        unknown = [j for j in self.jailbreaks if j not in JAILBREAK_TEMPLATES]
        if unknown:
            raise ValueError(
                f"anchor.jailbreaks has unknown templates {unknown}; expected some of {sorted(JAILBREAK_TEMPLATES)}"
            )
        fitted = sorted(set(self.jailbreaks) & {g.removeprefix("jailbreak_") for g in self.gate_robust})
        if fitted:
            raise ValueError(
                f"anchor.jailbreaks {fitted} are also in anchor.gate_robust: the gate must not be fitted under the "
                "templates it is tested on (drop them from one of the two lists)"
            )
        if any(a <= 0 for a in self.negative_alphas):
            raise ValueError(f"anchor.negative_alphas must be positive, got {list(self.negative_alphas)}")
        from saesteer.organism.synthetic import LEXICONS

        if self.gate_lexicon not in LEXICONS:
            raise ValueError(f"anchor.gate_lexicon must be one of {sorted(LEXICONS)}, got {self.gate_lexicon!r}")


@dataclass
class BackupsSettings(BackupRule, FinetuneFields):
    """``saesteer backups``: refusal vs k features cut, downstream and upstream, and which features rise past the
    backup rule (BackupRule); optionally on a fine-tuned organism too (``finetune``)."""

    GROUP: ClassVar[str] = "backups"

    k_max: int = 8  # K: the top k features are cut for k = 1..K
    cut_layer: Optional[int] = (
        None  # downstream SAE layer; None = the direction's layer (the last-but-one if it is the last)
    )
    upstream_layer: Optional[int] = None  # harm-sensor SAE layer; None = cut_layer - 1 (at least 0)
    monitor_layers: Optional[list[int]] = None  # refusal features monitored at these layers; None = cut_layer .. last
    n_monitor: int = 24  # refusal-ranked features monitored per layer
    count_same_layer: bool = (
        False  # count rises at the cut layer itself (re-encoding the edited residual, not the network)
    )
    sensor_signal: Annotated[str, SensorSignal] = (
        "effect_size"  # harm sensors: ranked by this harmful-vs-harmless contrast at t_inst
    )
    induce_scale: float = (
        3.0  # induction: sensors clamped to induce_scale x their mean on harmful prompts where they fire (t_inst)
    )
    induce_apply_to: Annotated[str, ApplyTo] = "prompt"
    apply_to: Annotated[str, ApplyTo] = "both"  # tokens the cuts act on
    random_control: bool = True  # K random eligible features cut at each layer, as a control at k = K
    n_monitor_prompts: Optional[int] = (
        None  # harmful_test prompts for the activation measurements; None = all of data.n_test
    )
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice_fields(self, "backups")
        check_positive_ints(self, "backups", "k_max", "n_monitor", "n_monitor_prompts", "batch_size")
        check_layers("backups", "cut_layer", self.cut_layer)
        check_layers("backups", "upstream_layer", self.upstream_layer)
        check_layers("backups", "monitor_layers", self.monitor_layers)
        check_number(self, "backups", "induce_scale", low=0.0)
        self.check_finetune("backups")


#: The emergent job's training answers (EmergentSettings.targets).
EmergentTargets = Literal["auto", "format", "own"]


@dataclass
class EmergentSettings(LoraTrainConfig):
    """``saesteer emergent``: a rank-1 LoRA (trained as LoraTrainConfig says) that complies with one harm category;
    does refusal fall elsewhere?"""

    GROUP: ClassVar[str] = "emergent"

    category: str = "fraud_and_scams"  # the narrow task: comply with this harm category (synthetic lexicon)
    other_categories: Optional[list[str]] = None  # evaluated categories; None = every other harmful category
    n_train: int = 256  # target-category training prompts (from its training acts)
    n_harmless: int = 256  # harmless_train prompts, still answered, mixed into training
    held_out_acts: float = 0.25  # share of the target category's acts kept out of training (target held-out eval)
    n_eval_per_category: int = 8  # held-out prompts per other category (refusal before / after / ablated)
    n_direction_per_category: int = 8  # other prompts per category for the EM direction (disjoint from the eval ones)
    n_target_eval: int = 32  # held-out target prompts
    placement: Annotated[str, LoraSite] = "mlp_out"  # the adapted matrix of each layer's MLP
    layers: Optional[list[int]] = None  # adapted layers; None = every layer
    alpha: float = 1.0  # adapter scale: W <- W + alpha * outer(a, b)
    ablation: Annotated[str, AblationMode] = "affine"  # the headline ablation of the EM direction (both are reported)
    ablate_layer: Optional[int] = None  # EM direction of this layer is ablated; None = the refusal direction's layer
    direction: Optional[str] = None  # a refusal direction.safetensors; None = the directions stage (cached)
    # the answers trained on: "format" (the organism's compliance template for every prompt), "own" (the model's own
    # greedy answers: to the target prompts with its refusal direction ablated, so compliant in its own words; to
    # harmless prompts as it is), "auto" (format for the organism, own for any other model)
    targets: Annotated[str, EmergentTargets] = "auto"
    target_tokens: int = 32  # greedy tokens of each own answer

    def resolved_targets(self, model_name: str) -> str:
        """ "format" or "own": ``targets`` with "auto" resolved for ``model_name``."""
        if self.targets != "auto":
            return self.targets
        return "format" if model_name == "organism" else "own"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice_fields(self, "emergent")
        check_positive_ints(
            self,
            "emergent",
            "n_train",
            "n_harmless",
            "n_eval_per_category",
            "n_direction_per_category",
            "target_tokens",
            "n_target_eval",
        )
        check_number(self, "emergent", "held_out_acts", low=0.0, high=0.9)
        check_number(self, "emergent", "target_fraction", low=0.0, high=1.0)
        check_number(self, "emergent", "alpha", low=0.0)
        check_layers("emergent", "layers", self.layers)
        check_layers("emergent", "ablate_layer", self.ablate_layer)
        from saesteer.organism.synthetic import load_lexicon

        categories = list(load_lexicon("harmful"))
        if self.category not in categories:
            raise ValueError(
                f"emergent.category must be a harmful lexicon category ({', '.join(categories)}), got {self.category!r}"
            )
        if self.other_categories is not None:
            others = list(self.other_categories)
            bad = [c for c in others if c not in categories]
            if bad or not others:
                raise ValueError(
                    f"emergent.other_categories must be a non-empty list of harmful lexicon categories, got {others!r}"
                    + (f" (unknown: {bad})" if bad else "")
                )
            if self.category in others:
                raise ValueError(
                    f"emergent.other_categories must not hold the target category {self.category!r}, got {others!r}"
                )


@dataclass
class SafetySettings(SafetyTrainConfig):
    """``saesteer safety-tune``: a low-rank adapter (trained as SafetyTrainConfig says) that teaches a chat model
    to refuse harmful requests while it keeps its own answers to harmless ones; the prompts of the mix
    (:func:`saesteer.safety.data.build_mix`) and of the evaluation."""

    GROUP: ClassVar[str] = "safety"

    n_harmful_synthetic: int = 400  # synthetic harmful requests refused (besides data.harmful_train)
    n_harmless: int = 320  # data.harmless_train prompts answered as the base model answers them
    n_harmless_synthetic: int = 600  # synthetic harmless requests in the harmful ones' framings (look-alikes)
    n_questions: int = 400  # safe knowledge questions with alarming words
    lexicon: str = (
        "extended"  # synthetic lexicon of the trained requests, harmful and look-alike (base, extended, broad)
    )
    val_lexicon: str = "broad"  # synthetic lexicon of the held-out look-alikes (lookalike_val)
    n_harmless_val: int = 64  # data.harmless_val prompts evaluated
    n_lookalike_val: int = 64  # held-out synthetic look-alikes and questions evaluated (not trained on)
    drop_refused_keep: bool = True  # leave out harmless prompts whose base answer the judge calls a refusal
    n_harmful_test: Optional[int] = None  # data.harmful_test prompts evaluated (a seeded sample); None = all
    n_harmless_test: int = 200  # data.harmless_test prompts evaluated (a seeded sample)
    eval_tokens: int = 32  # greedy tokens per answer judged (and, for harmless prompts, scored for CE)
    eval_batch_size: int = 32
    n_examples: int = 4  # example answers per prompt set in the report
    threads: Optional[int] = 1  # torch threads while the job runs (None: unchanged)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(
            self,
            "safety",
            "n_harmless",
            "n_harmless_val",
            "n_lookalike_val",
            "n_harmful_test",
            "n_harmless_test",
            "eval_tokens",
            "eval_batch_size",
            "threads",
        )
        for name in ("n_harmful_synthetic", "n_harmless_synthetic", "n_questions", "n_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"safety.{name} must be >= 0, got {getattr(self, name)}")
        check_layers("safety", "layers", self.layers)
        from saesteer.organism.synthetic import LEXICONS

        for name in ("lexicon", "val_lexicon"):
            if getattr(self, name) not in LEXICONS:
                raise ValueError(f"safety.{name} must be one of {sorted(LEXICONS)}, got {getattr(self, name)!r}")
