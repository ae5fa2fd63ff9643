"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

A YAML file under ``conf/`` merges into these typed nodes, so a misspelt key
fails when the config is composed; ``to_object`` then builds the dataclasses and
their ``__post_init__`` checks values (a ``ValueError`` naming field and value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

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
    batch_size: int = 32

    def __post_init__(self) -> None:
        self.selection()  # validates
        _check_positive(self, "directions", "n_ce", "batch_size")

    def selection(self):
        from saesteer.directions import SelectionConfig

        return SelectionConfig(self.max_kl, self.min_induce, self.prune_layer_fraction, self.ablation, self.add_alpha)


@dataclass
class DirectionsJobConfig(JobConfig):
    job: str = "directions"
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)


@dataclass
class TrainSaeJobConfig(JobConfig):
    """``saesteer train-sae``: fit (or load) an SAE on a residual stream and measure it."""

    job: str = "train-sae"
    sae: SaeConfig = field(default_factory=SaeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sae, dict):
            self.sae = SaeConfig.from_dict(self.sae)


@dataclass
class SearchJobSettings:
    """Feature search + causal check of the top features (saesteer search)."""

    positions: Optional[list[int]] = None
    weight_cosine: float = 1.0
    weight_effect_size: float = 1.0
    weight_attribution: float = 1.0
    min_active_fraction: float = 0.02
    k: int = 8
    induce_scale: float = 3.0  # clamp value on harmless prompts = induce_scale x the feature's mean on harmful ones
    apply_to: str = "both"
    top_n: int = 20
    n_top_prompts: int = 5
    batch_size: int = 32
    direction: Optional[str] = None  # a direction.safetensors; None = the directions stage (cached)

    def __post_init__(self) -> None:
        _check_positive(self, "search", "k", "top_n", "batch_size")
        if self.apply_to not in ("prompt", "generated", "both"):
            raise ValueError(f"search.apply_to must be prompt, generated or both, got {self.apply_to!r}")
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


@dataclass
class PipelineJobConfig(SearchJobConfig):
    """``saesteer pipeline``: organism -> directions -> SAE -> search, one report."""

    job: str = "pipeline"
    stages: list[str] = field(default_factory=lambda: ["organism", "directions", "train-sae", "search"])

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [s for s in self.stages if s not in PIPELINE_STAGES]
        if unknown:
            raise ValueError(f"pipeline.stages has unknown stages {unknown}; expected some of {PIPELINE_STAGES}")


PIPELINE_STAGES = ("organism", "directions", "train-sae", "search")


SCHEMAS: dict[str, type] = {
    "pipeline": PipelineJobConfig,
    "search": SearchJobConfig,
    "directions": DirectionsJobConfig,
    "organism": OrganismJobConfig,
    "generate": GenerateJobConfig,
    "train-sae": TrainSaeJobConfig,
}


def register_schema(name: str, node: type) -> None:
    SCHEMAS[name] = node
    ConfigStore.instance().store(name=f"{name}_schema", node=node)


def register_configs() -> None:
    """Store every job schema as ``<job>_schema`` (the first default of ``conf/<job>.yaml``)."""
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=node)


def to_object(cfg: DictConfig) -> Any:
    """Composed DictConfig -> validated dataclass tree (runs every ``__post_init__``)."""
    obj = OmegaConf.to_object(cfg)
    return obj
