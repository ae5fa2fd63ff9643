"""Dataclass schemas for every config group (:mod:`saesteer.config.groups`) and job (:mod:`saesteer.config.jobs`),
registered in Hydra's ConfigStore.

A YAML file under ``conf/`` merges into these typed nodes, so a misspelt key
fails when the config is composed; ``to_object`` then builds the dataclasses and
their ``__post_init__`` checks values (a ``ValueError`` naming field and value).

Every setting is declared once, with its default and its help text: a group whose
library takes a settings dataclass extends it and declares only the job's own
settings (``DirectionsConfig(SelectionConfig)``, ``SearchJobSettings(SearchConfig)``,
``AnchorSettings(AnchorCalibration)``, ``BackupsSettings(BackupRule)``,
``EmergentSettings(LoraTrainConfig)``), so the job passes its group to the library as
it is; ``conf/<group>/*.yaml`` set only what differs from these defaults.  A choice
is a ``Literal`` defined once, checked by the class that owns the field
(:func:`saesteer.checks.check_choice_fields`).  Each job's config lists the groups it
reads beside the ones every job has (:class:`JobConfig`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from saesteer.config.groups import (
    DTYPES,
    PIPELINE_STAGES,
    SENSOR_SIGNALS,
    STEER_KINDS,
    WANDB_MODES,
    AnchorSettings,
    BackupsSettings,
    DataConfig,
    DirectionsConfig,
    Dtype,
    EmergentSettings,
    EvalConfig,
    JudgeConfig,
    LoggerConfig,
    ModelConfig,
    SafetySettings,
    SearchJobSettings,
    SensorSignal,
    SteerConfig,
    SteerKind,
    WandbMode,
    default_pipeline_stages,
    library_settings,
)
from saesteer.config.jobs import (
    SCHEMAS,
    AnchorJobConfig,
    BackupsJobConfig,
    BehaviourJobConfig,
    DirectionsJobConfig,
    EmergentJobConfig,
    GenerateJobConfig,
    JobConfig,
    JudgeEvalJobConfig,
    JudgeTrainJobConfig,
    OrganismJobConfig,
    PipelineJobConfig,
    SafetyTuneJobConfig,
    SearchJobConfig,
    TrainSaeJobConfig,
)

__all__ = [
    "Dtype",
    "DTYPES",
    "WandbMode",
    "WANDB_MODES",
    "SteerKind",
    "STEER_KINDS",
    "SensorSignal",
    "SENSOR_SIGNALS",
    "PIPELINE_STAGES",
    "default_pipeline_stages",
    "library_settings",
    "ModelConfig",
    "DataConfig",
    "EvalConfig",
    "JudgeConfig",
    "LoggerConfig",
    "SteerConfig",
    "DirectionsConfig",
    "SearchJobSettings",
    "AnchorSettings",
    "BackupsSettings",
    "EmergentSettings",
    "SafetySettings",
    "JobConfig",
    "OrganismJobConfig",
    "BehaviourJobConfig",
    "GenerateJobConfig",
    "DirectionsJobConfig",
    "TrainSaeJobConfig",
    "SearchJobConfig",
    "AnchorJobConfig",
    "BackupsJobConfig",
    "EmergentJobConfig",
    "PipelineJobConfig",
    "SafetyTuneJobConfig",
    "JudgeEvalJobConfig",
    "JudgeTrainJobConfig",
    "SCHEMAS",
    "register_schema",
    "register_configs",
    "unknown_keys",
    "to_object",
    "compose",
]


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
