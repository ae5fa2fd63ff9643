"""Fit an SAE on a residual stream through sae_lens, with checkpoints that resume.

The data are the model's own chat conversations: each row of
:func:`build_token_dataset` is ``[bos] prefix instruction suffix response <eos>``
left-padded to ``context_size`` (the padding side the organism was trained with;
TransformerLens masks leading pad tokens itself), so the SAE sees activations of
the chat format and never of padding (sae_lens drops pad positions through
``exclude_special_tokens``).

:func:`fit_sae` runs sae_lens's ``LanguageModelSAETrainingRunner`` with
``override_model`` and ``override_dataset``.  Periodic checkpoints
(``SaeConfig.checkpoints``) and an interruption (Ctrl-C, SIGTERM, or
``max_steps``) leave a complete sae_lens checkpoint under
``out_dir/checkpoints/<tokens>``; the next call with the same config and data
resumes from the newest one through ``resume_from_checkpoint``.  sae_lens keeps
its trainer state with ``torch.save``; it is read back with ``weights_only=True``
(forced, whatever torch's default), so nothing is unpickled beyond tensors and
plain containers.  The finished SAE is written in sae_lens's inference format
(``cfg.json`` + ``sae_weights.safetensors``) plus ``saesteer.json`` metadata,
into a temporary directory that is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from transformer_lens import HookedTransformer

from saesteer.activations import check_hooks, model_fingerprint
from saesteer.chat import ChatTemplate
from saesteer.io import hash_strings, write_json
from saesteer.sae.config import SaeConfig

log = logging.getLogger(__name__)

SAE_DIR = "sae"  # final SAE (sae_lens format) under the fit directory
CHECKPOINT_DIR = "checkpoints"
META_FILE = "saesteer.json"  # saesteer metadata next to sae_lens's cfg.json
FIT_FILE = "fit.json"  # what the checkpoints of a fit directory belong to


class FitInterrupted(RuntimeError):
    """A fit stopped early (``max_steps``, Ctrl-C, SIGTERM); a checkpoint was saved to resume from."""

    def __init__(self, checkpoint: Optional[Path], n_training_steps: int, n_training_tokens: int) -> None:
        self.checkpoint = checkpoint
        self.n_training_steps = n_training_steps
        self.n_training_tokens = n_training_tokens
        where = f"; resume from {checkpoint}" if checkpoint else ""
        super().__init__(f"SAE fit interrupted after {n_training_steps} steps ({n_training_tokens} tokens){where}")


@dataclass
class FitResult:
    """A fitted SAE (inference form, eval mode) and where it lives."""

    sae: Any  # sae_lens.SAE
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        return float(self.metadata.get("train_seconds", float("nan")))

    @property
    def hook(self) -> str:
        return str(self.metadata["hook"])


# ----------------------------------------------------------------------------- data


def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(map(int, r)) for r in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def build_token_dataset(
    model: HookedTransformer,
    template: ChatTemplate,
    instructions: Sequence[str],
    context_size: int,
    responses: Optional[Sequence[str]] = None,
    *,
    seed: Optional[int] = 0,
):
    """Chat-formatted conversations as a ``datasets.Dataset`` of fixed-length rows.

    Each row is ``[bos] + prefix + instruction + suffix (+ response + eos)``, the
    same ids :func:`saesteer.chat.encode_chat` gives the prompt part, left-padded
    with the tokenizer's pad id (else eos) to ``context_size``.  A row too long
    keeps its chat structure: the instruction's tail is cut first (one token at
    least), then the response's.  Columns: ``input_ids``, ``attention_mask`` (1 on
    real tokens) and ``loss_mask`` (1 on the tokens a next-token loss is taken
    on: the response and its eos when responses are given, else every real token
    after the first).  Rows are shuffled with ``seed`` (None keeps the order).
    """
    from datasets import Dataset

    instructions = list(instructions)
    if isinstance(instructions, str) or not instructions:
        raise ValueError("build_token_dataset needs a non-empty list of instructions, got none")
    if responses is not None:
        responses = list(responses)
        if len(responses) != len(instructions):
            raise ValueError(f"got {len(responses)} responses for {len(instructions)} instructions; expected one each")
    if not isinstance(context_size, int) or context_size <= 0:
        raise ValueError(f"context_size must be a positive integer, got {context_size!r}")
    if context_size > model.cfg.n_ctx:
        raise ValueError(f"context_size={context_size} is longer than the model's context (n_ctx={model.cfg.n_ctx})")
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer attached; load it with its tokenizer")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; cannot pad rows")
    eos = tok.eos_token_id
    bos = [int(tok.bos_token_id)] if template.bos and tok.bos_token_id is not None else []
    prefix, post = _ids(tok, [template.prefix_for(None), template.suffix])
    head = bos + prefix
    if len(head) + len(post) + 1 > context_size:
        raise ValueError(
            f"context_size={context_size} cannot hold the chat template ({len(head)} prefix + {len(post)} suffix tokens) "
            "and one instruction token; expected a larger context_size"
        )
    inst_ids = _ids(tok, instructions)
    resp_ids = _ids(tok, responses) if responses is not None else [[] for _ in instructions]
    rows, masks, losses = [], [], []
    n_cut = 0
    for i, (inst, resp) in enumerate(zip(inst_ids, resp_ids)):
        if not inst:
            raise ValueError(f"instruction {i} ({instructions[i][:40]!r}) tokenizes to no tokens")
        if responses is not None and eos is not None:
            resp = resp + [int(eos)]
        room = context_size - len(head) - len(post)
        if len(inst) + len(resp) > room:
            n_cut += 1
            inst = inst[: max(1, room - len(resp))]
            resp = resp[: room - len(inst)]
        row = head + inst + post + resp
        n_pad = context_size - len(row)
        rows.append([int(pad)] * n_pad + row)
        masks.append([0] * n_pad + [1] * len(row))
        if responses is not None:
            losses.append([0] * (context_size - len(resp)) + [1] * len(resp))
        else:
            losses.append([0] * (n_pad + 1) + [1] * (len(row) - 1))
    if n_cut:
        log.info("build_token_dataset: %d of %d conversations cut to context_size=%d", n_cut, len(rows), context_size)
    order = list(range(len(rows)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return Dataset.from_dict(
        {
            "input_ids": [rows[i] for i in order],
            "attention_mask": [masks[i] for i in order],
            "loss_mask": [losses[i] for i in order],
        }
    )


def dataset_hash(dataset) -> str:
    """A short hash of a token dataset's ``input_ids`` (row order included)."""
    ids = dataset.with_format(None)["input_ids"]
    return hash_strings([",".join(map(str, r)) for r in ids])


