"""Shared fixtures: seeding, offline W&B, a cached tiny organism."""

from __future__ import annotations

import os
import random

import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when saesteer.kernels is
# first imported (possibly by a non-kernel test): without a GPU, interpret on the CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------- tiny organism
TINY_ORGANISM = dict(
    n_layers=2, d_model=48, n_heads=2, d_mlp=96, n_ctx=128, steps=160, batch_size=32, lr=4e-3,
    warmup_steps=10, n_harmless=3000, max_prompt_tokens=48, harmful_fraction=0.5, seed=0, threads=1,
    synthetic_harmful=0, synthetic_harmless=0, synthetic_questions=0, decision_weight=0.0,
    # the tiny organism is trained from scratch (the default organism starts from MiniLM's 384-wide layers)
    init_from=None, harmful_sources=["harmful_train", "harmful_val", "advbench"], echo_words=8, word_dropout=0.1,
    length_buckets=0, resid_dropout=0.0, steer_augment=0.0, calibrate_harmless_fpr=None,
)


def _override_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def tiny_organism_overrides() -> list[str]:
    """Hydra overrides that select the tiny test organism."""
    return [f"model.organism.{k}={_override_value(v)}" for k, v in TINY_ORGANISM.items()]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One saesteer cache per test run: the tiny organism is trained once and reused."""
    root = tmp_path_factory.mktemp("saesteer_cache")
    old = os.environ.get("SAESTEER_CACHE")
    os.environ["SAESTEER_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SAESTEER_CACHE", None)
    else:
        os.environ["SAESTEER_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_organism(cache_root):
    """(model, template, result) of the tiny organism, trained once per test run."""
    from saesteer.chat import get_template
    from saesteer.organism import load_or_train_organism
    from saesteer.organism.config import OrganismConfig

    result = load_or_train_organism(OrganismConfig(**TINY_ORGANISM), progress=False)
    return result.model, get_template("organism"), result
