#!/usr/bin/env python
"""Benchmark saesteer against transformers on SmolLM2-135M-Instruct (``model=smollm2``), one checkpoint for both.

Providers, side by side in one run on the cached float32 checkpoint (no download):

generation: greedy completions of ``--prompts`` harmless_test prompts, ``--max-new-tokens`` each, batches of
``--batch-size`` (length-sorted, left-padded ChatML prompts from :func:`saesteer.chat.encode_chat`, the same
batches for both providers):

* ``generate/saesteer``      :func:`saesteer.generation.generate` on the HookedTransformer (key-value cache)
* ``generate/saesteer_plain`` the same with TransformerLens's own key-value cache and weight layout (saesteer's
                             generate before its speed-ups: :func:`plain_generation`)
* ``generate/transformers``  ``LlamaForCausalLM.generate(do_sample=False, use_cache=True)`` on the same tokens

activations: the residual stream before block ``--layer`` (``blocks.L.hook_resid_pre``, transformers'
``hidden_states[L]``) at the last ``--positions`` positions of every prompt:

* ``activations/saesteer``         :func:`saesteer.activations.collect_activations` (``stop_at_layer``: no block after L)
* ``activations/hooked_full``      a full HookedTransformer forward, ``run_with_cache`` keeping that hook only
* ``activations/transformers``     ``LlamaForCausalLM(..., output_hidden_states=True)`` (a full forward)

Times are medians over ``--repeats`` rounds, the providers interleaved in each round so drifting machine load hits
them alike (after an untimed two-prompt warm-up generation by each library); each ratio is the median of the
per-round time ratios against the saesteer provider of its section (> 1: faster than saesteer). Completions are
compared string by string (the share identical to saesteer's); activations by their largest absolute difference
from saesteer's. ``new_tokens`` counts the tokens of the completions (re-encoded, no special tokens);
``prompt_tokens`` the prompts' non-padding tokens. Writes ``--out`` (CSV, one row per provider) and prints the
table and /proc/loadavg before and after.

    python scripts/bench_smollm2.py --prompts 64 --batch-size 32 --max-new-tokens 24 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import saesteer.generation as G
from saesteer.activations import collect_activations
from saesteer.chat import encode_chat
from saesteer.config import ModelConfig
from saesteer.data import load_prompts
from saesteer.generation import generate, length_sorted_batches
from saesteer.model_files import LOCAL_MODELS, gguf_checkpoint
from saesteer.models import load_model

COLUMNS = [
    "section",
    "provider",
    "prompts",
    "prompt_tokens",
    "new_tokens",
    "median_s",
    "tokens_per_s",
    "prompts_per_s",
    "ratio_vs_saesteer",
    "agreement",
    "runs",
    "threads",
]


def loadavg() -> str:
    """The first three fields of /proc/loadavg ("" where there is none)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def batches(tok, template, prompts: list[str], batch_size: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, tokens, attention mask) of each length-sorted batch, encoded as saesteer's generate encodes it."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for idx in length_sorted_batches([len(s) for s in prompts], batch_size):
        enc = encode_chat(tok, template, [prompts[i] for i in idx], pad_token_id=pad)
        out.append((idx, enc.tokens, enc.attention_mask))
    return out


@contextlib.contextmanager
def plain_generation():
    """Within the block, saesteer's generate decodes with TransformerLens's own key-value cache (concatenated at
    every step) and the weights as stored (copied by TransformerLens at every pass): as before its speed-ups."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    saved = G.preallocated_cache, G.matmul_layout
    G.preallocated_cache = lambda model, batch, capacity: TransformerLensKeyValueCache.init_cache(
        model.cfg, model.cfg.device, batch
    )
    G.matmul_layout = lambda model: contextlib.nullcontext(0)
    try:
        yield
    finally:
        G.preallocated_cache, G.matmul_layout = saved


def hf_generate(hf, tok, encoded, n_prompts: int, max_new_tokens: int) -> list[str]:
    """Greedy completions from transformers' generate, cut and decoded as saesteer's generate does."""
    from transformers import GenerationConfig

    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    cfg = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, use_cache=True
    )
    out: list[str] = [""] * n_prompts
    with torch.no_grad():
        for idx, tokens, mask in encoded:
            seq = hf.generate(input_ids=tokens, attention_mask=mask, generation_config=cfg)
            for row, i in zip(seq[:, tokens.shape[1] :].tolist(), idx):
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
    return out


def hooked_full(model, hook: str, positions: list[int], encoded, n_prompts: int) -> torch.Tensor:
    """[n_prompts, n_pos, d_model] from full forwards with ``run_with_cache`` keeping one hook."""
    out = torch.empty(n_prompts, len(positions), model.cfg.d_model)
    with torch.no_grad():
        for idx, tokens, mask in encoded:
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=[hook])
            out[idx] = cache[hook][:, positions].float()
    return out


def hf_hidden(hf, layer: int, positions: list[int], encoded, n_prompts: int) -> torch.Tensor:
    """[n_prompts, n_pos, d_model] from transformers' ``hidden_states[layer]`` (the input of layer ``layer``)."""
    out = torch.empty(n_prompts, len(positions), hf.config.hidden_size)
    with torch.no_grad():
        for idx, tokens, mask in encoded:
            hs = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True).hidden_states
            out[idx] = hs[layer][:, positions].float()
    return out