# ----------------------------------------------------------------------------- sae_lens configs


def training_sae_config(cfg: SaeConfig, d_in: int, device: str = "cpu"):
    """The architecture-specific sae_lens ``*TrainingSAEConfig`` for ``cfg``."""
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )

    common = dict(
        d_in=d_in,
        d_sae=cfg.width(d_in),
        dtype="float32",
        device=device,
        normalize_activations=cfg.normalize_activations,
    )
    if cfg.architecture == "standard":
        return StandardTrainingSAEConfig(
            **common, l1_coefficient=cfg.l1_coefficient, l1_warm_up_steps=cfg.l1_warm_up_steps
        )
    if cfg.architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient)
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(**common, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient)
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(
            **common,
            l0_coefficient=cfg.l0_coefficient,
            l0_warm_up_steps=cfg.l0_warm_up_steps,
            jumprelu_init_threshold=cfg.jumprelu_init_threshold,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            jumprelu_ste_to_input=cfg.jumprelu_ste_to_input,
        )
    raise ValueError(f"sae.architecture must be one of standard, topk, batchtopk, jumprelu; got {cfg.architecture!r}")


def runner_config(
    cfg: SaeConfig,
    model: HookedTransformer,
    hook: str,
    out_dir: Path,
    *,
    output_path: Optional[Path],
    log_to_wandb: bool,
    pad_id: Optional[int],
    resume_from: Optional[Path] = None,
):
    """sae_lens's ``LanguageModelSAERunnerConfig`` for fitting ``cfg`` at ``hook`` of ``model`` (on the model's device)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    device = str(model.cfg.device)
    runner = LanguageModelSAERunnerConfig(
        sae=training_sae_config(cfg, model.cfg.d_model, device),
        model_name=str(model.cfg.model_name),
        hook_name=hook,
        dataset_path="saesteer-chat",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=cfg.context_size,
        prepend_bos=False,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        n_batches_in_buffer=cfg.n_batches_in_buffer,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        exclude_special_tokens=[int(pad_id)] if pad_id is not None else False,
        lr=cfg.lr,
        lr_scheduler_name=cfg.lr_scheduler,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(cfg.dead_feature_window, 100),
        n_batches_for_norm_estimate=20,
        device=device,
        seed=cfg.seed,
        dtype="float32",
        n_checkpoints=cfg.checkpoints,
        checkpoint_path=str(out_dir / CHECKPOINT_DIR),
        output_path=str(output_path) if output_path is not None else None,
        resume_from_checkpoint=str(resume_from) if resume_from is not None else None,
        logger=LoggingConfig(
            log_to_wandb=log_to_wandb, log_weights_to_wandb=False, wandb_log_frequency=20, eval_every_n_wandb_logs=10**9
        ),
        verbose=False,
        model_from_pretrained_kwargs={},
    )
    runner.checkpoint_path = str(out_dir / CHECKPOINT_DIR)  # sae_lens appends a random id; resuming needs a fixed place
    return runner


# ----------------------------------------------------------------------------- checkpoints


def _complete(ckpt: Path) -> bool:
    from sae_lens.constants import (
        ACTIVATIONS_STORE_STATE_FILENAME,
        SAE_CFG_FILENAME,
        SAE_WEIGHTS_FILENAME,
        TRAINER_STATE_FILENAME,
    )

    needed = (SAE_WEIGHTS_FILENAME, SAE_CFG_FILENAME, TRAINER_STATE_FILENAME, ACTIVATIONS_STORE_STATE_FILENAME)
    return all((ckpt / f).is_file() for f in needed)


def latest_checkpoint(out_dir: Path) -> Optional[Path]:
    """The newest complete sae_lens checkpoint under ``out_dir/checkpoints`` (by tokens seen)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and _complete(p)]
    return max(done, key=lambda p: int(p.name)) if done else None


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force ``torch.load`` to ``weights_only=True`` (sae_lens reads its trainer state with the default)."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


