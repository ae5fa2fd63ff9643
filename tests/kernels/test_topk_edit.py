"""TopK feature edit: Triton vs torch reference vs float64 naive vs sae_lens TopKSAE."""

from __future__ import annotations

import itertools
import os
import random

import pytest
import torch

import saesteer.kernels as K
from saesteer.kernels import MODES, topk_feature_edit
from saesteer.kernels.reference import topk_kth_and_hidden

TRITON_RUNNABLE = K.triton_available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not TRITON_RUNNABLE, reason="triton not runnable here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (N, d_in, d_sae, |F|, k)
SHAPES = [(1, 16, 40, 1, 1), (7, 48, 97, 3, 5), (33, 67, 97, 8, 20), (7, 67, 40, 8, 40)]
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)]


def _sid(s):
    return "N{}-d{}-S{}-F{}-k{}".format(*s)


def _case(shape, seed, dtype=torch.float32, *, use_b_dec=True, with_gate=False, kit):
    n, d_in, d_sae, n_feat, k = shape
    w = kit.make_sae(d_in, d_sae, seed=seed, device=DEVICE)
    w = {name: t.to(dtype) for name, t in w.items()}
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(n, d_in, generator=g) + 0.3).to(DEVICE, dtype)
    # Half the edited features are the ones with the largest encoder bias, so they are
    # often in the top-k and both members and non-members get exercised.
    top = torch.argsort(w["b_enc"].float().cpu(), descending=True)[: (n_feat + 1) // 2]
    rest = [int(i) for i in torch.randperm(d_sae, generator=g) if int(i) not in set(top.tolist())]
    feats = torch.tensor(top.tolist() + rest[: n_feat - len(top)], device=DEVICE)
    values = torch.empty(n_feat).uniform_(-0.5, 2.0, generator=g).to(DEVICE)
    gate = torch.rand(n, generator=g).to(DEVICE, dtype) if with_gate else None
    args = (x, w["W_enc"], w["b_enc"], w["W_dec"])
    kw = dict(k=k, features=feats, b_dec=w["b_dec"] if use_b_dec else None, gate=gate)
    return w, x, feats, values, gate, args, kw


def _triton_cases():
    rng = random.Random(4321)
    for i, (mode, (dtype, atol, rtol)) in enumerate(itertools.product(MODES, DTYPES)):
        for shape in (SHAPES[i % 4], SHAPES[(i + 1) % 4]):
            owa, gate, bdec = (rng.random() < 0.5 for _ in range(3))
            cid = (
                f"{_sid(shape)}-{mode}-{str(dtype)[6:]}"
                f"{'-owa' if owa else ''}{'-gate' if gate else ''}{'-bdec' if bdec else ''}"
            )
            yield pytest.param(shape, mode, dtype, atol, rtol, owa, gate, bdec, id=cid)


@needs_triton
@pytest.mark.parametrize("shape,mode,dtype,atol,rtol,owa,with_gate,use_b_dec", list(_triton_cases()))
def test_triton_matches_reference(shape, mode, dtype, atol, rtol, owa, with_gate, use_b_dec, kit, assert_close):
    _, x, _, values, _, args, kw = _case(shape, 3, dtype, use_b_dec=use_b_dec, with_gate=with_gate, kit=kit)
    out_t = topk_feature_edit(*args, mode=mode, values=values, only_when_active=owa, force_triton=True, **kw)
    out_r = topk_feature_edit(*args, mode=mode, values=values, only_when_active=owa, force_triton=False, **kw)
    assert out_t.dtype == x.dtype and out_t.shape == x.shape
    assert_close(out_t, out_r, atol, rtol)


@pytest.mark.parametrize("use_b_dec", [False, True], ids=["nobdec", "bdec"])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("owa", [False, True], ids=["always", "owa"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_sid)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=["f32", "bf16"])
def test_reference_matches_naive_float64(shape, mode, owa, with_gate, use_b_dec, dtype, atol, rtol, kit, assert_close):
    w, x, feats, values, gate, args, kw = _case(shape, 5, dtype, use_b_dec=use_b_dec, with_gate=with_gate, kit=kit)
    out = topk_feature_edit(*args, mode=mode, values=values, only_when_active=owa, force_triton=False, **kw)
    expected = kit.naive_edit(
        x, w, feats, values, mode, arch="topk", k=shape[4], use_b_dec=use_b_dec, only_when_active=owa, gate=gate
    )
    assert out.dtype == dtype
    assert_close(out, expected, atol, rtol)


@pytest.mark.parametrize("use_b_dec", [False, True], ids=["nobdec", "bdec"])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("owa", [False, True], ids=["always", "owa"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2]], ids=_sid)
def test_reference_matches_sae_lens(shape, mode, owa, with_gate, use_b_dec, kit, assert_close):
    w, x, feats, values, gate, args, kw = _case(shape, 7, use_b_dec=use_b_dec, with_gate=with_gate, kit=kit)
    out = topk_feature_edit(*args, mode=mode, values=values, only_when_active=owa, **kw)
    expected = kit.sae_lens_edit(
        x, w, feats, values, mode, arch="topk", k=shape[4], use_b_dec=use_b_dec, only_when_active=owa, gate=gate
    )
    assert_close(out, expected, 1e-5, 1e-5)