def plain_generate(*args, **kwargs) -> list[str]:
    """saesteer's generate within :func:`plain_generation`."""
    with plain_generation():
        return generate(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64, help="harmless_test prompts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--layer", type=int, default=15, help="activations: blocks.LAYER.hook_resid_pre")
    ap.add_argument("--positions", type=int, default=6, help="activations: the last POSITIONS positions")
    ap.add_argument("--sections", default="generate,activations", help="comma-separated: generate, activations")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_smollm2.csv")
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"generate", "activations"}
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}; choose from generate, activations")
    torch.set_num_threads(args.threads)

    from transformers import LlamaForCausalLM

    lm = load_model(ModelConfig(name="smollm2"), progress=False)
    model, tpl, tok = lm.model, lm.template, lm.model.tokenizer
    path = gguf_checkpoint(LOCAL_MODELS["smollm2"].file)
    hf = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()
    prompts = list(load_prompts("harmless_test").instructions[: args.prompts])
    encoded = batches(tok, tpl, prompts, args.batch_size)
    prompt_tokens = int(sum(int(m.sum()) for _, _, m in encoded))
    hook = f"blocks.{args.layer}.hook_resid_pre"
    positions = list(range(-args.positions, 0))
    n = len(prompts)

    providers = {}
    if "generate" in sections:
        providers["generate/saesteer"] = lambda: generate(
            model, tpl, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False
        )
        providers["generate/saesteer_plain"] = lambda: plain_generate(
            model, tpl, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False
        )
        providers["generate/transformers"] = lambda: hf_generate(hf, tok, encoded, n, args.max_new_tokens)
    if "activations" in sections:
        providers["activations/saesteer"] = lambda: collect_activations(
            model, tpl, prompts, [hook], positions, batch_size=args.batch_size
        )[:, 0]
        providers["activations/hooked_full"] = lambda: hooked_full(model, hook, positions, encoded, n)
        providers["activations/transformers"] = lambda: hf_hidden(hf, args.layer, positions, encoded, n)

    load_before = loadavg()
    started = datetime.now(timezone.utc)
    print(f"{started:%Y-%m-%d %H:%M} UTC, {n} prompts ({prompt_tokens} tokens), torch threads {args.threads}")
    print(f"loadavg before: {load_before}")
    warm = prompts[:2]
    generate(model, tpl, warm, max_new_tokens=2, batch_size=2, progress=False)
    hf_generate(hf, tok, batches(tok, tpl, warm, 2), 2, 2)
    times: dict[str, list[float]] = {k: [] for k in providers}
    outputs: dict[str, object] = {}
    for r in range(args.repeats):
        for name, fn in providers.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    load_after = loadavg()

    rows = []
    for name, ts in times.items():
        section = name.split("/")[0]
        med = statistics.median(ts)
        row = {c: "" for c in COLUMNS}
        row.update(section=section, provider=name.split("/")[1], prompts=n, prompt_tokens=prompt_tokens)
        row.update(median_s=round(med, 3), prompts_per_s=round(n / med, 3), runs=len(ts), threads=args.threads)
        if section == "generate":
            new = sum(len(tok.encode(c, add_special_tokens=False)) for c in outputs[name])
            same = sum(a == b for a, b in zip(outputs[name], outputs["generate/saesteer"]))
            row.update(new_tokens=new, tokens_per_s=round(new / med, 2), agreement=round(same / n, 4))
        else:
            diff = float((outputs[name] - outputs["activations/saesteer"]).abs().max())
            row.update(tokens_per_s=round(prompt_tokens / med, 1), agreement=f"max|diff| {diff:.2e}")
        rows.append(row)
    for r in rows:  # >1: faster than saesteer; per round, so that load drifting between rounds cancels
        own, base = times[f"{r['section']}/{r['provider']}"], times[f"{r['section']}/saesteer"]
        r["ratio_vs_saesteer"] = round(statistics.median(b / t for b, t in zip(base, own)), 3)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"\n{'provider':<26} {'median s':>9} {'tokens/s':>9} {'prompts/s':>9} {'x saesteer':>10}  agreement")
    for r in rows:
        name = f"{r['section']}/{r['provider']}"
        print(
            f"{name:<26} {r['median_s']:9.2f} {r['tokens_per_s']:9.1f} {r['prompts_per_s']:9.2f} "
            f"{r['ratio_vs_saesteer']:10.2f}  {r['agreement']}"
        )
    print(
        "(tokens/s: new tokens for generate, prompt tokens for activations; x saesteer: median of the per-round "
        "time ratios, > 1 faster than saesteer)"
    )
    ratio = {f"{r['section']}/{r['provider']}": r["ratio_vs_saesteer"] for r in rows}
    if "generate/saesteer_plain" in ratio:
        print(f"generate against its plain TransformerLens path: {1 / ratio['generate/saesteer_plain']:.2f}x faster")
    if "generate/transformers" in ratio:
        print(f"transformers' generate against saesteer's: {ratio['generate/transformers']:.2f}x faster")
    print(f"loadavg before: {load_before}; after: {load_after}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
