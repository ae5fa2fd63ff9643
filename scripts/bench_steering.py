#!/usr/bin/env python
"""Benchmark the cost of SAE feature steering inside a transformer forward pass.

Providers, side by side, on the same randomly initialised TransformerLens model:

* ``unsteered``       plain forward.
* ``sae_lens``        the sae_lens SAE spliced into one residual hook point with
                      ``use_error_term=True`` and a clamp hook on ``hook_sae_acts_post``
                      (what HookedSAETransformer does: two full encodes + two decodes).
* ``saesteer_torch``  :func:`saesteer.kernels.sparse_feature_edit` /
                      :func:`saesteer.kernels.topk_feature_edit` torch reference as a hook
                      at the same point.
* ``saesteer_triton`` the fused Triton kernels (CUDA only; skipped with a note on CPU).

Every steered provider applies the same edit (``set`` the features ``F`` to 5.0), so
outputs agree. ``decode`` is a single-position forward over a batch (no KV cache);
``prefill`` is ``batch x seq``. Times are medians over ``--repeats`` runs after warmup,
with providers interleaved round-robin so drifting machine load hits all of them alike;
``ratio_vs_unsteered`` is the median of per-round ratios against the unsteered run
timed next to it (``ms`` is the plain median).
Peak memory: ``torch.cuda.max_memory_allocated`` above the pre-call level on GPU; on
CPU the peak resident-set growth during one call, sampled every 0.5 ms (approximate).

Examples::

    python scripts/bench_steering.py --device cpu --sizes small --quick
    python scripts/bench_steering.py --device cuda --sizes all --repeats 20
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import saesteer.kernels as sk

CSV_COLUMNS = [
    "provider",
    "sae_arch",
    "d_model",
    "d_sae",
    "n_features",
    "phase",
    "batch",
    "seq",
    "ms",
    "ratio_vs_unsteered",
    "peak_mb",
]
SIZES = {"small": [(256, [2048])], "large": [(2304, [16384, 65536])]}
ARCHS = ("relu", "jumprelu", "topk")
TOPK_K = 64
CLAMP_VALUE = 5.0


# --------------------------------------------------------------------------- models


def build_model(d_model: int, n_ctx: int, d_vocab: int, device: str, dtype: torch.dtype):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=4,
        d_model=d_model,
        d_head=64,
        n_heads=d_model // 64,
        d_mlp=4 * d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn="gelu",
        normalization_type="LN",
        attn_only=False,
        init_weights=True,
        seed=0,
        device=device,
        dtype=dtype,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


@dataclass
class SAEWeights:
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor


def random_sae(d_in: int, d_sae: int, device: str, dtype: torch.dtype, seed: int = 0) -> SAEWeights:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)

    return SAEWeights(
        W_enc=rnd(d_in, d_sae, scale=d_in**-0.5),
        b_enc=rnd(d_sae, scale=0.1) - 0.2,
        W_dec=rnd(d_sae, d_in, scale=d_in**-0.5),
        b_dec=rnd(d_in, scale=0.1),
        threshold=(0.2 * torch.rand(d_sae, generator=g)).to(device=device, dtype=dtype),
    )


def build_sae_lens(arch: str, w: SAEWeights, features: torch.Tensor):
    """sae_lens SAE sharing ``w``'s storage, error term on, clamp hook on acts_post."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    d_in, d_sae = w.W_enc.shape
    common = dict(d_in=d_in, d_sae=d_sae, dtype=str(w.W_enc.dtype).replace("torch.", ""), device=str(w.W_enc.device))
    if arch == "relu":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    else:
        sae = TopKSAE(TopKSAEConfig(k=TOPK_K, **common))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        setattr(sae, name, torch.nn.Parameter(getattr(w, name), requires_grad=False))
    if arch == "jumprelu":
        sae.threshold = torch.nn.Parameter(w.threshold, requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae.use_error_term = True

    def clamp(acts, hook):  # noqa: ARG001
        acts[..., features] = CLAMP_VALUE
        return acts

    sae.add_hook("hook_sae_acts_post", clamp)
    return sae


def make_hook(provider: str, arch: str, w: SAEWeights, features: torch.Tensor):
    """A TransformerLens hook function ``fn(resid, hook) -> resid'`` for a steered provider."""
    if provider == "sae_lens":
        sae = build_sae_lens(arch, w, features)
        return lambda resid, hook: sae(resid)
    force = provider == "saesteer_triton"
    n_feat = features.numel()
    values = torch.full((n_feat,), CLAMP_VALUE, device=features.device)
    if arch == "topk":
        feats = features.to(w.W_enc.device)

        def topk_hook(resid, hook):  # noqa: ARG001
            return sk.topk_feature_edit(
                resid,
                w.W_enc,
                w.b_enc,
                w.W_dec,
                k=TOPK_K,
                features=feats,
                b_dec=w.b_dec,
                mode="set",
                values=values,
                force_triton=force,
            )

        return topk_hook
    W_enc_F = w.W_enc[:, features].contiguous()
    b_enc_F = w.b_enc[features].contiguous()
    W_dec_F = w.W_dec[features].contiguous()
    thr_F = w.threshold[features].contiguous() if arch == "jumprelu" else None

    def sparse_hook(resid, hook):  # noqa: ARG001
        return sk.sparse_feature_edit(
            resid,
            W_enc_F,
            b_enc_F,
            W_dec_F,
            b_dec=w.b_dec,
            threshold_F=thr_F,
            mode="set",
            values=values,
            force_triton=force,
        )

    return sparse_hook


# --------------------------------------------------------------------------- timing


class RSSPeak:
    """Peak resident-set growth (MiB) of this process while the context is open (CPU)."""

    def __init__(self, interval_s: float = 0.0005):
        self.interval_s = interval_s
        self.peak_mb = 0.0

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # non-Linux: no sampling
            return 0

    def _run(self):
        while not self._stop.is_set():
            self._max = max(self._max, self.rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self):
        self._base = self.rss_bytes()
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, self.rss_bytes())
        self.peak_mb = (self._max - self._base) / 2**20


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mb(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with RSSPeak() as rss:
        fn()
    return rss.peak_mb


def time_round_robin(fns: dict[str, callable], device: str, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Millisecond samples per function; the functions are interleaved each repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


def paired_ratio(samples: list[float], baseline: list[float]) -> float:
    """Median of per-round ratios (each against the baseline run next to it in time)."""
    return statistics.median(a / b for a, b in zip(samples, baseline))


# --------------------------------------------------------------------------- kernel-only (GPU)


def copy_bandwidth_gbs(device: str, n_bytes: int = 1 << 30) -> float:
    """Copy bandwidth (bytes read + written per second): ``clone`` on GPU (the caching
    allocator reuses memory); ``copy_`` into a preallocated buffer on CPU, where a fresh
    allocation per clone would measure page faults rather than memory bandwidth."""
    x = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(x) if device == "cpu" else None

    def copy():
        return dst.copy_(x) if dst is not None else x.clone()

    for _ in range(3):
        copy()
    sync(device)
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        copy()
    sync(device)
    return 2 * n_bytes * reps / (time.perf_counter() - t0) / 1e9


def kernel_bytes(arch: str, n_tokens: int, d_model: int, d_sae: int, n_feat: int, elt: int) -> int:
    """Compulsory traffic: x read + out written + the weights the kernel must read once."""
    act = 2 * n_tokens * d_model * elt
    if arch == "topk":
        return act + d_model * d_sae * elt + d_sae * elt + n_feat * d_model * elt
    return act + 2 * n_feat * d_model * elt + 3 * n_feat * elt


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--sizes",
        choices=["small", "large", "all"],
        default=None,
        help="small: d_model 256 / d_sae 2048; large: d_model 2304 / d_sae 16k, 64k "
        "(default: small on cpu, all on cuda)",
    )
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--n-features", nargs="+", type=int, default=None, help="default 1 8 32 (quick: 1 32)")
    p.add_argument("--phases", nargs="+", choices=["prefill", "decode"], default=["prefill", "decode"])
    p.add_argument("--batch", type=int, default=8, help="prefill batch")
    p.add_argument("--seq", type=int, default=512, help="prefill sequence length")
    p.add_argument("--decode-batch", type=int, default=32)
    p.add_argument("--d-vocab", type=int, default=4096)
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="model and SAE dtype (default: bfloat16 on cuda, float32 on cpu)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per provider (default 20 cuda, 7 cpu)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument(
        "--decode-repeat-factor",
        type=int,
        default=5,
        help="decode runs are cheap: time them this many times more often",
    )
    p.add_argument("--quick", action="store_true", help="fewer feature counts, repeats and warmup")
    p.add_argument("--no-sae-lens", action="store_true", help="skip the sae_lens provider")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a loaded machine",
    )
    p.add_argument("--out", default="bench_steering.csv")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    args.sizes = args.sizes or ("small" if args.device == "cpu" else "all")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.n_features = args.n_features or ([1, 32] if args.quick else [1, 8, 32])
    if args.repeats is None:
        args.repeats = (3 if args.quick else 7) if args.device == "cpu" else (5 if args.quick else 20)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    return args


