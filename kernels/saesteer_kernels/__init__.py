"""Fused SAE feature-edit kernels (installed as ``saesteer.kernels``).

Two public entry points edit a set of SAE features ``F`` in the residual stream while
keeping the SAE's error term (``x' = x + gate * sum_f (a'_f - a_f) W_dec[f]``):

* :func:`sparse_feature_edit` for ReLU ("standard") and JumpReLU SAEs: only the ``|F|``
  encoder columns are needed, so cost is proportional to ``|F|``, not ``d_sae``.
* :func:`topk_feature_edit` for TopK SAEs: membership in the top-k needs the full
  encode; the Triton path never materialises ``[N, d_sae]`` in global memory.

Dispatch (per call):

* ``force_triton=False``: always the torch reference (:mod:`.reference`).
* ``force_triton=True``: always Triton; needs triton importable and either a CUDA
  ``x`` or ``TRITON_INTERPRET=1`` (set before triton is first imported) for CPU
  tensors; otherwise a ``RuntimeError``.
* ``force_triton=None`` (default): Triton when ``x.is_cuda``, triton is importable
  and ``SAESTEER_DISABLE_TRITON`` is not ``"1"``; for CPU tensors also when
  ``SAESTEER_FORCE_TRITON=1`` and ``TRITON_INTERPRET=1`` (slow; for tests). Shapes the
  kernels do not cover (``|F| > 512``, ``k > 256``) fall back to torch.

Scope: the SAE's own input normalisation is not applied. This matches sae_lens SAEs with
``normalize_activations`` of ``"none"`` (or ``"expected_average_only_in"`` after
``fold_activation_norm_scaling_factor``), ``reshape_activations="none"`` and, for TopK,
``rescale_acts_by_decoder_norm=False``. BatchTopK SAEs run at inference as JumpReLU
(sae_lens saves them with a per-feature ``threshold``), so use
:func:`sparse_feature_edit` with ``threshold_F``.

Triton is imported lazily, so ``import saesteer.kernels`` works without it (e.g. macOS).
All outputs are computed in float32 and returned in ``x.dtype``. Inference only: the
functions run under ``torch.no_grad()``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from collections.abc import Sequence

import torch

from .reference import MODES, sparse_edit_reference, topk_edit_reference

__all__ = [
    "MODES",
    "MAX_TRITON_FEATURES",
    "MAX_TRITON_K",
    "sparse_feature_edit",
    "topk_feature_edit",
    "triton_available",
]

logger = logging.getLogger(__name__)

#: Largest ``|F|`` the Triton kernels take (one register tile of coefficients per token block).
MAX_TRITON_FEATURES = 512
#: Largest ``k`` the TopK Triton kernels take (running top-k kept in registers).
MAX_TRITON_K = 256

Values = float | int | Sequence[float] | torch.Tensor


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    try:
        if importlib.util.find_spec("triton") is None:
            return False
        import triton  # noqa: F401
    except Exception as exc:  # broken installs, or sys.modules["triton"] = None
        logger.debug("triton present but not importable: %s", exc)
        return False
    return True


def _use_triton(x: torch.Tensor, force_triton: bool | None) -> bool:
    if force_triton is False:
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if force_triton is True:
        if not triton_available():
            raise RuntimeError("force_triton=True but triton is not importable")
        if not (x.is_cuda or interpret):
            raise RuntimeError(
                f"force_triton=True with x on device {x.device} needs TRITON_INTERPRET=1 "
                "(set before triton is imported) or a CUDA tensor"
            )
        return True
    if os.environ.get("SAESTEER_DISABLE_TRITON") == "1" or not triton_available():
        return False
    if x.is_cuda:
        return True
    return interpret and os.environ.get("SAESTEER_FORCE_TRITON") == "1"


# --------------------------------------------------------------------------- validation


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} has dtype {t.dtype}; expected a floating-point dtype")


def _check_device(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{name} is on device {t.device}; expected x's device {x.device}")


def _check_shape(name: str, t: torch.Tensor, expected: list[int], what: str) -> None:
    if _shape(t) != expected:
        raise ValueError(f"{name} has shape {_shape(t)}; expected {expected} ({what})")


def _check_weight(
    name: str, t: torch.Tensor, x: torch.Tensor, expected: list[int] | None = None, what: str = ""
) -> None:
    """``t`` is a floating-point tensor on x's device, shaped ``expected`` when given."""
    _check_float(name, t)
    _check_device(name, t, x)
    if expected is not None:
        _check_shape(name, t, expected, what)


