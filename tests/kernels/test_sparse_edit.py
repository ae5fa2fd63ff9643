"""ReLU / JumpReLU feature edit: Triton vs torch reference vs float64 naive vs sae_lens."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys

import pytest
import torch

import saesteer.kernels as K
from saesteer.kernels import MODES, sparse_feature_edit

TRITON_RUNNABLE = K.triton_available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not TRITON_RUNNABLE, reason="triton not runnable here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (N, d_in, d_sae, |F|)
SHAPES = [(1, 16, 40, 1), (7, 48, 97, 3), (33, 67, 97, 8), (7, 67, 40, 8)]
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)]


def _case(shape, seed, dtype=torch.float32, *, arch="relu", use_b_dec=True, with_gate=False, kit):
    n, d_in, d_sae, n_feat = shape
    w = kit.make_sae(d_in, d_sae, seed=seed, device=DEVICE)
    w = {name: t.to(dtype) for name, t in w.items()}
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn(n, d_in, generator=g) + 0.3).to(DEVICE, dtype)
    feats = torch.randperm(d_sae, generator=g)[:n_feat].to(DEVICE)
    values = torch.empty(n_feat).uniform_(-0.5, 2.0, generator=g).to(DEVICE)
    gate = torch.rand(n, generator=g).to(DEVICE, dtype) if with_gate else None
    kwargs = dict(
        b_dec=w["b_dec"] if use_b_dec else None,
        threshold_F=w["threshold"][feats] if arch == "jumprelu" else None,
        gate=gate,
    )
    args = (x, w["W_enc"][:, feats], w["b_enc"][feats], w["W_dec"][feats])
    return w, x, feats, values, gate, args, kwargs


def _triton_cases():
    rng = random.Random(1234)
    for shape, mode, (dtype, atol, rtol) in itertools.product(SHAPES, MODES, DTYPES):
        owa, gate, bdec, jump = (rng.random() < 0.5 for _ in range(4))
        arch = "jumprelu" if jump else "relu"
        cid = (
            f"N{shape[0]}-d{shape[1]}-F{shape[3]}-{mode}-{str(dtype)[6:]}-{arch}"
            f"{'-owa' if owa else ''}{'-gate' if gate else ''}{'-bdec' if bdec else ''}"
        )
        yield pytest.param(shape, mode, dtype, atol, rtol, owa, gate, bdec, arch, id=cid)


@needs_triton
@pytest.mark.parametrize("shape,mode,dtype,atol,rtol,owa,with_gate,use_b_dec,arch", list(_triton_cases()))
def test_triton_matches_reference(shape, mode, dtype, atol, rtol, owa, with_gate, use_b_dec, arch, kit, assert_close):
    _, x, _, values, _, args, kw = _case(shape, 3, dtype, arch=arch, use_b_dec=use_b_dec, with_gate=with_gate, kit=kit)
    out_t = sparse_feature_edit(*args, mode=mode, values=values, only_when_active=owa, force_triton=True, **kw)
    out_r = sparse_feature_edit(*args, mode=mode, values=values, only_when_active=owa, force_triton=False, **kw)
    assert out_t.dtype == x.dtype and out_t.shape == x.shape
    assert_close(out_t, out_r, atol, rtol)


@pytest.mark.parametrize("use_b_dec", [False, True], ids=["nobdec", "bdec"])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("owa", [False, True], ids=["always", "owa"])
@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "N{}-d{}-S{}-F{}".format(*s))
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES, ids=["f32", "bf16"])
def test_reference_matches_naive_float64(
    shape, mode, arch, owa, with_gate, use_b_dec, dtype, atol, rtol, kit, assert_close
):
    w, x, feats, values, gate, args, kw = _case(
        shape, 5, dtype, arch=arch, use_b_dec=use_b_dec, with_gate=with_gate, kit=kit
    )
    out = sparse_feature_edit(*args, mode=mode, values=values, only_when_active=owa, force_triton=False, **kw)
    expected = kit.naive_edit(
        x, w, feats, values, mode, arch=arch, use_b_dec=use_b_dec, only_when_active=owa, gate=gate
    )
    assert out.dtype == dtype
    assert_close(out, expected, atol, rtol)


@pytest.mark.parametrize("use_b_dec", [False, True], ids=["nobdec", "bdec"])
@pytest.mark.parametrize("with_gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("owa", [False, True], ids=["always", "owa"])
@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2]], ids=lambda s: "N{}-d{}-S{}-F{}".format(*s))
def test_reference_matches_sae_lens(shape, mode, arch, owa, with_gate, use_b_dec, kit, assert_close):
    w, x, feats, values, gate, args, kw = _case(shape, 7, arch=arch, use_b_dec=use_b_dec, with_gate=with_gate, kit=kit)
    out = sparse_feature_edit(*args, mode=mode, values=values, only_when_active=owa, **kw)
    expected = kit.sae_lens_edit(
        x, w, feats, values, mode, arch=arch, use_b_dec=use_b_dec, only_when_active=owa, gate=gate
    )
    assert_close(out, expected, 1e-5, 1e-5)


def test_edit_changes_only_through_features(kit):
    """Sanity: with every value equal to the current activation nothing moves."""
    w, x, feats, _, _, args, kw = _case((7, 48, 97, 3), 11, arch="relu", kit=kit)
    out = sparse_feature_edit(*args, mode="scale", values=1.0, **kw)
    assert torch.equal(out, x) or (out - x).abs().max() < 1e-6
    out = sparse_feature_edit(*args, mode="set", values=0.0, only_when_active=True, **kw)
    zeroed = kit.naive_edit(x, w, feats, torch.zeros(3), "set", arch="relu")
    assert (out.double() - zeroed).abs().max() < 1e-5


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)], ids=["torch", "triton"])
def test_leading_dims_noncontiguous_and_gate_shape(use_triton, kit, assert_close):
    w, _, feats, values, _, _, _ = _case((6, 48, 97, 3), 13, kit=kit)
    base = torch.randn(48, 2, 3, device=DEVICE)
    x = base.permute(1, 2, 0)  # [2, 3, 48], non-contiguous
    gate = torch.rand(2, 3, device=DEVICE)
    args = (x, w["W_enc"][:, feats], w["b_enc"][feats], w["W_dec"][feats])
    out = sparse_feature_edit(*args, b_dec=w["b_dec"], mode="add", values=values, gate=gate, force_triton=use_triton)
    flat = kit.naive_edit(x.reshape(6, 48), w, feats, values, "add", arch="relu", gate=gate.reshape(6))
    assert out.shape == (2, 3, 48)
    assert_close(out.reshape(6, 48), flat, 1e-5, 1e-5)


@needs_triton
def test_triton_two_pass_wide_d_in(kit, assert_close):
    """d_in beyond the one-pass register tile exercises the chunked d_in loops."""
    w, x, _, values, _, args, kw = _case((5, 1100, 40, 3), 17, arch="jumprelu", with_gate=True, kit=kit)
    out_t = sparse_feature_edit(*args, mode="ceiling", values=values, force_triton=True, **kw)
    out_r = sparse_feature_edit(*args, mode="ceiling", values=values, force_triton=False, **kw)
    assert_close(out_t, out_r, 1e-5, 1e-5)


def test_empty_inputs_return_copy(kit):
    _, x, feats, values, _, args, kw = _case((4, 16, 40, 2), 19, kit=kit)
    x0 = x[:0]
    out = sparse_feature_edit(x0, *args[1:], mode="set", values=values)
    assert out.shape == x0.shape
    out = sparse_feature_edit(x, args[1][:, :0], args[2][:0], args[3][:0], mode="set", values=[])
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


# ------------------------------------------------------------------ dispatch


def test_dispatch_env_and_flags(monkeypatch, kit):
    _, x, _, values, _, args, kw = _case((3, 16, 40, 2), 23, kit=kit)
    calls = []
    import saesteer.kernels.reference as ref

    real = K.sparse_edit_reference

    def spy(*a, **k):
        calls.append("torch")
        return real(*a, **k)

    monkeypatch.setattr(K, "sparse_edit_reference", spy)
    sparse_feature_edit(*args, mode="set", values=values, force_triton=False)
    assert calls == ["torch"]
    monkeypatch.setenv("SAESTEER_DISABLE_TRITON", "1")
    monkeypatch.delenv("SAESTEER_FORCE_TRITON", raising=False)
    sparse_feature_edit(*args, mode="set", values=values)
    assert calls == ["torch", "torch"]
    assert ref.MODES == MODES
    if not x.is_cuda:
        monkeypatch.delenv("SAESTEER_DISABLE_TRITON")
        sparse_feature_edit(*args, mode="set", values=values)  # CPU without force: torch
        assert calls == ["torch"] * 3
        if TRITON_RUNNABLE:
            monkeypatch.setenv("SAESTEER_FORCE_TRITON", "1")
            sparse_feature_edit(*args, mode="set", values=values)  # interpreted Triton
            assert calls == ["torch"] * 3


def test_force_triton_without_triton_raises(monkeypatch, kit):
    _, x, _, values, _, args, _ = _case((3, 16, 40, 2), 29, kit=kit)
    monkeypatch.setattr(K, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton"):
        sparse_feature_edit(*args, mode="set", values=values, force_triton=True)
    out = sparse_feature_edit(*args, mode="set", values=values)  # falls back to torch
    assert out.shape == x.shape


def test_import_without_triton_uses_torch():
    """``import saesteer.kernels`` and the torch path work when triton cannot be imported."""
    code = """
