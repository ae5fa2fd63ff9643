"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

A YAML file under ``conf/`` merges into these typed nodes, so a misspelt key
fails when the config is composed; ``to_object`` then builds the dataclasses and
their ``__post_init__`` checks values (a ``ValueError`` naming field and value).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from saesteer.checks import check_finite_fields
from saesteer.organism.config import OrganismConfig
from saesteer.sae.config import SaeConfig

DTYPES = ("float32", "float64", "bfloat16", "float16")
WANDB_MODES = ("offline", "online", "disabled")


def _check_positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{prefix}.{name} must be a positive integer, got {value!r}")


@dataclass
class ModelConfig:
    """``name``: ``organism`` or a TransformerLens pretrained model name."""

    name: str = "organism"
    template: Optional[str] = None  # chat template name; inferred from the model name when None
    device: str = "cpu"
    dtype: str = "float32"
    retrain: bool = False  # organism only: ignore the cache
    organism: OrganismConfig = field(default_factory=OrganismConfig)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name must be 'organism' or a TransformerLens model name, got ''")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
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
    overrefusal: str = "overrefusal"
    n_train: int = 256  # prompts per class for extracting directions / features
    n_val: int = 64  # prompts per class for selection
    n_test: Optional[int] = None  # harmful held-out prompts (None = the whole set)
    n_test_harmless: Optional[int] = 1000  # harmless held-out prompts (the full set has 6,266)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive(self, "data", "n_train", "n_val", "n_test", "n_test_harmless")


@dataclass
class EvalConfig:
    max_new_tokens: int = 12
    batch_size: int = 64
    kl_batch_size: int = 64

    def __post_init__(self) -> None:
        _check_positive(self, "eval", "max_new_tokens", "batch_size", "kl_batch_size")


@dataclass
class LoggerConfig:
    project: str = "saesteer"
    mode: str = "offline"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"logger.mode must be one of {WANDB_MODES}, got {self.mode!r}")


@dataclass
class JobConfig:
    """Fields every job has."""

    job: str = "job"
    seed: int = 0
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # a run directory (hydra.run.dir) that holds another run's results is refused; true: they are removed first
    overwrite: bool = False


STEER_KINDS = ("none", "ablate", "add")


@dataclass
class SteerConfig:
    """An intervention built from config: ablate or add the refusal direction (or any direction file)."""

    kind: str = "none"
    mode: str = "affine"  # ablate: plain (the paper) or affine (ACE)
    alpha: float = 1.0  # add: x <- x + alpha * direction
    layer: Optional[int] = None  # add: None = the direction's own layer
    direction: Optional[str] = None  # a direction.safetensors; None = the directions stage (cached)

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.kind not in STEER_KINDS:
            raise ValueError(f"steer.kind must be one of {STEER_KINDS}, got {self.kind!r}")
        if self.mode not in ("plain", "affine"):
            raise ValueError(f"steer.mode must be 'plain' or 'affine', got {self.mode!r}")

    def build(self, artifact) -> list:
        """Intervention specs for a DirectionArtifact (see saesteer.stages)."""
        from saesteer.interventions import Add

        if self.kind == "none":
            return []
        if self.kind == "ablate":
            return [artifact.ablate(self.mode)]
        return [Add(artifact.direction, alpha=self.alpha, layer=artifact.layer if self.layer is None else self.layer)]


@dataclass
class OrganismJobConfig(JobConfig):
    job: str = "organism"


@dataclass
class GenerateJobConfig(JobConfig):
    job: str = "generate"
    prompts: Optional[str] = None  # bundled name or a local json/jsonl/csv/parquet file
    column: str = "instruction"
    limit: Optional[int] = None
    steer: SteerConfig = field(default_factory=SteerConfig)
    directions: "DirectionsConfig" = field(default_factory=lambda: DirectionsConfig())
    # unused by this job: lets an experiment (conf/experiment/), which names its SAE, compose with it
    sae: SaeConfig = field(default_factory=SaeConfig)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("generate needs prompts=<bundled name or file>, got prompts=None")


