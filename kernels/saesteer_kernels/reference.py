"""Pure-torch feature edits: the CPU path and the test oracle for the Triton kernels.

Every function here takes *canonical* inputs, already checked by
:mod:`saesteer.kernels` (the public API): a 2-D ``x`` of shape ``[N, d_in]``, a float32
``values`` vector of length ``|F|``, an integer ``mode_id`` (index into
:data:`MODES`) and a float32 ``gate`` of shape ``[N]`` or ``None``.

Semantics (identical to sae_lens with ``use_error_term=True`` and a hook on
``hook_sae_acts_post`` that edits the features ``F``; the decoder is linear so the
error term cancels everything but the edited features)::

    hidden_pre = (x - b_dec) @ W_enc + b_enc          # b_dec only if given
    a          = act(hidden_pre)                      # relu / jumprelu / topk
    a'_f       = mode(a_f, v_f)                       # set / scale / add / floor / ceiling
    a'_f       = where(a_f > 0, a'_f, a_f)            # only_when_active
    x'         = x + gate[:, None] * (a' - a) @ W_dec[F]

All arithmetic runs in float32 (inputs of any float dtype are upcast); the result is
returned in float32 and cast back to ``x.dtype`` by the caller.
"""

from __future__ import annotations

import torch

MODES: tuple[str, ...] = ("set", "scale", "add", "floor", "ceiling")

#: Upper bound on the elements of one float32 ``[tokens, d_sae]`` encode block in the
#: TopK reference (64 Mi elements = 256 MiB); larger inputs are processed in token chunks.
TOPK_REF_MAX_BLOCK_ELEMENTS = 1 << 26


def apply_mode(a: torch.Tensor, v: torch.Tensor, mode_id: int) -> torch.Tensor:
    """Return the edited activations ``a'`` for activations ``a`` [N, F] and values ``v`` [F]."""
    if mode_id == 0:  # set
        return v.expand_as(a)
    if mode_id == 1:  # scale
        return a * v
    if mode_id == 2:  # add
        return a + v
    if mode_id == 3:  # floor
        return torch.maximum(a, v.expand_as(a))
    if mode_id == 4:  # ceiling
        return torch.minimum(a, v.expand_as(a))
    raise ValueError(f"mode_id={mode_id} is not a valid mode index; expected 0..{len(MODES) - 1}")


def edit_coefficients(
    a: torch.Tensor,
    values: torch.Tensor,
    mode_id: int,
    only_when_active: bool,
    gate: torch.Tensor | None,
) -> torch.Tensor:
    """Per-token, per-feature decoder coefficients ``gate * (a' - a)`` (float32 [N, F])."""
    new = apply_mode(a, values, mode_id)
    if only_when_active:
        new = torch.where(a > 0, new, a)
    coeff = new - a
    if gate is not None:
        coeff = coeff * gate[:, None]
    return coeff


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32)


def sparse_edit_reference(
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
    """ReLU / JumpReLU feature edit; cost proportional to ``|F|`` (never touches d_sae).

    Args:
        x: ``[N, d_in]`` input rows (any float dtype).
        W_enc_F: ``[d_in, F]`` encoder columns of the edited features.
        b_enc_F: ``[F]`` encoder bias entries of the edited features.
        W_dec_F: ``[F, d_in]`` decoder rows of the edited features.
        b_dec: ``[d_in]`` decoder bias, subtracted from ``x`` before encoding, or None.
        threshold_F: ``[F]`` JumpReLU thresholds (``a = relu(h) * (h > threshold)``),
            or None for a plain ReLU SAE.
        mode_id: index into :data:`MODES`.
        values: ``[F]`` float32 edit values.
        only_when_active: edit only where the feature's activation is > 0.
        gate: ``[N]`` float32 per-row gate or None.

    Returns:
        float32 ``[N, d_in]`` edited rows.
    """
    x32 = x.to(torch.float32)
    xe = x32 if b_dec is None else x32 - b_dec.to(torch.float32)
    h = torch.addmm(b_enc_F.to(torch.float32), xe, W_enc_F.to(torch.float32))
    a = torch.relu(h)
    if threshold_F is not None:
        a = torch.where(h > threshold_F.to(torch.float32), a, torch.zeros_like(a))
    coeff = edit_coefficients(a, values, mode_id, only_when_active, gate)
    return torch.addmm(x32, coeff, W_dec_F.to(torch.float32))


def topk_kth_and_hidden(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    features: torch.Tensor,
    b_dec: torch.Tensor | None,
    max_block_elements: int = TOPK_REF_MAX_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full float32 TopK encode, chunked over tokens.

    Returns ``(kth, h_F)``: the k-th largest pre-activation per token (float32 [N]) and the
    pre-activations of the edited features (float32 [N, F]), both taken from the *same*
    computed ``hidden_pre`` so membership tests are self-consistent. At most
    ``max_block_elements`` float32 elements of ``hidden_pre`` exist at a time.
    """
    n_tokens = x.shape[0]
    d_sae = W_enc.shape[1]
    W32 = W_enc.to(torch.float32)  # no copy for float32 weights
    b32 = b_enc.to(torch.float32)
    bd32 = _f32(b_dec)
    chunk = max(1, max_block_elements // max(d_sae, 1))
    kth = torch.empty(n_tokens, dtype=torch.float32, device=x.device)
    h_F = torch.empty(n_tokens, features.numel(), dtype=torch.float32, device=x.device)
    for start in range(0, n_tokens, chunk):
        xs = x[start : start + chunk].to(torch.float32)
        if bd32 is not None:
            xs = xs - bd32
        h = torch.addmm(b32, xs, W32)
        kth[start : start + chunk] = torch.topk(h, k, dim=-1, sorted=False).values.amin(dim=-1)
        h_F[start : start + chunk] = h.index_select(1, features)
    return kth, h_F


def topk_edit_reference(
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
    max_block_elements: int = TOPK_REF_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """TopK feature edit: full encode (chunked over tokens), then gather ``F``.

    Membership: feature ``f`` is active for a token iff ``hidden_pre_f >= kth`` where
    ``kth`` is the k-th largest pre-activation of that token; its activation is then
    ``relu(hidden_pre_f)`` (sae_lens applies ReLU after the top-k). **Ties** at the k-th
    value all count as members (so more than k features may be active when several
    pre-activations equal the k-th value exactly); ``torch.topk`` in sae_lens keeps an
    arbitrary k of them instead. The Triton kernel uses the same ``>=`` rule.

    Args:
        W_enc: ``[d_in, d_sae]``; b_enc: ``[d_sae]``; W_dec: ``[d_sae, d_in]``.
        features: ``[F]`` int64 indices (unique, in range).
        Other arguments as in :func:`sparse_edit_reference`.

    Returns:
        float32 ``[N, d_in]``.
    """
    kth, h_F = topk_kth_and_hidden(x, W_enc, b_enc, k, features, b_dec, max_block_elements)
    a = torch.where(h_F >= kth[:, None], torch.relu(h_F), torch.zeros_like(h_F))
    coeff = edit_coefficients(a, values, mode_id, only_when_active, gate)
    W_dec_F = W_dec.index_select(0, features).to(torch.float32)
    return torch.addmm(x.to(torch.float32), coeff, W_dec_F)
