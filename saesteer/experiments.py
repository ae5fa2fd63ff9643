"""Experiments on real models (``conf/experiment/``), checked offline before anything is downloaded.

An experiment config (``saesteer pipeline experiment=gemma2_2b_it_gemmascope``) names a
TransformerLens model, its chat template, dtype and device, an SAE from sae_lens's
registry with the hook it reads, and data / batch sizes.  :func:`validate_experiment`
checks such a config without network access or weights:

- the model name is an official TransformerLens name (close names suggested);
- a chat template exists for it, and an explicit ``model.template`` agrees with it;
- the model's dimensions (d_model, n_layers, n_ctx): TransformerLens computes the
  Gemma / Llama configs from the name alone; models whose config it fetches from the
  Hub (Qwen2, ...) are read from the local Hugging Face cache when there, else from
  :data:`KNOWN_MODEL_DIMS`;
- the SAE release and id exist in the installed sae_lens registry (close names
  suggested), or ``sae.path`` holds an SAE in sae_lens format (its ``cfg.json`` is read);
- the SAE's hook (sae_lens's offline config getters, or the release's naming) equals
  ``sae.hook``, is a TransformerLens hook name and sits at a layer the model has;
- the SAE's d_in (registry metadata, else the d_model of the model the release was
  trained on) equals the model's d_model;
- direction files named by the config are readable safetensors of the model's width;
- every layer setting (``steer.layer``, ``anchor.layers`` / ``gate_layers``, ``backups.*_layer(s)``,
  ``emergent.layers`` / ``ablate_layer``) is a layer the model has, and every position setting
  (``directions.positions``, ``search.positions``, ``anchor.gate_positions``) a negative offset
  from the end of the prompt within the post-instruction tokens and ``t_inst`` (the suffix's
  length is read from the organism's tokenizer, or a real model's in the local Hugging Face
  cache; else it is checked when the model is loaded, before it runs).

Each failure is a one-line ``ValueError`` naming the value and what was expected.  A check
that cannot be made offline (a model whose dimensions TransformerLens reads from the Hub,
...) is reported as ``not checked``, never ``ok``.  ``run_job`` runs the same checks before
every job (:func:`preflight`), so a typo fails in a second instead of after a 16 GB download.
``python -m saesteer.experiments [NAME ...] [key=value ...]`` prints each experiment's checks
(ok / note / not checked / error) and exits 1 on an error.
"""

from __future__ import annotations

import difflib
import functools
import logging
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from saesteer.offline_facts import (
    ExperimentError,
    ModelFacts,
    check_hook_name,
    disk_sae_facts,
    model_facts,
    registry_sae_facts,
)

log = logging.getLogger(__name__)

#: jobs whose conf/<job>.yaml accepts ``experiment=<name>``
EXPERIMENT_JOBS = ("directions", "generate", "train-sae", "search", "pipeline")

#: the status of a check that cannot be made offline (never reported as ``ok``)
NOT_CHECKED = "not checked"


@dataclass(frozen=True)
class Check:
    """One passed check: ``status`` is ``ok``, ``note`` (worth knowing) or ``not checked`` (not knowable offline)."""

    name: str
    status: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.status}] {self.name}: {self.detail}"


