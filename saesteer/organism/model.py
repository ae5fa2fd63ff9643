"""The organism's architecture: a HookedTransformer with pretrained token embeddings."""

from __future__ import annotations

import logging

import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saesteer.organism.config import OrganismConfig
from saesteer.organism.tokenizer import build_tokenizer, minilm_dir

log = logging.getLogger(__name__)

ORGANISM_MODEL_NAME = "organism"


def hooked_config(cfg: OrganismConfig, d_vocab: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        model_name=ORGANISM_MODEL_NAME,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads,
        d_mlp=cfg.d_mlp,
        d_vocab=d_vocab,
        n_ctx=cfg.n_ctx,
        act_fn=cfg.act_fn,
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=cfg.d_model // cfg.n_heads,
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        original_architecture="organism",
        seed=cfg.seed,
        device="cpu",
    )


def _minilm_embeddings() -> torch.Tensor:
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    return weights[key].double()  # [30522, 384]


def _centered_embeddings() -> torch.Tensor:
    """MiniLM-L6's word embeddings minus their mean row: [30522, 384] (float64)."""
    emb = _minilm_embeddings()
    return emb - emb.mean(0, keepdim=True)


def pca_axes(d_model: int) -> torch.Tensor:
    """The top ``min(d_model, 384)`` principal axes of MiniLM-L6's word embeddings: [384, k] (float64).

    Each axis's sign is whatever the eigensolver returns, which can differ between LAPACK
    builds: a bundled organism stores the axes it was trained with (:mod:`saesteer.organism.bundle`)."""
    centered = _centered_embeddings()
    _, vecs = torch.linalg.eigh(centered.T @ centered)  # principal axes, ascending
    return vecs[:, -min(d_model, centered.shape[1]):].flip(1)


def pretrained_embeddings(d_model: int, d_vocab: int, generator: torch.Generator, axes: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM-L6 word embeddings projected to ``d_model`` on ``axes`` (default :func:`pca_axes`); special tokens random.

    Rows are scaled to unit RMS per coordinate so the residual stream starts at the
    scale a freshly initialised HookedTransformer expects.
    """
    axes = pca_axes(d_model) if axes is None else axes.double()
    proj = _centered_embeddings() @ axes  # [30522, k]
    k = proj.shape[1]
    if k < d_model:  # d_model > 384: pad with small random coordinates
        proj = torch.cat([proj, 0.01 * proj.std() * torch.randn(proj.shape[0], d_model - k, generator=generator, dtype=proj.dtype)], 1)
    proj = proj / proj.pow(2).mean().sqrt()
    out = torch.randn(d_vocab, d_model, generator=generator, dtype=torch.float64)
    out[: proj.shape[0]] = proj
    return out.float()


class LearnedProjection(torch.nn.Module):
    """A parametrization of ``W_E``: MiniLM-L6's 384-d word embeddings (frozen, centred) times a trained
    [384, d_model] map, initialised to the PCA projection of :func:`pretrained_embeddings` (so training starts
    from the ``embed_projection="pca"`` organism); rows past MiniLM's vocabulary (special tokens) are kept."""

    def __init__(self, d_model: int, axes: torch.Tensor | None = None) -> None:
        super().__init__()
        if d_model > 384:
            raise ValueError(f"a learned embedding projection needs d_model <= 384 (MiniLM's width), got {d_model}")
        centered = _centered_embeddings()
        axes = pca_axes(d_model) if axes is None else axes.double()
        scale = (centered @ axes).pow(2).mean().sqrt()
        self.register_buffer("E", centered.float(), persistent=False)  # [30522, 384]
        self.P = torch.nn.Parameter((axes / scale).float())  # [384, d_model]

    def forward(self, W_E: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.E @ self.P, W_E[self.E.shape[0]:]], 0)


def build_organism_model(cfg: OrganismConfig, axes: torch.Tensor | None = None) -> HookedTransformer:
    """A fresh (untrained) organism with the organism tokenizer attached (``axes``: the embeddings' PCA axes,
    by default computed here)."""
    tok = build_tokenizer()
    torch.manual_seed(cfg.seed)
    model = HookedTransformer(hooked_config(cfg, len(tok)), tokenizer=tok, default_padding_side="left")
    if cfg.pretrained_embeddings:
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            model.embed.W_E.copy_(pretrained_embeddings(cfg.d_model, len(tok), g, axes))
    model.embed.W_E.requires_grad_(not cfg.freeze_embeddings)
    return model