def fmt_table(rows: list[dict], cols: list[str]) -> str:
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.rjust(w) for c, w in zip(cols, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    device = args.device
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    providers = ["unsteered"] + ([] if args.no_sae_lens else ["sae_lens"]) + ["saesteer_torch"]
    triton_ok = device == "cuda" and sk.triton_available()
    if triton_ok:
        providers.append("saesteer_triton")
    else:
        print(
            f"note: saesteer_triton skipped (device={device}, triton available={sk.triton_available()}); "
            "the Triton kernels run compiled on CUDA only"
        )
    size_list = SIZES["small"] + SIZES["large"] if args.sizes == "all" else SIZES[args.sizes]
    phases = {"prefill": (args.batch, args.seq), "decode": (args.decode_batch, 1)}

    rows: list[dict] = []
    kernel_rows: list[dict] = []
    copy_bw = copy_bandwidth_gbs(device, (1 << 30) if device == "cuda" else (1 << 28))
    print(
        f"device={device} dtype={args.dtype} torch threads={torch.get_num_threads()} repeats={args.repeats} "
        f"warmup={args.warmup}"
    )
    for d_model, d_saes in size_list:
        model = build_model(d_model, max(args.seq, 1), args.d_vocab, device, dtype)
        hook_name = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
        hook_point = model.hook_dict[hook_name]
        for d_sae in d_saes:
            w = random_sae(d_model, d_sae, device, dtype)
            for arch in args.archs:
                for n_feat in args.n_features:
                    features = torch.randperm(d_sae, generator=torch.Generator().manual_seed(n_feat))[:n_feat]
                    features = features.to(device)
                    hooks = {p: make_hook(p, arch, w, features) for p in providers if p != "unsteered"}
                    for phase in args.phases:
                        batch, seq = phases[phase]
                        tokens = torch.randint(0, args.d_vocab, (batch, seq), device=device)

                        def run(provider, tokens=tokens, model=model, hooks=hooks, hook_point=hook_point):
                            with torch.no_grad():
                                if provider == "unsteered":
                                    return model(tokens)
                                # A bare torch forward hook: TransformerLens' model.hooks()
                                # context costs more than the edit itself at decode sizes.
                                fn = hooks[provider]
                                handle = hook_point.register_forward_hook(lambda mod, inp, out, fn=fn: fn(out, mod))
                                try:
                                    return model(tokens)
                                finally:
                                    handle.remove()

                        fns = {p: (lambda p=p: run(p)) for p in providers}
                        reps = args.repeats * (args.decode_repeat_factor if phase == "decode" else 1)
                        samples = time_round_robin(fns, device, args.warmup, reps)
                        ms = {p: statistics.median(v) for p, v in samples.items()}
                        ratio = {p: paired_ratio(samples[p], samples["unsteered"]) for p in providers}
                        for p in providers:
                            mem = peak_mb(fns[p], device)
                            rows.append(
                                dict(
                                    provider=p,
                                    sae_arch=arch,
                                    d_model=d_model,
                                    d_sae=d_sae,
                                    n_features=n_feat,
                                    phase=phase,
                                    batch=batch,
                                    seq=seq,
                                    ms=round(ms[p], 3),
                                    ratio_vs_unsteered=round(ratio[p], 3),
                                    peak_mb=round(mem, 1),
                                )
                            )
                        print(
                            f"  d_model={d_model} d_sae={d_sae} {arch:8s} |F|={n_feat:<3d} {phase:7s} "
                            + "  ".join(f"{p}={ms[p]:.2f}ms({ratio[p]:.3f}x)" for p in providers),
                            flush=True,
                        )

                        # Hook-only timing on the hook's input shape: a low-noise view of the
                        # overhead (est_ratio = 1 + hook ms / unsteered forward ms).
                        resid = torch.randn(batch, seq, d_model, device=device, dtype=dtype)
                        steered = [p for p in providers if p != "unsteered"]
                        ksamples = time_round_robin(
                            {p: (lambda p=p, hooks=hooks, resid=resid: hooks[p](resid, None)) for p in steered},
                            device,
                            args.warmup,
                            reps,
                        )
                        nbytes = kernel_bytes(arch, batch * seq, d_model, d_sae, n_feat, resid.element_size())
                        for p in steered:
                            kms = statistics.median(ksamples[p])
                            gbs = nbytes / (kms * 1e-3) / 1e9
                            kernel_rows.append(
                                dict(
                                    provider=p,
                                    sae_arch=arch,
                                    d_model=d_model,
                                    d_sae=d_sae,
                                    n_features=n_feat,
                                    phase=phase,
                                    tokens=batch * seq,
                                    hook_ms=round(kms, 4),
                                    est_ratio=round(1 + kms / ms["unsteered"], 4),
                                    min_MB=round(nbytes / 2**20, 2),
                                    GBps=round(gbs, 1),
                                    pct_of_copy=round(100 * gbs / copy_bw, 1),
                                )
                            )
                    del hooks
            del w
        del model
        if device == "cuda":
            torch.cuda.empty_cache()

    print()
    print(fmt_table(rows, CSV_COLUMNS))
    if kernel_rows:
        print(f"\nhook only (min_MB: compulsory bytes of the edit; copy bandwidth {copy_bw:.0f} GB/s)")
        print(fmt_table(kernel_rows, list(kernel_rows[0])))
    out = Path(args.out)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
