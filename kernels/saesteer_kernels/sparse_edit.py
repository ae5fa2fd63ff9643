"""Triton kernel: fused ReLU / JumpReLU SAE feature edit (cost proportional to |F|).

Three layers (Liger-Kernel style):

* ``_sparse_edit_kernel`` (``@triton.jit``, private): one program per tile of
  ``BLOCK_N`` token rows. On chip it computes the ``|F|`` pre-activations
  ``h = (x - b_dec) @ W_enc_F + b_enc_F`` (float32 accumulation, IEEE precision), the
  activation (ReLU, or JumpReLU when thresholds are given), the edit ``a'`` for the
  mode, the coefficients ``c = gate * (a' - a)`` (a ``[BLOCK_N, BLOCK_F]`` register
  tile), and writes ``x + c @ W_dec_F``. Nothing of size ``d_sae`` exists anywhere.
  When ``d_in`` is small enough (``ONE_PASS``) the x tile is loaded once and kept in
  registers; otherwise the kernel streams ``d_in`` in ``BLOCK_D`` chunks twice (the
  second read of the just-touched tile normally hits L2).
* ``_sparse_edit_triton`` (host, private): checks canonical inputs (2-D, contiguous,
  float dtypes), picks block sizes and launches.
* ``sparse_feature_edit_triton`` (public, thin): the package API forced onto Triton.

This module imports triton at import time; :mod:`saesteer.kernels` imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Register budget (float32 elements) for one [rows, cols] on-chip tile.
_TILE_BUDGET = 8192


@triton.jit
def _apply_mode(a, v, MODE: tl.constexpr):
    """Edited activations for mode ids 0..4 = set, scale, add, floor, ceiling."""
    if MODE == 0:
        new = tl.zeros_like(a) + v
    elif MODE == 1:
        new = a * v
    elif MODE == 2:
        new = a + v
    elif MODE == 3:
        new = tl.maximum(a, v)
    else:
        new = tl.minimum(a, v)
    return new


@triton.jit
def _edit_coefficients(
    a,
    rows,
    row_mask,
    fcols,
    fmask,
    val_ptr,
    gate_ptr,
    MODE: tl.constexpr,
    ONLY_ACTIVE: tl.constexpr,
    HAS_GATE: tl.constexpr,
):
    """``gate * (a' - a)`` for a [BLOCK_N, BLOCK_F] tile; zero in padded columns."""
    v = tl.load(val_ptr + fcols, mask=fmask, other=0.0)
    new = _apply_mode(a, v[None, :], MODE)
    if ONLY_ACTIVE:
        new = tl.where(a > 0.0, new, a)
    coeff = new - a
    if HAS_GATE:
        g = tl.load(gate_ptr + rows, mask=row_mask, other=0.0)
        coeff = coeff * g[:, None]
    return tl.where(fmask[None, :], coeff, 0.0)


@triton.jit
def _add_decoded(
    x_ptr, out_ptr, wdec_ptr, coeff, rows64, row_mask, fcols, fmask, D, stride_xn, stride_on, BLOCK_D: tl.constexpr
):
    """``out[rows] = x[rows] + coeff @ W_dec[F]``, streamed over ``d_in`` in ``BLOCK_D`` columns."""
    for d0 in range(0, D, BLOCK_D):
        dcols = d0 + tl.arange(0, BLOCK_D)
        dmask = dcols < D
        xmask = row_mask[:, None] & dmask[None, :]
        x = tl.load(x_ptr + rows64[:, None] * stride_xn + dcols[None, :], mask=xmask, other=0.0)
        wd = tl.load(
            wdec_ptr + fcols[:, None] * D + dcols[None, :],
            mask=fmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(tl.float32)
        out = x.to(tl.float32) + tl.dot(coeff, wd, input_precision="ieee")
        tl.store(
            out_ptr + rows64[:, None] * stride_on + dcols[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=xmask,
        )


@triton.jit
def _sparse_edit_kernel(
    x_ptr,
    out_ptr,
    wenc_ptr,  # [D, F] contiguous
    benc_ptr,  # [F]
    wdec_ptr,  # [F, D] contiguous
    bdec_ptr,  # [D] (unused unless HAS_BDEC)
    thr_ptr,  # [F] (unused unless HAS_THR)
    val_ptr,  # [F] float32
    gate_ptr,  # [N] float32 (unused unless HAS_GATE)
    N,
    D,
    F,
    stride_xn,
    stride_on,
    HAS_BDEC: tl.constexpr,
    HAS_THR: tl.constexpr,
    HAS_GATE: tl.constexpr,
    MODE: tl.constexpr,
    ONLY_ACTIVE: tl.constexpr,
    ONE_PASS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    fcols = tl.arange(0, BLOCK_F)
    fmask = fcols < F
    rows64 = rows.to(tl.int64)

    if ONE_PASS:
        # The whole [BLOCK_N, d_in] tile lives in registers: x is read exactly once.
        dcols = tl.arange(0, BLOCK_D)
        dmask = dcols < D
        xmask = row_mask[:, None] & dmask[None, :]
        x = tl.load(x_ptr + rows64[:, None] * stride_xn + dcols[None, :], mask=xmask, other=0.0)
        x = x.to(tl.float32)
        xe = x
        if HAS_BDEC:
            xe = x - tl.load(bdec_ptr + dcols, mask=dmask, other=0.0).to(tl.float32)[None, :]
        w = tl.load(
            wenc_ptr + dcols[:, None] * F + fcols[None, :],
            mask=dmask[:, None] & fmask[None, :],
            other=0.0,
        ).to(tl.float32)
        h = tl.dot(xe, w, input_precision="ieee")
    else:
        h = tl.zeros((BLOCK_N, BLOCK_F), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dcols = d0 + tl.arange(0, BLOCK_D)
            dmask = dcols < D
            xmask = row_mask[:, None] & dmask[None, :]
            xe = tl.load(x_ptr + rows64[:, None] * stride_xn + dcols[None, :], mask=xmask, other=0.0)
            xe = xe.to(tl.float32)
            if HAS_BDEC:
                xe = xe - tl.load(bdec_ptr + dcols, mask=dmask, other=0.0).to(tl.float32)[None, :]
            w = tl.load(
                wenc_ptr + dcols[:, None] * F + fcols[None, :],
                mask=dmask[:, None] & fmask[None, :],
                other=0.0,
            ).to(tl.float32)
            h = tl.dot(xe, w, h, input_precision="ieee")

    h = h + tl.load(benc_ptr + fcols, mask=fmask, other=0.0).to(tl.float32)[None, :]
    a = tl.maximum(h, 0.0)
    if HAS_THR:
        thr = tl.load(thr_ptr + fcols, mask=fmask, other=0.0).to(tl.float32)
        a = tl.where(h > thr[None, :], a, 0.0)
    coeff = _edit_coefficients(a, rows, row_mask, fcols, fmask, val_ptr, gate_ptr, MODE, ONLY_ACTIVE, HAS_GATE)

    if ONE_PASS:
        wd = tl.load(
            wdec_ptr + fcols[:, None] * D + dcols[None, :],
            mask=fmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(tl.float32)
        out = x + tl.dot(coeff, wd, input_precision="ieee")
        tl.store(
            out_ptr + rows64[:, None] * stride_on + dcols[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=xmask,
        )
    else:
        _add_decoded(x_ptr, out_ptr, wdec_ptr, coeff, rows64, row_mask, fcols, fmask, D, stride_xn, stride_on, BLOCK_D)


def _block_sizes(n_tokens: int, d_in: int, n_feat: int) -> tuple[int, int, int, bool]:
    """(BLOCK_N, BLOCK_D, BLOCK_F, ONE_PASS) within the register budget; dots need >= 16."""
    block_f = max(16, triton.next_power_of_2(n_feat))
    block_n = 16 if n_tokens <= 4096 else 32
    d_pad = max(16, triton.next_power_of_2(d_in))
    one_pass = d_pad * max(block_n, block_f) <= _TILE_BUDGET
    if one_pass:
        return block_n, d_pad, block_f, True
    block_d = max(16, min(128, _TILE_BUDGET // max(block_n, block_f), d_pad))
    return block_n, block_d, block_f, False


def _check_rows(x: torch.Tensor) -> tuple[int, int]:
    """``(N, d_in)`` of ``x``, which must be ``[N, d_in]`` with unit stride on the last dim."""
    if x.ndim != 2 or x.stride(-1) != 1:
        raise ValueError(
            f"x has shape {list(x.shape)} / strides {x.stride()}; expected [N, d_in] with unit last stride"
        )
    return x.shape[0], x.shape[1]


def _check_canonical(name: str, t: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {list(t.shape)}; expected {list(shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} has dtype {t.dtype}; expected a floating-point dtype")
    if t.device != device:
        raise ValueError(f"{name} is on device {t.device}; expected {device}")


def _sparse_edit_triton(
    x: torch.Tensor,
    W_enc_F: torch.Tensor,
    b_enc_F: torch.Tensor,
    W_dec_F: torch.Tensor,
    b_dec: torch.Tensor | None,
    threshold_F: torch.Tensor | None,
    mode_id: int,
    values: torch.Tensor,
    only_when_active: bool,
    gate: torch.Tensor | None,
) -> torch.Tensor:
    """Launch :func:`_sparse_edit_kernel` on canonical inputs; returns ``[N, d_in]`` in x.dtype.

    ``x`` is ``[N, d_in]`` with unit stride on the last dim; weights are made
    contiguous here (``[d_in, F]`` / ``[F, d_in]`` gathers are small).
    """
    n_tokens, d_in = _check_rows(x)
    n_feat = W_enc_F.shape[1] if W_enc_F.ndim == 2 else -1
    dev = x.device
    _check_canonical("W_enc_F", W_enc_F, (d_in, n_feat), dev)
    _check_canonical("b_enc_F", b_enc_F, (n_feat,), dev)
    _check_canonical("W_dec_F", W_dec_F, (n_feat, d_in), dev)
    _check_canonical("values", values, (n_feat,), dev)
    if b_dec is not None:
        _check_canonical("b_dec", b_dec, (d_in,), dev)
    if threshold_F is not None:
        _check_canonical("threshold_F", threshold_F, (n_feat,), dev)
    if gate is not None:
        _check_canonical("gate", gate, (n_tokens,), dev)
    if not 0 <= mode_id < 5:
        raise ValueError(f"mode_id={mode_id} is out of range; expected 0..4")

    out = torch.empty((n_tokens, d_in), dtype=x.dtype, device=x.device)
    if n_tokens == 0 or n_feat == 0:
        out.copy_(x)
        return out
    block_n, block_d, block_f, one_pass = _block_sizes(n_tokens, d_in, n_feat)
    dummy = values  # placeholder pointer for disabled optional inputs
    grid = (triton.cdiv(n_tokens, block_n),)
    _sparse_edit_kernel[grid](
        x,
        out,
        W_enc_F.contiguous(),
        b_enc_F.contiguous(),
        W_dec_F.contiguous(),
        b_dec.contiguous() if b_dec is not None else dummy,
        threshold_F.contiguous() if threshold_F is not None else dummy,
        values.to(torch.float32).contiguous(),
        gate.to(torch.float32).contiguous() if gate is not None else dummy,
        n_tokens,
        d_in,
        n_feat,
        x.stride(0),
        out.stride(0),
        HAS_BDEC=b_dec is not None,
        HAS_THR=threshold_F is not None,
        HAS_GATE=gate is not None,
        MODE=mode_id,
        ONLY_ACTIVE=bool(only_when_active),
        ONE_PASS=one_pass,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        BLOCK_F=block_f,
        num_warps=8 if block_d * max(block_n, block_f) >= 4096 else 4,
    )
    return out


def sparse_feature_edit_triton(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """:func:`saesteer.kernels.sparse_feature_edit` forced onto the Triton kernel."""
    from . import sparse_feature_edit

    kwargs["force_triton"] = True
    return sparse_feature_edit(x, *args, **kwargs)