def _sae_checks(job: str, sae: Any, model: ModelFacts) -> list[Check]:
    checks: list[Check] = []
    if not sae.loads:
        if sae.hook is not None:
            layer = check_hook_name(sae.hook, model.n_layers)
            if layer >= 0 and model.n_layers is None:
                checks.append(
                    Check(
                        "sae.hook",
                        NOT_CHECKED,
                        f"{sae.hook} (layer {layer}; the model's n_layers is not known offline)",
                    )
                )
            else:
                checks.append(Check("sae.hook", "ok", f"{sae.hook} (layer {layer} of {model.n_layers})"))
        if model.n_ctx is not None and sae.context_size > model.n_ctx:
            raise ExperimentError(
                f"sae.context_size={sae.context_size} is longer than the model's context (n_ctx={model.n_ctx})"
            )
        return checks
    if sae.pretrained_release is not None:
        facts = registry_sae_facts(sae.pretrained_release, str(sae.pretrained_id))
        checks.append(Check("sae.release", "ok", f"{facts.label} is in sae_lens's registry (trained on {facts.model})"))
    else:
        facts = disk_sae_facts(sae.path)
        checks.append(Check("sae.path", "ok", f"{facts.label} (sae_lens format)"))
    if sae.hook is not None:
        check_hook_name(sae.hook, model.n_layers)  # a misspelt hook first: its message suggests the right name
    if sae.hook is not None and facts.hook is not None and sae.hook != facts.hook:
        raise ExperimentError(
            f"sae.hook={sae.hook!r} but SAE {facts.label} reads {facts.hook!r} ({facts.hook_source}); "
            f"set sae.hook={facts.hook}"
        )
    if (
        sae.hook is None
        and facts.hook is not None
        and not facts.hook.endswith(".hook_resid_pre")
        and job in ("search", "pipeline", "anchor")
    ):  # they read resid_pre of the direction's layer: never this hook
        raise ExperimentError(
            f"sae.hook is null, so {job} would read blocks.<direction layer>.hook_resid_pre, but SAE "
            f"{facts.label} reads {facts.hook!r}; set sae.hook={facts.hook}"
        )
    hook = sae.hook or facts.hook
    if hook is None:
        checks.append(Check("sae.hook", NOT_CHECKED, f"SAE {facts.label} names no hook offline and sae.hook is null"))
    else:
        layer = check_hook_name(hook, model.n_layers)
        where = (
            (f"layer {layer} of {model.n_layers}" if model.n_layers is not None else f"layer {layer}")
            if layer >= 0
            else "outside the blocks"
        )
        known = facts.hook is not None and (layer < 0 or model.n_layers is not None)
        unknown = (
            ""
            if known
            else ("; the model's n_layers is not known offline" if model.n_layers is None and layer >= 0 else "")
        )
        checks.append(
            Check(
                "sae.hook",
                "ok" if known else NOT_CHECKED,
                f"{hook} ({where}; SAE's hook from {facts.hook_source}{unknown})",
            )
        )
    if facts.d_in is None or model.d_model is None:
        checks.append(
            Check(
                "sae.d_in",
                NOT_CHECKED,
                f"d_in {facts.d_in} ({facts.d_in_source}), d_model {model.d_model} ({model.source})",
            )
        )
    elif facts.d_in != model.d_model:
        raise ExperimentError(
            f"SAE {facts.label} has d_in={facts.d_in} ({facts.d_in_source}) but {model.name} has "
            f"d_model={model.d_model}; expected an SAE made for a model of width {model.d_model}"
        )
    else:
        checks.append(Check("sae.d_in", "ok", f"{facts.d_in} = d_model ({facts.d_in_source})"))
    if facts.model and model.name != "organism":
        from saesteer.model_names import resolve_model_name

        try:
            trained_on = resolve_model_name(facts.model)
        except ValueError:
            trained_on = facts.model
        if trained_on != model.name:
            checks.append(Check("sae.model", "note", f"the SAE was trained on {trained_on}, used on {model.name}"))
    if model.n_ctx is not None and sae.context_size > model.n_ctx:
        raise ExperimentError(
            f"sae.context_size={sae.context_size} is longer than the model's context (n_ctx={model.n_ctx})"
        )
    return checks


# ----------------------------------------------------------------------------- the whole config


def _direction_checks(obj: Any, model: ModelFacts) -> list[Check]:
    from saesteer.directions import load_direction

    checks = []
    for label, node, attr in (
        ("steer.direction", "steer", "direction"),
        ("search.direction", "search", "direction"),
        ("sae.direction", "sae", "direction"),
    ):
        path = getattr(getattr(obj, node, None), attr, None)
        if not path:
            continue
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{label}={path!r}: no such file (a direction.safetensors from `saesteer directions`)"
            )
        d, meta = load_direction(path, d_model=model.d_model)
        checks.append(
            Check(label, "ok", f"{path}: shape {tuple(d.shape)}, layer {meta.get('layer')}, model {meta.get('model')}")
        )
    return checks


