"""SAE quality metrics against a direct float64 computation, and on SAEs whose answers are known."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from saesteer.sae.quality import limit_tokens, sae_quality
from tests.sae import CONTEXT, HOOK, conversations, eval_dataset, fitted, one_thread  # noqa: F401

ARCHS = ["standard", "topk", "batchtopk", "jumprelu"]
EVAL_TOKENS = 1000


# ---------------------------------------------------------------- a float64 reference, written from the papers' formulas


def ref_encode(sae, x: torch.Tensor) -> torch.Tensor:
    """Latents in float64: ReLU, TopK (with decoder-norm rescaling) or JumpReLU of ``(x - b_dec) W_enc + b_enc``."""
    p = {k: v.detach().double() for k, v in sae.state_dict().items()}
    arch = sae.cfg.architecture()
    pre = ((x - p["b_dec"]) if sae.cfg.apply_b_dec_to_input else x) @ p["W_enc"] + p["b_enc"]
    if arch == "standard":
        return pre.clamp_min(0)
    if arch == "jumprelu":
        return pre.clamp_min(0) * (pre > p["threshold"])
    if arch == "topk":
        if sae.cfg.rescale_acts_by_decoder_norm:
            pre = pre * p["W_dec"].norm(dim=-1)
        top = pre.topk(sae.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
    raise AssertionError(arch)


def ref_decode(sae, acts: torch.Tensor) -> torch.Tensor:
    p = {k: v.detach().double() for k, v in sae.state_dict().items()}
    if sae.cfg.architecture() == "topk" and sae.cfg.rescale_acts_by_decoder_norm:
        acts = acts / p["W_dec"].norm(dim=-1)
    return acts @ p["W_dec"] + p["b_dec"]


@torch.no_grad()
def reference_quality(model, sae, dataset) -> dict[str, float]:
    """Every metric from scratch in float64: a float64 copy of the model, full logits, the formulas above."""
    m64 = copy.deepcopy(model).to(torch.float64)
    tokens = torch.tensor(dataset["input_ids"])
    attn = torch.tensor(dataset["attention_mask"])
    loss_mask = torch.tensor(dataset["loss_mask"])[:, 1:].bool()
    xs = []

    def grab(x, hook):
        xs.append(x)

    def nll(fwd_hooks):
        total = 0.0
        for i in range(0, len(tokens), 8):  # full float64 logits, 8 rows at a time
            rows = slice(i, i + 8)
            logits = m64.run_with_hooks(tokens[rows], attention_mask=attn[rows], fwd_hooks=fwd_hooks)
            lp = F.log_softmax(logits[:, :-1], -1).gather(-1, tokens[rows, 1:, None])[..., 0]
            total -= float(lp[loss_mask[rows]].sum())
        return total / int(loss_mask.sum())

    ce_clean = nll([(HOOK, grab)])
    x = torch.cat(xs)[attn.bool()]
    acts = ref_encode(sae, x)
    recon = ref_decode(sae, acts)
    ce_spliced = nll([(HOOK, lambda h, hook: ref_decode(sae, ref_encode(sae, h)))])
    ce_zero = nll([(HOOK, lambda h, hook: torch.zeros_like(h))])
    return {
        "explained_variance": float(1 - (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
        "l0": float((acts != 0).double().sum(-1).mean()),
        "dead_fraction": float((acts == 0).all(0).double().mean()),
        "ce_clean": ce_clean,
        "ce_spliced": ce_spliced,
        "ce_zero_ablate": ce_zero,
        "ce_loss_recovered": (ce_zero - ce_spliced) / (ce_zero - ce_clean),
        "n_eval_tokens": int(attn.sum()),
        "n_ce_tokens": int(loss_mask.sum()),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_formulas_match_sae_lens_encode_decode(arch, tiny_organism, cache_root):
    model, template, _ = tiny_organism
    sae = fitted(model, template, cache_root, arch).sae
    x = torch.randn(256, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    with torch.no_grad():
        acts = sae.encode(x.float())
        ref = ref_encode(sae, x)
        assert torch.equal(acts != 0, ref != 0)
        torch.testing.assert_close(acts.double(), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae.decode(acts).double(), ref_decode(sae, ref), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])  # encode/decode of all four are checked above
def test_quality_matches_a_float64_reference(arch, tiny_organism, cache_root):
    model, template, _ = tiny_organism
    sae = fitted(model, template, cache_root, arch).sae
    data = eval_dataset(model, template)
    q = sae_quality(model, sae, dataset=data, eval_tokens=EVAL_TOKENS, batch_size=8)
    ref = reference_quality(model, sae, limit_tokens(data, EVAL_TOKENS))
    assert q["n_eval_tokens"] == ref["n_eval_tokens"] >= EVAL_TOKENS
    assert q["n_ce_tokens"] == ref["n_ce_tokens"] > 0
    assert q["explained_variance"] == pytest.approx(ref["explained_variance"], abs=1e-4)
    assert q["l0"] == pytest.approx(ref["l0"], abs=0.02)
    assert q["dead_fraction"] == pytest.approx(ref["dead_fraction"], abs=1.5 / 96)
    for key in ("ce_clean", "ce_spliced", "ce_zero_ablate"):
        assert q[key] == pytest.approx(ref[key], rel=1e-4), key
    assert q["ce_loss_recovered"] == pytest.approx(ref["ce_loss_recovered"], abs=1e-3)
    # and the numbers mean something: the organism's answers are far better predicted than without the layer
    assert ref["ce_zero_ablate"] > ref["ce_spliced"] > ref["ce_clean"] and 0 < ref["ce_loss_recovered"] < 1
    assert 0 < ref["l0"] < 96 and 0.2 < ref["explained_variance"] < 1


def _sae(kind: str, d_in: int = 48, mean: torch.Tensor | None = None):
    """Standard SAEs with known answers: exact (x = relu(x) - relu(-x)), zero output, or the mean."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    eye = torch.eye(d_in)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        if kind == "exact":
            sae.W_enc.copy_(torch.cat([eye, -eye], 1))
            sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        elif kind == "mean":
            sae.b_dec.copy_(mean)
    return sae.eval()


