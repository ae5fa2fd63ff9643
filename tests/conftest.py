"""Shared fixtures: seeding, offline W&B, a cached tiny organism."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

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
    n_layers=2,
    d_model=48,
    n_heads=2,
    d_mlp=96,
    n_ctx=128,
    steps=160,
    batch_size=32,
    lr=4e-3,
    warmup_steps=10,
    n_harmless=3000,
    max_prompt_tokens=48,
    harmful_fraction=0.5,
    seed=0,
    threads=1,
    synthetic_harmful=0,
    synthetic_harmless=0,
    synthetic_questions=0,
    decision_weight=0.0,
    # the tiny organism is trained from scratch (the default organism starts from MiniLM's 384-wide layers)
    init_from=None,
    harmful_sources=["harmful_train", "harmful_val", "advbench"],
    echo_words=8,
    word_dropout=0.1,
    length_buckets=0,
    resid_dropout=0.0,
    steer_augment=0.0,
    calibrate_harmless_fpr=None,
)


def _override_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


#: Hydra overrides of a tiny TopK SAE fitted in seconds on the tiny organism's own training texts
SMALL_SAE = [
    "sae=topk",
    "sae.d_sae=96",
    "sae.k=8",
    "sae.n_harmful=32",
    "sae.n_harmless=96",
    "sae.responses=organism",
    "sae.training_tokens=4096",
    "sae.train_batch_size_tokens=256",
    "sae.context_size=48",
    "sae.n_batches_in_buffer=16",
    "sae.store_batch_size_prompts=8",
    "sae.eval_tokens=1500",
    "sae.threads=1",
]


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


# ---------------------------------------------------------------- bad-input fixtures: nothing heavy runs, nothing is left


def _files(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*") if p.is_file()} if Path(root).exists() else set()


@pytest.fixture
def clean(cache_root, tmp_path):
    """``clean(run_dir)``: the run directory has no file and the cache gained none (no partial artifact)."""
    before = _files(cache_root)

    def check(run_dir: Path) -> None:
        assert _files(run_dir) == set(), f"files left in the run directory: {sorted(_files(run_dir))}"
        new = {p for p in _files(cache_root) - before if ".lock" not in p.name}
        assert new == set(), f"files left in the cache: {sorted(new)}"
        assert not [p for p in _files(tmp_path) if p.name.endswith(".tmp")], "a temporary file was left behind"

    return check


class _Heavy:
    """Monkeypatches that fail the test when heavy work starts."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch

    def _forbid(self, target, name, what):
        def boom(*args, **kwargs):
            raise AssertionError(f"heavy work started ({what}) before the bad input was reported")

        self.mp.setattr(target, name, boom)

    def model_load(self):
        from transformer_lens import HookedTransformer

        import saesteer.organism

        self._forbid(saesteer.organism, "load_or_train_organism", "model load")
        self.mp.setattr(
            HookedTransformer,
            "from_pretrained_no_processing",
            classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(AssertionError("heavy work started (download)"))),
        )
        return self

    def generation(self):
        import importlib
        import pkgutil

        import saesteer
        import saesteer.generation

        # import every module first: one imported while ``generate`` is patched would keep the patch after the test
        for info in pkgutil.walk_packages(saesteer.__path__, "saesteer."):
            importlib.import_module(info.name)
        real = saesteer.generation.generate
        for name, module in list(sys.modules.items()):
            if name.startswith("saesteer") and getattr(module, "generate", None) is real:
                self._forbid(module, "generate", "generation")
        return self

    def sae_metrics(self):
        import saesteer.sae.quality

        self._forbid(saesteer.sae.quality, "sae_quality", "SAE quality metrics")
        return self


@pytest.fixture
def heavy(monkeypatch):
    return _Heavy(monkeypatch)
