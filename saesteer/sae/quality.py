"""How good an SAE is, on held-out chat tokens.

* ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over
  every real (non-pad) token, the mean taken over all of them;
* ``l0``: mean number of active latents per token;
* ``dead_fraction``: latents never active on any eval token;
* ``ce_loss_recovered``: ``(CE_zero - CE_spliced) / (CE_zero - CE_clean)``, where
  *spliced* replaces the hook activation by the SAE reconstruction (no error
  term) and *zero* by zeros; CE is the next-token loss over the dataset's
  ``loss_mask`` tokens (the responses, when the dataset has them), averaged over
  tokens.

Sums are accumulated in float64; the model and SAE run in their own dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from saesteer.chat import ChatTemplate
from saesteer.sae.load import check_sae_fits
from saesteer.unembed import logits as unembed_logits

log = logging.getLogger(__name__)


def limit_tokens(dataset, max_tokens: int):
    """The first rows of ``dataset`` holding at least ``max_tokens`` real tokens (all rows if fewer)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    counts = [sum(m) for m in dataset["attention_mask"]]
    total, n = 0, 0
    for c in counts:
        if total >= max_tokens:
            break
        total += c
        n += 1
    if total < max_tokens:
        log.info("quality: only %d held-out tokens available (asked for %d)", total, max_tokens)
    return dataset.select(range(n))


def _final_logits(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """Logits from final-layer residuals ``[n, d_model]``, as HookedTransformer.forward computes them."""
    return unembed_logits(model, resid[None])[0]


def _ce(
    model: HookedTransformer, tokens: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor, fwd_hooks: list
) -> tuple[float, int]:
    """Summed next-token cross-entropy over the targets flagged by ``loss_mask``, and their count.

    Runs the blocks with ``fwd_hooks`` and unembeds only the positions that carry a loss.
    """
    resid = model.run_with_hooks(tokens, attention_mask=attn, stop_at_layer=model.cfg.n_layers, fwd_hooks=fwd_hooks)
    m = loss_mask[:, 1:].bool()
    if not m.any():
        return 0.0, 0
    logits = _final_logits(model, resid[:, :-1][m]).float()
    return float(F.cross_entropy(logits, tokens[:, 1:][m], reduction="sum")), int(m.sum())


@torch.no_grad()
def sae_quality(
    model: HookedTransformer,
    sae: Any,
    template: Optional[ChatTemplate] = None,
    instructions: Optional[Sequence[str]] = None,
    responses: Optional[Sequence[str]] = None,
    *,
    dataset: Any = None,
    hook: Optional[str] = None,
    context_size: int = 64,
    eval_tokens: int = 20_000,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Quality metrics of ``sae`` at its hook of ``model`` on held-out conversations.

    Pass ``dataset`` (from :func:`saesteer.sae.fit.build_token_dataset`), or
    ``template`` + ``instructions`` (+ ``responses``) to build one with
    ``context_size``.  At most ``eval_tokens`` real tokens are used (whole rows).
    """
    from saesteer.sae.fit import build_token_dataset

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    hook = check_sae_fits(sae, model, hook)
    if dataset is None:
        if template is None or not instructions:
            raise ValueError("sae_quality needs dataset=, or template= and a non-empty list of instructions=")
        dataset = build_token_dataset(model, template, instructions, context_size, responses, seed=None)
    for col in ("input_ids", "attention_mask", "loss_mask"):
        if col not in dataset.column_names:
            raise ValueError(
                f"the eval dataset needs a {col!r} column (see build_token_dataset), got {dataset.column_names}"
            )
    dataset = limit_tokens(dataset.with_format(None), eval_tokens)
    was_training, sae_was_training = model.training, sae.training
    model.eval()
    sae.eval()
    device = model.cfg.device
    d_in = int(sae.cfg.d_in)
    n_tok = 0
    sum_x = torch.zeros(d_in, dtype=torch.float64)
    sum_x2 = 0.0
    sum_err2 = 0.0
    sum_l0 = 0.0
    fired = torch.zeros(int(sae.cfg.d_sae), dtype=torch.bool)
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_ce = 0
    store: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor, hook: Any) -> None:
        store["x"] = x.detach()

    def splice(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return sae.decode(sae.encode(x)).to(x.dtype)

    def zero(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.zeros_like(x)

    rows = range(0, len(dataset), batch_size)
    try:
        for start in tqdm(rows, desc="SAE quality", disable=not progress, leave=False):
            batch = dataset[start : start + batch_size]
            tokens = torch.tensor(batch["input_ids"], dtype=torch.long, device=device)
            attn = torch.tensor(batch["attention_mask"], dtype=torch.long, device=device)
            loss_mask = torch.tensor(batch["loss_mask"], dtype=torch.long, device=device)
            c, n = _ce(model, tokens, attn, loss_mask, [(hook, grab)])
            ce["clean"] += c
            n_ce += n
            for name, fn in (("spliced", splice), ("zero", zero)):
                ce[name] += _ce(model, tokens, attn, loss_mask, [(hook, fn)])[0]
            real = attn.bool()
            x = store["x"][real]
            acts = sae.encode(x)
            recon = sae.decode(acts)
            xd = x.double().cpu()
            sum_x += xd.sum(0)
            sum_x2 += float(xd.pow(2).sum())
            sum_err2 += float((recon.double().cpu() - xd).pow(2).sum())
            active = (acts != 0).cpu()
            sum_l0 += float(active.sum())
            fired |= active.any(0)
            n_tok += int(x.shape[0])
    finally:
        model.train(was_training)
        sae.train(sae_was_training)
    if n_tok == 0:
        raise ValueError("the eval dataset holds no real tokens")
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n_tok
    ev = 1.0 - sum_err2 / total_var if total_var > 0 else float("nan")
    out: dict[str, Any] = {
        "explained_variance": ev,
        "l0": sum_l0 / n_tok,
        "dead_fraction": float((~fired).double().mean()),
        "mse": sum_err2 / n_tok,
        "n_eval_tokens": n_tok,
        "n_eval_rows": len(dataset),
        "n_ce_tokens": n_ce,
    }
    if n_ce:
        clean, spliced, zeroed = (ce[k] / n_ce for k in ("clean", "spliced", "zero"))
        gap = zeroed - clean
        out.update(
            ce_clean=clean,
            ce_spliced=spliced,
            ce_zero_ablate=zeroed,
            ce_loss_recovered=(zeroed - spliced) / gap if abs(gap) > 1e-9 else float("nan"),
        )
        if abs(gap) <= 1e-9:
            log.warning("zero-ablating %s does not change the loss; ce_loss_recovered is undefined", hook)
    else:
        log.warning("the eval dataset has no loss tokens; cross-entropy metrics skipped")
        out.update(
            ce_clean=float("nan"), ce_spliced=float("nan"), ce_zero_ablate=float("nan"), ce_loss_recovered=float("nan")
        )
    if not math.isfinite(out["explained_variance"]):
        log.warning("activations at %s have no variance over the eval tokens", hook)
    return out
