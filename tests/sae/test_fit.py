"""Fitting SAEs through sae_lens: configs, chat token data, every architecture, resume, reuse, the job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saesteer.chat import encode_chat
from saesteer.config import to_object
from saesteer.jobs.common import compose
from saesteer.sae.config import SaeConfig
from tests.conftest import SMALL_SAE, tiny_organism_overrides
from tests.sae import CONTEXT, HOOK, fitted, one_thread, tiny_sae_config, train_dataset  # noqa: F401

ARCHS = ["standard", "topk", "batchtopk", "jumprelu"]


# ---------------------------------------------------------------- config


def test_buffer_trap_is_caught_before_sae_lens_hits_it():
    from sae_lens.training.mixing_buffer import mixing_buffer

    # the trap is real: sae_lens fails only once training has started
    with pytest.raises(ValueError, match="Buffer size must be greater than or equal to batch size"):
        next(mixing_buffer(buffer_size=2 * 48, batch_size=256, activations_loader=iter([torch.zeros(96, 4)])))
    with pytest.raises(
        ValueError,
        match=r"sae.n_batches_in_buffer \* sae.context_size = 2 \* 48 = 96 is smaller than "
        r"sae.train_batch_size_tokens=256.*sae.n_batches_in_buffer=6",
    ):
        SaeConfig(n_batches_in_buffer=2, context_size=48, train_batch_size_tokens=256)
    SaeConfig(n_batches_in_buffer=6, context_size=48, train_batch_size_tokens=256)  # 288 >= 256 is fine


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(architecture="gated"),
            r"sae.architecture must be one of \('standard', 'topk', 'batchtopk', 'jumprelu'\), got 'gated'",
        ),
        (dict(hook="resid_pre"), r"sae.hook must be a TransformerLens hook .* got 'resid_pre'"),
        (dict(d_sae=0), r"sae.d_sae must be a positive integer or null, got 0"),
        (dict(d_sae=None, expansion_factor=None), r"sae.d_sae and sae.expansion_factor are both null"),
        (dict(d_sae=8, k=16), r"sae.k=16 is larger than sae.d_sae=8"),
        (dict(lr=0.0), r"sae.lr must be a positive number, got 0.0"),
        (dict(l1_coefficient=-1.0), r"sae.l1_coefficient must be a non-negative number, got -1.0"),
        (dict(training_tokens=100), r"sae.training_tokens=100 is less than one batch"),
        (dict(responses="sampled"), r"sae.responses must be one of \('greedy', 'organism', 'none'\), got 'sampled'"),
        (dict(pretrained_release="gpt2-small-res-jb"), r"sae.pretrained_release and sae.pretrained_id go together"),
        (
            dict(path="/x", pretrained_release="r", pretrained_id="i"),
            r"set either sae.path \('/x'\) or sae.pretrained_release",
        ),
    ],
)
def test_bad_config_values_name_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaeConfig(**kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_job_config_composes_for_every_architecture(arch):
    obj = to_object(compose("train-sae", [f"sae={arch}"]))
    assert obj.job == "train-sae" and obj.sae.architecture == arch
    assert obj.sae.n_batches_in_buffer * obj.sae.context_size >= obj.sae.train_batch_size_tokens
    with pytest.raises(ValueError, match=r"sae.n_batches_in_buffer \* sae.context_size = 4 \* 64 = 256"):
        to_object(compose("train-sae", [f"sae={arch}", "sae.n_batches_in_buffer=4"]))


def test_width_follows_expansion_factor_unless_d_sae_is_set():
    assert SaeConfig(expansion_factor=8, d_sae=None).width(128) == 1024
    assert SaeConfig(expansion_factor=8, d_sae=96).width(128) == 96
    with pytest.raises(ValueError, match=r"sae.k=64 is larger than d_sae=48"):
        SaeConfig(expansion_factor=1, k=64).width(48)


@pytest.mark.parametrize(
    "arch, cls, fields",
    [
        ("standard", "StandardTrainingSAEConfig", dict(l1_coefficient=2.5, l1_warm_up_steps=7)),
        ("topk", "TopKTrainingSAEConfig", dict(k=12, aux_loss_coefficient=0.5)),
        ("batchtopk", "BatchTopKTrainingSAEConfig", dict(k=12, aux_loss_coefficient=0.5)),
        (
            "jumprelu",
            "JumpReLUTrainingSAEConfig",
            dict(
                l0_coefficient=0.3,
                l0_warm_up_steps=5,
                jumprelu_init_threshold=0.4,
                jumprelu_bandwidth=0.7,
                jumprelu_ste_to_input=True,
            ),
        ),
    ],
)
def test_sae_lens_gets_the_architecture_config_and_its_fields(arch, cls, fields):
    import sae_lens

    from saesteer.sae.fit import training_sae_config

    made = training_sae_config(SaeConfig(architecture=arch, expansion_factor=4, **fields), d_in=32)
    assert type(made) is getattr(sae_lens, cls)
    assert made.d_in == 32 and made.d_sae == 128 and made.architecture() == arch
    for name, value in fields.items():
        assert getattr(made, name) == value, name


# ---------------------------------------------------------------- data


def test_token_dataset_rows_are_the_chat_format_left_padded(tiny_organism):
    from saesteer.sae.fit import build_token_dataset

    model, template, _ = tiny_organism
    tok = model.tokenizer
    instructions = ["How do I bake bread?", "Write a poem about the sea."]
    responses = ["sure, here is how to bake bread.", "i'm sorry, i can't help with that."]
    ds = build_token_dataset(model, template, instructions, CONTEXT, responses, seed=None)
    enc = encode_chat(tok, template, instructions, pad_token_id=tok.pad_token_id)
    for i in range(2):
        ids, attn, loss = ds[i]["input_ids"], ds[i]["attention_mask"], ds[i]["loss_mask"]
        assert len(ids) == len(attn) == len(loss) == CONTEXT
        prompt = enc.tokens[i][enc.attention_mask[i].bool()].tolist()
        resp = tok(responses[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n_pad = CONTEXT - len(prompt) - len(resp)
        assert ids == [tok.pad_token_id] * n_pad + prompt + resp  # same ids as encode_chat, left-padded
        assert attn == [0] * n_pad + [1] * (len(prompt) + len(resp))
        assert loss == [0] * (CONTEXT - len(resp)) + [1] * len(resp)  # the loss is on the answer and its eos
    no_resp = build_token_dataset(model, template, instructions, CONTEXT, None, seed=None)
    assert sum(no_resp[0]["loss_mask"]) == sum(no_resp[0]["attention_mask"]) - 1


def test_token_dataset_cuts_the_instruction_first_and_checks_inputs(tiny_organism):
    from saesteer.sae.fit import build_token_dataset

    model, template, _ = tiny_organism
    tok = model.tokenizer
    long = " ".join(["word"] * 100)
    ds = build_token_dataset(model, template, [long], 24, ["sure, here is how."], seed=None)
    ids = ds[0]["input_ids"]
    post = tok(template.suffix, add_special_tokens=False)["input_ids"]
    resp = tok("sure, here is how.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) == 24 and sum(ds[0]["attention_mask"]) == 24
    assert ids[-len(resp) :] == resp and ids[-len(resp) - len(post) : -len(resp)] == post  # structure kept
    with pytest.raises(ValueError, match="got 1 responses for 2 instructions"):
        build_token_dataset(model, template, ["a", "b"], 24, ["x"])
    with pytest.raises(ValueError, match=r"context_size=4096 is longer than the model's context \(n_ctx=128\)"):
        build_token_dataset(model, template, ["a"], 4096)
    with pytest.raises(ValueError, match="context_size=3 cannot hold the chat template"):
        build_token_dataset(model, template, ["a"], 3)


# ---------------------------------------------------------------- fitting


@pytest.mark.parametrize("arch", ARCHS)
def test_fit_each_architecture(arch, tiny_organism, cache_root):
    from sae_lens import SAE

    from saesteer.activations import model_fingerprint
    from saesteer.sae.fit import dataset_hash

    model, template, _ = tiny_organism
    result = fitted(model, template, cache_root, arch)
    sae = result.sae
    path = Path(result.path)
    assert (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()
    assert not (path.parent / "checkpoints").exists()  # removed once the fit is done
    meta = json.loads((path / "saesteer.json").read_text())
    with torch.no_grad():
        assert meta["model_fingerprint"] == model_fingerprint(model)
    assert meta["hook"] == HOOK and meta["architecture"] == arch and meta["d_sae"] == 96 and meta["d_in"] == 48
    assert meta["data_hash"] == dataset_hash(train_dataset(model, template))
    assert meta["n_training_steps"] == 47 and meta["n_training_tokens"] == 47 * 256  # ceil(12000 / 256) steps
    assert isinstance(sae, SAE) and not sae.training
    assert sae.cfg.architecture() == {"batchtopk": "jumprelu"}.get(arch, arch)  # batchtopk infers as jumprelu
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.d_in == 48 and sae.cfg.d_sae == 96

    # the SAE learned something: it reconstructs the training activations far better than their mean
    rows = train_dataset(model, template)[:16]
    attn = torch.tensor(rows["attention_mask"])
    _, cache = model.run_with_cache(torch.tensor(rows["input_ids"]), attention_mask=attn, names_filter=[HOOK])
    x = cache[HOOK][attn.bool()]  # real tokens only, as in training
    with torch.no_grad():
        acts = sae.encode(x)
        ev = 1 - (sae.decode(acts) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.2, f"{arch}: explained variance {float(ev):.3f} after 47 steps"
    l0 = float((acts != 0).float().sum(-1).mean())
    if arch == "topk":
        assert l0 <= 8.0 + 1e-6 and l0 > 7.0  # k latents per token (ReLU may zero a few)
    assert 0 < l0 < 96


def test_interrupted_fit_resumes_where_an_uninterrupted_one_ends(tiny_organism, cache_root, tmp_path):
    from saesteer.sae.fit import FitInterrupted, fit_sae, latest_checkpoint

    model, template, _ = tiny_organism
    cfg = tiny_sae_config("topk")
    ds = train_dataset(model, template)
    full = fitted(model, template, cache_root, "topk")
    with pytest.raises(FitInterrupted, match="interrupted after 20 steps") as info:
        fit_sae(model, cfg, ds, HOOK, tmp_path, max_steps=20, progress=False)
    ckpt = info.value.checkpoint
    assert ckpt == latest_checkpoint(tmp_path) and ckpt.name == str(20 * 256)
    assert {"trainer_state.pt", "sae_weights.safetensors", "activations_store_state.safetensors"} <= {
        p.name for p in ckpt.iterdir()
    }
    assert not (tmp_path / "sae").exists()
    from safetensors.torch import load_file

    at_interrupt = load_file(str(ckpt / "sae_weights.safetensors"))

    resumed = fit_sae(model, cfg, ds, HOOK, tmp_path, progress=False)
    assert resumed.metadata["resumed_from"] == str(ckpt)
    assert resumed.metadata["n_training_steps"] == full.metadata["n_training_steps"] == 47
    assert resumed.metadata["n_training_tokens"] == full.metadata["n_training_tokens"]
    assert not (tmp_path / "checkpoints").exists()
    # same init, optimizer state and data; only the shuffling buffer after the restart differs
    a, b = full.sae.state_dict(), resumed.sae.state_dict()
    for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
        rel = float((a[k] - b[k]).norm() / a[k].norm())
        moved = float((a[k] - at_interrupt[k]).norm() / a[k].norm())  # how far training went after step 20
        assert rel < 0.1 and rel < 0.5 * moved, (
            f"{k}: resumed weights differ by {rel:.3f} (training moved them {moved:.3f})"
        )
    cos = torch.nn.functional.cosine_similarity(a["W_dec"], b["W_dec"], dim=1)
    assert float(cos.min()) > 0.95


def test_a_finished_fit_is_reused_and_a_changed_one_is_not(tiny_organism, cache_root):
    import time

    from saesteer.sae.fit import fit_sae

    model, template, _ = tiny_organism
    first = fitted(model, template, cache_root, "standard")
    t0 = time.perf_counter()
    again = fit_sae(
        model, tiny_sae_config("standard"), train_dataset(model, template), HOOK, first.path.parent, progress=False
    )
    assert time.perf_counter() - t0 < 5
    assert again.metadata == first.metadata
    assert torch.equal(again.sae.W_enc, first.sae.W_enc)


def test_fit_rejects_a_missing_hook_and_a_mismatched_dataset(tiny_organism, tmp_path):
    from saesteer.sae.fit import fit_sae

    model, template, _ = tiny_organism
    ds = train_dataset(model, template)
    with pytest.raises(ValueError, match=r"hook 'blocks.5.hook_resid_pre' does not exist in this model \(2 layers"):
        fit_sae(model, tiny_sae_config("topk"), ds, "blocks.5.hook_resid_pre", tmp_path)
    with pytest.raises(ValueError, match=r"dataset rows have 48 tokens but sae.context_size=64"):
        fit_sae(model, tiny_sae_config("topk", context_size=64), ds, HOOK, tmp_path)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        fit_sae(model, tiny_sae_config("topk"), ds, HOOK, tmp_path, max_steps=0)


# ---------------------------------------------------------------- the job


def test_hook_comes_from_the_config_then_the_direction_then_the_middle(tiny_organism, tmp_path):
    from saesteer.io import save_tensors
    from saesteer.models import LoadedModel
    from saesteer.stages import resolve_hook

    model, template, _ = tiny_organism
    loaded = LoadedModel(model, template, "organism", {})
    assert resolve_hook(SaeConfig(), loaded) == "blocks.1.hook_resid_pre"  # 2 layers: the middle is 1
    path = save_tensors(
        tmp_path / "direction.safetensors",
        {"direction": torch.ones(48)},
        {"kind": "refusal_direction", "layer": 0, "hook": "blocks.0.hook_resid_pre"},
    )
    assert resolve_hook(SaeConfig(direction=str(path)), loaded) == "blocks.0.hook_resid_pre"
    assert (
        resolve_hook(SaeConfig(direction=str(path), hook="blocks.1.hook_resid_post"), loaded)
        == "blocks.1.hook_resid_post"
    )
    with pytest.raises(ValueError, match=r"hook 'blocks.9.hook_resid_pre' does not exist in this model"):
        resolve_hook(SaeConfig(hook="blocks.9.hook_resid_pre"), loaded)
    wrong = save_tensors(tmp_path / "wide.safetensors", {"direction": torch.ones(64)}, {"layer": 0})
    with pytest.raises(ValueError, match=r"has shape \(64,\), expected \(48,\)"):
        resolve_hook(SaeConfig(direction=str(wrong)), loaded)


def test_train_sae_job_fits_measures_and_reuses(tiny_organism, cache_root, tmp_path):
    from saesteer.jobs.common import run_job
    from saesteer.jobs.train_sae import run

    overrides = tiny_organism_overrides() + ["logger.mode=disabled", "progress=false"] + SMALL_SAE
    metrics = run_job("train-sae", compose("train-sae", overrides), run, tmp_path / "run1")
    on_disk = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert on_disk == metrics
    for key in (
        "explained_variance",
        "l0",
        "dead_fraction",
        "ce_loss_recovered",
        "d_sae",
        "hook",
        "architecture",
        "train_seconds",
    ):
        assert key in metrics
    assert (
        metrics["d_sae"] == 96 and metrics["architecture"] == "topk" and metrics["hook"] == HOOK
    )  # middle of 2 layers
    assert metrics["source"] == "fit" and metrics["n_training_tokens"] == 4096
    assert 0 < metrics["l0"] <= 8 and 0 <= metrics["dead_fraction"] <= 1 and metrics["n_eval_tokens"] >= 1500
    assert metrics["ce_zero_ablate"] > metrics["ce_spliced"] > metrics["ce_clean"] > 0
    assert Path(metrics["sae_path"]).is_relative_to(cache_root / "sae")

    again = run_job("train-sae", compose("train-sae", overrides), run, tmp_path / "run2")
    assert again["source"] == "cache" and again["sae_path"] == metrics["sae_path"]
    assert again["explained_variance"] == pytest.approx(metrics["explained_variance"], abs=1e-9)
    assert again["train_seconds"] == metrics["train_seconds"]

    loaded = run_job(
        "train-sae", compose("train-sae", overrides + [f"sae.path={metrics['sae_path']}"]), run, tmp_path / "run3"
    )
    assert loaded["source"] == "path" and loaded["ce_loss_recovered"] == pytest.approx(
        metrics["ce_loss_recovered"], abs=1e-9
    )


def test_train_sae_job_fails_fast_on_bad_inputs(tmp_path):
    from saesteer.jobs.common import run_job
    from saesteer.jobs.train_sae import run

    with pytest.raises(ValueError, match=r"sae.responses=organism needs model=organism, got model.name='gpt2'"):
        run_job(
            "train-sae",
            compose("train-sae", ["logger.mode=disabled", "model.name=gpt2", "sae.responses=organism"]),
            run,
            tmp_path,
        )
    with pytest.raises(FileNotFoundError, match=r"sae.direction='/no/such.safetensors': no such file"):
        run_job(
            "train-sae",
            compose("train-sae", ["logger.mode=disabled", "sae.direction=/no/such.safetensors"]),
            run,
            tmp_path,
        )
    with pytest.raises(ValueError, match=r"unknown SAE release 'gpt2-small-res-jd'.*'gpt2-small-res-jb'"):
        run_job(
            "train-sae",
            compose(
                "train-sae",
                [
                    "logger.mode=disabled",
                    "sae.pretrained_release=gpt2-small-res-jd",
                    "sae.pretrained_id=blocks.8.hook_resid_pre",
                ],
            ),
            run,
            tmp_path,
        )
