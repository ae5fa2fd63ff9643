"""Bad run directories, layer and position settings, broken SAE configs and over-long prompts fail in one line.

As in tests/test_bad_input.py: each bad input is fed through the job (``run_job``, as the CLI
does), the command line (``saesteer.cli.main``, in process or as a subprocess) or the library
function that receives it, and the test checks that the error is one line naming the value and
what was expected, that no heavy work started (``heavy``) and that nothing was left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saesteer.chat import ChatEncodingError
from saesteer.experiments import ExperimentError, validate_experiment
from saesteer.jobs.common import compose
from saesteer.jobs.rundir import RUN_MARKER, RunDirError, check_cli_output_dirs
from saesteer.sae.load import SaeLoadError
from tests.conftest import _files, tiny_organism_overrides
from tests.saes import random_sae
from tests.test_bad_input import _one_line, _prompt_file, _run

D_MODEL = 48


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in _files(root)}


def _earlier_run(run_dir: Path, job: str = "generate") -> dict[str, bytes]:
    """A run directory as an earlier ``saesteer generate`` left it (Hydra's record included)."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("job: generate\nearlier: true\n")
    (run_dir / f"{job}.log").write_text("[earlier run] a line of the earlier run's log\n")
    (run_dir / "metrics.json").write_text(json.dumps({"refusal_rate": 0.5}))
    (run_dir / "completions.jsonl").write_text(
        json.dumps({"prompt": "earlier", "response": "earlier", "refused": True}) + "\n"
    )
    (run_dir / "report.md").write_text("# an earlier report\n")
    return _snapshot(run_dir)


def _main(args: list[str], capsys) -> str:
    """``saesteer ARGS`` in process: the one line it writes to stderr before exiting with status 2."""
    from saesteer.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1, err
    return err[0]


def _cli(args, cache_root, cwd):
    env = {
        **os.environ,
        "SAESTEER_CACHE": str(cache_root),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "saesteer.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


# ----------------------------------------------------------------------------- 1. a run directory that holds another run


def test_second_run_into_the_same_directory_is_refused(tmp_path, heavy, clean):
    run_dir = tmp_path / "run"
    before = _earlier_run(run_dir)
    heavy.model_load().generation()
    with pytest.raises(
        RunDirError,
        match=rf"^run directory '{run_dir}' holds another run's results \(metrics.json, report.md\); "
        r"expected a new or empty directory: pass a new hydra.run.dir .*or overwrite=true",
    ) as e:
        _run("generate", ["prompts=harmful_val"], run_dir)
    _one_line(e)
    assert _snapshot(run_dir) == before  # the earlier run is untouched
    # a run that stopped half-way (only its marker and a partial output) is another run too
    half = tmp_path / "half"
    half.mkdir()
    (half / RUN_MARKER).write_text("{}")
    (half / "completions.jsonl").write_text("")
    with pytest.raises(RunDirError, match=rf"run directory '{half}' holds another run's results \({RUN_MARKER}\)"):
        _run("generate", ["prompts=harmful_val"], half)
    clean(tmp_path / "fresh")


def test_overwrite_removes_the_earlier_results_first(tiny_organism, tmp_path):
    run_dir = tmp_path / "run"
    _earlier_run(run_dir)
    (run_dir / "stale_plot.png").write_bytes(b"earlier")
    metrics = _run("generate", ["prompts=harmful_val", "limit=2", "eval.max_new_tokens=2", "overwrite=true"], run_dir)
    assert metrics["n_prompts"] == 2
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"metrics.json", "completions.jsonl", RUN_MARKER}, names  # no earlier file left: nothing mixes
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert "earlier" not in (run_dir / "completions.jsonl").read_text()
    assert json.loads((run_dir / RUN_MARKER).read_text())["job"] == "generate"


def test_an_empty_directory_and_one_a_failed_run_left_empty_are_used(tiny_organism, tmp_path):
    from saesteer.data import PromptError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # a run that fails inside the job before writing anything takes its marker with it: nothing is left
    with pytest.raises(PromptError, match=r"unknown prompt source 'no_such_set'"):
        _run("generate", ["prompts=no_such_set"], run_dir)
    assert _files(run_dir) == set()
    assert _run("generate", ["prompts=harmful_val", "limit=2", "eval.max_new_tokens=2"], run_dir)["n_prompts"] == 2


def test_cli_refuses_before_hydra_rewrites_the_earlier_record(tmp_path, capsys):
    run_dir = tmp_path / "run"
    before = _earlier_run(run_dir)
    line = _main(["generate", "prompts=harmful_val", f"hydra.run.dir={run_dir}", "logger.mode=disabled"], capsys)
    assert line == (
        f"saesteer generate: error: run directory '{run_dir}' holds another run's results (metrics.json, report.md); "
        "expected a new or empty directory: pass a new hydra.run.dir (the default is a fresh timestamped one), "
        "or overwrite=true to replace them"
    )
    assert _snapshot(run_dir) == before  # .hydra/config.yaml and the log are still the earlier run's


def test_cli_overwrite_replaces_results_hydra_record_and_log(tiny_organism, cache_root, tmp_path):
    run_dir = tmp_path / "run"
    _earlier_run(run_dir)
    res = _cli(
        [
            "generate",
            "prompts=harmful_val",
            "limit=2",
            "eval.max_new_tokens=2",
            "progress=false",
            "logger.mode=disabled",
            f"hydra.run.dir={run_dir}",
            "overwrite=true",
            *tiny_organism_overrides(),
        ],
        cache_root,
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p.name for p in run_dir.iterdir()} == {
        ".hydra",
        "generate.log",
        "metrics.json",
        "completions.jsonl",
        RUN_MARKER,
    }
    assert "earlier" not in (run_dir / ".hydra" / "config.yaml").read_text()
    log = (run_dir / "generate.log").read_text()
    assert "[earlier run]" not in log and "removing the earlier run's results" in log and "metrics in" in log
    assert json.loads((run_dir / "metrics.json").read_text())["n_prompts"] == 2


def test_sweep_directory_of_an_earlier_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{}")
    (sweep / "sweep_summary.csv").write_text("run\n0\n")
    line = _main(
        ["generate", "--multirun", "prompts=harmful_val", "eval.max_new_tokens=3,5", f"hydra.sweep.dir={sweep}"], capsys
    )
    assert line.startswith(
        f"saesteer generate: error: sweep directory '{sweep}' holds an earlier sweep's results "
        "(sweep_summary.csv, 0/metrics.json); expected a new or empty directory: pass a new hydra.sweep.dir"
    )
    assert (sweep / "0" / "metrics.json").is_file()
    # overwrite=true empties it before Hydra starts, so no earlier run mixes into the new summary
    check_cli_output_dirs(
        "generate", ["--multirun", "eval.max_new_tokens=3,5", f"hydra.sweep.dir={sweep}", "overwrite=true"]
    )
    assert list(sweep.iterdir()) == []
    # a fresh sweep directory, or none named (a timestamped one), passes
    check_cli_output_dirs("generate", ["-m", "eval.max_new_tokens=3,5", f"hydra.sweep.dir={tmp_path / 'new'}"])
    check_cli_output_dirs("generate", ["-m", "eval.max_new_tokens=3,5"])
    assert not (tmp_path / "new").exists()


def test_overwrite_never_empties_the_current_directory(tmp_path, monkeypatch, heavy):
    heavy.model_load().generation()
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        RunDirError,
        match=r"^overwrite=true would empty '.', the current directory; expected a run directory of its own$",
    ):
        _run("generate", ["prompts=harmful_val", "overwrite=true"], Path("."))
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- 2. a run directory that is a file or unwritable


