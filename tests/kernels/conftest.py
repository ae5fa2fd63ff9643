"""Fixtures for the kernel tests: interpreted Triton on CPU and a verbose assert_close."""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides between compiled and interpreted kernels when a kernel is decorated, so
# this must happen before saesteer.kernels' Triton modules (imported lazily) are loaded.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    """torch.testing.assert_close in float64, reporting max and mean abs error on failure."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    err = (a - e).abs()
    tol = atol + rtol * e.abs()
    if not bool((err <= tol).all()):
        bad = int((err > tol).sum())
        raise AssertionError(
            f"tensors differ: max abs err {err.max().item():.3e}, mean abs err "
            f"{err.mean().item():.3e}, {bad}/{err.numel()} elements outside "
            f"atol={atol:g} rtol={rtol:g}"
        )


@pytest.fixture(name="assert_close")
def _assert_close_fixture():
    """The :func:`assert_close` helper, as a fixture (conftest modules are not importable by name)."""
    return assert_close


class KernelKit:
    """Shared builders and oracles for the kernel tests (exposed through the ``kit`` fixture)."""

    @staticmethod
    def make_sae(d_in: int, d_sae: int, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Random float32 SAE weights with non-zero biases and positive JumpReLU thresholds.

        Scaled so that a good fraction of features fire (so every mode changes something).
        """
        g = torch.Generator().manual_seed(seed)
        w = {
            "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
            "b_enc": 0.3 * torch.randn(d_sae, generator=g),
            "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.25,
            "b_dec": 0.2 * torch.randn(d_in, generator=g),
            "threshold": 0.4 * torch.rand(d_sae, generator=g),
        }
        return {k: v.to(device) for k, v in w.items()}

    @staticmethod
    def apply_mode(a: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "set":
            return v.expand_as(a).clone()
        if mode == "scale":
            return a * v
        if mode == "add":
            return a + v
        if mode == "floor":
            return torch.maximum(a, v.expand_as(a))
        if mode == "ceiling":
            return torch.minimum(a, v.expand_as(a))
        raise AssertionError(mode)

    @classmethod
    def edited_acts(cls, acts, features, values, mode, only_when_active, gate):
        """Full activations with features ``F`` edited (what a hook on acts_post does)."""
        acts = acts.clone()
        a = acts[..., features]
        new = cls.apply_mode(a, values.to(a.dtype), mode)
        if only_when_active:
            new = torch.where(a > 0, new, a)
        if gate is not None:
            new = a + gate.to(a.dtype)[..., None] * (new - a)
        acts[..., features] = new
        return acts

    @classmethod
    def naive_edit(
        cls, x, w, features, values, mode, *, arch, k=None, use_b_dec=True, only_when_active=False, gate=None
    ):
        """float64 full encode / decode of the whole dictionary, with the error term kept."""
        f64 = {n: t.to(torch.float64) for n, t in w.items()}
        x64 = x.to(torch.float64)
        xe = x64 - f64["b_dec"] if use_b_dec else x64
        h = xe @ f64["W_enc"] + f64["b_enc"]
        if arch == "relu":
            acts = torch.relu(h)
        elif arch == "jumprelu":
            acts = torch.relu(h) * (h > f64["threshold"])
        else:  # topk with the >= k-th-value tie rule
            kth = torch.topk(h, k, dim=-1).values[..., -1:]
            acts = torch.where(h >= kth, torch.relu(h), torch.zeros_like(h))
        edited = cls.edited_acts(acts, features, values, mode, only_when_active, gate)
        recon = acts @ f64["W_dec"] + f64["b_dec"]
        recon_edit = edited @ f64["W_dec"] + f64["b_dec"]
        return x64 + (recon_edit - recon)

    @classmethod
    def sae_lens_edit(
        cls, x, w, features, values, mode, *, arch, k=None, use_b_dec=True, only_when_active=False, gate=None
    ):
        """sae_lens SAE with use_error_term=True and an edit hook on hook_sae_acts_post."""
        import warnings

        from sae_lens import (
            JumpReLUSAE,
            JumpReLUSAEConfig,
            StandardSAE,
            StandardSAEConfig,
            TopKSAE,
            TopKSAEConfig,
        )

        d_in, d_sae = w["W_enc"].shape
        common = dict(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=use_b_dec)
        if arch == "relu":
            sae = StandardSAE(StandardSAEConfig(**common))
        elif arch == "jumprelu":
            sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        else:
            sae = TopKSAE(TopKSAEConfig(k=k, **common))
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sae, name).copy_(w[name])
            if arch == "jumprelu":
                sae.threshold.copy_(w["threshold"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sae.use_error_term = True

        def hook(acts, hook):  # noqa: ARG001
            return cls.edited_acts(acts, features, values, mode, only_when_active, gate)

        sae.add_hook("hook_sae_acts_post", hook)
        with torch.no_grad():
            out = sae(x)
        sae.reset_hooks()
        return out


@pytest.fixture
def kit() -> type[KernelKit]:
    return KernelKit


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Tiny test shapes run faster single-threaded (and avoid OpenMP oversubscription
    stalls on small CI machines); restored after each kernel test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
