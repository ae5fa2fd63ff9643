"""Chat templates as data, and tokenization with exact instruction positions.

A :class:`ChatTemplate` renders one user turn with the generation prompt as
``prefix + instruction + suffix``.  The *suffix* is the post-instruction text
(end of the user turn plus the assistant header), whose tokens are the
"post-instruction positions" where Arditi et al. 2024 read refusal directions.

:func:`encode_chat` tokenizes prefix, instruction and suffix **separately** and
concatenates the ids, so the instruction span and the post-instruction
positions are exact by construction (no offset mapping, no guessing).  Rows are
left-padded, hence the post-instruction tokens sit at positions
``-n_post .. -1`` of every row and the last instruction token at
``t_inst = -n_post - 1``.  Where the pieces meet at special tokens or newlines
(the Llama-3, Qwen, Gemma and Phi-3 templates) the ids normally equal those of
tokenizing the whole string; SentencePiece tokenizers that add a dummy-prefix
space (Llama-2, Mistral) can differ by one token at the piece boundaries.

The templates reproduce each family's official Hugging Face chat template for a
single user turn with ``add_generation_prompt=True``, minus the BOS token,
which :func:`encode_chat` adds as an id when ``template.bos`` is set.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ChatEncodingError",
    "ChatTemplate",
    "EncodedChat",
    "TEMPLATES",
    "TemplateError",
    "encode_chat",
    "format_prompt",
    "get_template",
    "post_instruction_positions",
    "suffix_ids",
    "template_for_model",
]


class TemplateError(ValueError):
    """No chat template is known for a model, or a template is malformed."""


class ChatEncodingError(ValueError):
    """Prompts cannot be tokenized as requested (too long, empty instruction, no pad id)."""


@dataclass(frozen=True)
class ChatTemplate:
    """One user turn with generation prompt: ``prefix + instruction + suffix``.

    Attributes:
        name: registry name.
        prefix: text before the instruction (without the BOS token).
        suffix: post-instruction text, up to where the assistant's reply starts.
        bos: prepend the tokenizer's BOS id (if it has one) when encoding.
        system_prefix: prefix used instead of ``prefix`` when a system prompt is
            given; contains ``{system}`` once.  None: no system prompt support.
        refusal_tokens: the first tokens of this family's refusals ("I", "As"); the
            refusal score is their log-odds at the last prompt position.
    """

    name: str
    prefix: str
    suffix: str
    bos: bool = True
    system_prefix: str | None = None
    refusal_tokens: tuple[str, ...] = ("I", "As")

    def __post_init__(self) -> None:
        if not self.suffix:
            raise TemplateError(f"template {self.name!r}: suffix is empty; expected the post-instruction text")
        if self.system_prefix is not None and self.system_prefix.count("{system}") != 1:
            raise TemplateError(
                f"template {self.name!r}: system_prefix must contain '{{system}}' exactly once, got {self.system_prefix!r}"
            )

    def prefix_for(self, system: str | None = None) -> str:
        """The prefix to use, with ``system`` filled in when given."""
        if system is None:
            return self.prefix
        if self.system_prefix is None:
            raise TemplateError(f"template {self.name!r} does not support a system prompt (got system={system[:40]!r})")
        return self.system_prefix.replace("{system}", system)

    def format(self, instruction: str, response: str = "", system: str | None = None) -> str:
        """``prefix + instruction + suffix + response`` (no BOS token)."""
        return self.prefix_for(system) + instruction + self.suffix + response


# ----------------------------------------------------------------------------- registry

_LLAMA3_HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"
_LLAMA31_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
_LLAMA3_SUFFIX = "<|eot_id|>" + _LLAMA3_HEADER.format(role="assistant")
_CHATML_USER = "<|im_start|>user\n"
_CHATML_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
_CHATML_SYSTEM = "<|im_start|>system\n{system}<|im_end|>\n" + _CHATML_USER
_QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."
_QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_ALL: tuple[ChatTemplate, ...] = (
    # Meta-Llama-3-*-Instruct.
    ChatTemplate(
        "llama3",
        prefix=_LLAMA3_HEADER.format(role="user"),
        suffix=_LLAMA3_SUFFIX,
        system_prefix=_LLAMA3_HEADER.format(role="system") + "{system}<|eot_id|>" + _LLAMA3_HEADER.format(role="user"),
    ),
    # Llama-3.1/3.2/3.3-Instruct: the official template always emits a system block
    # with the knowledge cutoff and a date (26 Jul 2024 unless date_string is passed;
    # Llama-3.2 renders today's date instead, which cannot be reproduced).
    ChatTemplate(
        "llama3.1",
        prefix=_LLAMA3_HEADER.format(role="system")
        + _LLAMA31_SYSTEM
        + "<|eot_id|>"
        + _LLAMA3_HEADER.format(role="user"),
        suffix=_LLAMA3_SUFFIX,
        system_prefix=_LLAMA3_HEADER.format(role="system")
        + _LLAMA31_SYSTEM
        + "{system}<|eot_id|>"
        + _LLAMA3_HEADER.format(role="user"),
    ),
    # Llama-2-*-chat (HF template: bos + "[INST] " + content.strip() + " [/INST]").
    ChatTemplate(
        "llama2",
        prefix="[INST] ",
        suffix=" [/INST]",
        system_prefix="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n",
    ),
    # Gemma / Gemma-2 / Gemma-3 -it (no system role in Gemma-1/2).
    ChatTemplate("gemma", prefix="<start_of_turn>user\n", suffix="<end_of_turn>\n<start_of_turn>model\n"),
    # Qwen2.5-*-Instruct: a default system prompt is inserted when none is given.
    ChatTemplate(
        "qwen2.5",
        prefix=_CHATML_SYSTEM.replace("{system}", _QWEN25_DEFAULT_SYSTEM),
        suffix=_CHATML_SUFFIX,
        bos=False,
        system_prefix=_CHATML_SYSTEM,
    ),
    # Qwen1.5 / Qwen2 -Instruct/-Chat: same, with the older default system prompt.
    ChatTemplate(
        "qwen2",
        prefix=_CHATML_SYSTEM.replace("{system}", _QWEN2_DEFAULT_SYSTEM),
        suffix=_CHATML_SUFFIX,
        bos=False,
        system_prefix=_CHATML_SYSTEM,
    ),
    # SmolLM2-*-Instruct: ChatML with its default system prompt (no full stop) when none is given; its
    # tokenizer's BOS is <|im_start|>, which the template never adds.  Its refusals open with "I" ("I'm sorry").
    ChatTemplate(
        "smollm2",
        prefix=_CHATML_SYSTEM.replace("{system}", _SMOLLM2_DEFAULT_SYSTEM),
        suffix=_CHATML_SUFFIX,
        bos=False,
        system_prefix=_CHATML_SYSTEM,
        refusal_tokens=("I",),
    ),
    # Plain ChatML without a default system prompt: Qwen(1)-chat as in Arditi et al.,
    # Yi-*-Chat, Qwen3 (thinking mode on, the default).
    ChatTemplate("chatml", prefix=_CHATML_USER, suffix=_CHATML_SUFFIX, bos=False, system_prefix=_CHATML_SYSTEM),
    # Phi-3 / Phi-3.5 -instruct (the current template adds no BOS).
    ChatTemplate(
        "phi3",
        prefix="<|user|>\n",
        suffix="<|end|>\n<|assistant|>\n",
        bos=False,
        system_prefix="<|system|>\n{system}<|end|>\n<|user|>\n",
    ),
    # Mistral-7B-Instruct-v0.1/v0.2, Mixtral-8x7B-Instruct: "<s>[INST] {instruction} [/INST]".
    ChatTemplate("mistral", prefix="[INST] ", suffix=" [/INST]", system_prefix="[INST] {system}\n\n"),
    # Mistral-7B-Instruct-v0.3: no space before [/INST].
    ChatTemplate("mistral-v0.3", prefix="[INST] ", suffix="[/INST]", system_prefix="[INST] {system}\n\n"),
    # saesteer's model organism; its tokenizer has <|user|> <|end|> <|assistant|> <|start|>
    # as special tokens, so the suffix is exactly three tokens.
    ChatTemplate(
        "organism", prefix="<|user|> ", suffix=" <|end|> <|assistant|> <|start|>", bos=False, refusal_tokens=("i",)
    ),
)

#: All known templates by name.
TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in _ALL}


def get_template(name: str) -> ChatTemplate:
    """The registered template ``name``."""
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(TEMPLATES), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise TemplateError(f"unknown chat template {name!r}; known templates: {', '.join(TEMPLATES)}{hint}") from None


# (pattern on the lowercased model name, template name or callable, chat-model marker)
_CHAT_MARKER = re.compile(r"instruct|chat|(^|[-_/])it($|[-_/.])")
_FAMILIES: tuple[tuple[re.Pattern[str], str, re.Pattern[str] | None], ...] = (
    (re.compile(r"organism"), "organism", None),
    (re.compile(r"smollm2"), "smollm2", re.compile(r"instruct|^smollm2(_safe)?$")),  # -Instruct, or saesteer's names
    (re.compile(r"gemma"), "gemma", _CHAT_MARKER),
    (re.compile(r"llama[-_ ]?3\.[1-9]"), "llama3.1", _CHAT_MARKER),
    (re.compile(r"llama[-_ ]?3"), "llama3", _CHAT_MARKER),
    (re.compile(r"llama[-_ ]?2"), "llama2", _CHAT_MARKER),
    (re.compile(r"qwen2\.5"), "qwen2.5", _CHAT_MARKER),
    (re.compile(r"qwen(1\.5|2)"), "qwen2", _CHAT_MARKER),
    (re.compile(r"qwen3"), "chatml", re.compile(r"^(?!.*base)")),  # Qwen3-8B is chat; Qwen3-8B-Base is not
    (re.compile(r"qwen"), "chatml", _CHAT_MARKER),
    (re.compile(r"(^|/)yi-"), "chatml", _CHAT_MARKER),
    (re.compile(r"phi-?3"), "phi3", _CHAT_MARKER),
    (re.compile(r"mi[sx]tral-7b.*v0\.3"), "mistral-v0.3", _CHAT_MARKER),
    (re.compile(r"mistral-7b|mixtral-8x"), "mistral", _CHAT_MARKER),
)


def template_for_model(model_name: str, override: str | ChatTemplate | None = None) -> ChatTemplate:
    """The chat template of ``model_name`` (TransformerLens or Hugging Face name).

    ``override`` (a template or a registered name) wins over the name-based
    lookup.  Raises TemplateError for unknown and base (non-chat) models.
    """
    if isinstance(override, ChatTemplate):
        return override
    if override is not None:
        return get_template(override)
    if not isinstance(model_name, str) or not model_name:
        raise TemplateError(f"model_name must be a non-empty str, got {model_name!r}")
    name = model_name.lower()
    how_to = f"pass one with model.template=<name> (known: {', '.join(TEMPLATES)})"
    for pattern, template, marker in _FAMILIES:
        if pattern.search(name):
            if marker is not None and not marker.search(name):
                raise TemplateError(
                    f"no chat template is known for model {model_name!r}: it looks like a base (non-chat) model; "
                    f"use its instruct/chat variant or {how_to}"
                )
            return TEMPLATES[template]
    raise TemplateError(f"no chat template is known for model {model_name!r}; {how_to}")


def format_prompt(template: ChatTemplate, instruction: str, response: str = "", system: str | None = None) -> str:
    """The prompt string ``prefix + instruction + suffix + response`` (without BOS)."""
    return template.format(instruction, response=response, system=system)


def post_instruction_positions(n_post: int) -> list[int]:
    """Negative positions of the ``n_post`` post-instruction tokens: ``[-n_post, ..., -1]``."""
    if n_post < 1:
        raise ChatEncodingError(f"n_post={n_post}: expected >= 1")
    return list(range(-n_post, 0))


# ----------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncodedChat:
    """A left-padded batch of chat prompts with exact instruction positions.

    Attributes:
        tokens: ``[B, T]`` long token ids, left-padded.
        attention_mask: ``[B, T]`` long, 1 on real tokens, 0 on padding.
        n_post: number of post-instruction tokens (same for every row).
        n_prefix: number of tokens before the instruction (BOS included).
        lengths: ``[B]`` long, real tokens per row.
        instruction_lengths: ``[B]`` long, instruction tokens per row.
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    n_post: int
    n_prefix: int
    lengths: torch.Tensor
    instruction_lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def t_inst(self) -> int:
        """Position of the last instruction token (negative index, same in every row)."""
        return -self.n_post - 1

    @property
    def post_positions(self) -> list[int]:
        """Negative positions of the post-instruction tokens."""
        return post_instruction_positions(self.n_post)

    @property
    def instruction_mask(self) -> torch.Tensor:
        """``[B, T]`` bool, True exactly on each row's instruction tokens."""
        T = self.tokens.shape[1]
        pos = torch.arange(T, device=self.tokens.device)
        end = T - self.n_post
        start = end - self.instruction_lengths.to(self.tokens.device)[:, None]
        return (pos[None, :] >= start) & (pos[None, :] < end)

    def to(self, device: str | torch.device) -> EncodedChat:
        """A copy with all tensors on ``device``."""
        return replace(
            self,
            tokens=self.tokens.to(device),
            attention_mask=self.attention_mask.to(device),
            lengths=self.lengths.to(device),
            instruction_lengths=self.instruction_lengths.to(device),
        )


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    if callable(tokenizer):
        out = tokenizer(texts, add_special_tokens=False)
        ids = out["input_ids"] if not isinstance(out, list) else out
    else:
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return [list(map(int, row)) for row in ids]


