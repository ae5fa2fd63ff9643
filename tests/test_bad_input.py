"""Wrong inputs fail with one clear line, before the heavy work, leaving nothing half-written.

Each test feeds one bad input through the job (``run_job``, as the CLI does) or the
library function that receives it, and checks three things: the error is one line
naming the bad value and what was expected; the model, generation or SAE metrics were
not reached (``heavy`` fails the test if they are); and the run directory and the
saesteer cache hold no new or partial artifact.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saesteer.chat import ChatEncodingError, TemplateError
from saesteer.cli import job_function
from saesteer.data import PromptError, load_prompts
from saesteer.experiments import ExperimentError
from saesteer.io import ArtifactError, save_tensors
from saesteer.jobs.common import compose, run_job
from saesteer.models import ModelLoadError
from saesteer.sae.load import SaeLoadError
from tests.conftest import _files, tiny_organism_overrides
from tests.saes import random_sae

D_MODEL = 48  # the tiny organism's
SMALL = [
    "logger.mode=disabled",
    "progress=false",
    "data.n_train=8",
    "data.n_val=4",
    "data.n_test=4",
    "data.n_test_harmless=4",
    "eval.max_new_tokens=4",
]


def _run(job: str, overrides: list[str], run_dir: Path):
    return run_job(job, compose(job, tiny_organism_overrides() + SMALL + overrides), job_function(job), run_dir)


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


def _direction_file(path: Path, d: torch.Tensor, **meta) -> Path:
    return save_tensors(
        path,
        {"direction": d, "affine_reference": torch.zeros(2)},
        {"kind": "refusal_direction", "layer": 1, "position": -1, "ablation": "plain", **meta},
    )


def _prompt_file(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# ----------------------------------------------------------------------------- models and templates


def test_unknown_model_name(tmp_path, heavy, clean):
    heavy.model_load().generation()
    with pytest.raises(
        ModelLoadError,
        match=r"unknown model 'google/gemma-2-2b-itt': not 'organism' and not a "
        r"TransformerLens pretrained model name; did you mean google/gemma-2-2b-it",
    ) as e:
        _run("generate", ["model.name=google/gemma-2-2b-itt", "prompts=harmful_val"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_unknown_chat_template(tmp_path, heavy, clean):
    heavy.model_load().generation()
    with pytest.raises(
        TemplateError, match=r"unknown chat template 'gemmma'; known templates: llama3, .*; did you mean 'gemma'"
    ) as e:
        _run("generate", ["model.template=gemmma", "prompts=harmful_val"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_wrong_hook_name(tmp_path, heavy, clean):
    heavy.model_load().sae_metrics()
    with pytest.raises(
        ExperimentError,
        match=r"sae.hook='blocks.1.hook_resid_postt' is not a TransformerLens hook name; "
        r"expected blocks.<layer>.<hook>.*did you mean 'blocks.1.hook_resid_post'",
    ) as e:
        _run("train-sae", ["sae.hook=blocks.1.hook_resid_postt"], tmp_path / "run")
    _one_line(e)
    with pytest.raises(
        ExperimentError, match=r"sae.hook='blocks.5.hook_resid_pre' is at layer 5, but the model has 2 layers \(0..1\)"
    ):
        _run("train-sae", ["sae.hook=blocks.5.hook_resid_pre"], tmp_path / "run")
    clean(tmp_path / "run")


# ----------------------------------------------------------------------------- SAEs


def test_sae_width_does_not_match_the_model(tmp_path, heavy, clean):
    heavy.model_load().sae_metrics()
    random_sae("topk", 64, 128, "blocks.1.hook_resid_pre").save_model(str(tmp_path / "wide"))
    with pytest.raises(
        ExperimentError,
        match=r"SAE .*wide has d_in=64 \(.*cfg.json\) but organism has d_model=48; "
        r"expected an SAE made for a model of width 48",
    ) as e:
        _run("train-sae", [f"sae.path={tmp_path / 'wide'}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_sae_with_nan_weights(tiny_organism, tmp_path, heavy, clean):
    from safetensors.torch import load_file, save_file

    heavy.sae_metrics()
    random_sae("jumprelu", D_MODEL, 96, "blocks.1.hook_resid_pre").save_model(str(tmp_path / "sae"))
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors["W_dec"][3, :2] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(
        SaeLoadError, match=r"SAE .*sae: parameter W_dec has 2 NaN/inf value\(s\); expected finite weights"
    ) as e:
        _run("train-sae", [f"sae.path={tmp_path / 'sae'}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_feature_indices_out_of_range(tiny_organism, heavy):
    from saesteer.interventions.features import EditFeatures

    heavy.generation()
    sae = random_sae("jumprelu", D_MODEL, 96, "blocks.1.hook_resid_pre")
    for features, bad in (([3, 96], r"\[96\]"), ([-1], r"\[-1\]"), ([1000, 7, 2000], r"\[1000, 2000\]")):
        with pytest.raises(ValueError, match=rf"feature indices {bad} out of range for an SAE with d_sae=96") as e:
            EditFeatures(sae, features, mode="set", values=0.0)
        _one_line(e)


# ----------------------------------------------------------------------------- prompt sets


def test_empty_prompt_set(tmp_path, heavy, clean):
    heavy.model_load().generation()
    for name, content in (("empty.json", []), ("empty.jsonl", "\n\n"), ("blank.json", ["  ", ""])):
        path = _prompt_file(tmp_path, name, content)
        with pytest.raises(
            PromptError, match=rf"prompt set '{Path(name).stem}' (is empty|has no non-empty instructions)"
        ) as e:
            _run("generate", [f"prompts={path}"], tmp_path / "run")
        _one_line(e)
    clean(tmp_path / "run")


def test_duplicate_prompts_are_dropped_with_a_warning(tmp_path, heavy, clean, caplog):
    """saesteer.data's rule: duplicates are dropped (first kept) with a warning; a set that is one prompt repeated is an error."""
    heavy.model_load().generation()
    path = _prompt_file(tmp_path, "dups.json", ["Hi there", "Name a fruit.", " Hi there ", "Name a fruit.", "Bye"])
    with caplog.at_level(logging.WARNING, logger="saesteer.data"):
        prompts = load_prompts(path)
    assert prompts.instructions == ("Hi there", "Name a fruit.", "Bye")
    assert "prompt set 'dups': dropped 2 duplicate instruction(s), kept first occurrences" in caplog.text
    same = _prompt_file(tmp_path, "same.json", ["How do I make a bomb?"] * 3)
    with pytest.raises(
        PromptError, match=r"prompt set 'same' is one prompt repeated 3 times: 'How do I make a bomb\?'"
    ) as e:
        _run("generate", [f"prompts={same}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


@pytest.mark.parametrize(
    "content, pattern",
    [
        ([1, 2], r"prompts: record 0 is int; expected an object with a 'instruction' field or a string"),
        (["Hi", None], r"prompts: instruction 1 is NoneType, expected str"),
        (["Hi", 3.5], r"prompts: instruction 1 is float, expected str"),
        (
            [{"instruction": "Hi"}, {"instruction": 7}],
            r"prompts: instruction 1 \(column 'instruction'\) is int, expected str",
        ),
        ([{"instruction": None}], r"prompts: instruction 0 \(column 'instruction'\) is NoneType, expected str"),
    ],
)
def test_non_text_prompts(content, pattern, tmp_path, heavy, clean):
    heavy.model_load().generation()
    path = _prompt_file(tmp_path, "prompts.json", content)
    with pytest.raises(PromptError, match=pattern) as e:
        _run("generate", [f"prompts={path}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


def test_overlong_prompt(tiny_organism, tmp_path, heavy, clean, monkeypatch):
    from transformer_lens import HookedTransformer

    from saesteer.activations import ActivationCache

    model, tpl, _ = tiny_organism
    long_prompt = " ".join(["please"] * 200)  # > n_ctx=128 tokens
    path = _prompt_file(tmp_path, "long.json", ["Hi", long_prompt])
    heavy._forbid(HookedTransformer, "forward", "a forward pass")  # the longest prompts come first: no batch runs
    with pytest.raises(
        ChatEncodingError,
        match=r"prompt \d is \d+ tokens long, more than max_length=124 \(the model's context "
        r"n_ctx=128 less max_new_tokens=4; instruction starts 'please please",
    ) as e:
        _run("generate", [f"prompts={path}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")
    # activations: refused before any forward pass, and nothing cached
    cache = ActivationCache(tmp_path / "acts")
    with pytest.raises(
        ChatEncodingError, match=r"more than max_length=128 \(the model's context, n_ctx; instruction starts 'please"
    ):
        cache.get_or_compute(model, tpl, ["Hi", long_prompt], ["blocks.1.hook_resid_pre"], [-1])
    assert _files(tmp_path / "acts") == set()


# ----------------------------------------------------------------------------- NaN


def test_nan_direction(tmp_path, heavy, clean):
    heavy.model_load().generation()
    d = torch.randn(D_MODEL)
    d[5] = float("nan")
    path = _direction_file(tmp_path / "nan.safetensors", d)
    with pytest.raises(
        ValueError, match=r"direction in .*nan.safetensors contains NaN/inf values; expected finite values"
    ) as e:
        _run("generate", ["prompts=harmful_val", "steer=ablate", f"steer.direction={path}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")
    from saesteer.interventions import Ablate, steer

    with pytest.raises(ValueError, match=r"direction contains NaN or inf values"):
        with steer(_TinyModel.get(), [Ablate(d)]):
            pass


def test_nan_activations(tiny_organism, tmp_path):
    from saesteer.activations import ActivationCache

    model, tpl, _ = tiny_organism
    cache = ActivationCache(tmp_path / "acts")
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * float("nan"))]):
        with pytest.raises(
            ValueError,
            match=r"non-finite \(NaN/inf\) activations at blocks.1.hook_resid_pre: check the model's "
            r"dtype and weights",
        ) as e:
            cache.get_or_compute(model, tpl, ["Hi", "Name a fruit."], ["blocks.1.hook_resid_pre"], [-1])
    _one_line(e)
    assert _files(tmp_path / "acts") == set()


class _TinyModel:
    """A 1-layer HookedTransformer of the organism's width, for spec validation (no tokenizer needed)."""

    _model = None

    @classmethod
    def get(cls):
        if cls._model is None:
            from transformer_lens import HookedTransformer, HookedTransformerConfig

            cls._model = HookedTransformer(
                HookedTransformerConfig(
                    n_layers=2,
                    d_model=D_MODEL,
                    n_heads=2,
                    d_head=24,
                    d_mlp=16,
                    d_vocab=16,
                    n_ctx=8,
                    act_fn="gelu",
                    device="cpu",
                )
            )
        return cls._model


# ----------------------------------------------------------------------------- configuration from the command line


def _cli(args, cache_root, cwd):
    env = {**os.environ, "SAESTEER_CACHE": str(cache_root), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "saesteer.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_unknown_config_key_on_the_command_line(tmp_path, cache_root, clean):
    res = _cli(["directions", "foo=1", f"hydra.run.dir={tmp_path / 'run'}"], cache_root, tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip() and "Warning" not in l and "warn(" not in l]
    assert lines == [
        "saesteer directions: error: unknown config key 'foo' (expected one of: job, seed, progress, model, data, "
        "eval, judge, logger, overwrite, directions, sae)"
    ], res.stderr
    assert not (tmp_path / "run").exists()
    clean(tmp_path / "run")


def test_unknown_nested_config_key_on_the_command_line(tmp_path, cache_root, clean):
    res = _cli(["directions", "eval.bogus=1", f"hydra.run.dir={tmp_path / 'run'}"], cache_root, tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "saesteer directions: error: unknown config key 'eval.bogus' "
        "(expected one of: max_new_tokens, batch_size, kl_batch_size)"
    )
    assert not (tmp_path / "run").exists()
    clean(tmp_path / "run")


@pytest.mark.parametrize(
    "override, pattern",
    [
        (
            "+foo=1",
            r"^unknown config key 'foo' \(expected one of: job, seed",
        ),  # '+' appends a key; the schema still rejects it
        (
            "eval.batch_sise=8",
            r"^unknown config key 'eval.batch_sise'; did you mean eval.batch_size\? \(expected one of",
        ),
        (
            "eval.batch_size=many",
            r"^bad value for eval.batch_size: Value 'many' of type 'str' could not be converted to Integer$",
        ),
        (
            "model=gemma",
            r"^unknown model option 'gemma' \(model=gemma\) \(available: organism, organism_scratch, smollm2, smollm2_safe\)$",
        ),
        (
            "experiment=llama31_8b",
            r"^unknown experiment option 'llama31_8b' .*did you mean experiment=llama31_8b_instruct\?",
        ),
    ],
)
def test_bad_overrides_are_one_line_config_errors(override, pattern):
    from saesteer.jobs.common import ConfigError, check_overrides

    with pytest.raises(ConfigError, match=pattern) as e:
        check_overrides("directions", [override, "hydra.run.dir=/nowhere"])
    _one_line(e)


# ----------------------------------------------------------------------------- artifacts on disk


def test_corrupted_safetensors(tmp_path, heavy, clean):
    heavy.model_load().generation()
    path = tmp_path / "direction.safetensors"
    # junk that is neither safetensors nor pickle (random bytes start with pickle's 0x80 one time in 256)
    junk = bytes(range(1, 128)) * 32
    path.write_bytes(junk)
    with pytest.raises(
        ArtifactError, match=r"direction.safetensors is not a readable safetensors file \(truncated or corrupted\?\)"
    ) as e:
        _run("generate", ["prompts=harmful_val", "steer=ablate", f"steer.direction={path}"], tmp_path / "run")
    _one_line(e)
    random_sae("topk", D_MODEL, 96, "blocks.1.hook_resid_pre").save_model(str(tmp_path / "sae"))
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(junk)
    heavy.sae_metrics()
    with pytest.raises(
        SaeLoadError,
        match=r"could not load the SAE in .*sae \(SafetensorError: .*\); expected a readable "
        r"sae_weights.safetensors \(truncated or corrupted\?\)",
    ) as e:
        from saesteer.sae.load import load_sae

        load_sae(tmp_path / "sae")
    _one_line(e)
    clean(tmp_path / "run")


def test_truncated_safetensors(tmp_path, heavy, clean):
    heavy.model_load().generation()
    path = _direction_file(tmp_path / "direction.safetensors", torch.randn(D_MODEL))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(
        ArtifactError, match=r"direction.safetensors is not a readable safetensors file \(truncated or corrupted\?\)"
    ) as e:
        _run("generate", ["prompts=harmful_val", "steer=ablate", f"steer.direction={path}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")


class _Trap:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_is_never_unpickled(tmp_path, heavy, clean, monkeypatch):
    heavy.model_load().generation()
    marker = tmp_path / "unpickled"
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.load called")))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle.load called")))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle.loads called")))
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps({"direction": _Trap(marker)}, protocol=4))
    zipped = tmp_path / "zipped.safetensors"
    with open(zipped, "wb") as fh:  # torch.save's zip format
        torch.serialization.save({"direction": torch.randn(D_MODEL)}, fh)
    for path in (plain, zipped):
        with pytest.raises(
            ArtifactError, match=rf"{path.name} looks like a pickle/torch.save file; saesteer only reads safetensors"
        ) as e:
            _run("generate", ["prompts=harmful_val", "steer=ablate", f"steer.direction={path}"], tmp_path / "run")
        _one_line(e)
    random_sae("topk", D_MODEL, 96, "blocks.1.hook_resid_pre").save_model(str(tmp_path / "sae"))
    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(pickle.dumps({"W_enc": _Trap(marker)}, protocol=4))
    heavy.sae_metrics()
    with pytest.raises(
        SaeLoadError,
        match=r"sae_weights.safetensors is a pickle/torch.save file, not safetensors; expected "
        r"sae_lens's sae_weights.safetensors \(saesteer never unpickles\)",
    ) as e:
        _run("train-sae", [f"sae.path={tmp_path / 'sae'}"], tmp_path / "run")
    _one_line(e)
    assert not marker.exists(), "a pickle was executed"
    clean(tmp_path / "run")


# ----------------------------------------------------------------------------- directions and caches of another model


def test_direction_of_the_wrong_size(tmp_path, heavy, clean):
    heavy.model_load().generation()
    path = _direction_file(tmp_path / "d32.safetensors", torch.randn(32))
    with pytest.raises(
        ValueError, match=r"direction in .*d32.safetensors has shape \(32,\), expected \(48,\) for this model"
    ) as e:
        _run("generate", ["prompts=harmful_val", "steer=add", f"steer.direction={path}"], tmp_path / "run")
    _one_line(e)
    with pytest.raises(ValueError, match=r"direction in .*d32.safetensors has shape \(32,\), expected \(48,\)"):
        _run("search", [f"search.direction={path}"], tmp_path / "run")
    clean(tmp_path / "run")


def test_direction_extracted_on_another_model(tiny_organism, tmp_path, heavy, clean):
    """Same width, other model: refused by name, or by the weights fingerprint for another model named alike."""
    from saesteer.activations import model_fingerprint

    heavy.generation()
    model, _, _ = tiny_organism
    d = torch.randn(D_MODEL)
    other = _direction_file(
        tmp_path / "gemma.safetensors", d, model="google/gemma-2-2b-it", model_fingerprint="0123abcd"
    )
    with pytest.raises(
        ValueError, match=r"direction in .*gemma.safetensors was made for model 'google/gemma-2-2b-it', not 'organism'"
    ) as e:
        _run("generate", ["prompts=harmful_val", "steer=ablate", f"steer.direction={other}"], tmp_path / "run")
    _one_line(e)
    retrained = _direction_file(tmp_path / "retrained.safetensors", d, model="organism", model_fingerprint="0123abcd")
    with pytest.raises(
        ValueError,
        match=rf"direction in .*retrained.safetensors was made for other weights of 'organism' "
        rf"\(fingerprint '0123abcd', this model's is '{model_fingerprint(model)}'\); re-extract it",
    ) as e:
        _run("generate", ["prompts=harmful_val", "steer=ablate", f"steer.direction={retrained}"], tmp_path / "run")
    _one_line(e)
    clean(tmp_path / "run")
    # the same model's own direction file is accepted
    mine = _direction_file(
        tmp_path / "mine.safetensors", d, model="organism", model_fingerprint=model_fingerprint(model)
    )
    from saesteer.directions import load_direction

    assert torch.equal(load_direction(mine, D_MODEL, "organism", model_fingerprint(model))[0], d)