def test_run_directory_that_is_a_file(tmp_path, heavy, capsys):
    heavy.model_load().generation()
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert _main(["generate", "prompts=harmful_val", f"hydra.run.dir={afile}"], capsys) == (
        f"saesteer generate: error: run directory '{afile}' is a file; expected a directory for the run's outputs (a new path)"
    )
    assert _main(["generate", "prompts=harmful_val", f"hydra.run.dir={afile / 'run'}"], capsys) == (
        f"saesteer generate: error: run directory '{afile / 'run'}' cannot be made: '{afile}' is a file; "
        "expected a path under a directory"
    )
    with pytest.raises(RunDirError, match=rf"^run directory '{afile}' is a file; expected a directory") as e:
        _run("generate", ["prompts=harmful_val"], afile)
    _one_line(e)
    assert afile.read_text() == "not a directory"
    assert {p.name for p in tmp_path.iterdir()} == {"afile"}


def test_unwritable_run_directory(tmp_path, heavy, capsys, monkeypatch):
    """Permission bits do not bind root, so the write itself is made to fail (as on a read-only file system)."""
    import tempfile

    heavy.model_load().generation()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    run_dir = tmp_path / "ro" / "run"
    assert _main(["generate", "prompts=harmful_val", f"hydra.run.dir={run_dir}"], capsys) == (
        f"saesteer generate: error: run directory '{run_dir}' is not writable (Permission denied); "
        "expected a directory this user can write to"
    )
    with pytest.raises(RunDirError, match=r"is not writable \(Permission denied\)") as e:
        _run("generate", ["prompts=harmful_val"], run_dir)
    _one_line(e)
    assert list(tmp_path.iterdir()) == []  # the directories made to test it are gone again


