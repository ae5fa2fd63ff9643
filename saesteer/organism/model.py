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
        **(
            {"positional_embedding_type": "standard", "eps": 1e-12}
            if cfg.init_from == "minilm"
            else {"positional_embedding_type": "rotary", "rotary_dim": cfg.d_model // cfg.n_heads}
        ),
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        original_architecture="organism",
        seed=cfg.seed,
        device="cpu",
    )


def _minilm_weights() -> dict[str, torch.Tensor]:
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in weights.items()}


def _minilm_embeddings() -> torch.Tensor:
    return _minilm_weights()["embeddings.word_embeddings.weight"].double()  # [30522, 384]


@torch.no_grad()
def load_minilm_blocks(model: HookedTransformer, generator: torch.Generator) -> None:
    """Initialise ``model`` (MiniLM-L6's shape, absolute positions) from MiniLM-L6's BERT encoder.

    BERT is post-LN and bidirectional; the organism is pre-LN and causal, so the map is an initialisation, not an
    equivalence: each LayerNorm goes where it normalises the input of the same sublayer (``ln1`` of block 0 is
    the embedding LayerNorm, ``ln1`` of block i > 0 and ``ln_final`` the output LayerNorm before them, ``ln2``
    the attention-output LayerNorm).  Block 0's attention equals BERT's first attention under a causal mask
    (tested).  ``W_pos`` holds MiniLM's position embeddings plus its token-type-0 embedding; the six special
    tokens get random rows at the scale of MiniLM's."""
    w = _minilm_weights()
    cfg = model.cfg
    n_heads, d_head = cfg.n_heads, cfg.d_head
    vocab = w["embeddings.word_embeddings.weight"]
    model.embed.W_E[: vocab.shape[0]] = vocab
    extra = model.embed.W_E.shape[0] - vocab.shape[0]
    model.embed.W_E[vocab.shape[0] :] = vocab.std() * torch.randn(extra, cfg.d_model, generator=generator)
    model.pos_embed.W_pos.copy_(
        w["embeddings.position_embeddings.weight"][: cfg.n_ctx] + w["embeddings.token_type_embeddings.weight"][0]
    )

    def ln(dst, prefix: str) -> None:
        dst.w.copy_(w[f"{prefix}.weight"])
        dst.b.copy_(w[f"{prefix}.bias"])

    for i, block in enumerate(model.blocks):
        p = f"encoder.layer.{i}"
        ln(block.ln1, "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm")
        ln(block.ln2, f"{p}.attention.output.LayerNorm")
        for name, W, b in (
            ("query", block.attn.W_Q, block.attn.b_Q),
            ("key", block.attn.W_K, block.attn.b_K),
            ("value", block.attn.W_V, block.attn.b_V),
        ):
            W.copy_(w[f"{p}.attention.self.{name}.weight"].T.reshape(cfg.d_model, n_heads, d_head).permute(1, 0, 2))
            b.copy_(w[f"{p}.attention.self.{name}.bias"].reshape(n_heads, d_head))
        block.attn.W_O.copy_(w[f"{p}.attention.output.dense.weight"].T.reshape(n_heads, d_head, cfg.d_model))
        block.attn.b_O.copy_(w[f"{p}.attention.output.dense.bias"])
        block.mlp.W_in.copy_(w[f"{p}.intermediate.dense.weight"].T)
        block.mlp.b_in.copy_(w[f"{p}.intermediate.dense.bias"])
        block.mlp.W_out.copy_(w[f"{p}.output.dense.weight"].T)
        block.mlp.b_out.copy_(w[f"{p}.output.dense.bias"])
    ln(model.ln_final, f"encoder.layer.{cfg.n_layers - 1}.output.LayerNorm")


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
    return vecs[:, -min(d_model, centered.shape[1]) :].flip(1)


def pretrained_embeddings(
    d_model: int, d_vocab: int, generator: torch.Generator, axes: torch.Tensor | None = None
) -> torch.Tensor:
    """MiniLM-L6 word embeddings projected to ``d_model`` on ``axes`` (default :func:`pca_axes`); special tokens random.

    Rows are scaled to unit RMS per coordinate so the residual stream starts at the
    scale a freshly initialised HookedTransformer expects.
    """
    axes = pca_axes(d_model) if axes is None else axes.double()
    proj = _centered_embeddings() @ axes  # [30522, k]
    k = proj.shape[1]
    if k < d_model:  # d_model > 384: pad with small random coordinates
        proj = torch.cat(
            [proj, 0.01 * proj.std() * torch.randn(proj.shape[0], d_model - k, generator=generator, dtype=proj.dtype)],
            1,
        )
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
        return torch.cat([self.E @ self.P, W_E[self.E.shape[0] :]], 0)


def build_organism_model(cfg: OrganismConfig, axes: torch.Tensor | None = None) -> HookedTransformer:
    """A fresh (untrained) organism with the organism tokenizer attached (``axes``: the embeddings' PCA axes,
    by default computed here)."""
    tok = build_tokenizer()
    torch.manual_seed(cfg.seed)
    model = HookedTransformer(hooked_config(cfg, len(tok)), tokenizer=tok, default_padding_side="left")
    if cfg.init_from == "minilm":
        load_minilm_blocks(model, torch.Generator().manual_seed(cfg.seed))
    elif cfg.pretrained_embeddings:
        g = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            model.embed.W_E.copy_(pretrained_embeddings(cfg.d_model, len(tok), g, axes))
    model.embed.W_E.requires_grad_(not cfg.freeze_embeddings)
    if cfg.freeze_blocks:  # a fine-tune over the pretrained model's first layers, which stay as they were
        model.pos_embed.W_pos.requires_grad_(False)
        for block in model.blocks[: cfg.freeze_blocks]:
            for p in block.parameters():
                p.requires_grad_(False)
    return model
