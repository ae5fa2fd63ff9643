"""The bundled safety delta of SmolLM2-135M-Instruct: a few MB of float16 factors whose header names the base
weights file (by sha256) and the adapter shape of that model."""

from __future__ import annotations

import torch

from saesteer.io import load_tensors
from saesteer.model_files import LOCAL_MODELS
from saesteer.safety.delta import FORMAT, VERSION, bundled_delta_path, read_safety_delta


def test_the_bundled_delta_is_small_float16_and_names_its_base():
    path = bundled_delta_path()
    assert path.is_file() and path.stat().st_size < 8e6
    tensors, meta = load_tensors(path)
    assert (meta["format"], meta["version"], meta["base_name"]) == (FORMAT, VERSION, "smollm2")
    assert meta["base_file_sha256"] == LOCAL_MODELS["smollm2"].file.sha256
    assert all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in tensors.values())
    adapter, _ = read_safety_delta(path)
    assert adapter.dims == {"attn_out": (576, 576), "mlp_out": (1536, 576)}
    assert max(adapter.layers) < LOCAL_MODELS["smollm2"].n_layers
    assert any(float(adapter.B[s].abs().max()) > 0 for s in adapter.sites)  # trained, not the zero init


def test_the_bundled_delta_is_what_the_default_settings_train():
    """Its header's steps and training mix are those of ``saesteer safety-tune`` with the defaults, so
    ``model.retrain=true`` retrains the same adapter."""
    from saesteer.config import DataConfig, SafetySettings
    from saesteer.safety.fit import safety_mix

    _, meta = load_tensors(bundled_delta_path())
    settings = SafetySettings()
    assert meta["steps"] == settings.steps
    assert meta["mix"] == safety_mix(settings, DataConfig(), seed=meta["seed"]).counts()
