"""Hugging Face Llama models as TransformerLens HookedTransformers.

:func:`hooked_config_from_hf` maps a ``LlamaConfig`` (any size: SmolLM2, TinyLlama, a random test model) to a
``HookedTransformerConfig``: RMSNorm, rotary positions (half-split pairs, as Hugging Face's ``rotate_half``),
gated MLP, grouped-query attention when there are fewer key-value heads than heads, Llama-3 rope scaling when the
config asks for it.  :func:`hooked_from_hf` builds the HookedTransformer from a ``LlamaForCausalLM`` with
TransformerLens's own weight conversion and no weight processing (no LayerNorm folding, no centering), so its
logits equal the Hugging Face model's.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

log = logging.getLogger(__name__)

__all__ = ["LlamaConversionError", "hooked_config_from_hf", "hooked_from_hf", "hooked_from_state_dict"]


class LlamaConversionError(ValueError):
    """A Hugging Face config or model is not a Llama that TransformerLens can represent."""


def _rope_settings(hf_config: Any) -> tuple[float, dict[str, Any]]:
    """(rope base, TransformerLens NTK-by-parts settings) of a Llama config; raises on a rope type TransformerLens lacks."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    theta = getattr(hf_config, "rope_theta", None)
    if theta is None:
        theta = params.get("rope_theta", 10000.0)
    spec = {**params, **scaling}
    rope_type = str(spec.get("rope_type") or spec.get("type") or "default").lower()
    if rope_type == "default":
        return float(theta), {}
    if rope_type == "llama3":
        return float(theta), {
            "use_NTK_by_parts_rope": True,
            "NTK_original_ctx_len": int(
                spec.get("original_max_position_embeddings", hf_config.max_position_embeddings)
            ),
            "NTK_by_parts_low_freq_factor": float(spec.get("low_freq_factor", 1.0)),
            "NTK_by_parts_high_freq_factor": float(spec.get("high_freq_factor", 4.0)),
            "NTK_by_parts_factor": float(spec.get("factor", 1.0)),
        }
    raise LlamaConversionError(
        f"rope type {rope_type!r} has no TransformerLens equivalent; expected 'default' or 'llama3'"
    )


def hooked_config_from_hf(
    hf_config: Any, *, dtype: torch.dtype = torch.float32, device: str = "cpu", n_ctx: int | None = None
) -> HookedTransformerConfig:
    """The HookedTransformerConfig of a Hugging Face ``LlamaConfig``.

    ``n_ctx`` caps the context (the rotary tables are ``n_ctx x d_head``; SmolLM2 declares 8192); default: the
    config's ``max_position_embeddings``.  Raises LlamaConversionError for features TransformerLens lacks
    (attention or MLP biases, a head dimension other than ``hidden_size / num_attention_heads``, other rope types).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type != "llama":
        raise LlamaConversionError(f"expected a Llama config (model_type 'llama'), got model_type={model_type!r}")
    d_model, n_heads = int(hf_config.hidden_size), int(hf_config.num_attention_heads)
    d_head = d_model // n_heads
    head_dim = getattr(hf_config, "head_dim", None)
    if d_model % n_heads or (head_dim is not None and int(head_dim) != d_head):
        raise LlamaConversionError(
            f"head_dim={head_dim} with hidden_size={d_model} and {n_heads} heads: TransformerLens's Llama needs "
            "head_dim = hidden_size / num_attention_heads"
        )
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise LlamaConversionError("attention_bias / mlp_bias: the Llama conversion assumes no biases")
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    base, ntk = _rope_settings(hf_config)
    max_pos = int(hf_config.max_position_embeddings)
    return HookedTransformerConfig(
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=int(hf_config.intermediate_size),
        n_layers=int(hf_config.num_hidden_layers),
        n_ctx=min(max_pos, int(n_ctx)) if n_ctx else max_pos,
        eps=float(hf_config.rms_norm_eps),
        d_vocab=int(hf_config.vocab_size),
        act_fn=str(hf_config.hidden_act),
        n_key_value_heads=int(n_kv) if int(n_kv) != n_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=base,
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
        dtype=dtype,
        device=device,
        init_weights=False,
        **ntk,
    )


def hooked_from_state_dict(
    cfg: HookedTransformerConfig, state_dict: dict[str, torch.Tensor], tokenizer: Any = None
) -> HookedTransformer:
    """A HookedTransformer with ``cfg`` and a state dict in TransformerLens's format (no weight processing), in eval
    mode, left padding, ``tokenizer`` attached."""
    with warnings.catch_warnings():  # TransformerLens 3 deprecates HookedTransformer (still what saesteer runs)
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(
            cfg,
            tokenizer=tokenizer,
            move_to_device=False,
            default_padding_side="left" if tokenizer is not None else None,
        )
    # One load_state_dict call (TransformerLens's load_and_process_state_dict loads key by key, 6x slower);
    # no weight processing, so nothing else of it applies.  Only buffers (masks, rotary tables) may be missing.
    result = model.load_state_dict({k: v.to(cfg.dtype) for k, v in state_dict.items()}, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in buffers]
    if missing or result.unexpected_keys:
        raise LlamaConversionError(
            f"the converted weights do not fit the HookedTransformer: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )
    model.to(cfg.device, print_details=False)
    if tokenizer is not None:
        model.tokenizer.padding_side = "left"
    return model.eval()


def hooked_state_dict(hf_model: Any, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """The weights of a ``LlamaForCausalLM`` in TransformerLens's format (TransformerLens's Llama conversion)."""
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    with torch.no_grad():
        return {k: v.detach() for k, v in convert_llama_weights(hf_model, cfg).items()}


def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    n_ctx: int | None = None,
) -> HookedTransformer:
    """The HookedTransformer computing what the Hugging Face ``LlamaForCausalLM`` ``hf_model`` computes.

    The weights are copied in ``dtype`` onto ``device``; the model is in eval mode with left padding.
    """
    cfg = hooked_config_from_hf(hf_model.config, dtype=dtype, device=device, n_ctx=n_ctx)
    return hooked_from_state_dict(cfg, hooked_state_dict(hf_model, cfg), tokenizer)