def test_unwritable_run_directory_from_a_subprocess(tmp_path, cache_root):
    res = _cli(["generate", "prompts=harmful_val", "hydra.run.dir=/proc/saesteer-test/run"], cache_root, tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("saesteer generate: error: run directory '/proc/saesteer-test/run' is not writable (")
    )


# ----------------------------------------------------------------------------- 3. layer and position settings


@pytest.mark.parametrize(
    "job, override, pattern",
    [
        (
            "anchor",
            "anchor.layers=[99]",
            r"anchor.layers=\[99\]: layer 99 out of range; expected layers 0..1 \(organism has 2 layers\)",
        ),
        (
            "anchor",
            "anchor.gate_layers=[0,5]",
            r"anchor.gate_layers=\[0, 5\]: layer 5 out of range; expected layers 0..1",
        ),
        ("anchor", "anchor.layers=[-1]", r"anchor.layers=\[-1\]: layer -1 out of range; expected layers 0..1"),
        (
            "anchor",
            "anchor.gate_positions=[-5]",
            r"anchor.gate_positions=\[-5\]: position -5 out of range; expected negative offsets "
            r"from the end of the prompt, -4..-1 \(-3..-1: the 3 post-instruction tokens of the "
            r"'organism' template; -4: the last instruction token, t_inst\)",
        ),
        (
            "directions",
            "directions.positions=[100]",
            r"directions.positions=\[100\]: position 100 out of range; expected negative "
            r"offsets from the end of the prompt, -4..-1",
        ),
        ("directions", "directions.positions=[0]", r"directions.positions=\[0\]: position 0 out of range"),
        (
            "directions",
            "directions.positions=[]",
            r"directions.positions=\[\] is empty; expected a non-empty list of negative positions",
        ),
        (
            "search",
            "search.positions=[-1,3,-9]",
            r"search.positions=\[-1, 3, -9\]: positions 3, -9 out of range; expected negative",
        ),
        (
            "backups",
            "backups.cut_layer=2",
            r"backups.cut_layer=2: layer 2 out of range; expected layers 0..1 \(organism has 2 layers\)",
        ),
        ("backups", "backups.upstream_layer=7", r"backups.upstream_layer=7: layer 7 out of range"),
        ("backups", "backups.monitor_layers=[0,7]", r"backups.monitor_layers=\[0, 7\]: layer 7 out of range"),
        ("emergent", "emergent.layers=[3]", r"emergent.layers=\[3\]: layer 3 out of range; expected layers 0..1"),
        ("emergent", "emergent.ablate_layer=9", r"emergent.ablate_layer=9: layer 9 out of range"),
        ("generate", "steer.layer=5", r"steer.layer=5: layer 5 out of range; expected layers 0..1"),
        ("pipeline", "anchor.layers=[2]", r"anchor.layers=\[2\]: layer 2 out of range"),
    ],
)
def test_layer_and_position_settings_out_of_range(job, override, pattern, tmp_path, heavy, clean):
    heavy.model_load().generation().sae_metrics()
    extra = ["prompts=harmful_val", "steer=add"] if job == "generate" else []
    with pytest.raises(ExperimentError, match=f"^{pattern}") as e:
        _run(job, [*extra, override], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_valid_layer_and_position_settings_pass_the_preflight():
    cfg = compose(
        "anchor",
        tiny_organism_overrides()
        + [
            "anchor.layers=[0,1]",
            "anchor.gate_layers=[1]",
            "anchor.gate_positions=[-4,-1]",
            "directions.positions=[-3,-2,-1]",
            "search.positions=[-4]",
        ],
    )
    checks = {c.name: c for c in validate_experiment(cfg)}
    for name in (
        "anchor.layers",
        "anchor.gate_layers",
        "anchor.gate_positions",
        "directions.positions",
        "search.positions",
    ):
        assert checks[name].status == "ok", checks[name]
    assert checks["anchor.gate_positions"].detail == "[-4, -1] within -4..-1 (n_post=3 from the organism's tokenizer)"
    assert "anchor.layers" not in {
        c.name for c in validate_experiment(compose("anchor", tiny_organism_overrides()))
    }  # null: not checked


def test_real_model_positions_are_checked_offline_by_sign_and_when_the_model_loads():
    from saesteer.experiments import compose_experiment

    with pytest.raises(
        ExperimentError,
        match=r"^directions.positions=\[5\]: position 5 out of range; expected negative offsets "
        r"from the end of the prompt \(-1 the last post-instruction token",
    ):
        validate_experiment(compose_experiment("gemma2_2b_it_gemmascope", "directions", ["directions.positions=[5]"]))
    with pytest.raises(ExperimentError, match=r"^search.positions=\[30\]"):
        validate_experiment(compose_experiment("llama31_8b_instruct", "search", ["search.positions=[30]"]))
    with pytest.raises(
        ExperimentError,
        match=r"^anchor.layers=\[26\]: layer 26 out of range; expected layers 0..25 "
        r"\(google/gemma-2-2b-it has 26 layers\)",
    ):
        validate_experiment(compose_experiment("gemma2_2b_it_gemmascope", "pipeline", ["anchor.layers=[26]"]))
    # the suffix's length needs the tokenizer (not cached here): negative positions are "not checked", never "ok"
    checks = {
        c.name: c
        for c in validate_experiment(
            compose_experiment("gemma2_2b_it_gemmascope", "directions", ["directions.positions=[-2]"])
        )
    }
    if checks["directions.positions"].status != "ok":  # a machine with Gemma's tokenizer cached checks it fully
        assert checks["directions.positions"].status == "not checked"
        assert "checked when the model loads" in checks["directions.positions"].detail


def test_positions_are_checked_against_a_loaded_model():
    """What the preflight could not check offline fails when the model loads, before it runs (tiny Gemma-2)."""
    from saesteer.config import to_object
    from saesteer.experiments import check_loaded_model, compose_experiment, job_settings
    from tests.families import tiny_model

    model, tpl = tiny_model("gemma2")
    n_post = len(model.tokenizer(tpl.suffix, add_special_tokens=False)["input_ids"])
    obj = to_object(
        compose_experiment("gemma2_2b_it_gemmascope", "pipeline", [f"directions.positions=[{-n_post - 2}]"])
    )
    check_loaded_model(model, tpl)  # no job running: nothing to check
    with job_settings(obj):
        with pytest.raises(
            ExperimentError,
            match=rf"^directions.positions=\[{-n_post - 2}\]: position {-n_post - 2} out of range; "
            rf"expected negative offsets from the end of the prompt, {-n_post - 1}..-1 "
            rf"\(-{n_post}..-1: the {n_post} post-instruction tokens of the 'gemma' template",
        ):
            check_loaded_model(model, tpl, "google/gemma-2-2b-it")
    obj = to_object(
        compose_experiment("gemma2_2b_it_gemmascope", "pipeline", ["anchor.gate_layers=[5]"])
    )  # 26 layers; tiny: 2
    with job_settings(obj):
        with pytest.raises(
            ExperimentError, match=r"^anchor.gate_layers=\[5\]: layer 5 out of range; expected layers 0..1 \(tiny has 2"
        ):
            check_loaded_model(model, tpl, "tiny")


def test_load_model_checks_the_running_jobs_settings(tiny_organism):
    from saesteer.config import ModelConfig, to_object
    from saesteer.experiments import job_settings
    from saesteer.models import load_model
    from saesteer.organism.config import OrganismConfig
    from tests.conftest import TINY_ORGANISM

    obj = to_object(compose("anchor", tiny_organism_overrides() + ["anchor.gate_positions=[-7]"]))
    with job_settings(obj):
        with pytest.raises(ExperimentError, match=r"^anchor.gate_positions=\[-7\]: position -7 out of range"):
            load_model(ModelConfig(organism=OrganismConfig(**TINY_ORGANISM)), progress=False)
    assert (
        load_model(ModelConfig(organism=OrganismConfig(**TINY_ORGANISM)), progress=False).n_layers == 2
    )  # no job: no check


# ----------------------------------------------------------------------------- 5. the file that is broken, the prompt that is too long


def _sae_dir(tmp_path: Path, name: str = "sae") -> Path:
    random_sae("topk", D_MODEL, 96, "blocks.1.hook_resid_pre").save_model(str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize(
    "content, pattern",
    [
        (
            "{not json",
            r"cfg.json is not valid JSON \(JSONDecodeError: Expecting property name .*line 1 column 2.*\); expected sae_lens's "
            r"SAE config, a JSON object",
        ),
        ("", r"cfg.json is not valid JSON \(JSONDecodeError: Expecting value: line 1 column 1"),
        ("[1, 2]", r"cfg.json holds a JSON list; expected sae_lens's SAE config, a JSON object"),
        ('{"d_sae": 96, "architecture": "topk", "k": 8}', r"cfg.json has no d_in; expected a positive integer"),
        (
            '{"d_in": "48", "d_sae": 96, "architecture": "topk", "k": 8}',
            r"cfg.json has d_in='48'; expected a positive integer",
        ),
    ],
)
def test_broken_sae_config_is_named_not_the_weights(content, pattern, tmp_path, heavy, clean):
    from saesteer.sae.load import load_sae

    heavy.model_load().sae_metrics()
    sae = _sae_dir(tmp_path)
    (sae / "cfg.json").write_text(content)
    for load in (lambda: load_sae(sae), lambda: _run("train-sae", [f"sae.path={sae}"], tmp_path / "run")):
        with pytest.raises(SaeLoadError, match=pattern) as e:
            load()
        msg = _one_line(e)
        assert "sae_weights.safetensors" not in msg, msg
    clean(tmp_path / "run")


def test_sae_config_that_does_not_build_or_fit_the_weights(tmp_path):
    from saesteer.sae.load import load_sae

    sae = _sae_dir(tmp_path)
    cfg = json.loads((sae / "cfg.json").read_text())
    for field, value, error in (
        ("architecture", "nonsense", "KeyError: 'nonsense'"),
        ("dtype", "float99", "ValueError: Invalid dtype"),
    ):
        (sae / "cfg.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(
            SaeLoadError,
            match=rf"^{sae}/cfg.json is not a valid sae_lens SAE config \({error}.*\); expected "
            r"sae_lens's fields \(d_in, d_sae, architecture, ...\) with their types",
        ) as e:
            load_sae(sae)
        assert "sae_weights" not in _one_line(e)
    wide = _sae_dir(tmp_path, "wide")
    (wide / "cfg.json").write_text(json.dumps({**cfg, "d_in": 64}))
    with pytest.raises(
        SaeLoadError,
        match=r"the tensors in .*wide/sae_weights.safetensors do not fit .*wide/cfg.json "
        r"\(size mismatch for .*\); expected the weights of the SAE its cfg.json describes",
    ) as e:
        load_sae(wide)
    _one_line(e)
    # the weights broken, the config fine: the weights are named (as before)
    broken = _sae_dir(tmp_path, "broken")
    data = (broken / "sae_weights.safetensors").read_bytes()
    (broken / "sae_weights.safetensors").write_bytes(data[:-40])
    with pytest.raises(
        SaeLoadError,
        match=r"could not load the SAE in .*broken \(SafetensorError: .*\); expected a readable "
        r"sae_weights.safetensors \(truncated or corrupted\?\)",
    ):
        load_sae(broken)


def test_overlong_prompt_is_named_by_its_index_in_the_users_file(tiny_organism, tmp_path, heavy, clean):
    from transformer_lens import HookedTransformer

    from saesteer.activations import ActivationCache
    from saesteer.evaluate import last_position_logprobs

    model, tpl, _ = tiny_organism
    long_prompt = " ".join(["please"] * 200)  # > n_ctx=128 tokens; sorted first, so batch index 0
    prompts = ["Hi", "Name a fruit.", "Tell me a story about a cat.", long_prompt, "Bye"]
    path = _prompt_file(tmp_path, "long.json", prompts)
    heavy._forbid(HookedTransformer, "forward", "a forward pass")
    with pytest.raises(
        ChatEncodingError,
        match=r"^prompt 3 is \d+ tokens long, more than max_length=124 \(the model's context "
        r"n_ctx=128 less max_new_tokens=4; instruction starts 'please please",
    ) as e:
        _run("generate", [f"prompts={path}", "eval.batch_size=2"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")
    with pytest.raises(
        ChatEncodingError, match=r"^prompt 3 is \d+ tokens long, more than max_length=128 \(the model's context, n_ctx"
    ):
        ActivationCache(tmp_path / "acts").get_or_compute(
            model, tpl, prompts, ["blocks.1.hook_resid_pre"], [-1], batch_size=2
        )
    with pytest.raises(ChatEncodingError, match=r"^prompt 3 is "):
        last_position_logprobs(model, tpl, prompts, batch_size=2)
    assert _files(tmp_path / "acts") == set()


def test_encode_chat_names_the_callers_index(tiny_organism):
    from saesteer.chat import encode_chat

    model, tpl, _ = tiny_organism
    with pytest.raises(ChatEncodingError, match=r"^prompt 7 is \d+ tokens long, more than max_length=8"):
        encode_chat(model.tokenizer, tpl, ["Hi", "please " * 20], max_length=8, indices=[4, 7])
    with pytest.raises(ChatEncodingError, match=r"^prompt 1 is \d+ tokens long"):  # without indices: the batch's own
        encode_chat(model.tokenizer, tpl, ["Hi", "please " * 20], max_length=8)
    assert torch.equal(
        encode_chat(model.tokenizer, tpl, ["Hi"], indices=[9]).tokens, encode_chat(model.tokenizer, tpl, ["Hi"]).tokens
    )
