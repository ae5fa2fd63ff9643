"""Loading SAEs: disk round trips, offline registry validation, clear mismatch errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from saesteer.sae.config import SaeConfig
from saesteer.sae.load import SaeLoadError, load_sae, validate_release
from tests.sae import HOOK, fitted, one_thread  # noqa: F401

ARCHS = ["standard", "topk", "batchtopk", "jumprelu"]


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries to fetch an SAE from the Hub."""
    from sae_lens import SAE

    def boom(*args, **kwargs):
        raise AssertionError("SAE.from_pretrained was called: validation must fail before any download")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, *a, **k: boom()))


@pytest.mark.parametrize("arch", ARCHS)
def test_disk_round_trip_encodes_and_decodes_identically(arch, tiny_organism, cache_root, tmp_path):
    model, template, _ = tiny_organism
    fit = fitted(model, template, cache_root, arch)
    copy = tmp_path / "copy"
    shutil.copytree(fit.path, copy)
    for source in (copy, str(copy), SaeConfig(path=str(copy))):
        sae = load_sae(source, model)
        assert not sae.training and sae.cfg.metadata.hook_name == HOOK
        x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 3
        with torch.no_grad():
            acts, ref_acts = sae.encode(x), fit.sae.encode(x)
            assert torch.equal(acts, ref_acts)
            assert torch.equal(sae.decode(acts), fit.sae.decode(ref_acts))
        assert (acts != 0).any() and (acts == 0).any()  # sparse, not dead
        for name, p in fit.sae.state_dict().items():
            assert torch.equal(sae.state_dict()[name], p), name


def test_registry_typo_in_release_suggests_close_names(no_download):
    with pytest.raises(
        SaeLoadError, match=r"unknown SAE release 'gpt2-small-res-jd'.*did you mean 'gpt2-small-res-jb'"
    ):
        load_sae(SaeConfig(pretrained_release="gpt2-small-res-jd", pretrained_id="blocks.8.hook_resid_pre"))


def test_registry_typo_in_id_suggests_close_ids(no_download):
    with pytest.raises(
        SaeLoadError,
        match=r"unknown SAE id 'blocks.8.hook_resid_pr' in release 'gpt2-small-res-jb' "
        r"\(\d+ ids\); did you mean 'blocks.8.hook_resid_pre'",
    ):
        load_sae(SaeConfig(pretrained_release="gpt2-small-res-jb", pretrained_id="blocks.8.hook_resid_pr"))
    lookup = validate_release("gpt2-small-res-jb", "blocks.8.hook_resid_pre")  # offline: sae_lens's own yaml
    assert lookup.repo_id == "jbloom/GPT2-Small-SAEs-Reformatted"


def test_failed_download_says_what_to_do(monkeypatch):
    from sae_lens import SAE

    def offline(cls, *args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(offline))
    with pytest.raises(
        SaeLoadError,
        match=r"could not download SAE 'gpt2-small-res-jb'/'blocks.8.hook_resid_pre' .*"
        r"jbloom/GPT2-Small-SAEs-Reformatted.*huggingface-cli download.*HF_HUB_OFFLINE=1",
    ):
        load_sae(SaeConfig(pretrained_release="gpt2-small-res-jb", pretrained_id="blocks.8.hook_resid_pre"))


def _save_standard_sae(path, d_in: int, hook: str) -> None:
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in)
    cfg.metadata.hook_name = hook
    StandardSAE(cfg).save_model(str(path))


def test_width_mismatch_is_a_clear_error(tiny_organism, tmp_path):
    model, _, _ = tiny_organism
    _save_standard_sae(tmp_path / "wide", 64, HOOK)
    assert load_sae(tmp_path / "wide").cfg.d_in == 64  # loads fine without a model
    with pytest.raises(SaeLoadError, match=r"the SAE has d_in=64 but the model's residual stream has d_model=48"):
        load_sae(tmp_path / "wide", model)


def test_missing_hook_is_a_clear_error(tiny_organism, tmp_path):
    model, _, _ = tiny_organism
    _save_standard_sae(tmp_path / "deep", 48, "blocks.7.hook_resid_pre")
    with pytest.raises(
        SaeLoadError, match=r"reads hook 'blocks.7.hook_resid_pre', which does not exist in this model \(2 layers"
    ):
        load_sae(tmp_path / "deep", model)
    with pytest.raises(SaeLoadError, match=r"sae.hook='blocks.0.hook_resid_pre' but the SAE was trained on 'blocks.7"):
        load_sae(SaeConfig(path=str(tmp_path / "deep"), hook="blocks.0.hook_resid_pre"), model)


def test_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SAE at .*nowhere: the directory does not exist"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SaeLoadError, match=r"is not an SAE in sae_lens format: missing cfg.json, sae_weights.safetensors"
    ):
        load_sae(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaeLoadError, match="is a file; expected a directory"):
        load_sae(tmp_path / "file")
    with pytest.raises(SaeLoadError, match="nothing to load"):
        load_sae(SaeConfig())


def test_sae_lens_format_files_are_what_sae_lens_reads(tiny_organism, cache_root):
    from sae_lens import SAE

    model, template, _ = tiny_organism
    fit = fitted(model, template, cache_root, "jumprelu")
    cfg = json.loads((fit.path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == 48 and cfg["d_sae"] == 96
    direct = SAE.load_from_disk(str(fit.path))  # plain sae_lens, no saesteer involved
    assert torch.equal(direct.threshold, fit.sae.threshold) and torch.equal(direct.W_enc, fit.sae.W_enc)