def _mode_id(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a valid mode; expected one of {MODES}")
    return MODES.index(mode)


def _values_tensor(values: Values, n_features: int, device: torch.device) -> torch.Tensor:
    """Edit values as float32 ``[F]``; a Python scalar or 0-d tensor is broadcast."""
    if isinstance(values, bool) or values is None:
        raise ValueError(f"values={values!r} is not numeric; expected a scalar or {n_features} floats")
    if isinstance(values, (int, float)):
        if not math.isfinite(values):
            raise ValueError(
                f"values={values!r}; expected a finite number (NaN / inf would poison the edited activations)"
            )
        return torch.full((n_features,), float(values), dtype=torch.float32, device=device)
    try:
        v = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"values={values!r} is not numeric ({exc}); expected a scalar or {n_features} floats"
        ) from None
    if v.dtype == torch.bool or v.is_complex():
        raise ValueError(f"values has dtype {v.dtype}; expected real numbers")
    # checked where it lives (a list / CPU tensor needs no device sync), in float32 as the kernels use it
    bad = ~torch.isfinite(v.to(torch.float32))
    if bool(bad.any()):
        where = bad.flatten().nonzero()[:, 0].tolist()
        raise ValueError(
            f"values has {len(where)} NaN/inf entr{'y' if len(where) == 1 else 'ies'} (at index {where[:5]}); "
            "expected finite numbers"
        )
    v = v.to(device=device, dtype=torch.float32)
    if v.ndim == 0:
        return v.expand(n_features).contiguous()
    if v.ndim != 1 or v.numel() != n_features:
        raise ValueError(
            f"values has shape {list(v.shape)} ({v.numel()} entries); "
            f"expected {n_features} entries (one per feature, n_features={n_features})"
        )
    return v.contiguous()


def _gate_tensor(gate: torch.Tensor | None, x: torch.Tensor, n_tokens: int) -> torch.Tensor | None:
    if gate is None:
        return None
    _check_float("gate", gate)
    _check_device("gate", gate, x)
    if _shape(gate) not in (list(x.shape[:-1]), [n_tokens]):
        raise ValueError(
            f"gate has shape {_shape(gate)}; expected {list(x.shape[:-1])} or [{n_tokens}] "
            f"(one value per token row of x with shape {_shape(x)})"
        )
    return gate.reshape(n_tokens).to(torch.float32).contiguous()


