"""Each job's config: what every job has (:class:`JobConfig`) and the groups each job reads; ``SCHEMAS`` maps a job's
name to its config class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from saesteer.checks import (
    check_finite_fields,
    check_positive_ints,
    choices,
)
from saesteer.config.groups import (
    PIPELINE_STAGES,
    AnchorSettings,
    BackupsSettings,
    DataConfig,
    DirectionsConfig,
    EmergentSettings,
    EvalConfig,
    JudgeConfig,
    JudgeKind,
    LoggerConfig,
    ModelConfig,
    SafetySettings,
    SearchJobSettings,
    SteerConfig,
)
from saesteer.judge.learned import FeatureSpec
from saesteer.sae.config import SaeConfig

# ---------------------------------------------------------------- jobs: each lists the config groups it reads


@dataclass
class JobConfig:
    """What every job has: its name, seed, progress bars, the run directory's policy, and the groups every job reads."""

    job: str = "job"
    seed: int = 0
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # a run directory (hydra.run.dir) that holds another run's results is refused; true: they are removed first
    overwrite: bool = False

    def __post_init__(self) -> None:
        if hasattr(self, "sae"):
            _check_sae_responses(self)


def _check_sae_responses(cfg: Any) -> None:
    """A job that fits an SAE: ``cfg.sae`` as a SaeConfig, and organism responses only for the organism."""
    if isinstance(cfg.sae, dict):
        cfg.sae = SaeConfig.from_dict(cfg.sae)
    if cfg.sae.responses == "organism" and cfg.model.name != "organism":
        raise ValueError(
            f"sae.responses=organism needs model=organism, got model.name={cfg.model.name!r}; use greedy or none"
        )


@dataclass
class OrganismJobConfig(JobConfig):
    job: str = "organism"


@dataclass
class BehaviourJobConfig(JobConfig):
    """``saesteer behaviour``: greedy refusal on every prompt set, with example answers."""

    job: str = "behaviour"
    n_examples: int = 5  # example answers per set in the report

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(self, "behaviour", "n_examples")


@dataclass
class GenerateJobConfig(JobConfig):
    job: str = "generate"
    prompts: Optional[str] = None  # bundled name or a local json/jsonl/csv/parquet file
    column: str = "instruction"
    limit: Optional[int] = None
    steer: SteerConfig = field(default_factory=SteerConfig)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    # not read by this job: an experiment (conf/experiment/) names its SAE, and the preflight checks it for every job
    sae: SaeConfig = field(default_factory=SaeConfig)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("generate needs prompts=<bundled name or file>, got prompts=None")


@dataclass
class DirectionsJobConfig(JobConfig):
    job: str = "directions"
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    # not read by this job: an experiment (conf/experiment/) names its SAE, and the preflight checks it for every job
    sae: SaeConfig = field(default_factory=SaeConfig)


@dataclass
class TrainSaeJobConfig(JobConfig):
    """``saesteer train-sae``: fit (or load) an SAE on a residual stream and measure it."""

    job: str = "train-sae"
    sae: SaeConfig = field(default_factory=SaeConfig)


@dataclass
class SearchJobConfig(JobConfig):
    job: str = "search"
    sae: SaeConfig = field(default_factory=SaeConfig)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    search: SearchJobSettings = field(default_factory=SearchJobSettings)


@dataclass
class AnchorJobConfig(JobConfig):
    job: str = "anchor"
    sae: SaeConfig = field(default_factory=SaeConfig)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    search: SearchJobSettings = field(default_factory=SearchJobSettings)
    anchor: AnchorSettings = field(default_factory=AnchorSettings)