@dataclass
class DirectionsConfig:
    """Candidate extraction and selection (Arditi et al. 2024), plus controls."""

    positions: Optional[list[int]] = None  # None = every post-instruction position
    max_kl: float = 0.1
    min_induce: float = 0.0
    prune_layer_fraction: float = 0.2
    ablation: str = "affine"  # selection uses plain (paper) or affine (ACE) ablation
    add_alpha: float = 1.0
    n_ce: int = 64  # harmless prompts for the cross-entropy of completions
    dose_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])  # addition dose-response
    n_dose: int = 200  # harmless_test prompts per dose
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_finite_fields(self)
        self.selection()  # validates
        _check_positive(self, "directions", "n_ce", "batch_size", "n_dose")
        if not self.dose_alphas or any(a <= 0 for a in self.dose_alphas):
            raise ValueError(f"directions.dose_alphas must be a non-empty list of positive numbers, got {list(self.dose_alphas)}")

    def selection(self):
        from saesteer.directions import SelectionConfig

        return SelectionConfig(self.max_kl, self.min_induce, self.prune_layer_fraction, self.ablation, self.add_alpha)


@dataclass
class DirectionsJobConfig(JobConfig):
    job: str = "directions"
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    # unused by this job: lets an experiment (conf/experiment/), which names its SAE, compose with it
    sae: SaeConfig = field(default_factory=SaeConfig)


@dataclass
class TrainSaeJobConfig(JobConfig):
    """``saesteer train-sae``: fit (or load) an SAE on a residual stream and measure it."""

    job: str = "train-sae"
    sae: SaeConfig = field(default_factory=SaeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sae, dict):
            self.sae = SaeConfig.from_dict(self.sae)
        if self.sae.responses == "organism" and self.model.name != "organism":
            raise ValueError(f"sae.responses=organism needs model=organism, got model.name={self.model.name!r}; use greedy or none")


@dataclass
class SearchJobSettings:
    """Feature search + causal check of the top features (saesteer search)."""

    positions: Optional[list[int]] = None
    weight_cosine: float = 1.0
    weight_effect_size: float = 1.0
    weight_attribution: float = 1.0
    min_active_fraction: float = 0.02
    k: int = 8
    induce_scale: float = 10.0  # clamp value on harmless prompts = induce_scale x the feature's mean on harmful prompts where it fires
    induce_apply_to: str = "prompt"  # the clamp acts on prompt tokens only (clamping generated tokens makes text degenerate)
    apply_to: str = "both"
    top_n: int = 20
    n_top_prompts: int = 5
    batch_size: int = 32
    direction: Optional[str] = None  # a direction.safetensors; None = the directions stage (cached)
    ablation: str = "harmless_mean"  # bypass sets the top k to: harmless_mean (their mean on harmless prompts) or zero
    signed: bool = True  # the top k by |combined score|: refusal and comply features (False: refusal features only)

    def __post_init__(self) -> None:
        check_finite_fields(self)
        _check_positive(self, "search", "k", "top_n", "batch_size")
        if self.ablation not in ("zero", "harmless_mean"):
            raise ValueError(f"search.ablation must be zero or harmless_mean, got {self.ablation!r}")
        for name in ("apply_to", "induce_apply_to"):
            if getattr(self, name) not in ("prompt", "generated", "both"):
                raise ValueError(f"search.{name} must be prompt, generated or both, got {getattr(self, name)!r}")
        self.search_config()

    def search_config(self):
        from saesteer.search import SearchConfig

        return SearchConfig(self.positions, {"cosine": self.weight_cosine, "effect_size": self.weight_effect_size,
                                             "attribution": self.weight_attribution},
                            self.min_active_fraction, self.top_n, self.n_top_prompts, self.batch_size)


@dataclass
class SearchJobConfig(TrainSaeJobConfig):
    job: str = "search"
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    search: SearchJobSettings = field(default_factory=SearchJobSettings)


PIPELINE_STAGES = ("organism", "directions", "train-sae", "search", "anchor", "backups", "emergent")
APPLY_TO = ("prompt", "generated", "both")


def default_pipeline_stages(model_name: str) -> list[str]:
    """The pipeline's default stages for a model: the organism stage only for the organism (conf/pipeline.yaml)."""
    return [s for s in PIPELINE_STAGES if s != "organism" or model_name == "organism"]