def _flatten_x(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    _check_float("x", x)
    if x.ndim < 1:
        raise ValueError(f"x has shape {_shape(x)}; expected [..., d_in] with at least one dim")
    d_in = x.shape[-1]
    x2d = x.reshape(-1, d_in)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    return x2d, d_in


# --------------------------------------------------------------------------- public API


@torch.no_grad()
def sparse_feature_edit(
    x: torch.Tensor,
    W_enc_F: torch.Tensor,
    b_enc_F: torch.Tensor,
    W_dec_F: torch.Tensor,
    *,
    b_dec: torch.Tensor | None = None,
    threshold_F: torch.Tensor | None = None,
    mode: str,
    values: Values,
    only_when_active: bool = False,
    gate: torch.Tensor | None = None,
    force_triton: bool | None = None,
) -> torch.Tensor:
    """Edit features ``F`` of a ReLU / JumpReLU SAE in ``x``, keeping the error term.

    ``x' = x + gate * sum_{f in F} (a'_f - a_f) W_dec_F[f]`` with
    ``h = (x - b_dec) @ W_enc_F + b_enc_F``, ``a = relu(h)`` (times ``h > threshold_F``
    for JumpReLU) and ``a'`` given by ``mode``: ``set`` (v), ``scale`` (a*v), ``add``
    (a+v), ``floor`` (max(a, v)), ``ceiling`` (min(a, v)).

    Args:
        x: ``[..., d_in]`` activations, any float dtype.
        W_enc_F: ``[d_in, F]`` encoder columns of the edited features.
        b_enc_F: ``[F]`` encoder bias of the edited features.
        W_dec_F: ``[F, d_in]`` decoder rows of the edited features.
        b_dec: ``[d_in]``; when given it is subtracted from ``x`` before encoding
            (sae_lens ``apply_b_dec_to_input=True``).
        threshold_F: ``[F]`` JumpReLU thresholds; None for a ReLU SAE.
        mode: one of :data:`MODES`.
        values: scalar (broadcast) or ``F`` values.
        only_when_active: edit a feature only on rows where its activation is > 0.
        gate: ``[...]`` or ``[N]`` per-row multiplier of the edit (None = 1).
        force_triton: see the module docstring.

    Returns:
        Tensor shaped and typed like ``x``.

    Raises:
        ValueError: bad mode, shapes, dtypes or devices (raised before any launch).
    """
    mode_id = _mode_id(mode)
    x2d, d_in = _flatten_x(x)
    n_tokens = x2d.shape[0]
    for name, t in (("W_enc_F", W_enc_F), ("b_enc_F", b_enc_F), ("W_dec_F", W_dec_F)):
        _check_weight(name, t, x)
    if W_enc_F.ndim != 2 or W_enc_F.shape[0] != d_in:
        raise ValueError(
            f"W_enc_F has shape {_shape(W_enc_F)}; expected [d_in={d_in}, n_features] for x of shape {_shape(x)}"
        )
    n_feat = W_enc_F.shape[1]
    _check_shape("b_enc_F", b_enc_F, [n_feat], f"n_features={n_feat} from W_enc_F {_shape(W_enc_F)}")
    _check_shape("W_dec_F", W_dec_F, [n_feat, d_in], f"[n_features, d_in] from W_enc_F {_shape(W_enc_F)}")
    if b_dec is not None:
        _check_weight("b_dec", b_dec, x, [d_in], f"d_in of x with shape {_shape(x)}")
    if threshold_F is not None:
        _check_weight("threshold_F", threshold_F, x, [n_feat], f"n_features={n_feat}")
    vals = _values_tensor(values, n_feat, x.device)
    g = _gate_tensor(gate, x, n_tokens)

    if n_tokens == 0 or n_feat == 0:
        return x.clone()
    use_triton = _use_triton(x, force_triton)
    if use_triton and n_feat > MAX_TRITON_FEATURES:
        if force_triton:
            raise ValueError(f"n_features={n_feat} exceeds the Triton kernel limit; expected <= {MAX_TRITON_FEATURES}")
        logger.debug("sparse_feature_edit: |F|=%d > %d, using torch", n_feat, MAX_TRITON_FEATURES)
        use_triton = False
    if use_triton:
        from .sparse_edit import _sparse_edit_triton

        out = _sparse_edit_triton(
            x2d, W_enc_F, b_enc_F, W_dec_F, b_dec, threshold_F, mode_id, vals, only_when_active, g
        )
    else:
        out = sparse_edit_reference(
            x2d, W_enc_F, b_enc_F, W_dec_F, b_dec, threshold_F, mode_id, vals, only_when_active, g
        ).to(x.dtype)
    return out.reshape(x.shape)


@torch.no_grad()
def topk_feature_edit(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    *,
    k: int,
    features: torch.Tensor | Sequence[int],
    b_dec: torch.Tensor | None = None,
    mode: str,
    values: Values,
    only_when_active: bool = False,
    gate: torch.Tensor | None = None,
    force_triton: bool | None = None,
) -> torch.Tensor:
    """Edit features of a TopK SAE in ``x``, keeping the error term.

    Feature ``f`` is active on a row iff its pre-activation is ``>=`` the row's k-th
    largest pre-activation (ties at the k-th value are all kept, see
    :func:`.reference.topk_edit_reference`); its activation is then ``relu(h_f)``
    (sae_lens ``TopKSAE`` with ``rescale_acts_by_decoder_norm=False``). The edit is the
    same as :func:`sparse_feature_edit`.

    Args:
        x: ``[..., d_in]`` activations, any float dtype.
        W_enc: ``[d_in, d_sae]``; b_enc: ``[d_sae]``; W_dec: ``[d_sae, d_in]`` (full SAE).
        k: number of active features per token, ``1 <= k <= d_sae``.
        features: ``[F]`` unique feature indices in ``[0, d_sae)``.
        b_dec, mode, values, only_when_active, gate, force_triton: as in
            :func:`sparse_feature_edit`.

    Returns:
        Tensor shaped and typed like ``x``.

    Raises:
        ValueError: bad mode, k, features, shapes, dtypes or devices (before any launch).
    """
    mode_id = _mode_id(mode)
    x2d, d_in = _flatten_x(x)
    n_tokens = x2d.shape[0]
    for name, t in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec)):
        _check_weight(name, t, x)
    if W_enc.ndim != 2 or W_enc.shape[0] != d_in:
        raise ValueError(f"W_enc has shape {_shape(W_enc)}; expected [d_in={d_in}, d_sae] for x of shape {_shape(x)}")
    d_sae = W_enc.shape[1]
    _check_shape("b_enc", b_enc, [d_sae], f"d_sae={d_sae} from W_enc {_shape(W_enc)}")
    _check_shape("W_dec", W_dec, [d_sae, d_in], f"[d_sae, d_in] from W_enc {_shape(W_enc)}")
    if b_dec is not None:
        _check_weight("b_dec", b_dec, x, [d_in], f"d_in of x with shape {_shape(x)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"k={k!r} is out of range; expected an int with 1 <= k <= d_sae={d_sae}")
    # Validated where it lives (a list / CPU tensor needs no device sync), then moved.
    feats = torch.as_tensor(features)
    if feats.dtype.is_floating_point or feats.dtype == torch.bool or feats.is_complex():
        raise ValueError(f"features has dtype {feats.dtype}; expected an integer (long) tensor")
    if feats.ndim != 1:
        raise ValueError(f"features has shape {_shape(feats)}; expected a 1-D [n_features] tensor")
    feats = feats.to(torch.long)
    n_feat = feats.numel()
    if n_feat:
        lo, hi = int(feats.min()), int(feats.max())
        if lo < 0 or hi >= d_sae:
            bad = lo if lo < 0 else hi
            raise ValueError(f"feature index {bad} is out of range; expected 0 <= index < d_sae={d_sae}")
        if torch.unique(feats).numel() != n_feat:
            raise ValueError(f"features={feats.tolist()} contains duplicates; expected unique indices")
    feats = feats.to(x.device)
    vals = _values_tensor(values, n_feat, x.device)
    g = _gate_tensor(gate, x, n_tokens)

    if n_tokens == 0 or n_feat == 0:
        return x.clone()
    use_triton = _use_triton(x, force_triton)
    if use_triton and (n_feat > MAX_TRITON_FEATURES or k > MAX_TRITON_K):
        if force_triton:
            raise ValueError(
                f"k={k}, n_features={n_feat} exceed the Triton kernel limits; expected "
                f"k <= {MAX_TRITON_K} and n_features <= {MAX_TRITON_FEATURES}"
            )
        logger.debug("topk_feature_edit: k=%d |F|=%d beyond Triton limits, using torch", k, n_feat)
        use_triton = False
    if use_triton:
        from .topk_edit import _topk_edit_triton

        out = _topk_edit_triton(x2d, W_enc, b_enc, W_dec, k, feats, b_dec, mode_id, vals, only_when_active, g)
    else:
        out = topk_edit_reference(x2d, W_enc, b_enc, W_dec, k, feats, b_dec, mode_id, vals, only_when_active, g).to(
            x.dtype
        )
    return out.reshape(x.shape)
