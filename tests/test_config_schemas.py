"""Every setting is defined once: a config group's schema is (or extends, adding fields only) the settings dataclass
its library takes; conf/<group>/ YAML files set nothing the schema already defaults to; each choice is a Literal
checked by the class that owns the field, in one message form."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from saesteer.anchor import AnchorCalibration
from saesteer.checks import _choice_fields, choices
from saesteer.config import (
    SCHEMAS,
    AnchorSettings,
    BackupsSettings,
    DirectionsConfig,
    EmergentSettings,
    JudgeConfig,
    LoggerConfig,
    ModelConfig,
    SafetySettings,
    SearchJobSettings,
    SteerConfig,
    compose,
    to_object,
)
from saesteer.directions import SelectionConfig
from saesteer.lora import LoraTrainConfig
from saesteer.redundancy import BackupRule
from saesteer.safety.tune import SafetyTrainConfig
from saesteer.search import SearchConfig

CONF = Path(__file__).resolve().parents[1] / "conf"

#: group schema -> the library settings it extends
EXTENDS = [
    (DirectionsConfig, SelectionConfig),
    (SearchJobSettings, SearchConfig),
    (AnchorSettings, AnchorCalibration),
    (BackupsSettings, BackupRule),
    (EmergentSettings, LoraTrainConfig),
    (SafetySettings, SafetyTrainConfig),
]

#: groups whose options are presets (a model, an SAE architecture), not the schema's defaults
PRESET_GROUPS = {"model", "sae"}


def _composed(job: str):
    return to_object(compose(job, ["prompts=harmful_val"] if job == "generate" else []))


@pytest.mark.parametrize("schema, base", EXTENDS, ids=[s.__name__ for s, _ in EXTENDS])
def test_group_schemas_extend_the_library_settings_without_copies(schema, base):
    assert base in schema.__bases__
    own = set(vars(schema).get("__annotations__", {}))
    assert not own & {f.name for f in dataclasses.fields(base)}, (
        f"{schema.__name__} redeclares {sorted(own & {f.name for f in dataclasses.fields(base)})}"
    )


@pytest.mark.parametrize("job", sorted(SCHEMAS))
def test_composed_groups_equal_the_dataclass_defaults(job):
    """conf/<job>.yaml with no overrides: every (non-preset) group is its schema's default, field for field."""
    obj = _composed(job)
    groups = [f.name for f in dataclasses.fields(obj) if dataclasses.is_dataclass(getattr(obj, f.name))]
    assert groups
    for name in groups:
        value = getattr(obj, name)
        if name in PRESET_GROUPS:
            continue
        assert value == type(value)(), f"{job}: {name} differs from {type(value).__name__}()"


def test_job_configs_list_their_groups_instead_of_inheriting_them():
    from saesteer.config import JobConfig

    for job, schema in SCHEMAS.items():
        # judge-eval and judge-train read labelled text and load no model: they have no model, data or eval group
        assert schema.__bases__ == ((object,) if job in ("judge-eval", "judge-train") else (JobConfig,)), job


def _group_files():
    out = []
    for group, schema in (
        ("anchor", AnchorSettings),
        ("backups", BackupsSettings),
        ("directions", DirectionsConfig),
        ("emergent", EmergentSettings),
        ("search", SearchJobSettings),
        ("eval", None),
        ("data", None),
        ("logger", LoggerConfig),
        ("judge", JudgeConfig),
        ("steer", SteerConfig),
    ):
        for path in sorted((CONF / group).glob("*.yaml")):
            out.append((group, schema, path))
    return out


@pytest.mark.parametrize("group, schema, path", _group_files(), ids=lambda v: v.name if isinstance(v, Path) else None)
def test_group_yaml_sets_only_what_differs_from_the_schema(group, schema, path):
    from saesteer.config import DataConfig, EvalConfig

    schema = schema or {"eval": EvalConfig, "data": DataConfig}[group]
    keys = yaml.safe_load(path.read_text()) or {}
    default = schema()
    same = [k for k, v in keys.items() if k != "defaults" and getattr(default, k) == v]
    assert not same, f"{path.relative_to(CONF)} repeats the defaults of {schema.__name__}: {same}"


#: (class, the group its errors name)
CHOICE_CLASSES = [
    (ModelConfig, "model"),
    (LoggerConfig, "logger"),
    (JudgeConfig, "judge"),
    (SteerConfig, "steer"),
    (SelectionConfig, "directions"),
    (DirectionsConfig, "directions"),
    (SearchJobSettings, "search"),
    (AnchorCalibration, "anchor"),
    (AnchorSettings, "anchor"),
    (BackupsSettings, "backups"),
    (EmergentSettings, "emergent"),
]
CHOICE_FIELDS = [(cls, group, name, kind) for cls, group in CHOICE_CLASSES for name, kind, _ in _choice_fields(cls)]


def test_choice_fields_are_found():
    names = {(c.__name__, n) for c, _, n, _ in CHOICE_FIELDS}
    for expected in [
        ("SearchJobSettings", "apply_to"),
        ("SearchJobSettings", "ablation"),
        ("AnchorSettings", "feature_apply_to"),
        ("AnchorCalibration", "gate_probe"),
        ("BackupsSettings", "finetune"),
        ("BackupsSettings", "sensor_signal"),
        ("EmergentSettings", "placement"),
        ("DirectionsConfig", "ablation"),
        ("SteerConfig", "kind"),
        ("ModelConfig", "dtype"),
    ]:
        assert expected in names, expected


@pytest.mark.parametrize(
    "cls, group, name, kind", CHOICE_FIELDS, ids=[f"{c.__name__}.{n}" for c, _, n, _ in CHOICE_FIELDS]
)
def test_a_bad_choice_names_group_field_value_and_the_choices(cls, group, name, kind):
    allowed = choices(kind)
    assert getattr(cls(), name) in allowed
    with pytest.raises(ValueError) as e:
        cls(**{name: "bogus"})
    assert str(e.value) == f"{group}.{name} must be one of {allowed}, got 'bogus'"