import sys, torch
sys.modules["triton"] = None  # makes `import triton` raise ImportError
import saesteer.kernels as K
assert not K.triton_available()
x = torch.randn(4, 8)
out = K.sparse_feature_edit(x, torch.randn(8, 2), torch.zeros(2), torch.randn(2, 8), mode="set", values=1.0)
out = K.topk_feature_edit(x, torch.randn(8, 10), torch.zeros(10), torch.randn(10, 8), k=3, features=[1],
                          mode="add", values=1.0)
assert out.shape == x.shape
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


# ------------------------------------------------------------------ validation


def _valid(kit):
    _, x, _, values, _, args, _ = _case((4, 16, 40, 3), 31, kit=kit)
    return x, args, values


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (lambda a, kw: kw.update(mode="clamp"), "mode='clamp'"),
        (lambda a, kw: a.__setitem__(1, a[1][:-1]), r"W_enc_F has shape \[15, 3\].*d_in=16.*\[4, 16\]"),
        (lambda a, kw: a.__setitem__(2, a[2][:2]), r"b_enc_F has shape \[2\]; expected \[3\]"),
        (lambda a, kw: a.__setitem__(3, a[3][:, :5]), r"W_dec_F has shape \[3, 5\]; expected \[3, 16\]"),
        (lambda a, kw: kw.update(b_dec=torch.zeros(15, device=DEVICE)), r"b_dec has shape \[15\]; expected \[16\]"),
        (
            lambda a, kw: kw.update(threshold_F=torch.zeros(4, device=DEVICE)),
            r"threshold_F has shape \[4\]; expected \[3\]",
        ),
        (lambda a, kw: kw.update(values=[1.0, 2.0]), r"values has shape \[2\] \(2 entries\); expected 3"),
        (lambda a, kw: kw.update(values="x"), "values"),
        (lambda a, kw: kw.update(gate=torch.ones(5, device=DEVICE)), r"gate has shape \[5\]; expected \[4\]"),
        (lambda a, kw: kw.update(gate=torch.ones(4, dtype=torch.long, device=DEVICE)), r"gate has dtype torch.int64"),
        (lambda a, kw: a.__setitem__(0, a[0].long()), r"x has dtype torch.int64"),
        (lambda a, kw: a.__setitem__(1, a[1].to("meta")), r"W_enc_F is on device meta"),
    ],
    ids=[
        "mode",
        "W_enc_F",
        "b_enc_F",
        "W_dec_F",
        "b_dec",
        "threshold",
        "values_len",
        "values_type",
        "gate_shape",
        "gate_dtype",
        "x_dtype",
        "device",
    ],
)
def test_validation_errors(mutate, pattern, kit):
    x, args, values = _valid(kit)
    args = list(args)
    kw = dict(mode="set", values=values)
    mutate(args, kw)
    with pytest.raises(ValueError, match=pattern) as err:
        sparse_feature_edit(*args, **kw)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ GPU only


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_feat", [1, 32, 300])
def test_cuda_large_shapes(dtype, n_feat, kit):
    n, d_in, d_sae = 4096, 2304, 16384
    w = kit.make_sae(d_in, d_sae, seed=41, device=DEVICE)
    w = {k: v.to(dtype) for k, v in w.items()}
    x = torch.randn(n, d_in, device=DEVICE, dtype=dtype)
    feats = torch.randperm(d_sae, device=DEVICE)[:n_feat]
    args = (x, w["W_enc"][:, feats], w["b_enc"][feats], w["W_dec"][feats])
    kw = dict(b_dec=w["b_dec"], threshold_F=w["threshold"][feats], mode="floor", values=2.0)
    out_t = sparse_feature_edit(*args, force_triton=True, **kw)
    out_r = sparse_feature_edit(*args, force_triton=False, **kw)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out_t.float(), out_r.float(), atol=tol, rtol=tol)