class _SharedWandb:
    """sae_lens's ``wandb`` seen through the caller's run: ``init`` returns it, ``finish`` leaves it open."""

    def __init__(self, wandb_module: Any, run: Any) -> None:
        self._wandb, self._run = wandb_module, run

    def init(self, *args: Any, **kwargs: Any) -> Any:
        return self._run

    def finish(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wandb, name)


class _StopAfter:
    """A data provider that raises sae_lens's InterruptedException once the trainer reaches ``stop_step``."""

    def __init__(self, inner: Any, trainer: Any, stop_step: int) -> None:
        self.inner, self.trainer, self.stop_step = inner, trainer, stop_step

    def __iter__(self) -> _StopAfter:
        return self

    def __next__(self) -> torch.Tensor:
        from sae_lens.training._interruption import InterruptedException

        if self.trainer.n_training_steps >= self.stop_step:
            raise InterruptedException()
        return next(self.inner)


def _runner_class():
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training._interruption import InterruptedException

    class Runner(LanguageModelSAETrainingRunner):
        """sae_lens's runner, saving a *complete* checkpoint when interrupted, and restoring signal handlers."""

        max_steps: Optional[int] = None
        trainer: Any = None

        def run_trainer_with_interruption_handling(self, trainer):  # type: ignore[override]
            self.trainer = trainer
            if self.max_steps is not None:
                trainer.data_provider = _StopAfter(
                    trainer.data_provider, trainer, trainer.n_training_steps + self.max_steps
                )
            from sae_lens.training._interruption import interrupt_callback

            main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
            old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
            try:
                for s in old:
                    signal.signal(s, interrupt_callback)
                return trainer.fit()
            except (KeyboardInterrupt, InterruptedException):
                if self.cfg.checkpoint_path is not None:
                    log.warning("SAE fit interrupted at step %d; saving a checkpoint", trainer.n_training_steps)
                    trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
                raise
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return Runner


