"""What an SAE is and how to fit it (or where to load it from), validated up front.

:class:`SaeConfig` is the ``sae`` group of ``saesteer train-sae`` (``conf/sae/*.yaml``).
Field names follow sae_lens where sae_lens has one (``l1_coefficient``,
``l0_coefficient``, ``jumprelu_init_threshold``, ``jumprelu_bandwidth``, ``k``,
``training_tokens``, ``train_batch_size_tokens``, ``context_size``,
``n_batches_in_buffer``, ``store_batch_size_prompts``), so a value carries over
from sae_lens's docs unchanged.  Every check runs in ``__post_init__`` and raises a
``ValueError`` naming the field, the bad value and what was expected, before any
model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from saesteer.checks import check_finite_fields, check_known_keys

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
RESPONSES = ("greedy", "organism", "none")
LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")
NORMALIZATIONS = ("none", "expected_average_only_in")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class SaeConfig:
    """One SAE on one residual-stream hook: fitted through sae_lens, or loaded.

    Loading instead of fitting: ``path`` (a local directory in sae_lens format) or
    ``pretrained_release`` + ``pretrained_id`` (sae_lens's registry).  Otherwise an
    SAE is fitted on chat-formatted harmful + harmless *train* prompts.
    """

    architecture: str = "topk"
    # TransformerLens hook, e.g. blocks.2.hook_resid_pre; null = the layer of ``direction``
    # (a direction.safetensors from `saesteer directions`) when given, else the middle layer
    hook: Optional[str] = None
    direction: Optional[str] = None
    expansion_factor: Optional[int] = 4  # d_sae = expansion_factor * d_model, unless d_sae is set
    d_sae: Optional[int] = None
    # sparsity, per architecture (names as in sae_lens)
    k: int = 16  # topk: active latents per token; batchtopk: on average over the batch
    l1_coefficient: float = 5.0  # standard
    l1_warm_up_steps: int = 0
    l0_coefficient: float = 1.0  # jumprelu sparsity coefficient
    l0_warm_up_steps: int = 0
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    jumprelu_ste_to_input: bool = False  # True: the L0 loss also trains the encoder (Anthropic), not only the threshold
    aux_loss_coefficient: float = 1.0  # topk / batchtopk: dead-latent auxiliary loss
    normalize_activations: str = "none"
    # optimisation
    lr: float = 2e-3
    lr_scheduler: str = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    dead_feature_window: int = 25  # steps without firing before a latent counts as dead (topk aux loss)
    training_tokens: int = 500_000
    train_batch_size_tokens: int = 1024
    context_size: int = 64
    n_batches_in_buffer: int = 32
    store_batch_size_prompts: int = 32
    checkpoints: int = 0  # sae_lens n_checkpoints; an interrupted fit resumes from the last one
    seed: int = 0
    # data: chat-formatted train prompts (harmful + harmless) with a response
    responses: str = "greedy"  # greedy: the model's own answer; organism: its training texts; none
    max_new_tokens: int = 24
    n_harmful: Optional[int] = None  # prompts of harmful_train used (None = all)
    n_harmless: Optional[int] = 2048
    eval_tokens: int = 20_000  # held-out (val) tokens for the quality metrics
    eval_batch_size: int = 32
    # loading instead of fitting
    path: Optional[str] = None
    pretrained_release: Optional[str] = None
    pretrained_id: Optional[str] = None
    reuse: bool = True  # reuse a cached fit of the same config, model and data
    threads: Optional[int] = None  # torch CPU threads for the job (None = torch's default); 1 is fastest on busy cores

    def __post_init__(self) -> None:
        check_finite_fields(self)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"sae.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.hook is not None and (not isinstance(self.hook, str) or not self.hook.startswith("blocks.")):
            raise ValueError(
                f"sae.hook must be a TransformerLens hook like 'blocks.2.hook_resid_pre' or null, got {self.hook!r}"
            )
        if self.d_sae is None and self.expansion_factor is None and not self.loads:
            raise ValueError("sae.d_sae and sae.expansion_factor are both null; set one (e.g. sae.expansion_factor=8)")
        for name in ("expansion_factor", "d_sae", "n_harmful", "n_harmless", "threads"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"sae.{name} must be a positive integer or null, got {value!r}")
        for name in (
            "k",
            "training_tokens",
            "train_batch_size_tokens",
            "context_size",
            "n_batches_in_buffer",
            "store_batch_size_prompts",
            "eval_tokens",
            "eval_batch_size",
            "max_new_tokens",
            "dead_feature_window",
        ):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ValueError(f"sae.{name} must be a positive integer, got {value!r}")
        for name in ("checkpoints", "l1_warm_up_steps", "l0_warm_up_steps", "lr_warm_up_steps", "lr_decay_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"sae.{name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "jumprelu_bandwidth"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"sae.{name} must be a positive number, got {value!r}")
        for name in ("l1_coefficient", "l0_coefficient", "jumprelu_init_threshold", "aux_loss_coefficient"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"sae.{name} must be a non-negative number, got {value!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"sae.lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"sae.normalize_activations must be one of {NORMALIZATIONS}, got {self.normalize_activations!r}"
            )
        if self.responses not in RESPONSES:
            raise ValueError(f"sae.responses must be one of {RESPONSES}, got {self.responses!r}")
        if self.d_sae is not None and self.architecture in ("topk", "batchtopk") and self.k > self.d_sae:
            raise ValueError(f"sae.k={self.k} is larger than sae.d_sae={self.d_sae}; expected k <= d_sae")
        # sae_lens's mixing buffer holds n_batches_in_buffer * context_size tokens and
        # raises deep inside training unless one training batch fits in it.
        buffer = self.n_batches_in_buffer * self.context_size
        if buffer < self.train_batch_size_tokens:
            need = -(-self.train_batch_size_tokens // self.context_size)
            raise ValueError(
                f"sae.n_batches_in_buffer * sae.context_size = {self.n_batches_in_buffer} * {self.context_size} = {buffer} "
                f"is smaller than sae.train_batch_size_tokens={self.train_batch_size_tokens}; sae_lens needs "
                f"n_batches_in_buffer * context_size >= train_batch_size_tokens (e.g. sae.n_batches_in_buffer={need})"
            )
        if self.training_tokens < self.train_batch_size_tokens:
            raise ValueError(
                f"sae.training_tokens={self.training_tokens} is less than one batch "
                f"(sae.train_batch_size_tokens={self.train_batch_size_tokens}); expected at least one training step"
            )
        if (self.pretrained_release is None) != (self.pretrained_id is None):
            raise ValueError(
                "sae.pretrained_release and sae.pretrained_id go together, got "
                f"pretrained_release={self.pretrained_release!r}, pretrained_id={self.pretrained_id!r}"
            )
        if self.path is not None and self.pretrained_release is not None:
            raise ValueError(
                f"set either sae.path ({self.path!r}) or sae.pretrained_release ({self.pretrained_release!r}), not both"
            )

    @property
    def loads(self) -> bool:
        """True when the SAE is loaded (``path`` or a registry release), not fitted."""
        return self.path is not None or self.pretrained_release is not None

    def width(self, d_model: int) -> int:
        """``d_sae`` for a model of width ``d_model``."""
        d_sae = self.d_sae if self.d_sae is not None else int(self.expansion_factor) * d_model
        if self.architecture in ("topk", "batchtopk") and self.k > d_sae:
            raise ValueError(f"sae.k={self.k} is larger than d_sae={d_sae}; expected k <= d_sae")
        return d_sae

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fit_key_dict(self) -> dict[str, Any]:
        """The fields that change what a fit produces (cache key; loading and eval fields excluded)."""
        d = self.to_dict()
        for name in (
            "path",
            "pretrained_release",
            "pretrained_id",
            "reuse",
            "eval_tokens",
            "eval_batch_size",
            "checkpoints",
            "direction",
            "threads",
        ):
            d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaeConfig:
        check_known_keys(cls, d, "sae")
        return cls(**d)
