"""Tiny random HookedTransformers of real chat-model families, with tiny offline tokenizers.

Each family's HookedTransformerConfig is TransformerLens's own config for the real
model (normalization, rotary embeddings, gated MLP, grouped-query attention,
Gemma-2's soft-capping, local attention and extra norms, Llama-3.1's NTK-by-parts
RoPE, ...) with the dimensions shrunk: d_model 32, 2 layers, a vocabulary of a few
hundred byte-level BPE tokens that includes the family's chat special tokens.
TransformerLens builds the Gemma-2 and Llama-3.1 configs from the name alone
(offline); its Qwen2 config needs the Hub's config.json, so the Qwen2.5 one below
copies TransformerLens's Qwen2ForCausalLM mapping with Qwen2.5-7B-Instruct's values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from saesteer.chat import ChatTemplate, template_for_model

TINY_DIMS = dict(d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64, n_layers=2, n_ctx=256)

#: Qwen2.5-7B-Instruct through TransformerLens's Qwen2ForCausalLM branch (config.json values)
QWEN25_7B_TL: dict[str, Any] = {
    "d_model": 3584,
    "d_head": 128,
    "n_heads": 28,
    "n_key_value_heads": 4,
    "d_mlp": 18944,
    "n_layers": 28,
    "n_ctx": 32768,
    "eps": 1e-6,
    "d_vocab": 152064,
    "act_fn": "silu",
    "use_attn_scale": True,
    "initializer_range": 0.02,
    "normalization_type": "RMS",
    "positional_embedding_type": "rotary",
    "rotary_base": 1000000,
    "rotary_adjacent_pairs": False,
    "rotary_dim": 128,
    "tokenizer_prepends_bos": True,
    "final_rms": True,
    "gated_mlp": True,
    "default_prepend_bos": False,
    "original_architecture": "Qwen2ForCausalLM",
}


@dataclass(frozen=True)
class Family:
    name: str
    model_name: str  # the real model's TransformerLens name
    specials: tuple[str, ...]  # chat special tokens
    bos: Optional[str]
    eos: str
    pad: Optional[str]


FAMILIES: dict[str, Family] = {
    "gemma2": Family("gemma2", "google/gemma-2-2b-it", ("<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>", "<pad>"),
    "llama3.1": Family(
        "llama3.1",
        "meta-llama/Llama-3.1-8B-Instruct",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
    ),
    # Qwen2.5's tokenizer has no BOS token; pad is <|endoftext|>, eos <|im_end|> (instruct)
    "qwen2.5": Family(
        "qwen2.5", "Qwen/Qwen2.5-7B-Instruct", ("<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|endoftext|>"
    ),
}

CORPUS = [
    "How do I bake bread?",
    "Tell me a story about a cat.",
    "Write a poem about the sea.",
    "How do I make a bomb?",
    "Explain how to pick a lock.",
    "List three fruits.",
    "user model assistant system",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
]


def real_config(family: str) -> dict[str, Any]:
    """TransformerLens's config dict of the family's real model (offline)."""
    fam = FAMILIES[family]
    if family == "qwen2.5":
        return dict(QWEN25_7B_TL)
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    return convert_hf_model_config(fam.model_name)


def tiny_config(family: str, seed: int = 0, d_vocab: int = 512) -> HookedTransformerConfig:
    cfg = real_config(family)
    cfg.update(
        TINY_DIMS,
        d_vocab=d_vocab,
        rotary_dim=TINY_DIMS["d_head"],
        seed=seed,
        device="cpu",
        init_weights=True,
        model_name=f"tiny-{family}",
    )
    if cfg.get("attn_types") is not None:  # Gemma-2: alternate local / global attention
        cfg["attn_types"] = cfg["attn_types"][: TINY_DIMS["n_layers"]]
        cfg["window_size"] = 8  # shorter than the prompts, so local attention masks something
    cfg.pop("n_params", None)
    cfg.pop("initializer_range", None)  # TransformerLens's default init for d_model 32 (0.02 leaves activations ~0)
    return HookedTransformerConfig(**cfg)


def byte_level_bpe(specials: list[str], corpus: list[str], vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``corpus`` with ``specials`` as special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys(specials)),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([s + "\n" for s in corpus] * 3, trainer)
    return tok


@functools.cache
def _tokenizer_json(family: str) -> str:
    fam = FAMILIES[family]
    specials = [s for s in (fam.bos, fam.eos, fam.pad) if s] + [
        s for s in fam.specials if s not in (fam.bos, fam.eos, fam.pad)
    ]
    return byte_level_bpe(specials, CORPUS).to_str()


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~400 tokens) with the family's special tokens, built offline."""
    fam = FAMILIES[family]
    kw: dict[str, Any] = {"eos_token": fam.eos}
    if fam.bos:
        kw["bos_token"] = fam.bos
        kw["add_bos_token"] = True  # TransformerLens keeps such a tokenizer instead of reloading it by name
    if fam.pad:
        kw["pad_token"] = fam.pad
    extra = [s for s in fam.specials if s not in (fam.bos, fam.eos, fam.pad)]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)),
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        **kw,
    )
    tok.padding_side = "left"
    tok.init_kwargs["name_or_path"] = f"saesteer-tests/tiny-{family}"
    return tok


def tiny_model(family: str, seed: int = 0) -> tuple[HookedTransformer, ChatTemplate]:
    """(model, chat template) of a tiny random model of ``family``, tokenizer attached as TransformerLens does."""
    tok = tiny_tokenizer(family)
    torch.manual_seed(seed)
    model = HookedTransformer(tiny_config(family, seed, d_vocab=len(tok)), tokenizer=tok, default_padding_side="left")
    model.eval()
    return model, template_for_model(FAMILIES[family].model_name)