@dataclass
class AnchorSettings:
    """``saesteer anchor``: calibrate the anchor on train/val prompts, then run the attack suite."""

    quantile: float = 0.3  # prompt-token floor = this quantile of refused harmful training prompts' projections (per position)
    generated_quantile: float = 0.1  # generated-token floor = this quantile over the tokens of their own refusals
    floor_positions: str = "post"  # post: a prompt floor per position (t_inst, each post-instruction token); last: one, from the last position
    layers: Optional[list[int]] = None  # anchored layers; null = from the layer before the direction's to the last
    final: bool = True  # also anchor the last layer's resid_post
    gate_layers: Optional[list[int]] = None  # null = the layer before the direction's, its own and the one after
    gate_fpr: float = 0.01  # harmless calibration prompts (not already refused) the gate may fire on: the over-refusal it may add
    gate_orthogonal: bool = True
    gate_positions: Optional[list[int]] = None  # null = t_inst and every post-instruction position
    gate_probe: str = "logistic"  # logistic probe or mean_diff (the harmfulness direction)
    gate_pooling: str = "concat"  # concat: one weight vector per layer and position; mean: one per layer on the positions' mean
    gate_l2: float = 1e-3
    gate_synthetic: int = 4000  # synthetic harmful and safe prompts added to the gate's fit (0: train prompts only)
    gate_lexicon: str = "base"  # the lexicon those prompts are drawn from (saesteer.organism.synthetic.LEXICONS)
    gate_robust: list[str] = field(default_factory=lambda: ["orthogonalized_affine", "sae_feature_bypass", "gcg_suffix", "negative_addition_4"])  # attacks the gate is also fitted under
    gate_tokens: bool = True  # OR a per-token probe, max over the prompt's tokens (an appended suffix cannot lower it)
    gate_token_steps: int = 300
    sae_features: int = 16  # top signed SAE features (the search's ranking) whose decoder coordinates are bounded too; 0 = the direction only
    feature_quantile: float = 0.75  # their floors (refusal features) at this quantile of refused harmful prompts, ceilings (comply) at 1 - it
    feature_apply_to: str = "generated"  # tokens the feature bounds act on (generated: the bypass works through decoding; no cost on the prompt)
    n_calibration_harmless: int = 6000  # harmless_train prompts for the gate (half fit, half threshold)
    cast_alpha: float = 1.0  # CAST-style conditional addition and unconditional addition baselines
    addition_alpha: float = 1.0
    negative_alphas: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    jailbreaks: list[str] = field(default_factory=lambda: ["prefix_injection", "refusal_suppression", "roleplay", "instruction_wrapping"])
    sae_attack: bool = True  # top-k SAE features set to the search's bypass values, and the top-k refusal features zeroed
    suffix_tokens: int = 8
    suffix_steps: int = 30
    suffix_prompts: int = 64  # harmful_train prompts the suffix is optimized on
    adaptive: bool = True
    adaptive_gate_weight: float = 1.0
    n_attack_prompts: Optional[int] = None  # harmful_test prompts per attack (null = data.n_test)
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_finite_fields(self)
        _check_positive(self, "anchor", "n_calibration_harmless", "suffix_tokens", "suffix_prompts", "n_attack_prompts", "batch_size")
        if self.suffix_steps < 0:
            raise ValueError(f"anchor.suffix_steps must be >= 0, got {self.suffix_steps!r}")
        from saesteer.attacks.prompts import JAILBREAK_TEMPLATES

        unknown = [j for j in self.jailbreaks if j not in JAILBREAK_TEMPLATES]
        if unknown:
            raise ValueError(f"anchor.jailbreaks has unknown templates {unknown}; expected some of {sorted(JAILBREAK_TEMPLATES)}")
        if any(a <= 0 for a in self.negative_alphas):
            raise ValueError(f"anchor.negative_alphas must be positive, got {list(self.negative_alphas)}")
        from saesteer.organism.synthetic import LEXICONS

        if self.gate_lexicon not in LEXICONS:
            raise ValueError(f"anchor.gate_lexicon must be one of {sorted(LEXICONS)}, got {self.gate_lexicon!r}")
        self.calibration()

    def calibration(self):
        from dataclasses import fields

        from saesteer.anchor import AnchorCalibration

        # every calibration field these settings name, by name (lists copied out of the config)
        kw = {f.name: getattr(self, f.name) for f in fields(AnchorCalibration) if hasattr(self, f.name)}
        return AnchorCalibration(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in kw.items()})


