"""The organism's recipe (architecture, data, optimisation) as a validated dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from saesteer.checks import check_finite_fields, check_known_keys

#: recipe options added after organisms were cached, with the value that reproduces the earlier recipe
_NEUTRAL: dict[str, Any] = {
    "lexicon": "base",
    "n_refusals": 8,
    "refusal_echo_words": 0,
    "length_buckets": 0,
    "embed_projection": "pca",
    "resid_dropout": 0.0,
    "steer_augment": 0.0,
    "calibrate_harmless_fpr": None,
    "ema_decay": 0.0,
    "frame_real": 0,
    "mined_framings": 0,
    "init_from": None,
    "freeze_blocks": 0,
    "synthetic_questions": 0,
    "decision_focal": 0.0,
}


@dataclass
class OrganismConfig:
    # architecture (a TransformerLens HookedTransformer)
    n_layers: int = 3
    d_model: int = 384
    n_heads: int = 12
    d_mlp: int = 1536
    n_ctx: int = 320
    act_fn: str = "gelu"
    pretrained_embeddings: bool = True  # MiniLM-L6 token embeddings (PCA-projected to d_model when init_from is None)
    # "minilm": the blocks start from MiniLM-L6's encoder layers (made causal and pre-LN; absolute positions),
    # the embeddings are MiniLM's own; needs MiniLM's shape (d_model 384, 12 heads, d_mlp 1536, <= 6 layers)
    init_from: Optional[str] = "minilm"
    freeze_embeddings: bool = True
    freeze_blocks: int = (
        0  # k > 0 (with init_from): the first k blocks and the positional embeddings keep MiniLM's weights
    )
    embed_projection: str = (
        "pca"  # "pca": fixed PCA axes; "learned": MiniLM's 384-d embeddings frozen, the map to d_model trained
    )
    # data
    harmful_sources: list[str] = field(
        default_factory=lambda: ["harmful_train", "harmful_val", "advbench", "donotanswer"]
    )
    harmless_sources: list[str] = field(default_factory=lambda: ["harmless_train"])
    held_out: list[str] = field(default_factory=lambda: ["harmful_test"])
    n_harmless: Optional[int] = None
    synthetic_harmful: int = (
        6000  # prompts from saesteer.organism.synthetic (hand-written harm lexicon x neutral framings)
    )
    synthetic_harmless: int = 32000  # safe look-alikes and ordinary requests in the same framings
    synthetic_questions: int = 1600  # safe knowledge questions with alarming words ("What does 'kill time' mean?")
    lexicon: str = "broad"  # synthetic acts: "base", "extended" or "broad" (saesteer.organism.synthetic.LEXICONS)
    mined_framings: int = 2  # m > 0: request formats shared by >= m real harmful prompts ("Create a tutorial on how to {act}.") join the framings of both classes
    frame_real: int = (
        0  # k > 0: k framed renders of each imperative real harmful prompt, and as many framed real harmless ones
    )
    max_prompt_tokens: int = 96
    echo_words: int = 4  # compliant answers echo the instruction's first words (fewer: a smaller output vocabulary)
    n_refusals: int = (
        8  # refusal paraphrases used (1 = one stereotyped refusal, as chat models' "I'm sorry, but I can't ...")
    )
    refusal_echo_words: int = 0  # > 0: refusals name the request ("I can't help you {first words}"), like chat models'
    # optimisation
    steps: int = 1400
    batch_size: int = 32
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    harmful_fraction: float = 0.35
    length_buckets: int = 16  # > 1: draw this many batches at once and group them by length (less padding)
    word_dropout: float = 0.25
    resid_dropout: float = 0.1  # dropout on every attention and MLP output while training
    steer_augment: float = (
        0.25  # fraction of steps whose harmful examples carry the (running) refusal direction on every token
    )
    ema_decay: float = 0.0  # > 0: the organism keeps an exponential moving average of its weights (Polyak averaging)
    lm_weight: float = 0.0  # next-token loss on instruction tokens (a language-model stage)
    decision_weight: float = 2.0  # extra loss on the first response token (refuse or comply), x this weight
    decision_focal: float = (
        0.0  # gamma > 0: that extra loss is focal, (1 - p)^gamma x cross-entropy (hard prompts weigh more)
    )
    # operating point: None keeps the trained refusal logit; a rate q shifts the refusal opener's bias so that a
    # fraction q of harmless_val (never trained on) gets a refusal as its greedy first token
    calibrate_harmless_fpr: Optional[float] = 0.02
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        check_finite_fields(self)
        positive = (
            "n_layers",
            "d_model",
            "n_heads",
            "d_mlp",
            "n_ctx",
            "steps",
            "batch_size",
            "max_prompt_tokens",
            "threads",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"organism.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"organism.d_model={self.d_model} must be divisible by organism.n_heads={self.n_heads}")
        for name in ("harmful_fraction", "word_dropout", "min_lr_ratio", "resid_dropout", "steer_augment"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"organism.{name} must be in [0, 1], got {value!r}")
        if (
            not isinstance(self.decision_focal, (int, float))
            or isinstance(self.decision_focal, bool)
            or not 0.0 <= self.decision_focal <= 5.0
        ):
            raise ValueError(
                f"organism.decision_focal must be a focal gamma in [0, 5] (0: off), got {self.decision_focal!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"organism.ema_decay must be in [0, 1) (0: off), got {self.ema_decay!r}")
        for name in (
            "synthetic_harmful",
            "synthetic_harmless",
            "synthetic_questions",
            "refusal_echo_words",
            "length_buckets",
            "frame_real",
            "mined_framings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"organism.{name} must be a non-negative integer, got {value!r}")
        from saesteer.organism.synthetic import LEXICONS, max_questions

        if self.synthetic_questions > max_questions():
            raise ValueError(
                f"organism.synthetic_questions={self.synthetic_questions}: the bundled questions make at most "
                f"{max_questions()} distinct prompts"
            )

        if self.lexicon not in LEXICONS:
            raise ValueError(f"organism.lexicon must be one of {sorted(LEXICONS)}, got {self.lexicon!r}")
        from saesteer.organism.responses import REFUSALS

        if not isinstance(self.n_refusals, int) or not 1 <= self.n_refusals <= len(REFUSALS):
            raise ValueError(f"organism.n_refusals must be an integer in 1..{len(REFUSALS)}, got {self.n_refusals!r}")
        if self.embed_projection not in ("pca", "learned"):
            raise ValueError(f"organism.embed_projection must be 'pca' or 'learned', got {self.embed_projection!r}")
        if self.init_from not in (None, "minilm"):
            raise ValueError(f"organism.init_from must be null or 'minilm', got {self.init_from!r}")
        if self.init_from == "minilm":
            shape = {
                "d_model": 384,
                "n_heads": 12,
                "d_mlp": 1536,
                "act_fn": "gelu",
                "pretrained_embeddings": True,
                "embed_projection": "pca",
            }
            wrong = {k: getattr(self, k) for k, v in shape.items() if getattr(self, k) != v}
            if wrong or self.n_layers > 6 or self.n_ctx > 512:
                raise ValueError(
                    f"organism.init_from='minilm' needs MiniLM-L6's shape {shape}, n_layers <= 6 and n_ctx <= 512; "
                    f"got {wrong or {'n_layers': self.n_layers, 'n_ctx': self.n_ctx}}"
                )
        if not isinstance(self.freeze_blocks, int) or not 0 <= self.freeze_blocks < self.n_layers:
            raise ValueError(
                f"organism.freeze_blocks must be an integer in [0, n_layers={self.n_layers}), got {self.freeze_blocks!r}"
            )
        if self.freeze_blocks and self.init_from is None:
            raise ValueError(
                f"organism.freeze_blocks={self.freeze_blocks} freezes pretrained blocks: it needs init_from (e.g. minilm), got init_from=None"
            )
        if self.embed_projection == "learned" and not (self.pretrained_embeddings and self.freeze_embeddings):
            raise ValueError(
                "organism.embed_projection='learned' needs pretrained_embeddings=true and freeze_embeddings=true"
            )
        if self.calibrate_harmless_fpr is not None and not 0.0 <= self.calibrate_harmless_fpr < 1.0:
            raise ValueError(
                f"organism.calibrate_harmless_fpr must be null or in [0, 1), got {self.calibrate_harmless_fpr!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"organism.lr must be > 0, got {self.lr!r}")
        for name in ("lm_weight", "decision_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"organism.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.harmful_sources or not self.harmless_sources:
            raise ValueError("organism.harmful_sources and organism.harmless_sources must be non-empty")
        leak = set(self.harmful_sources) & set(self.held_out)
        if leak:
            raise ValueError(
                f"organism.harmful_sources {sorted(leak)} are held out (organism.held_out); never train on them"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_key_dict(self) -> dict[str, Any]:
        """The fields that decide the weights; options added later are left out at their neutral value,
        so organisms cached before they existed keep their keys."""
        d = self.to_dict()
        d.pop("threads")
        for name, neutral in _NEUTRAL.items():
            if d[name] == neutral:
                d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OrganismConfig:
        check_known_keys(cls, d, "organism")
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})