# ----------------------------------------------------------------------------- fit


def read_fit_metadata(path: Path) -> Optional[dict[str, Any]]:
    """saesteer metadata of a finished SAE directory, or None when absent or unreadable."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable SAE metadata %s: %s", meta, exc)
        return None


def fit_sae(
    model: HookedTransformer,
    cfg: SaeConfig,
    dataset,
    hook: str,
    out_dir: str | os.PathLike,
    *,
    tracker: Any = None,
    max_steps: Optional[int] = None,
    extra_metadata: Optional[dict[str, Any]] = None,
    progress: bool = True,
) -> FitResult:
    """Fit an SAE at ``hook`` of ``model`` on ``dataset`` (see :func:`build_token_dataset`).

    The SAE ends in ``out_dir/sae`` (sae_lens format + ``saesteer.json``).  When
    that already holds a fit of the same config, model and data (and
    ``cfg.reuse``), it is loaded instead.  A previous interrupted fit in
    ``out_dir`` of the same config and data resumes from its newest checkpoint.
    ``max_steps`` stops after that many steps of this call, saves a checkpoint
    and raises :class:`FitInterrupted`.  ``tracker``: a saesteer Tracker whose W&B
    run receives sae_lens's training logs (none when disabled).
    """
    from sae_lens import SAE

    if cfg.loads:
        raise ValueError(
            f"fit_sae fits an SAE, but sae.path={cfg.path!r} / sae.pretrained_release={cfg.pretrained_release!r} "
            "ask to load one; use load_sae"
        )
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps <= 0):
        raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
    check_hooks(model, [hook])
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"the dataset needs an 'input_ids' column (see build_token_dataset), got columns {dataset.column_names}"
        )
    width = len(dataset[0]["input_ids"])
    if width != cfg.context_size:
        raise ValueError(
            f"dataset rows have {width} tokens but sae.context_size={cfg.context_size}; rebuild the dataset with that context_size"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():  # model_fingerprint reads weights that may require grad
        fingerprint = model_fingerprint(model)
    fit_id = {
        "config": cfg.fit_key_dict(),
        "hook": hook,
        "model_fingerprint": fingerprint,
        "model": str(model.cfg.model_name),
        "data_hash": dataset_hash(dataset),
        "n_rows": len(dataset),
    }
    final = out_dir / SAE_DIR
    meta = read_fit_metadata(final)
    if meta is not None and cfg.reuse and {k: meta.get(k) for k in fit_id} == fit_id:
        log.info("reusing the SAE fitted in %s", final)
        return FitResult(SAE.load_from_disk(str(final), device=str(model.cfg.device)).eval(), final, meta)

    previous: dict[str, Any] = {}
    if (out_dir / FIT_FILE).is_file():
        try:
            previous = json.loads((out_dir / FIT_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
    same = {k: previous.get(k) for k in fit_id} == fit_id
    resume = latest_checkpoint(out_dir) if same else None
    if not same and (out_dir / CHECKPOINT_DIR).exists():
        log.warning("checkpoints in %s belong to another config, model or data; starting afresh", out_dir)
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    prior_seconds = float(previous.get("train_seconds", 0.0)) if resume is not None else 0.0
    write_json(out_dir / FIT_FILE, fit_id)
    if resume is not None:
        log.info("resuming the SAE fit from checkpoint %s", resume)

    for stale in out_dir.glob(f".{SAE_DIR}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f".{SAE_DIR}.{uuid.uuid4().hex[:8]}.tmp"
    run = getattr(tracker, "run", None)
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rcfg = runner_config(
        cfg, model, hook, out_dir, output_path=tmp, log_to_wandb=run is not None, pad_id=pad, resume_from=resume
    )

    import sae_lens.llm_sae_training_runner as runner_module
    from sae_lens import logger as sae_lens_logger
    from sae_lens.training._interruption import InterruptedException

    torch.manual_seed(cfg.seed)  # the SAE's initial weights
    random.seed(cfg.seed)
    was_training = model.training
    model.eval()
    runner = None
    done = False
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if run is not None:
            import wandb

            stack.enter_context(_patched(runner_module, "wandb", _SharedWandb(wandb, run)))
        stack.enter_context(_weights_only_loads())
        stack.enter_context(_tqdm_disabled(not progress))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings(
            "ignore",
            message=r".*(fewer samples|have been exhausted|pretokenized dataset has context_size|copy construct from a tensor).*",
        )
        level = sae_lens_logger.level
        sae_lens_logger.setLevel(logging.ERROR)  # "you passed in a model/dataset" warnings are expected here
        try:
            # sae_lens sets the dataset's format in place: hand it a view, not the caller's object
            runner = _runner_class()(rcfg, override_dataset=dataset.with_format(None), override_model=model)
            sae_lens_logger.setLevel(level)
            runner.max_steps = max_steps
            trained = runner.run()
            done = True
        except (InterruptedException, KeyboardInterrupt):
            trainer = getattr(runner, "trainer", None)
            write_json(out_dir / FIT_FILE, {**fit_id, "train_seconds": prior_seconds + time.perf_counter() - t0})
            raise FitInterrupted(
                latest_checkpoint(out_dir),
                getattr(trainer, "n_training_steps", 0),
                getattr(trainer, "n_training_samples", 0),
            ) from None
        finally:
            sae_lens_logger.setLevel(level)
            model.train(was_training)
            if not done:
                shutil.rmtree(tmp, ignore_errors=True)

    train_seconds = prior_seconds + time.perf_counter() - t0
    trainer = runner.trainer
    meta = {
        **fit_id,
        "kind": "sae",
        "architecture": cfg.architecture,
        "d_in": int(model.cfg.d_model),
        "d_sae": int(trained.cfg.d_sae),
        "n_training_steps": int(trainer.n_training_steps),
        "n_training_tokens": int(trainer.n_training_samples),
        "train_seconds": round(train_seconds, 2),
        "resumed_from": str(resume) if resume is not None else None,
        "sae_lens_version": _sae_lens_version(),
        **(extra_metadata or {}),
    }
    write_json(tmp / META_FILE, meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    log.info(
        "SAE (%s, d_sae=%d) fitted at %s in %.1fs: %s", cfg.architecture, meta["d_sae"], hook, train_seconds, final
    )
    sae = SAE.load_from_disk(str(final), device=str(model.cfg.device)).eval()
    return FitResult(sae, final, meta)


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _tqdm_disabled(disable: bool) -> Iterator[None]:
    """Silence sae_lens's progress bars when ``progress`` is off (it creates them unconditionally)."""
    if not disable:
        yield
        return
    from functools import partial

    import sae_lens.training.activations_store as store_module
    import sae_lens.training.sae_trainer as trainer_module
    from tqdm.auto import tqdm

    quiet = partial(tqdm, disable=True)
    with _patched(trainer_module, "tqdm", quiet), _patched(store_module, "tqdm", quiet):
        yield


def _sae_lens_version() -> str:
    import sae_lens

    return str(sae_lens.__version__)