def suffix_ids(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Token ids of the template's post-instruction suffix."""
    return _tokenize(tokenizer, [template.suffix])[0]


def head_ids(tokenizer: Any, template: ChatTemplate, system: str | None = None) -> list[int]:
    """Token ids before the instruction: the BOS id (if ``template.bos`` and the tokenizer has one) and the prefix."""
    bos_id = getattr(tokenizer, "bos_token_id", None) if template.bos else None
    prefix = template.prefix_for(system)
    return ([int(bos_id)] if bos_id is not None else []) + (_tokenize(tokenizer, [prefix])[0] if prefix else [])


def encode_chat(
    tokenizer: Any,
    template: ChatTemplate,
    instructions: Sequence[str],
    *,
    max_length: int | None = None,
    pad_token_id: int | None = None,
    system: str | None = None,
    length_note: str | None = None,
    indices: Sequence[int] | None = None,
) -> EncodedChat:
    """Tokenize instructions with ``template`` into a left-padded batch.

    Each row is ``[bos] + ids(prefix) + ids(instruction) + ids(suffix)``, the BOS
    id only if ``template.bos`` and the tokenizer has one.  Prompts longer than
    ``max_length`` raise (no silent truncation; ``length_note`` says where the limit
    comes from).  The pad id is ``pad_token_id``, else the tokenizer's pad id, else its EOS id.
    ``indices``: each instruction's index in the caller's full prompt list (a length-sorted
    batch), so that errors name the prompt as the user numbered it, not its place in the batch.
    """
    if isinstance(instructions, str):
        raise ChatEncodingError("instructions must be a sequence of strings, got a single string; wrap it in a list")
    instructions = list(instructions)
    if not instructions:
        raise ChatEncodingError("instructions is empty; expected at least one prompt")
    for i, text in enumerate(instructions):
        if not isinstance(text, str):
            raise ChatEncodingError(f"instruction {i} is {type(text).__name__}, expected str")

    pad = pad_token_id
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ChatEncodingError("the tokenizer has neither a pad nor an eos token; pass pad_token_id=")

    head = head_ids(tokenizer, template, system)
    post_ids = suffix_ids(tokenizer, template)
    if not post_ids:
        raise ChatEncodingError(f"template {template.name!r}: suffix {template.suffix!r} tokenizes to no tokens")
    inst_ids = _tokenize(tokenizer, instructions)

    rows = []
    for i, ids in enumerate(inst_ids):
        if not ids:
            raise ChatEncodingError(
                f"instruction {i if indices is None else int(indices[i])} ({instructions[i][:40]!r}) tokenizes to no tokens"
            )
        row = head + ids + post_ids
        if max_length is not None and len(row) > max_length:
            note = f"{length_note}; " if length_note else ""
            raise ChatEncodingError(
                f"prompt {i if indices is None else int(indices[i])} is {len(row)} tokens long, more than max_length={max_length} "
                f"({note}instruction starts {instructions[i][:40]!r})"
            )
        rows.append(row)

    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, T - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, T - len(row) :] = 1
    return EncodedChat(
        tokens=tokens,
        attention_mask=mask,
        n_post=len(post_ids),
        n_prefix=len(head),
        lengths=torch.tensor([len(r) for r in rows], dtype=torch.long),
        instruction_lengths=torch.tensor([len(ids) for ids in inst_ids], dtype=torch.long),
    )


def resolve_template(model_name: str, template: str | ChatTemplate | None) -> ChatTemplate:
    if isinstance(template, ChatTemplate):
        return template
    if template:
        return get_template(template)
    return template_for_model(model_name)