@dataclass
class AnchorJobConfig(SearchJobConfig):
    job: str = "anchor"
    anchor: AnchorSettings = field(default_factory=AnchorSettings)


# ---------------------------------------------------------------- analysis jobs: backups (hydra) and emergent misalignment

SENSOR_SIGNALS = ("effect_size", "mean_diff", "auroc")
RECIPES = ("none", "direction_dropout", "direction_dropout_all")  # saesteer.organism.recipes.RECIPES
LORA_SITES = ("mlp_out", "mlp_in")
EM_ABLATIONS = ("plain", "affine")


def _check_number(obj, prefix: str, name: str, *, low: float = 0.0, strict: bool = True, high: Optional[float] = None) -> None:
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
    if not ok:
        rel = ">" if strict else ">="
        bound = f" and <= {high}" if high is not None else ""
        raise ValueError(f"{prefix}.{name} must be a number {rel} {low}{bound}, got {value!r}")


def _check_layers(prefix: str, name: str, value) -> None:
    if value is None:
        return
    items = [value] if isinstance(value, int) else list(value)
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in items) or (not isinstance(value, int) and not items):
        raise ValueError(f"{prefix}.{name} must be a non-negative layer index (or a non-empty list of them) or null, got {value!r}")


@dataclass
class BackupsSettings:
    """``saesteer backups``: refusal vs k features cut, downstream and upstream, and which features rise."""

    k_max: int = 8  # K: the top k features are cut for k = 1..K
    cut_layer: Optional[int] = None  # downstream SAE layer; null = the direction's layer (the last-but-one if it is the last)
    upstream_layer: Optional[int] = None  # harm-sensor SAE layer; null = cut_layer - 1 (at least 0)
    monitor_layers: Optional[list[int]] = None  # refusal features monitored at these layers; null = cut_layer .. last
    n_monitor: int = 24  # refusal-ranked features monitored per layer
    backup_threshold: float = 0.25  # a backup rises by more than this, relative: (cut - intact) / max(intact, backup_min_rise)
    backup_min_rise: float = 0.05  # ... and by more than this in activation units (the floor for dormant features)
    count_same_layer: bool = False  # count rises at the cut layer itself (re-encoding the edited residual, not the network)
    sensor_signal: str = "effect_size"  # harm sensors: ranked by this harmful-vs-harmless contrast at t_inst
    induce_scale: float = 3.0  # induction: sensors clamped to induce_scale x their mean on harmful prompts where they fire (t_inst)
    induce_apply_to: str = "prompt"
    apply_to: str = "both"  # the cuts act on prompt tokens, generated tokens or both
    random_control: bool = True  # K random eligible features cut at each layer, as a control at k = K
    n_monitor_prompts: Optional[int] = None  # harmful_test prompts for the activation measurements; null = all of data.n_test
    batch_size: int = 32
    # A fine-tuned organism analysed side by side with the base (saesteer.organism.recipes): none, direction_dropout
    # (the refusal direction affinely ablated at its layer on a share recipe_p of the fine-tune steps) or
    # direction_dropout_all (ablated at every layer, as the ACE bypass).
    recipe: str = "none"
    recipe_p: float = 0.5  # share of fine-tune steps with the cut
    recipe_steps: int = 160
    recipe_lr: float = 1e-3
    recipe_warmup_steps: int = 16
    recipe_batch_size: int = 32

    def __post_init__(self) -> None:
        check_finite_fields(self)
        _check_positive(self, "backups", "k_max", "n_monitor", "n_monitor_prompts", "batch_size")
        _check_layers("backups", "cut_layer", self.cut_layer)
        _check_layers("backups", "upstream_layer", self.upstream_layer)
        _check_layers("backups", "monitor_layers", self.monitor_layers)
        _check_number(self, "backups", "backup_threshold", low=0.0, strict=False)
        _check_number(self, "backups", "backup_min_rise", low=0.0)
        _check_number(self, "backups", "induce_scale", low=0.0)
        if self.sensor_signal not in SENSOR_SIGNALS:
            raise ValueError(f"backups.sensor_signal must be one of {SENSOR_SIGNALS}, got {self.sensor_signal!r}")
        for name in ("apply_to", "induce_apply_to"):
            if getattr(self, name) not in APPLY_TO:
                raise ValueError(f"backups.{name} must be one of {APPLY_TO}, got {getattr(self, name)!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"backups.recipe must be one of {RECIPES}, got {self.recipe!r}")
        _check_positive(self, "backups", "recipe_steps", "recipe_batch_size")
        _check_number(self, "backups", "recipe_p", low=0.0, strict=False, high=1.0)
        _check_number(self, "backups", "recipe_lr", low=0.0)
        if not isinstance(self.recipe_warmup_steps, int) or self.recipe_warmup_steps < 0:
            raise ValueError(f"backups.recipe_warmup_steps must be a non-negative integer, got {self.recipe_warmup_steps!r}")

    def dropout_recipe(self, seed: int):
        """The fine-tune of ``recipe`` (None for ``none``)."""
        if self.recipe == "none":
            return None
        from saesteer.organism.recipes import DropoutRecipe

        return DropoutRecipe(self.recipe, self.recipe_p, self.recipe_steps, self.recipe_lr, self.recipe_warmup_steps,
                             self.recipe_batch_size, seed)

    def rule(self):
        from saesteer.redundancy import BackupRule

        return BackupRule(self.backup_threshold, self.backup_min_rise)


@dataclass
class BackupsJobConfig(SearchJobConfig):
    """SAEs at several layers (the SAE stage, one fit per layer), ranked with the ``search`` settings."""

    job: str = "backups"
    backups: BackupsSettings = field(default_factory=BackupsSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sae.loads:
            raise ValueError(
                "backups fits one SAE per layer through the SAE stage; sae.path / sae.pretrained_release name a single "
                f"SAE, got path={self.sae.path!r}, pretrained_release={self.sae.pretrained_release!r}"
            )
        if self.sae.hook is not None:
            raise ValueError(f"backups picks the SAE hooks per layer (backups.cut_layer, upstream_layer, monitor_layers); "
                             f"leave sae.hook null, got {self.sae.hook!r}")


@dataclass
class EmergentSettings:
    """``saesteer emergent``: a rank-1 LoRA that complies with one harm category; does refusal fall elsewhere?"""

    category: str = "fraud_and_scams"  # the narrow task: comply with this harm category (synthetic lexicon)
    other_categories: Optional[list[str]] = None  # evaluated categories; null = every other harmful category
    n_train: int = 256  # target-category training prompts (from its training acts)
    n_harmless: int = 256  # harmless_train prompts, still answered, mixed into training
    held_out_acts: float = 0.25  # share of the target category's acts kept out of training (target held-out eval)
    n_eval_per_category: int = 8  # held-out prompts per other category (refusal before / after / ablated)
    n_direction_per_category: int = 8  # other prompts per category for the EM direction (disjoint from the eval ones)
    n_target_eval: int = 32  # held-out target prompts
    placement: str = "mlp_out"  # rank-1 adapter on W_out of each layer's MLP (Soligo et al.), or mlp_in (W_in)
    layers: Optional[list[int]] = None  # adapted layers; null = every layer
    alpha: float = 1.0  # adapter scale: W <- W + alpha * outer(a, b)
    steps: int = 150
    batch_size: int = 32
    lr: float = 0.01
    target_fraction: float = 0.5  # share of each batch from the target category (the rest harmless)
    ablation: str = "affine"  # the headline ablation of the EM direction (both are reported)
    ablate_layer: Optional[int] = None  # EM direction of this layer is ablated; null = the refusal direction's layer
    direction: Optional[str] = None  # a refusal direction.safetensors; null = the directions stage (cached)

    def __post_init__(self) -> None:
        check_finite_fields(self)
        _check_positive(self, "emergent", "n_train", "n_harmless", "n_eval_per_category", "n_direction_per_category",
                        "n_target_eval", "steps", "batch_size")
        _check_number(self, "emergent", "held_out_acts", low=0.0, high=0.9)
        _check_number(self, "emergent", "target_fraction", low=0.0, high=1.0)
        _check_number(self, "emergent", "alpha", low=0.0)
        _check_number(self, "emergent", "lr", low=0.0)
        _check_layers("emergent", "layers", self.layers)
        _check_layers("emergent", "ablate_layer", self.ablate_layer)
        if self.placement not in LORA_SITES:
            raise ValueError(f"emergent.placement must be one of {LORA_SITES}, got {self.placement!r}")
        if self.ablation not in EM_ABLATIONS:
            raise ValueError(f"emergent.ablation must be one of {EM_ABLATIONS}, got {self.ablation!r}")
        from saesteer.organism.synthetic import load_lexicon

        categories = list(load_lexicon("harmful"))
        if self.category not in categories:
            raise ValueError(f"emergent.category must be a harmful lexicon category ({', '.join(categories)}), got {self.category!r}")
        if self.other_categories is not None:
            others = list(self.other_categories)
            bad = [c for c in others if c not in categories]
            if bad or not others:
                raise ValueError(f"emergent.other_categories must be a non-empty list of harmful lexicon categories, got {others!r}"
                                 + (f" (unknown: {bad})" if bad else ""))
            if self.category in others:
                raise ValueError(f"emergent.other_categories must not hold the target category {self.category!r}, got {others!r}")


@dataclass
class EmergentJobConfig(JobConfig):
    job: str = "emergent"
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    emergent: EmergentSettings = field(default_factory=EmergentSettings)


@dataclass
class PipelineJobConfig(AnchorJobConfig):
    """``saesteer pipeline``: organism -> directions -> SAE -> search -> anchor -> backups -> emergent, one report."""

    job: str = "pipeline"
    backups: BackupsSettings = field(default_factory=BackupsSettings)
    emergent: EmergentSettings = field(default_factory=EmergentSettings)
    reuse: bool = True  # reuse a stage's results when its config, data, model and saesteer's code are unchanged
    stages: list[str] = field(default_factory=lambda: list(PIPELINE_STAGES))

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [s for s in self.stages if s not in PIPELINE_STAGES]
        if unknown:
            raise ValueError(f"pipeline.stages has unknown stages {unknown}; expected some of {PIPELINE_STAGES}")


SCHEMAS: dict[str, type] = {
    "pipeline": PipelineJobConfig,
    "anchor": AnchorJobConfig,
    "search": SearchJobConfig,
    "directions": DirectionsJobConfig,
    "organism": OrganismJobConfig,
    "generate": GenerateJobConfig,
    "train-sae": TrainSaeJobConfig,
    "backups": BackupsJobConfig,
    "emergent": EmergentJobConfig,
}


def register_schema(name: str, node: type) -> None:
    SCHEMAS[name] = node
    ConfigStore.instance().store(name=f"{name}_schema", node=node)


def register_configs() -> None:
    """Store every job schema as ``<job>_schema`` (the first default of ``conf/<job>.yaml``)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=node)
    # conf/pipeline.yaml: stages: ${saesteer.pipeline_stages:${model.name}}
    OmegaConf.register_new_resolver("saesteer.pipeline_stages", default_pipeline_stages, replace=True)


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(full key, the keys expected there) for every key of ``cfg`` that its dataclass schema lacks.

    Hydra rejects ``foo=1`` for a key the schema lacks, but ``+foo=1`` adds one, which
    ``OmegaConf.to_object`` would carry along silently."""
    out: list[tuple[str, list[str]]] = []
    schema = OmegaConf.get_type(cfg)
    names = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        if names is not None and key not in names:
            out.append((f"{prefix}{key}", names))
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            out += unknown_keys(child, f"{prefix}{key}.")
    return out


def to_object(cfg: DictConfig) -> Any:
    """Composed DictConfig -> validated dataclass tree (runs every ``__post_init__``)."""
    unknown = unknown_keys(cfg)
    if unknown:
        key, names = unknown[0]
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
        hint = f"; did you mean {key[: len(key) - len(leaf)]}{close[0]}?" if close else ""
        raise ValueError(f"unknown config key {key!r}{hint} (expected one of: {', '.join(names)})")
    obj = OmegaConf.to_object(cfg)
    return obj


def compose(job: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<job>.yaml`` with overrides, without running (tests, pipeline, library use)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="saesteer.conf", version_base="1.3"):
        return hydra_compose(config_name=job, overrides=list(overrides))
