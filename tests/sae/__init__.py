"""Shared helpers of the SAE tests: tiny configs, data and fits, each made once per test run.

Fits are cached in this process (keyed by the model and architecture), so the
fit, load and quality tests share them instead of fitting the same SAE thrice.
Every SAE test runs torch on one thread: on busy cores OpenMP's spinning makes
two threads many times slower than one for these tiny matrices.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.sae.config import SaeConfig

HOOK = "blocks.1.hook_resid_pre"
CONTEXT = 48
TINY_SAE: dict[str, Any] = dict(
    d_sae=96,
    k=8,
    training_tokens=12_000,
    train_batch_size_tokens=256,
    context_size=CONTEXT,
    n_batches_in_buffer=16,
    store_batch_size_prompts=8,
    lr=1e-3,
    dead_feature_window=20,
    seed=0,
)

_CACHE: dict[Any, Any] = {}


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_sae_config(architecture: str, **overrides: Any) -> SaeConfig:
    return SaeConfig(architecture=architecture, **{**TINY_SAE, **overrides})


def conversations(split: str = "train", n_harmful: int = 100, n_harmless: int = 300) -> tuple[list[str], list[str]]:
    """Instructions and the organism's training-style answers (refusal for harmful, compliance otherwise)."""
    from saesteer.data import load_prompts
    from saesteer.organism.responses import comply, refuse

    rng = random.Random(0)
    harmful = list(load_prompts(f"harmful_{split}").instructions)[:n_harmful]
    harmless = list(load_prompts(f"harmless_{split}").instructions)[:n_harmless]
    return harmful + harmless, [refuse(rng) for _ in harmful] + [comply(p, rng) for p in harmless]


def train_dataset(model, template):
    key = ("train", id(model))
    if key not in _CACHE:
        from saesteer.sae.fit import build_token_dataset

        instructions, responses = conversations("train")
        _CACHE[key] = build_token_dataset(model, template, instructions, CONTEXT, responses, seed=0)
    return _CACHE[key]


def eval_dataset(model, template):
    key = ("val", id(model))
    if key not in _CACHE:
        from saesteer.sae.fit import build_token_dataset

        instructions, responses = conversations("val", n_harmful=39, n_harmless=40)
        _CACHE[key] = build_token_dataset(model, template, instructions, CONTEXT, responses, seed=None)
    return _CACHE[key]


def fitted(model, template, root: Path, architecture: str):
    """A tiny SAE of ``architecture`` fitted once per test run (a saesteer FitResult)."""
    key = ("fit", id(model), architecture)
    if key not in _CACHE:
        from saesteer.sae.fit import fit_sae

        _CACHE[key] = fit_sae(
            model,
            tiny_sae_config(architecture),
            train_dataset(model, template),
            HOOK,
            Path(root) / "sae_fits" / architecture,
            progress=False,
        )
    return _CACHE[key]