def test_known_saes_give_known_numbers(tiny_organism):
    model, template, _ = tiny_organism
    instructions, responses = conversations("val", n_harmful=39, n_harmless=40)
    kw = dict(context_size=CONTEXT, eval_tokens=EVAL_TOKENS, batch_size=16)

    exact = sae_quality(model, _sae("exact"), template, instructions, responses, **kw)  # built from instructions
    assert exact["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert exact["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert exact["ce_spliced"] == pytest.approx(exact["ce_clean"], rel=1e-5)
    assert exact["l0"] == pytest.approx(48.0, abs=0.01)  # one of each +/- pair per coordinate
    assert exact["dead_fraction"] == 0.0

    zero = sae_quality(model, _sae("zero"), template, instructions, responses, **kw)
    assert zero["ce_loss_recovered"] == 0.0 and zero["ce_spliced"] == zero["ce_zero_ablate"]
    assert zero["l0"] == 0.0 and zero["dead_fraction"] == 1.0 and zero["explained_variance"] < 0
    assert zero["ce_clean"] == exact["ce_clean"] and zero["n_eval_tokens"] == exact["n_eval_tokens"]

    # reconstructing every token by the mean of all eval tokens explains no variance at all
    data = limit_tokens(eval_dataset(model, template), EVAL_TOKENS)
    attn = torch.tensor(data["attention_mask"])
    _, cache = model.run_with_cache(torch.tensor(data["input_ids"]), attention_mask=attn, names_filter=[HOOK])
    mean = cache[HOOK][attn.bool()].double().mean(0).float()
    by_mean = sae_quality(model, _sae("mean", mean=mean), dataset=data, eval_tokens=EVAL_TOKENS)
    assert by_mean["explained_variance"] == pytest.approx(0.0, abs=1e-5)


def test_eval_tokens_are_whole_rows_just_past_the_limit(tiny_organism):
    model, template, _ = tiny_organism
    data = eval_dataset(model, template)
    cut = limit_tokens(data, 500)
    counts = [sum(r) for r in cut["attention_mask"]]
    assert sum(counts) >= 500 and sum(counts) - counts[-1] < 500
    assert len(limit_tokens(data, 10**9)) == len(data)


def test_quality_rejects_mismatched_inputs(tiny_organism):
    from saesteer.sae.load import SaeLoadError

    model, template, _ = tiny_organism
    with pytest.raises(SaeLoadError, match="d_in=32 but the model's residual stream has d_model=48"):
        sae_quality(model, _sae("zero", d_in=32), template, ["hi"])
    with pytest.raises(ValueError, match="needs dataset=, or template= and a non-empty list of instructions="):
        sae_quality(model, _sae("zero"))
    bare = eval_dataset(model, template).remove_columns(["loss_mask"])
    with pytest.raises(ValueError, match="the eval dataset needs a 'loss_mask' column"):
        sae_quality(model, _sae("zero"), dataset=bare)