@dataclass
class BackupsJobConfig(JobConfig):
    """SAEs at several layers (the SAE stage, one fit per layer), ranked with the ``search`` settings."""

    job: str = "backups"
    sae: SaeConfig = field(default_factory=SaeConfig)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    search: SearchJobSettings = field(default_factory=SearchJobSettings)
    backups: BackupsSettings = field(default_factory=BackupsSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sae.loads:
            raise ValueError(
                "backups fits one SAE per layer through the SAE stage; sae.path / sae.pretrained_release name a single "
                f"SAE, got path={self.sae.path!r}, pretrained_release={self.sae.pretrained_release!r}"
            )
        if self.sae.hook is not None:
            raise ValueError(
                f"backups picks the SAE hooks per layer (backups.cut_layer, upstream_layer, monitor_layers); "
                f"leave sae.hook null, got {self.sae.hook!r}"
            )


@dataclass
class EmergentJobConfig(JobConfig):
    job: str = "emergent"
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    emergent: EmergentSettings = field(default_factory=EmergentSettings)


@dataclass
class PipelineJobConfig(JobConfig):
    """``saesteer pipeline``: organism -> directions -> SAE -> search -> anchor -> backups -> emergent, one report."""

    job: str = "pipeline"
    sae: SaeConfig = field(default_factory=SaeConfig)
    directions: DirectionsConfig = field(default_factory=DirectionsConfig)
    search: SearchJobSettings = field(default_factory=SearchJobSettings)
    anchor: AnchorSettings = field(default_factory=AnchorSettings)
    backups: BackupsSettings = field(default_factory=BackupsSettings)
    emergent: EmergentSettings = field(default_factory=EmergentSettings)
    reuse: bool = True  # reuse a stage's results when its config, data, model and saesteer's code are unchanged
    stages: list[str] = field(default_factory=lambda: list(PIPELINE_STAGES))

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [s for s in self.stages if s not in PIPELINE_STAGES]
        if unknown:
            raise ValueError(f"pipeline.stages has unknown stages {unknown}; expected some of {PIPELINE_STAGES}")


@dataclass
class SafetyTuneJobConfig(JobConfig):
    job: str = "safety-tune"
    safety: SafetySettings = field(default_factory=SafetySettings)


@dataclass
class JudgeEvalJobConfig:
    """``saesteer judge-eval``: the judges' agreement with labelled responses (no model is loaded)."""

    job: str = "judge-eval"
    seed: int = 0
    progress: bool = True
    labels: str = "refusal_direction"  # a bundled label set, or a CSV / JSON-lines file (prompt, response, label)
    judges: list[str] = field(default_factory=lambda: ["substring", "rules"])  # compared beside judge.kind
    n_examples: int = 20  # disagreements shown per judge in the report
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    overwrite: bool = False

    def __post_init__(self) -> None:
        kinds = choices(JudgeKind)
        bad = [j for j in self.judges if j not in kinds]
        if bad:
            raise ValueError(f"judges has unknown judges {bad}; expected some of {list(kinds)}")
        check_positive_ints(self, "judge-eval", "n_examples")


@dataclass
class JudgeTrainJobConfig:
    """``saesteer judge-train``: fit the learned judge's head on labelled responses (no chat model is loaded)."""

    job: str = "judge-train"
    seed: int = 0  # seeds the cross-validation folds
    progress: bool = True
    labels: str = "saesteer_human:train"  # training rows: a bundled set (NAME or NAME:SPLIT) or a CSV / JSON-lines file
    test_labels: Optional[str] = "saesteer_human:test"  # held-out rows scored after training (null: none)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    l2: list[float] = field(default_factory=lambda: [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])  # penalties tried
    cv_folds: int = 5  # stratified folds of the training rows
    cv_repeats: int = 4  # seeded fold assignments averaged
    batch_size: int = 64  # texts per MiniLM batch
    judges: list[str] = field(default_factory=lambda: ["substring", "rules"])  # scored on the test rows beside it
    install: bool = False  # also write the head into saesteer/resources/judge/ (the bundled head of judge=learned)
    n_examples: int = 20  # test disagreements shown in the report
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):
            self.features = FeatureSpec.from_dict(self.features)
        check_finite_fields(self)
        if not self.l2 or any(v <= 0 for v in self.l2):
            raise ValueError(f"judge-train.l2 must be a non-empty list of positive penalties, got {self.l2}")
        kinds = [k for k in choices(JudgeKind) if k != "learned"]
        bad = [j for j in self.judges if j not in kinds]
        if bad:
            raise ValueError(f"judges has unknown judges {bad}; expected some of {kinds}")
        check_positive_ints(self, "judge-train", "cv_folds", "cv_repeats", "batch_size", "n_examples")
        if self.cv_folds < 2:
            raise ValueError(f"judge-train.cv_folds must be at least 2, got {self.cv_folds}")


SCHEMAS: dict[str, type] = {
    "pipeline": PipelineJobConfig,
    "anchor": AnchorJobConfig,
    "search": SearchJobConfig,
    "directions": DirectionsJobConfig,
    "organism": OrganismJobConfig,
    "behaviour": BehaviourJobConfig,
    "generate": GenerateJobConfig,
    "train-sae": TrainSaeJobConfig,
    "backups": BackupsJobConfig,
    "emergent": EmergentJobConfig,
    "safety-tune": SafetyTuneJobConfig,
    "judge-eval": JudgeEvalJobConfig,
    "judge-train": JudgeTrainJobConfig,
}
