"""Each job's config: what every job has (:class:`JobConfig`) and the groups each job reads; ``SCHEMAS`` maps a job's
name to its config class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from saesteer.checks import (
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
}
