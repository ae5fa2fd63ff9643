"""Triton kernels: fused encode -> top-k membership -> edit -> decode for TopK SAEs.

Design (two launches; ``[N, d_sae]`` is never written to global memory):

* ``_topk_partial_kernel`` (pass 1), grid ``(token blocks, d_sae splits)``. Each program
  owns ``BLOCK_N`` tokens and a contiguous range of ``d_sae`` split into tiles of
  ``K_PAD = max(16, next_pow2(k))`` columns. Per tile it computes
  ``hidden_pre = (x - b_dec) @ W_enc[:, tile] + b_enc[tile]`` in registers (float32
  accumulation) and merges it into a *running top-K_PAD* kept in registers: the tile
  is bitonic-sorted ascending in registers, the running list is descending, so
  ``max(running, tile)`` holds the K_PAD largest of their union (bitonic half-cleaner)
  and one bitonic merge (``log2 K_PAD`` compare-exchange layers) restores order.
  Only two small things leave the chip: the split's running top-K_PAD values
  (``buf``: ``[N, n_splits * K_PAD]`` float32) and, for the ``|F|`` edited features,
  their exact pre-activations (``h_F``: ``[N, |F|]``, scattered through an int32
  ``slot`` map of length ``d_sae``). Writing ``h_F`` from the very registers that fed
  the top-k makes the membership test bit-consistent with the k-th value.
* ``_topk_edit_kernel`` (pass 2), grid ``(token blocks,)``: merges the ``n_splits``
  partial lists (stored ascending) with the same bitonic merge on chip, reads the exact
  k-th largest value per token, forms ``a_f = relu(h_f) if h_f >= kth else 0``, applies
  the edit and writes ``x + gate * (a' - a) @ W_dec[F]`` (x is read once here).
* ``_topk_edit_triton`` (host, private) checks canonical inputs, plans block sizes and
  the split count, and launches both; ``topk_feature_edit_triton`` (public, thin) is
  the package API forced onto Triton.

Ties: a feature whose pre-activation *equals* the k-th value is a member, so more than
``k`` features can be active on exact ties (the torch reference does the same;
``torch.topk`` in sae_lens would keep an arbitrary k of them).

Precision: float32 inputs use IEEE float32 dots. When ``x`` and ``W_enc`` are both
bfloat16/float16 the dots use TF32 tensor cores, which is exact for 16-bit values
(products fit the TF32 mantissa; accumulation is float32); ``b_dec`` is then folded
into the encoder bias on the host (``b_enc - b_dec @ W_enc`` in float32, one extra
pass over ``W_enc``) instead of being subtracted from the 16-bit input on chip.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sparse_edit import _TILE_BUDGET, _add_decoded, _check_canonical, _check_rows, _edit_coefficients

_FOLD_CHUNK = 8192  # W_enc columns upcast at a time when folding b_dec (16-bit path)


@triton.jit
def _compare_swap(
    x,
    BLOCK_N: tl.constexpr,
    K: tl.constexpr,
    STAGE: tl.constexpr,
    J: tl.constexpr,
    ASCENDING: tl.constexpr,
):
    """One bitonic compare-exchange layer along dim 1 of ``x`` [BLOCK_N, K].

    Partners differ in index bit ``J``; the block direction comes from bit ``STAGE`` of
    the index (descending where it is 0), inverted when ``ASCENDING``. Written with a
    reshape plus max/min over the size-2 axis (cheap compiled, and fast under
    TRITON_INTERPRET, where ``tl.sort``'s custom-combine reductions are very slow).
    """
    OUTER: tl.constexpr = K >> (J + 1)
    INNER: tl.constexpr = 1 << J
    y = tl.reshape(x, (BLOCK_N, OUTER, 2, INNER))
    hi = tl.max(y, axis=2, keep_dims=True)
    lo = tl.min(y, axis=2, keep_dims=True)
    pos = tl.arange(0, 2)[None, None, :, None]
    outer = tl.arange(0, OUTER)[None, :, None, None]
    bit = (outer >> (STAGE - J - 1)) & 1
    if ASCENDING:
        up = bit == 0
    else:
        up = bit == 1
    y = tl.where((pos == 0) != up, hi, lo)
    return tl.reshape(y, (BLOCK_N, K))


@triton.jit
def _bitonic_sort(x, BLOCK_N: tl.constexpr, K: tl.constexpr, LOG_K: tl.constexpr, ASCENDING: tl.constexpr):
    """Sort each row of ``x`` [BLOCK_N, K] (K a power of two) in registers."""
    for stage in tl.static_range(1, LOG_K + 1):
        for jj in tl.static_range(0, stage):
            x = _compare_swap(x, BLOCK_N, K, stage, stage - 1 - jj, ASCENDING)
    return x


@triton.jit
def _merge_topk(running_desc, other_asc, BLOCK_N: tl.constexpr, K: tl.constexpr, LOG_K: tl.constexpr):
    """The K largest of two sorted [BLOCK_N, K] lists, returned descending.

    ``max(desc, asc)`` keeps the K largest of the union (bitonic half-cleaner) and is
    itself bitonic, so a single bitonic merge (``LOG_K`` layers) sorts it.
    """
    x = tl.maximum(running_desc, other_asc)
    for jj in tl.static_range(0, LOG_K):
        x = _compare_swap(x, BLOCK_N, K, LOG_K, LOG_K - 1 - jj, False)
    return x


@triton.jit
def _topk_partial_kernel(
    x_ptr,
    wenc_ptr,
    benc_ptr,  # [S] float32 (b_dec already folded in on the 16-bit path)
    bdec_ptr,  # [D] (unused unless HAS_BDEC)
    slot_ptr,  # [S] int32: index into F, or -1
    buf_ptr,  # [N, BUF_STRIDE] float32 out: per-split running top-K_PAD
    hf_ptr,  # [N, F] float32 out: exact pre-activations of the edited features
    N,
    D,
    S,
    F,
    stride_xn,
    stride_wd,
    stride_ws,
    TILES_PER_SPLIT,
    BUF_STRIDE,
    HAS_BDEC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_PAD: tl.constexpr,
    LOG_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    kcols = tl.arange(0, K_PAD)

    running = tl.full((BLOCK_N, K_PAD), float("-inf"), dtype=tl.float32)
    for t in range(TILES_PER_SPLIT):
        scols = (pid_s * TILES_PER_SPLIT + t) * K_PAD + kcols
        smask = scols < S
        scols64 = scols.to(tl.int64)
        acc = tl.zeros((BLOCK_N, K_PAD), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dcols = d0 + tl.arange(0, BLOCK_D)
            dmask = dcols < D
            xe = tl.load(
                x_ptr + rows64[:, None] * stride_xn + dcols[None, :],
                mask=row_mask[:, None] & dmask[None, :],
                other=0.0,
            ).to(tl.float32)
            if HAS_BDEC:
                xe = xe - tl.load(bdec_ptr + dcols, mask=dmask, other=0.0).to(tl.float32)[None, :]
            w = tl.load(
                wenc_ptr + dcols.to(tl.int64)[:, None] * stride_wd + scols64[None, :] * stride_ws,
                mask=dmask[:, None] & smask[None, :],
                other=0.0,
            ).to(tl.float32)
            acc = tl.dot(xe, w, acc, input_precision=DOT_PRECISION)
        h = acc + tl.load(benc_ptr + scols, mask=smask, other=0.0)[None, :]
        h = tl.where(smask[None, :], h, float("-inf"))

        # Pre-activations of edited features leave the chip from these same registers.
        slot = tl.load(slot_ptr + scols, mask=smask, other=-1)
        is_f = slot >= 0
        tl.store(
            hf_ptr + rows64[:, None] * F + tl.where(is_f, slot, 0)[None, :],
            h,
            mask=row_mask[:, None] & is_f[None, :],
        )
        tile_asc = _bitonic_sort(h, BLOCK_N, K_PAD, LOG_K, True)
        running = _merge_topk(running, tile_asc, BLOCK_N, K_PAD, LOG_K)

    # Stored reversed, i.e. ascending, ready for the merge in pass 2.
    tl.store(
        buf_ptr + rows64[:, None] * BUF_STRIDE + pid_s * K_PAD + (K_PAD - 1 - kcols)[None, :],
        running,
        mask=row_mask[:, None],
    )


@triton.jit
def _topk_edit_kernel(
    x_ptr,
    out_ptr,
    buf_ptr,
    hf_ptr,
    wdec_ptr,  # [F, D] contiguous (gathered rows of W_dec)
    val_ptr,
    gate_ptr,
    N,
    D,
    F,
    K,
    N_SPLITS,
    BUF_STRIDE,
    stride_xn,
    stride_on,
    HAS_GATE: tl.constexpr,
    MODE: tl.constexpr,
    ONLY_ACTIVE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_F: tl.constexpr,
    K_PAD: tl.constexpr,
    LOG_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    kcols = tl.arange(0, K_PAD)
    fcols = tl.arange(0, BLOCK_F)
    fmask = fcols < F

    running = tl.full((BLOCK_N, K_PAD), float("-inf"), dtype=tl.float32)
    for s in range(N_SPLITS):
        part = tl.load(
            buf_ptr + rows64[:, None] * BUF_STRIDE + s * K_PAD + kcols[None, :],
            mask=row_mask[:, None],
            other=float("-inf"),
        )
        running = _merge_topk(running, part, BLOCK_N, K_PAD, LOG_K)
    kth = tl.sum(tl.where(kcols[None, :] == K - 1, running, 0.0), axis=1)

    h = tl.load(
        hf_ptr + rows64[:, None] * F + fcols[None, :],
        mask=row_mask[:, None] & fmask[None, :],
        other=float("-inf"),
    )
    a = tl.where(h >= kth[:, None], tl.maximum(h, 0.0), 0.0)
    coeff = _edit_coefficients(a, rows, row_mask, fcols, fmask, val_ptr, gate_ptr, MODE, ONLY_ACTIVE, HAS_GATE)

    _add_decoded(x_ptr, out_ptr, wdec_ptr, coeff, rows64, row_mask, fcols, fmask, D, stride_xn, stride_on, BLOCK_D)


_HALF = (torch.float16, torch.bfloat16)


def _fold_b_dec(W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """float32 ``b_enc - b_dec @ W_enc``, upcasting at most ``_FOLD_CHUNK`` columns at a time."""
    out = b_enc.to(torch.float32).clone()
    bd = b_dec.to(torch.float32)
    for s0 in range(0, W_enc.shape[1], _FOLD_CHUNK):
        out[s0 : s0 + _FOLD_CHUNK] -= bd @ W_enc[:, s0 : s0 + _FOLD_CHUNK].to(torch.float32)
    return out


def _plan(n_tokens: int, d_in: int, d_sae: int, k: int, n_feat: int, device: torch.device) -> dict[str, int]:
    """Block sizes and the d_sae split count (enough programs to fill the device)."""
    k_pad = max(16, triton.next_power_of_2(k))
    block_f = max(16, triton.next_power_of_2(n_feat))
    if device.type == "cuda":
        block_n = 16 if n_tokens <= 256 else (32 if n_tokens <= 2048 else 64)
        n_sm = torch.cuda.get_device_properties(device).multi_processor_count
        target_programs = 4 * n_sm
    else:  # interpreter: few programs, but still exercise the split merge
        block_n = 16
        target_programs = 4
    block_n = min(block_n, max(16, _TILE_BUDGET // (2 * k_pad)))
    d_pad = max(16, triton.next_power_of_2(d_in))
    block_d = max(16, min(128, d_pad, _TILE_BUDGET // max(block_n, k_pad)))
    block_d_edit = max(16, min(128, d_pad, _TILE_BUDGET // max(block_n, block_f)))
    n_tiles = triton.cdiv(d_sae, k_pad)
    n_row_blocks = triton.cdiv(n_tokens, block_n)
    # <= n_tiles // 2 splits keeps the partial buffer at most about half of [N, d_sae].
    n_splits = max(1, min(triton.cdiv(target_programs, n_row_blocks), n_tiles // 2))
    tiles_per_split = triton.cdiv(n_tiles, n_splits)
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    return dict(
        k_pad=k_pad,
        block_f=block_f,
        block_n=block_n,
        block_d=block_d,
        block_d_edit=block_d_edit,
        n_splits=n_splits,
        tiles_per_split=tiles_per_split,
        n_row_blocks=n_row_blocks,
    )


def _topk_edit_triton(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    k: int,
    features: torch.Tensor,
    b_dec: torch.Tensor | None,
    mode_id: int,
    values: torch.Tensor,
    only_when_active: bool,
    gate: torch.Tensor | None,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Launch the two TopK kernels on canonical inputs; returns ``[N, d_in]`` in x.dtype.

    ``n_splits`` overrides the d_sae split count (tests use it to exercise the merge).
    """
    n_tokens, d_in = _check_rows(x)
    d_sae = W_enc.shape[1] if W_enc.ndim == 2 else -1
    dev = x.device
    _check_canonical("W_enc", W_enc, (d_in, d_sae), dev)
    _check_canonical("b_enc", b_enc, (d_sae,), dev)
    _check_canonical("W_dec", W_dec, (d_sae, d_in), dev)
    if features.ndim != 1 or features.dtype != torch.long or features.device != dev:
        raise ValueError(
            f"features has shape {list(features.shape)}, dtype {features.dtype}; expected int64 [F] on {dev}"
        )
    n_feat = features.numel()
    _check_canonical("values", values, (n_feat,), dev)
    if b_dec is not None:
        _check_canonical("b_dec", b_dec, (d_in,), dev)
    if gate is not None:
        _check_canonical("gate", gate, (n_tokens,), dev)
    if not 1 <= k <= min(d_sae, 256):
        raise ValueError(f"k={k} is out of range; expected 1 <= k <= min(d_sae={d_sae}, 256)")
    if not 0 <= mode_id < 5:
        raise ValueError(f"mode_id={mode_id} is out of range; expected 0..4")

    out = torch.empty((n_tokens, d_in), dtype=x.dtype, device=dev)
    if n_tokens == 0 or n_feat == 0:
        out.copy_(x)
        return out

    p = _plan(n_tokens, d_in, d_sae, k, n_feat, dev)
    if n_splits is not None:
        n_tiles = triton.cdiv(d_sae, p["k_pad"])
        p["tiles_per_split"] = triton.cdiv(n_tiles, max(1, min(n_splits, n_tiles)))
        p["n_splits"] = triton.cdiv(n_tiles, p["tiles_per_split"])

    half_path = x.dtype in _HALF and W_enc.dtype in _HALF
    if half_path and b_dec is not None:
        b_enc32 = _fold_b_dec(W_enc, b_enc, b_dec)
        on_chip_bdec = None
    else:
        b_enc32 = b_enc.to(torch.float32).contiguous()
        on_chip_bdec = b_dec.contiguous() if b_dec is not None else None

    slot = torch.full((d_sae,), -1, dtype=torch.int32, device=dev)
    slot[features] = torch.arange(n_feat, dtype=torch.int32, device=dev)
    buf_stride = p["n_splits"] * p["k_pad"]
    buf = torch.empty((n_tokens, buf_stride), dtype=torch.float32, device=dev)
    h_f = torch.empty((n_tokens, n_feat), dtype=torch.float32, device=dev)

    _topk_partial_kernel[(p["n_row_blocks"], p["n_splits"])](
        x,
        W_enc,
        b_enc32,
        on_chip_bdec if on_chip_bdec is not None else b_enc32,
        slot,
        buf,
        h_f,
        n_tokens,
        d_in,
        d_sae,
        n_feat,
        x.stride(0),
        W_enc.stride(0),
        W_enc.stride(1),
        p["tiles_per_split"],
        buf_stride,
        HAS_BDEC=on_chip_bdec is not None,
        DOT_PRECISION="tf32" if half_path else "ieee",
        BLOCK_N=p["block_n"],
        BLOCK_D=p["block_d"],
        K_PAD=p["k_pad"],
        LOG_K=p["k_pad"].bit_length() - 1,
        num_warps=8 if p["block_n"] * p["k_pad"] >= 2048 else 4,
    )
    W_dec_F = W_dec.index_select(0, features).contiguous()
    _topk_edit_kernel[(p["n_row_blocks"],)](
        x,
        out,
        buf,
        h_f,
        W_dec_F,
        values.to(torch.float32).contiguous(),
        gate.to(torch.float32).contiguous() if gate is not None else values,
        n_tokens,
        d_in,
        n_feat,
        k,
        p["n_splits"],
        buf_stride,
        x.stride(0),
        out.stride(0),
        HAS_GATE=gate is not None,
        MODE=mode_id,
        ONLY_ACTIVE=bool(only_when_active),
        BLOCK_N=p["block_n"],
        BLOCK_D=p["block_d_edit"],
        BLOCK_F=p["block_f"],
        K_PAD=p["k_pad"],
        LOG_K=p["k_pad"].bit_length() - 1,
        num_warps=4,
    )
    return out


def topk_feature_edit_triton(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """:func:`saesteer.kernels.topk_feature_edit` forced onto the Triton kernels."""
    from . import topk_feature_edit

    kwargs["force_triton"] = True
    return topk_feature_edit(x, *args, **kwargs)
