"""Restricted unembedding: the logits of model.unembed, computed only over the columns a model can emit."""

from __future__ import annotations

import copy

import pytest
import torch

from saesteer import unembed as U
from tests.families import tiny_model


def _assert_close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    err = (got - want).abs()
    assert err.max() <= atol, f"max {err.max():.2e} mean {err.mean():.2e}"


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_organism_logits_equal_the_full_unembedding(tiny_organism, shape):
    model, _, _ = tiny_organism
    resid = torch.randn(*shape, model.cfg.d_model)
    live, _, _ = U._restricted(model)
    assert live is not None and live.numel() < 0.5 * model.cfg.d_vocab_out  # the organism masks most of the vocabulary
    got, want = U.unembed(model, resid), model.unembed(resid)
    dead = torch.ones(model.cfg.d_vocab_out, dtype=torch.bool)
    dead[live] = False
    assert torch.equal(got[..., dead], want[..., dead])  # constant columns: exactly b_U
    _assert_close(got, want)


def test_logits_follow_an_in_place_edit_of_W_U(tiny_organism):
    model, _, _ = tiny_organism
    model = copy.deepcopy(model)
    resid = torch.randn(4, model.cfg.d_model)
    U.unembed(model, resid)  # fills the cache
    live, _, _ = U._restricted(model)
    with torch.no_grad():
        model.unembed.W_U[:, live[:3]] = 0.0  # three fewer live columns: the cache is stale
        model.unembed.W_U[:, 0] = 1.0  # and one more
    _assert_close(U.unembed(model, resid), model.unembed(resid))
    assert U._restricted(model)[0].numel() == live.numel() - 3 + (0 not in live.tolist())


def test_gradients_match_and_reach_W_U_in_full(tiny_organism):
    model, _, _ = tiny_organism
    model = copy.deepcopy(model)
    resid = torch.randn(3, model.cfg.d_model, requires_grad=True)
    target = torch.randint(0, model.cfg.d_vocab_out, (3,))
    with torch.no_grad():
        model.unembed.W_U.requires_grad_(False)
        model.unembed.b_U.requires_grad_(False)
    (g_fast,) = torch.autograd.grad(torch.nn.functional.cross_entropy(U.unembed(model, resid), target), resid)
    (g_full,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model.unembed(resid), target), resid)
    _assert_close(g_fast, g_full)
    model.unembed.W_U.requires_grad_(True)  # training W_U: every column has a gradient, so the full product is used
    loss = torch.nn.functional.cross_entropy(U.unembed(model, resid), target)
    (g_W,) = torch.autograd.grad(loss, model.unembed.W_U)
    live, _, _ = U._restricted(model)
    dead = torch.ones(model.cfg.d_vocab_out, dtype=torch.bool)
    dead[live] = False
    assert g_W[:, dead].abs().sum() > 0


@pytest.mark.parametrize("family", ["gemma2", "llama3.1"])
def test_dense_vocabulary_uses_the_full_product_and_keeps_the_softcap(family):
    model, _ = tiny_model(family)
    assert U._restricted(model)[0] is None  # every column live: nothing to restrict
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 6))
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    _assert_close(U.logits(model, resid), model(tokens), atol=1e-5)
