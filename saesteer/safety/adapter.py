"""A low-rank adapter (LoRA) on the attention and MLP output matrices of a band of layers.

For each adapted layer ``l`` and site the adapter adds ``scale * A_l @ B_l`` to one matrix:

- ``attn_out``: ``W_O[l]`` read as [n_heads * d_head, d_model]; ``A`` reads the heads' outputs ``hook_z``;
- ``mlp_out``: ``W_out[l]`` ([d_mlp, d_model]); ``A`` reads the MLP's hidden activations ``hook_post``.

``scale = alpha / rank``.  ``B`` starts at zero (LoRA's initialisation), so an untrained adapter is exactly
the base model.  The adapter runs as hooks (an :class:`~saesteer.interventions.Intervention`: ``steer(model,
[adapter])``, used for training) or merged into the weights in place (:meth:`LowRankAdapter.merge_into`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from transformer_lens import HookedTransformer

from saesteer.checks import choices
from saesteer.interventions import Intervention

#: The matrices an adapter can edit: each layer's attention output W_O or MLP output W_out.
AdapterSite = Literal["attn_out", "mlp_out"]
SITES: tuple[str, ...] = choices(AdapterSite)


def site_dims(model: HookedTransformer, site: str) -> tuple[int, int]:
    """(d_in, d_out) of the matrix ``site`` edits in ``model``."""
    cfg = model.cfg
    if site == "attn_out":
        return cfg.n_heads * cfg.d_head, cfg.d_model
    if site == "mlp_out":
        return cfg.d_mlp, cfg.d_model
    raise ValueError(f"adapter site must be one of {SITES}, got {site!r}")


def _hook_names(site: str, layer: int) -> tuple[str, str]:
    """(the hook the adapter reads, the hook it adds to) for ``site`` at ``layer``."""
    if site == "attn_out":
        return f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"
    return f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"


class LowRankAdapter(torch.nn.Module, Intervention):
    """``W <- W + (alpha / rank) * A_l @ B_l`` on each site's matrix of each layer in ``layers``."""

    order = -1  # part of the model: runs before any other intervention at the same hook

    def __init__(
        self,
        layers: Sequence[int],
        sites: Sequence[str],
        dims: dict[str, tuple[int, int]],
        rank: int,
        alpha: float,
        seed: int = 0,
    ) -> None:
        torch.nn.Module.__init__(self)
        self.layers = [int(l) for l in layers]
        self.sites = [str(s) for s in sites]
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"adapter layers must be distinct layer indices, got {list(layers)}")
        if not self.sites or len(set(self.sites)) != len(self.sites) or not set(self.sites) <= set(SITES):
            raise ValueError(f"adapter sites must be distinct names out of {SITES}, got {list(sites)}")
        if rank < 1:
            raise ValueError(f"adapter rank must be positive, got {rank}")
        self.rank, self.alpha = int(rank), float(alpha)
        self.dims = {s: (int(dims[s][0]), int(dims[s][1])) for s in self.sites}
        g = torch.Generator().manual_seed(seed)
        n = len(self.layers)
        self.A = torch.nn.ParameterDict()
        self.B = torch.nn.ParameterDict()
        for s in self.sites:
            d_in, d_out = self.dims[s]
            bound = 1.0 / math.sqrt(d_in)  # uniform(-1/sqrt(d_in), 1/sqrt(d_in)): the reads keep unit scale
            self.A[s] = torch.nn.Parameter((torch.rand(n, d_in, self.rank, generator=g) * 2 - 1) * bound)
            self.B[s] = torch.nn.Parameter(torch.zeros(n, self.rank, d_out))

    @classmethod
    def for_model(
        cls, model: HookedTransformer, layers: Sequence[int], sites: Sequence[str], rank: int, alpha: float, seed: int
    ) -> LowRankAdapter:
        bad = [l for l in layers if not 0 <= int(l) < model.cfg.n_layers]
        if bad:
            raise ValueError(f"adapter layers {bad} out of range for a model with {model.cfg.n_layers} layers")
        return cls(layers, sites, {s: site_dims(model, s) for s in sites}, rank, alpha, seed)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self, model: HookedTransformer) -> None:
        for s in self.sites:
            if site_dims(model, s) != self.dims[s]:
                raise ValueError(
                    f"adapter site {s} is {self.dims[s]} (d_in, d_out); this model has {site_dims(model, s)}"
                )
        bad = [l for l in self.layers if not 0 <= l < model.cfg.n_layers]
        if bad:
            raise ValueError(f"adapter layers {bad} out of range for a model with {model.cfg.n_layers} layers")

    # ------------------------------------------------------------------ as hooks
    def hooks(self, model: HookedTransformer) -> list:
        out = []
        for s in self.sites:
            for i, layer in enumerate(self.layers):
                read, write = _hook_names(s, layer)
                store: dict[str, torch.Tensor] = {}

                def grab(x: torch.Tensor, hook=None, store=store) -> None:
                    store["x"] = x

                def add(y: torch.Tensor, hook=None, store=store, s=s, i=i) -> torch.Tensor:
                    x = store.pop("x")
                    x = x.flatten(-2) if s == "attn_out" else x  # [.., n_heads, d_head] -> [.., n_heads * d_head]
                    A, B = self.A[s][i].to(x), self.B[s][i].to(x)
                    return y + (self.scale * ((x @ A) @ B)).to(y)

                out += [(read, grab), (write, add)]
        return out

    # ------------------------------------------------------------------ as weights
    def delta(self, site: str, i: int) -> torch.Tensor:
        """The weight update of the i-th adapted layer at ``site``: scale * A @ B [d_in, d_out] (float32)."""
        return self.scale * (self.A[site][i].detach().float() @ self.B[site][i].detach().float())

    @torch.no_grad()
    def merge_into(self, model: HookedTransformer) -> HookedTransformer:
        """Add every update to ``model``'s weights in place; returns ``model``."""
        self.validate(model)
        for s in self.sites:
            for i, layer in enumerate(self.layers):
                block = model.blocks[layer]
                W = block.attn.W_O if s == "attn_out" else block.mlp.W_out
                W += self.delta(s, i).reshape(W.shape).to(W)
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        """The factors by name (``attn_out.A`` [n_layers, d_in, rank], ``attn_out.B`` [n_layers, rank, d_out], ...)."""
        out = {}
        for s in self.sites:
            out[f"{s}.A"] = self.A[s].detach().cpu().contiguous()
            out[f"{s}.B"] = self.B[s].detach().cpu().contiguous()
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy factors named as :meth:`tensors` names them into this adapter (shapes must match)."""
        with torch.no_grad():
            for s in self.sites:
                for name, p in ((f"{s}.A", self.A[s]), (f"{s}.B", self.B[s])):
                    if name not in tensors or tuple(tensors[name].shape) != tuple(p.shape):
                        got = tuple(tensors[name].shape) if name in tensors else None
                        raise ValueError(f"adapter tensor {name}: expected shape {tuple(p.shape)}, got {got}")
                    p.copy_(tensors[name].to(p))

    def spec(self) -> dict:
        """What rebuilds an adapter of this shape (layers, sites, dims, rank, alpha)."""
        return {
            "layers": self.layers,
            "sites": self.sites,
            "dims": {s: list(d) for s, d in self.dims.items()},
            "rank": self.rank,
            "alpha": self.alpha,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> LowRankAdapter:
        dims = {s: (int(d[0]), int(d[1])) for s, d in spec["dims"].items()}
        return cls(spec["layers"], spec["sites"], dims, int(spec["rank"]), float(spec["alpha"]))