#: (group, field) of every layer setting: an index 0..n_layers-1, or a list of them (null: chosen by the job)
LAYER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("steer", "layer"),
    ("anchor", "layers"),
    ("anchor", "gate_layers"),
    ("backups", "cut_layer"),
    ("backups", "upstream_layer"),
    ("backups", "monitor_layers"),
    ("emergent", "layers"),
    ("emergent", "ablate_layer"),
)
#: (group, field) of every position setting: negative offsets from the end of the prompt (null: the default positions)
POSITION_SETTINGS: tuple[tuple[str, str], ...] = (
    ("directions", "positions"),
    ("search", "positions"),
    ("anchor", "gate_positions"),
)


def _settings(obj: Any, table: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(``group.field``, value) of the settings of ``table`` that ``obj`` has and sets (not null)."""
    out = []
    for group, name in table:
        node = getattr(obj, group, None)
        value = getattr(node, name, None) if node is not None else None
        if value is None or (group == "steer" and getattr(node, "kind", None) != "add"):  # steer.layer: addition only
            continue
        out.append((f"{group}.{name}", value))
    return out


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_layer_setting(name: str, value: Any, n_layers: Optional[int], model_name: str = "the model") -> Optional[str]:
    """An ExperimentError unless ``value`` (a layer or a list of layers) is within 0..n_layers-1; the detail of a pass."""
    items = [value] if not isinstance(value, (list, tuple)) else list(value)
    if not items:
        raise ExperimentError(f"{name}=[] is empty; expected a non-empty list of layer indices, or null")
    wrong = [v for v in items if not _is_index(v) or v < 0 or (n_layers is not None and v >= n_layers)]
    if wrong:
        expected = (
            f"layers 0..{n_layers - 1} ({model_name} has {n_layers} layers)"
            if n_layers is not None
            else "non-negative layer indices"
        )
        what = "layer" if len(wrong) == 1 else "layers"
        raise ExperimentError(
            f"{name}={value!r}: {what} {', '.join(map(repr, wrong))} out of range; expected {expected}"
        )
    return None if n_layers is None else f"{value!r} within 0..{n_layers - 1}"


def check_position_setting(name: str, value: Any, n_post: Optional[int], template: str = "the chat") -> Optional[str]:
    """An ExperimentError unless every position is a negative offset in ``-n_post-1 .. -1``: the post-instruction tokens
    (the chat template's suffix, ``-n_post .. -1``) and the last instruction token ``t_inst = -n_post - 1``.  Rows are
    left-padded, so a position >= 0 or further left reads padding or another token in each prompt."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ExperimentError(
            f"{name}=[] is empty; expected a non-empty list of negative positions, or null (the default positions)"
        )
    low = None if n_post is None else -n_post - 1
    wrong = [v for v in items if not _is_index(v) or v >= 0 or (low is not None and v < low)]
    if wrong:
        what = "position" if len(wrong) == 1 else "positions"
        if low is None:
            expected = (
                "negative offsets from the end of the prompt (-1 the last post-instruction token, down to "
                "t_inst = -n_post - 1, the last instruction token)"
            )
        else:
            expected = (
                f"negative offsets from the end of the prompt, {low}..-1 (-{n_post}..-1: the {n_post} post-instruction "
                f"tokens of the {template!r} template; {low}: the last instruction token, t_inst)"
            )
        raise ExperimentError(
            f"{name}={value!r}: {what} {', '.join(map(repr, wrong))} out of range; expected {expected}"
        )
    return None if n_post is None else f"{value!r} within {low}..-1"


@functools.lru_cache(maxsize=16)
def _offline_n_post(model_name: str, template_name: str) -> tuple[Optional[int], str]:
    """(number of post-instruction tokens, where it comes from): the template's suffix tokenized by the model's tokenizer
    (the organism's, or a real model's from the local Hugging Face cache), else (None, why not)."""
    from saesteer.chat import get_template, suffix_ids

    template = get_template(template_name)
    if model_name == "organism":
        from saesteer.organism.tokenizer import build_tokenizer

        return len(suffix_ids(build_tokenizer(), template)), "the organism's tokenizer"
    from saesteer.model_files import LOCAL_MODELS, cached_checkpoint

    source, where = model_name, "the local Hugging Face cache"
    if model_name in LOCAL_MODELS:
        source, where = cached_checkpoint(LOCAL_MODELS[model_name].file), "saesteer's cache"
        if source is None:
            return None, f"the tokenizer of {model_name} is not in saesteer's cache yet (fetched when it first loads)"
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        return len(suffix_ids(tok, template)), f"the tokenizer in {where}"
    except Exception as exc:  # noqa: BLE001 - any failure means "not knowable offline"
        return None, f"the tokenizer of {model_name} is not in the local Hugging Face cache ({type(exc).__name__})"


def _range_checks(obj: Any, model: ModelFacts, template: str) -> list[Check]:
    """Every layer and position setting of ``obj`` against the model (see LAYER_SETTINGS, POSITION_SETTINGS)."""
    checks = []
    for name, value in _settings(obj, LAYER_SETTINGS):
        detail = check_layer_setting(name, value, model.n_layers, model.name)
        checks.append(
            Check(name, "ok", detail)
            if detail
            else Check(
                name,
                NOT_CHECKED,
                f"{value!r}: the model's n_layers is not known offline ({model.source}); checked when it loads",
            )
        )
    positions = _settings(obj, POSITION_SETTINGS)
    if positions:
        n_post, source = _offline_n_post(model.name, template)
        for name, value in positions:
            detail = check_position_setting(name, value, n_post, template)
            checks.append(
                Check(name, "ok", f"{detail} (n_post={n_post} from {source})")
                if detail
                else Check(name, NOT_CHECKED, f"{value!r} are negative, but {source}; checked when the model loads")
            )
    return checks


#: the settings of the job being run (``run_job``): :func:`check_loaded_model` checks them against each model loaded
_JOB_SETTINGS: ContextVar[Optional[Any]] = ContextVar("saesteer_job_settings", default=None)


@contextmanager
def job_settings(obj: Any):
    """While a job runs, each model ``saesteer.models.load_model`` returns is checked against ``obj``'s settings."""
    token = _JOB_SETTINGS.set(obj)
    try:
        yield
    finally:
        _JOB_SETTINGS.reset(token)


def check_loaded_model(model: Any, template: Any, name: str = "the model") -> None:
    """The layer and position settings of the running job (:func:`job_settings`) against a loaded model, before it runs:
    what the preflight could not check offline (a real model's n_layers or tokenizer) fails here in one line."""
    obj = _JOB_SETTINGS.get()
    if obj is None:
        return
    from saesteer.chat import suffix_ids

    for setting, value in _settings(obj, LAYER_SETTINGS):
        check_layer_setting(setting, value, int(model.cfg.n_layers), name)
    positions = _settings(obj, POSITION_SETTINGS)
    if positions and getattr(model, "tokenizer", None) is not None:
        n_post = len(suffix_ids(model.tokenizer, template))
        for setting, value in positions:
            check_position_setting(setting, value, n_post, template.name)


def validate_experiment(cfg: Any, job: Optional[str] = None, *, here: bool = False) -> list[Check]:
    """Check a composed config (DictConfig or job dataclass) offline; a one-line ValueError on the first problem.

    Returns the checks that passed (``ok``), are worth knowing (``note``) or cannot be
    made offline (``not checked``).  Nothing is downloaded and no weights are read.  With
    ``here`` (a job about to run on this machine) a CUDA device must also be present.
    """
    from omegaconf import DictConfig

    from saesteer.chat import TemplateError, resolve_template, template_for_model
    from saesteer.config import to_object

    obj = to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    job = job or getattr(obj, "job", "job")
    checks: list[Check] = []
    mcfg = obj.model
    model = model_facts(mcfg)
    checks.append(
        Check(
            "model",
            "ok" if model.d_model and model.n_layers else NOT_CHECKED,
            f"{model.name}: d_model={model.d_model}, n_layers={model.n_layers}, n_ctx={model.n_ctx} ({model.source})",
        )
    )
    template = resolve_template(model.name, mcfg.template).name  # TemplateError for unknown names / models
    if mcfg.template and model.name != "organism":
        try:
            expected = template_for_model(model.name).name
        except TemplateError:
            expected = None
        if expected is not None and expected != template:
            raise ExperimentError(
                f"model.template={mcfg.template!r} but {model.name} uses the {expected!r} chat template; "
                f"set model.template={expected} or leave it null"
            )
    checks.append(Check("template", "ok", f"{template!r} for {model.name}"))
    import torch

    try:
        device = torch.device(mcfg.device)
    except (RuntimeError, TypeError):
        raise ExperimentError(
            f"model.device={mcfg.device!r} is not a torch device; expected e.g. 'cuda', 'cuda:0' or 'cpu'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        if here:
            raise ExperimentError(
                f"model.device={mcfg.device!r} but this machine has no CUDA device; expected a GPU, "
                "or set model.device=cpu (slow for real models)"
            )
        checks.append(Check("device", "note", f"{mcfg.device}, {mcfg.dtype} (no CUDA device on this machine)"))
    else:
        checks.append(Check("device", "ok", f"{mcfg.device}, {mcfg.dtype}"))
    sae = getattr(obj, "sae", None)
    if sae is not None:
        checks += _sae_checks(job, sae, model)
    checks += _direction_checks(obj, model)
    checks += _range_checks(obj, model, template)
    return checks


def preflight(obj: Any, job: Optional[str] = None) -> list[Check]:
    """:func:`validate_experiment` before a job runs (``run_job``); the checks are logged."""
    checks = validate_experiment(obj, job, here=True)
    for c in checks:
        (log.info if c.status == "ok" else log.warning)("preflight %s", c)  # a note or a check not made: worth seeing
    return checks


# ----------------------------------------------------------------------------- listing and the command line


def experiment_names() -> list[str]:
    """The experiments under ``conf/experiment/``."""
    import importlib.resources

    root = importlib.resources.files("saesteer.conf") / "experiment"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def compose_experiment(name: str, job: str = "pipeline", overrides: Sequence[str] = ()) -> Any:
    """``conf/<job>.yaml`` with ``experiment=<name>`` (and ``overrides``), composed, not run."""
    from saesteer.config import compose

    if job not in EXPERIMENT_JOBS:
        raise ValueError(f"job {job!r} takes no experiment; expected one of {EXPERIMENT_JOBS}")
    names = experiment_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown experiment {name!r}{hint} (experiments: {', '.join(names)})")
    extra = (
        ["prompts=harmful_test"] if job == "generate" and not any(o.startswith("prompts=") for o in overrides) else []
    )
    return compose(job, [f"experiment={name}", *extra, *overrides])


def check_experiments(
    names: Sequence[str] = (), overrides: Sequence[str] = (), job: str = "pipeline"
) -> tuple[int, list[str]]:
    """The offline checks of each experiment (all by default), composed for ``job`` with ``overrides``:
    (exit status, report lines).  Per experiment one line, ``ok`` (every check passed), ``not checked``
    (some could not be made offline: named) or ``error: ...``, then one line per check.  The status is
    1 if any experiment has an error, else 0.  ``python -m saesteer.experiments`` prints them."""
    status, lines = 0, []
    for name in names or experiment_names():
        label = " ".join([name, *overrides])
        try:
            checks = validate_experiment(compose_experiment(name, job, list(overrides)), job)
        except Exception as exc:  # noqa: BLE001 - report every experiment, one line each
            lines.append(f"{label}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            status = 1
            continue
        unchecked = [c.name for c in checks if c.status == NOT_CHECKED]
        lines.append(
            f"{label}: {NOT_CHECKED} ({', '.join(unchecked)}: not knowable offline)" if unchecked else f"{label}: ok"
        )
        lines += [f"  {c}" for c in checks]
    return status, lines


USAGE = (
    "usage: python -m saesteer.experiments [NAME ...] [key=value ...] [--job JOB]\n"
    "  offline checks of conf/experiment/NAME (all by default) composed for JOB (default pipeline) with the overrides;\n"
    "  prints each check (ok / note / not checked / error); exit status 1 on an error"
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m saesteer.experiments [NAME ...] [key=value ...] [--job JOB]``: print the checks, 1 on an error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(USAGE + "\n")
        return 0
    job = "pipeline"
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--job":
            job = next(it, "")
        elif a.startswith("--job="):
            job = a.split("=", 1)[1]
        elif a.startswith("-"):
            sys.stderr.write(f"saesteer.experiments: error: unknown option {a!r}\n{USAGE}\n")
            return 2
        else:
            rest.append(a)
    names = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    logging.basicConfig(level=logging.ERROR)  # the report is the output, not the library's log
    status, lines = check_experiments(names, overrides, job)
    sys.stdout.write("\n".join(lines) + "\n")  # the command's output, as saesteer.cli writes its own
    return status


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    sys.exit(main())
