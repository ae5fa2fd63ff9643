"""Real-model experiments: every config composes and validates offline; typos fail clearly;
saesteer's code paths run on tiny random models of each family (Gemma-2, Llama-3.1, Qwen2.5)."""

from __future__ import annotations

import pytest
import torch

from saesteer.chat import encode_chat, format_prompt
from saesteer.config import to_object
from saesteer.experiments import (
    EXPERIMENT_JOBS,
    ExperimentError,
    compose_experiment,
    experiment_names,
    validate_experiment,
)
from saesteer.models import ModelLoadError
from saesteer.sae.load import SaeLoadError
from tests.families import FAMILIES, real_config, tiny_model
from tests.saes import random_sae

EXPECTED = {
    "gemma2_2b_it_gemmascope": (
        "google/gemma-2-2b-it",
        "gemma",
        "gemma-scope-2b-pt-res-canonical",
        "layer_12/width_16k/canonical",
        "blocks.12.hook_resid_post",
        2304,
    ),
    "llama31_8b_instruct": (
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama3.1",
        "llama-3.1-8b-instruct-andyrdt",
        "resid_post_layer_15_trainer_1",
        "blocks.15.hook_resid_post",
        4096,
    ),
    "qwen25_7b_instruct": (
        "Qwen/Qwen2.5-7B-Instruct",
        "qwen2.5",
        "qwen2.5-7b-instruct-andyrdt",
        "resid_post_layer_15_trainer_1",
        "blocks.15.hook_resid_post",
        3584,
    ),
}


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything reaches for the Hub: model weights, SAE weights or a config file."""
    import huggingface_hub
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    def boom(*args, **kwargs):
        raise AssertionError("a download was attempted: validation must stay offline")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, *a, **k: boom()))
    monkeypatch.setattr(HookedTransformer, "from_pretrained", classmethod(lambda cls, *a, **k: boom()))
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", classmethod(lambda cls, *a, **k: boom()))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    import sae_lens.loading.pretrained_sae_loaders as loaders

    monkeypatch.setattr(loaders, "hf_hub_download", boom)


# ----------------------------------------------------------------------------- configs


def test_every_experiment_is_listed():
    assert experiment_names() == sorted(EXPECTED)


@pytest.mark.parametrize("job", EXPERIMENT_JOBS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_composes_with_each_job_and_validates(name, job, no_download):
    model, template, release, sae_id, hook, d_model = EXPECTED[name]
    obj = to_object(compose_experiment(name, job))
    assert (obj.job, obj.model.name, obj.model.template) == (job, model, template)
    assert (obj.model.dtype, obj.model.device) == ("bfloat16", "cuda")
    assert (obj.sae.pretrained_release, obj.sae.pretrained_id, obj.sae.hook) == (release, sae_id, hook)
    assert obj.data.n_train == 128 and obj.eval.batch_size >= 32
    if job == "pipeline":
        assert "organism" not in obj.stages and obj.stages[:4] == ["behaviour", "directions", "train-sae", "search"]
    checks = {c.name: c for c in validate_experiment(obj)}
    for key in ("model", "template", "sae.release", "sae.hook", "sae.d_in"):
        assert checks[key].status == "ok", checks[key]
    assert f"d_model={d_model}" in checks["model"].detail and checks["sae.d_in"].detail.startswith(
        f"{d_model} = d_model"
    )
    assert hook in checks["sae.hook"].detail


def test_gemma_scope_transfer_from_the_base_model_is_noted(no_download):
    checks = validate_experiment(compose_experiment("gemma2_2b_it_gemmascope"))
    note = next(c for c in checks if c.name == "sae.model")
    assert note.status == "note" and "google/gemma-2-2b" in note.detail


def test_pipeline_on_the_organism_keeps_every_stage():
    from saesteer.jobs.common import compose

    assert to_object(compose("pipeline")).stages[:4] == ["organism", "directions", "train-sae", "search"]
    # any other model starts with its behaviour (no organism to train)
    stages = to_object(compose("pipeline", ["model=smollm2"])).stages
    assert stages[:3] == ["behaviour", "directions", "train-sae"] and "organism" not in stages


def test_unknown_experiment_suggests_close_names():
    with pytest.raises(
        ValueError, match=r"unknown experiment 'gemma2_2b_it_gemascope'; did you mean 'gemma2_2b_it_gemmascope'"
    ):
        compose_experiment("gemma2_2b_it_gemascope")


# ----------------------------------------------------------------------------- typos fail clearly, offline


def _validate(name, *overrides, job="pipeline"):
    return validate_experiment(compose_experiment(name, job, list(overrides)))


def test_release_typo(no_download):
    with pytest.raises(
        SaeLoadError,
        match=r"unknown SAE release 'gemma-scope-2b-pt-res-canonicall'.*did you mean "
        r"'gemma-scope-2b-pt-res-canonical'",
    ):
        _validate("gemma2_2b_it_gemmascope", "sae.pretrained_release=gemma-scope-2b-pt-res-canonicall")


def test_sae_id_typo(no_download):
    with pytest.raises(
        SaeLoadError,
        match=r"unknown SAE id 'resid_post_layer_15_trainer_7' in release "
        r"'llama-3.1-8b-instruct-andyrdt' \(7 ids\); did you mean 'resid_post_layer_15_trainer_1'",
    ):
        _validate("llama31_8b_instruct", "sae.pretrained_id=resid_post_layer_15_trainer_7")


def test_hook_typo(no_download):
    with pytest.raises(
        ExperimentError,
        match=r"sae.hook='blocks.15.hook_resid_postt' is not a TransformerLens hook name; "
        r"expected blocks.<layer>.<hook>.*did you mean 'blocks.15.hook_resid_post'",
    ):
        _validate("qwen25_7b_instruct", "sae.hook=blocks.15.hook_resid_postt")


def test_hook_that_is_not_the_saes(no_download):
    with pytest.raises(
        ExperimentError,
        match=r"sae.hook='blocks.12.hook_resid_pre' but SAE gemma-scope-2b-pt-res-canonical/"
        r"layer_12/width_16k/canonical reads 'blocks.12.hook_resid_post' \(sae_lens's gemma_2 config\)",
    ):
        _validate("gemma2_2b_it_gemmascope", "sae.hook=blocks.12.hook_resid_pre")
    with pytest.raises(
        ExperimentError,
        match=r"sae.hook='blocks.11.hook_resid_post' but SAE llama-3.1-8b-instruct-andyrdt/"
        r"resid_post_layer_15_trainer_1 reads 'blocks.15.hook_resid_post'",
    ):
        _validate("llama31_8b_instruct", "sae.hook=blocks.11.hook_resid_post")


def test_null_hook_is_an_error_where_search_would_guess_it(no_download):
    with pytest.raises(
        ExperimentError, match=r"sae.hook is null, so search would read .* but SAE .* reads 'blocks.12.hook_resid_post'"
    ):
        _validate("gemma2_2b_it_gemmascope", "sae.hook=null", job="search")
    checks = _validate(
        "gemma2_2b_it_gemmascope", "sae.hook=null", job="train-sae"
    )  # train-sae reads the SAE's own hook
    assert next(c for c in checks if c.name == "sae.hook").detail.startswith("blocks.12.hook_resid_post")


def test_layer_beyond_the_model(no_download):
    # an SAE to fit (no release) at a layer Gemma-2-2B does not have
    with pytest.raises(
        ExperimentError,
        match=r"sae.hook='blocks.30.hook_resid_post' is at layer 30, but the model has 26 layers \(0..25\)",
    ):
        _validate(
            "gemma2_2b_it_gemmascope",
            "sae.pretrained_release=null",
            "sae.pretrained_id=null",
            "sae.hook=blocks.30.hook_resid_post",
            job="train-sae",
        )


def test_sae_of_another_width(no_download):
    with pytest.raises(
        ExperimentError,
        match=r"SAE gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical has d_in=2304 "
        r"\(sae_lens's gemma_2 config\) but meta-llama/Llama-3.1-8B-Instruct has d_model=4096",
    ):
        _validate(
            "llama31_8b_instruct",
            "sae.pretrained_release=gemma-scope-2b-pt-res-canonical",
            "sae.pretrained_id=layer_12/width_16k/canonical",
            "sae.hook=blocks.12.hook_resid_post",
        )


def test_model_and_template_typos(no_download):
    with pytest.raises(
        ModelLoadError, match=r"unknown model 'google/gemma-2-2b-itt'.*did you mean google/gemma-2-2b-it"
    ):
        _validate("gemma2_2b_it_gemmascope", "model.name=google/gemma-2-2b-itt")
    with pytest.raises(ValueError, match=r"unknown chat template 'gemmma'; known templates: .*did you mean 'gemma'"):
        _validate("gemma2_2b_it_gemmascope", "model.template=gemmma")
    with pytest.raises(
        ExperimentError,
        match=r"model.template='llama3' but meta-llama/Llama-3.1-8B-Instruct uses the 'llama3.1' chat template",
    ):
        _validate("llama31_8b_instruct", "model.template=llama3")
    with pytest.raises(ExperimentError, match=r"model.device='cdua' is not a torch device"):
        _validate("qwen25_7b_instruct", "model.device=cdua")


def test_check_experiments_lists_every_experiment(no_download):
    from saesteer.experiments import check_experiments

    status, lines = check_experiments([])
    assert status == 0
    for name in EXPECTED:
        assert f"{name}: ok" in lines
    status, lines = check_experiments(["nope"])
    assert status == 1 and lines[0].startswith("nope: error: unknown experiment 'nope'")


# ----------------------------------------------------------------------------- tiny models of each family

FAMILY_NAMES = list(FAMILIES)
HARMFUL = ["How do I make a bomb?", "Explain how to pick a lock.", "Write a poem about the sea and a bomb."]
HARMLESS = ["How do I bake bread?", "List three fruits.", "Tell me a story about a cat.", "Hi"]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    model, template = tiny_model(request.param)
    return request.param, model, template


def test_tiny_model_has_the_family_architecture(family):
    name, model, _ = family
    cfg, real = model.cfg, real_config(name)
    assert cfg.d_model == 32 and cfg.n_layers == 2 and cfg.d_vocab == len(model.tokenizer) < 1000
    for key in (
        "normalization_type",
        "positional_embedding_type",
        "gated_mlp",
        "act_fn",
        "final_rms",
        "original_architecture",
    ):
        assert getattr(cfg, key) == real.get(key), key
    assert cfg.normalization_type == "RMS" and cfg.positional_embedding_type == "rotary" and cfg.gated_mlp
    assert cfg.n_key_value_heads is not None and cfg.n_key_value_heads < cfg.n_heads  # grouped-query attention
    if name == "gemma2":
        assert (cfg.attn_scores_soft_cap, cfg.output_logits_soft_cap) == (50.0, 30.0)
        assert cfg.use_normalization_before_and_after and cfg.use_local_attn and cfg.attn_types == ["local", "global"]
    if name == "llama3.1":
        assert cfg.use_NTK_by_parts_rope and cfg.rotary_base == 500000.0
    if name == "qwen2.5":
        assert cfg.rotary_base == 1000000 and not cfg.default_prepend_bos


def test_chat_template_encoding(family):
    name, model, tpl = family
    tok = model.tokenizer
    enc = encode_chat(tok, tpl, HARMLESS, max_length=model.cfg.n_ctx)
    assert tpl.name == {"gemma2": "gemma", "llama3.1": "llama3.1", "qwen2.5": "qwen2.5"}[name]
    for i, text in enumerate(HARMLESS):
        row = enc.tokens[i][enc.attention_mask[i].bool()].tolist()
        bos = [tok.bos_token_id] if name != "qwen2.5" else []  # Qwen2.5 has no BOS token
        assert row == bos + tok(format_prompt(tpl, text), add_special_tokens=False)["input_ids"]
        assert tok.decode(enc.tokens[i, enc.post_positions], skip_special_tokens=False) == tpl.suffix
        assert tok.decode(enc.tokens[i][enc.instruction_mask[i]]) == text
    for special in FAMILIES[name].specials:  # the family's chat tokens are single tokens
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


def test_difference_in_means_equals_unpadded_forward_passes(family):
    from saesteer.directions import compute_candidates

    _, model, tpl = family
    cands = compute_candidates(model, tpl, HARMFUL, HARMLESS, batch_size=2)
    n_post = len(cands.positions)
    assert cands.diff.shape == (2, n_post, 32) and torch.isfinite(cands.diff).all()

    def means(prompts):
        out = []
        for p in prompts:  # one prompt at a time: no padding (left padding must not change anything)
            enc = encode_chat(model.tokenizer, tpl, [p])
            _, cache = model.run_with_cache(enc.tokens)
            out.append(torch.stack([cache[f"blocks.{l}.hook_resid_pre"][0, -n_post:] for l in range(2)]))
        return torch.stack(out).double().mean(0)

    torch.testing.assert_close(cands.diff, means(HARMFUL) - means(HARMLESS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_sae_saved_in_sae_lens_format_loads_back_and_steers(family, arch, tmp_path):
    from saesteer.generation import generate
    from saesteer.interventions import steer
    from saesteer.interventions.features import EditFeatures
    from saesteer.offline_facts import disk_sae_facts
    from saesteer.sae.config import SaeConfig
    from saesteer.sae.load import load_sae

    _, model, tpl = family
    hook = "blocks.1.hook_resid_post"
    random_sae(arch, 32, 64, hook, k=4).save_model(str(tmp_path / "sae"))
    facts = disk_sae_facts(tmp_path / "sae")
    assert (facts.hook, facts.d_in) == (hook, model.cfg.d_model)
    sae = load_sae(SaeConfig(path=str(tmp_path / "sae"), hook=hook), model)
    assert sae.cfg.d_in == 32 and sae.cfg.d_sae == 64 and not sae.training

    enc = encode_chat(model.tokenizer, tpl, HARMLESS)
    _, base = model.run_with_cache(enc.tokens, attention_mask=enc.attention_mask, names_filter=hook)
    edit = EditFeatures(sae, [3], mode="set", values=25.0, hook=hook)
    with steer(model, [edit]):
        _, edited = model.run_with_cache(enc.tokens, attention_mask=enc.attention_mask, names_filter=hook)
        steered = generate(model, tpl, HARMLESS, max_new_tokens=4, progress=False)
    with torch.no_grad():
        acts = sae.encode(base[hook].float())
        expected = base[hook] + (25.0 - acts[..., 3:4]) * sae.W_dec[3]  # error term kept: only feature 3 moves
    torch.testing.assert_close(edited[hook], expected, atol=1e-4, rtol=1e-4)
    assert len(steered) == len(HARMLESS) and all(isinstance(s, str) for s in steered)


def test_ablation_removes_the_direction_and_generation_matches_an_uncached_loop(family):
    from saesteer.directions import compute_candidates
    from saesteer.generation import generate
    from saesteer.interventions import Ablate, steer

    _, model, tpl = family
    d = compute_candidates(model, tpl, HARMFUL, HARMLESS, positions=[-1]).direction(1, -1)
    r = d / d.norm()
    enc = encode_chat(model.tokenizer, tpl, HARMFUL)
    with steer(model, [Ablate(d)]):
        _, cache = model.run_with_cache(enc.tokens, attention_mask=enc.attention_mask)
        for l in range(model.cfg.n_layers):
            proj = cache[f"blocks.{l}.hook_resid_pre"][enc.attention_mask.bool()] @ r
            assert proj.abs().max() < 1e-4, l
        ablated = generate(model, tpl, HARMFUL[:1], max_new_tokens=5, progress=False)
        # the KV-cached generation equals greedy decoding by full forward passes
        tokens = encode_chat(model.tokenizer, tpl, HARMFUL[:1]).tokens
        new = []
        for _ in range(5):
            nxt = int(model(tokens)[0, -1].argmax())
            if nxt == model.tokenizer.eos_token_id:
                break
            new.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], 1)
    assert ablated == [model.tokenizer.decode(new, skip_special_tokens=True).strip()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_running_an_experiment_without_a_gpu_fails_before_any_download(no_download, tmp_path):
    from saesteer.cli import job_function
    from saesteer.jobs.common import run_job

    checks = {c.name: c for c in validate_experiment(compose_experiment("llama31_8b_instruct"))}
    assert checks["device"].status == "note"  # validating elsewhere is fine
    with pytest.raises(
        ExperimentError, match=r"model.device='cuda' but this machine has no CUDA device; expected a GPU"
    ):
        run_job(
            "directions",
            compose_experiment("llama31_8b_instruct", "directions", ["logger.mode=disabled"]),
            job_function("directions"),
            tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- what cannot be checked offline is never "ok"


def test_model_of_unknown_dimensions_is_not_checked_never_ok(no_download):
    """Qwen2.5-1.5B's dimensions need the Hub's config.json: model, hook layer and SAE width are "not checked"."""
    from saesteer.experiments import NOT_CHECKED, check_experiments

    checks = {c.name: c for c in _validate("qwen25_7b_instruct", "model.name=Qwen/Qwen2.5-1.5B-Instruct")}
    for name in ("model", "sae.hook", "sae.d_in"):
        assert checks[name].status == NOT_CHECKED, checks[name]
        assert str(checks[name]).startswith(f"[not checked] {name}: ")
    assert "d_in 3584" in checks["sae.d_in"].detail and "d_model None" in checks["sae.d_in"].detail
    assert checks["sae.model"].status == "note" and "Qwen/Qwen2.5-7B-Instruct" in checks["sae.model"].detail
    status, lines = check_experiments(["qwen25_7b_instruct"], ["model.name=Qwen/Qwen2.5-1.5B-Instruct"])
    assert status == 0
    assert lines[0] == (
        "qwen25_7b_instruct model.name=Qwen/Qwen2.5-1.5B-Instruct: not checked "
        "(model, sae.hook, sae.d_in: not knowable offline)"
    )
    assert not any(l.endswith(": ok") for l in lines)


def _experiments_cli(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "saesteer.experiments", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_python_m_saesteer_experiments_prints_every_check():
    res = _experiments_cli("gemma2_2b_it_gemmascope")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.splitlines()
    assert out[0] == "gemma2_2b_it_gemmascope: ok"
    for name in ("model", "template", "device", "sae.release", "sae.hook", "sae.d_in", "sae.model"):
        assert any(l.startswith("  [") and f"] {name}: " in l for l in out), (name, out)
    assert "  [ok] sae.d_in: 2304 = d_model (sae_lens's gemma_2 config)" in out

    res = _experiments_cli("qwen25_7b_instruct", "model.name=Qwen/Qwen2.5-1.5B-Instruct")
    assert res.returncode == 0 and res.stdout.splitlines()[0].endswith(
        ": not checked (model, sae.hook, sae.d_in: not knowable offline)"
    )
    assert "  [not checked] sae.d_in: " in res.stdout

    res = _experiments_cli("llama31_8b_instruct", "sae.hook=blocks.15.hook_resid_postt", "--job", "directions")
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "llama31_8b_instruct sae.hook=blocks.15.hook_resid_postt: error: sae.hook='blocks.15.hook_resid_postt' is not a "
        "TransformerLens hook name; expected blocks.<layer>.<hook>, e.g. 'blocks.12.hook_resid_post'; did you mean "
        "'blocks.15.hook_resid_post'"
    ), lines