def test_cases_exercise_members_and_non_members(kit):
    """The test data puts edited features both inside and outside the top-k."""
    for shape in SHAPES[1:3]:
        _, x, feats, _, _, args, kw = _case(shape, 5, kit=kit)
        kth, h_f = topk_kth_and_hidden(x, args[1], args[2], kw["k"], feats, kw["b_dec"])
        member = h_f >= kth[:, None]
        assert member.any() and (~member).any()


def _integer_case(seed=0, n=9, d_in=16, d_sae=40):
    """Small-integer data: every pre-activation is an exact integer, so ties are common."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d_in), generator=g).float().to(DEVICE)
    W_enc = torch.randint(-1, 2, (d_in, d_sae), generator=g).float().to(DEVICE)
    b_enc = torch.randint(-1, 2, (d_sae,), generator=g).float().to(DEVICE)
    W_dec = torch.randint(-2, 3, (d_sae, d_in), generator=g).float().to(DEVICE)
    return x, W_enc, b_enc, W_dec


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)], ids=["torch", "triton"])
def test_ties_at_kth_value_are_all_members(use_triton, kit):
    x, W_enc, b_enc, W_dec = _integer_case()
    k, d_sae = 5, W_enc.shape[1]
    feats = torch.arange(d_sae, device=DEVICE)
    h = x @ W_enc + b_enc
    kth = torch.topk(h, k, dim=-1).values[:, -1:]
    n_members = (h >= kth).sum(-1)
    assert (n_members > k).any(), "test data should contain ties at the k-th value"
    out = topk_feature_edit(
        x, W_enc, b_enc, W_dec, k=k, features=feats, mode="set", values=0.0, force_triton=use_triton
    )
    # Zeroing every member removes relu(h) @ W_dec over exactly the ">= kth" set.
    acts = torch.where(h >= kth, torch.relu(h), torch.zeros_like(h))
    expected = x - acts @ W_dec
    assert torch.equal(out, expected)
    w = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": torch.zeros(W_enc.shape[0], device=DEVICE)}
    naive = kit.naive_edit(x, w, feats, torch.zeros(d_sae), "set", arch="topk", k=k, use_b_dec=False)
    assert torch.equal(out.double(), naive)


@needs_triton
def test_split_count_does_not_change_result(kit):
    from saesteer.kernels.topk_edit import _topk_edit_triton

    _, x, feats, values, gate, args, kw = _case((7, 48, 97, 3, 5), 9, with_gate=True, kit=kit)
    outs = [
        _topk_edit_triton(
            x, args[1], args[2], args[3], 5, feats, kw["b_dec"], 3, values, True, gate.float(), n_splits=s
        )
        for s in (1, 2, 3, 7)
    ]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)], ids=["torch", "triton"])
def test_leading_dims_and_transposed_weights(use_triton, kit, assert_close):
    w, _, feats, values, _, _, _ = _case((6, 48, 97, 3, 5), 13, kit=kit)
    x = torch.randn(48, 2, 3, device=DEVICE).permute(1, 2, 0)  # [2, 3, 48] non-contiguous
    W_enc = w["W_enc"].t().contiguous().t()  # column-major [d_in, d_sae] view
    gate = torch.rand(2, 3, device=DEVICE)
    out = topk_feature_edit(
        x,
        W_enc,
        w["b_enc"],
        w["W_dec"],
        k=5,
        features=feats.tolist(),
        b_dec=w["b_dec"],
        mode="floor",
        values=values,
        gate=gate,
        force_triton=use_triton,
    )
    flat = kit.naive_edit(x.reshape(6, 48), w, feats, values, "floor", arch="topk", k=5, gate=gate.reshape(6))
    assert out.shape == (2, 3, 48)
    assert_close(out.reshape(6, 48), flat, 1e-5, 1e-5)


def test_reference_chunking_matches_whole(kit, assert_close):
    from saesteer.kernels.reference import MODES as RMODES
    from saesteer.kernels.reference import topk_edit_reference

    _, x, feats, values, _, args, kw = _case((33, 67, 97, 8, 20), 15, kit=kit)
    common = (x, args[1], args[2], args[3], 20, feats, kw["b_dec"], RMODES.index("add"), values, False, None)
    whole = topk_edit_reference(*common)
    chunked = topk_edit_reference(*common, max_block_elements=97 * 4)  # 4 tokens per chunk
    assert_close(chunked, whole, 1e-5, 1e-5)  # BLAS blocking differs with the chunk size


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "change,pattern",
    [
        (dict(mode="zero"), "mode='zero'"),
        (dict(k=0), r"k=0 is out of range.*d_sae=40"),
        (dict(k=41), r"k=41 is out of range.*d_sae=40"),
        (dict(k=2.0), r"k=2.0 is out of range"),
        (dict(features=[1, 40]), r"feature index 40 is out of range.*d_sae=40"),
        (dict(features=[-1, 2]), r"feature index -1 is out of range"),
        (dict(features=[3, 3]), r"features=\[3, 3\] contains duplicates"),
        (dict(features=[1.0, 2.0]), r"features has dtype torch.float32"),
        (dict(features=[[1, 2]]), r"features has shape \[1, 2\]"),
        (dict(values=[1.0, 2.0, 3.0]), r"values has shape \[3\] \(3 entries\); expected 2"),
        (dict(W_enc=torch.zeros(15, 40)), r"W_enc has shape \[15, 40\].*d_in=16"),
        (dict(b_enc=torch.zeros(39)), r"b_enc has shape \[39\]; expected \[40\]"),
        (dict(W_dec=torch.zeros(40, 15)), r"W_dec has shape \[40, 15\]; expected \[40, 16\]"),
        (dict(b_dec=torch.zeros(17)), r"b_dec has shape \[17\]; expected \[16\]"),
        (dict(gate=torch.zeros(3, 1)), r"gate has shape \[3, 1\]; expected \[4\]"),
    ],
    ids=[
        "mode",
        "k0",
        "k_big",
        "k_float",
        "feat_hi",
        "feat_neg",
        "feat_dup",
        "feat_float",
        "feat_2d",
        "values_len",
        "W_enc",
        "b_enc",
        "W_dec",
        "b_dec",
        "gate",
    ],
)
def test_validation_errors(change, pattern, kit):
    w = kit.make_sae(16, 40, device=DEVICE)
    kw = dict(
        x=torch.randn(4, 16, device=DEVICE),
        W_enc=w["W_enc"],
        b_enc=w["b_enc"],
        W_dec=w["W_dec"],
        k=3,
        features=[1, 2],
        mode="set",
        values=[1.0, 2.0],
    )
    kw.update({n: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for n, v in change.items()})
    x = kw.pop("x")
    W_enc, b_enc, W_dec = kw.pop("W_enc"), kw.pop("b_enc"), kw.pop("W_dec")
    with pytest.raises(ValueError, match=pattern) as err:
        topk_feature_edit(x, W_enc, b_enc, W_dec, **kw)
    assert "\n" not in str(err.value)


@needs_triton
def test_triton_limits_raise_when_forced(kit):
    w = kit.make_sae(16, 600, device=DEVICE)
    x = torch.randn(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"k=300"):
        topk_feature_edit(
            x, w["W_enc"], w["b_enc"], w["W_dec"], k=300, features=[0], mode="set", values=1.0, force_triton=True
        )


# ------------------------------------------------------------------ GPU only


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_tokens", [32, 4096])
def test_cuda_large_shapes(dtype, n_tokens, kit):
    d_in, d_sae, k, n_feat = 2304, 16384, 64, 32
    w = kit.make_sae(d_in, d_sae, seed=41, device=DEVICE)
    w = {name: t.to(dtype) for name, t in w.items()}
    x = torch.randn(n_tokens, d_in, device=DEVICE, dtype=dtype)
    feats = torch.randperm(d_sae, device=DEVICE)[:n_feat]
    kw = dict(k=k, features=feats, b_dec=w["b_dec"], mode="set", values=3.0)
    out_t = topk_feature_edit(x, w["W_enc"], w["b_enc"], w["W_dec"], force_triton=True, **kw)
    out_r = topk_feature_edit(x, w["W_enc"], w["b_enc"], w["W_dec"], force_triton=False, **kw)
    # Rare membership flips at near-ties (different summation order) are tolerated.
    bad_rows = (out_t.float() - out_r.float()).abs().amax(-1) > (1e-3 if dtype == torch.float32 else 5e-2)
    assert bad_rows.float().mean() < 0.01
