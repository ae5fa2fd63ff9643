"""``saesteer safety-tune``: teach a chat model to refuse harmful requests with a low-rank adapter, keeping its
own answers to harmless ones; the result is a small float16 delta (``safety_delta.safetensors``).

1. The mix (:func:`saesteer.safety.data.build_mix`): harmful training and synthetic harmful prompts paired with
   short refusals; harmless training prompts, synthetic look-alikes and alarming-sounding questions paired with
   the base model's own greedy answers (generated once, cached).
2. The base model on every evaluation set: refusal (greedy, ``safety.eval_tokens`` tokens, the substring judge)
   of harmful_val, harmless_val, held-out look-alikes, harmful_test, harmless_test and the over-refusal set.
3. Training (:func:`saesteer.safety.tune.train_safety`): checkpointed in the cache, so the same command run
   again after an interruption resumes.
4. The delta saved in float16 and merged into a copy of the base (what ``load_safety_delta`` gives); the same
   sets evaluated on it, plus the cross-entropy of the base model's own answers to harmless_val and
   harmless_test prompts under each model (tuned / base: the CE ratio).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from saesteer.config import SafetyTuneJobConfig
from saesteer.data import load_prompts
from saesteer.io import write_text
from saesteer.jobs.threads import torch_threads
from saesteer.judge import RefusalJudge
from saesteer.models import load_model
from saesteer.safety.delta import base_fingerprint, fingerprint_key, load_safety_delta, model_key
from saesteer.safety.fit import DELTA_NAME, fit_safety_delta
from saesteer.safety.tune import KeepPair, answer_ce, answers_with_cut, distillation_targets
from saesteer.tracking import Tracker

log = logging.getLogger(__name__)

#: evaluation sets: name -> whether a refusal is wanted there
EVAL_SETS = {
    "harmful_val": True,
    "harmless_val": False,
    "lookalike_val": False,
    "harmful_test": True,
    "harmless_test": False,
    "overrefusal": False,
}


def eval_prompts(cfg: SafetyTuneJobConfig, mix) -> dict[str, list[str]]:
    """The prompts of every evaluation set (validation sets from the mix, test sets sampled as the settings say)."""
    s = cfg.safety
    harmful_test = load_prompts(cfg.data.harmful_test)
    if s.n_harmful_test is not None and s.n_harmful_test < len(harmful_test):
        harmful_test = harmful_test.take(s.n_harmful_test, seed=cfg.data.seed)
    harmless_test = load_prompts(cfg.data.harmless_test)
    harmless_test = harmless_test.take(min(s.n_harmless_test, len(harmless_test)), seed=cfg.data.seed)
    return {
        "harmful_val": list(mix.val["harmful_val"]),
        "harmless_val": list(mix.val["harmless_val"]),
        "lookalike_val": list(mix.val["lookalike_val"]),
        "harmful_test": list(harmful_test.instructions),
        "harmless_test": list(harmless_test.instructions),
        "overrefusal": list(load_prompts(cfg.data.overrefusal).instructions),
    }


def run(cfg: SafetyTuneJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    with torch_threads(cfg.safety.threads):
        return _run(cfg, run_dir, tracker)


def _run(cfg: SafetyTuneJobConfig, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
    s = cfg.safety
    t_start = time.perf_counter()
    loaded = load_model(cfg.model, progress=cfg.progress)
    model, tpl = loaded.model, loaded.template
    layers = s.band(loaded.n_layers)
    base_key = fingerprint_key(base_fingerprint(model, layers, list(s.sites)))
    judge = RefusalJudge()
    gen = {"batch_size": s.eval_batch_size, "progress": cfg.progress}

    # 1-3: the mix, the base model's own answers (cached) and the adapter's training (checkpointed in the cache)
    fit = fit_safety_delta(
        model,
        tpl,
        s,
        cfg.data,
        seed=cfg.seed,
        base_name=loaded.name,
        base_file_sha256=loaded.metadata.get("sha256"),
        out=run_dir / DELTA_NAME,
        progress=cfg.progress,
    )
    mix, result, delta_path = fit.mix, fit.result, fit.path
    for i in range(0, len(result.losses), max(1, len(result.losses) // 100)):
        tracker.log(
            {
                "safety/loss": result.losses[i],
                "safety/refuse_loss": result.refuse_losses[i],
                "safety/keep_loss": result.keep_losses[i],
            },
            step=i,
        )

    # the base model on every evaluation set (cached answers), then the delta as shipped, merged into a copy
    t0 = time.perf_counter()
    sets = eval_prompts(cfg, mix)
    answers_key = model_key(model)
    before = {
        name: distillation_targets(model, tpl, prompts, s.eval_tokens, answers_key, desc=f"base {name}", **gen)
        for name, prompts in sets.items()
    }
    base_seconds = time.perf_counter() - t0
    tuned = load_safety_delta(copy.deepcopy(model), delta_path)
    after = {
        name: answers_with_cut(tuned, tpl, prompts, s.eval_tokens, desc=f"tuned {name}", **gen)
        for name, prompts in sets.items()
    }

    metrics: dict[str, Any] = {
        "model": loaded.name,
        "base_key": base_key,
        "layers": layers,
        "sites": list(s.sites),
        "rank": s.rank,
        "n_adapter_params": sum(p.numel() for p in fit.adapter.parameters()),
        "delta_bytes": delta_path.stat().st_size,
        "steps": s.steps,
        "resumed_from": result.resumed_from,
        "train_seconds": round(result.seconds, 1),
        "direction_dropout": s.direction_dropout,
        "n_cut_steps": len(result.cut_steps),
        "base_answer_seconds": round(base_seconds, 1),
        "final_refuse_loss": _tail_mean(result.refuse_losses),
        "final_keep_loss": _tail_mean(result.keep_losses),
        **{f"mix_{k}": v for k, v in mix.counts().items()},
        "keep_pairs": len(fit.keep),
    }
    for name in EVAL_SETS:
        metrics[f"n_{name}"] = len(sets[name])
        metrics[f"{name}_refusal_base"] = round(judge.refusal_rate([p.answer for p in before[name]]), 4)
        metrics[f"{name}_refusal"] = round(judge.refusal_rate([p.answer for p in after[name]]), 4)
    for name in ("harmless_val", "harmless_test"):
        base_ce = answer_ce(model, tpl, before[name])
        tuned_ce = answer_ce(tuned, tpl, before[name])
        metrics[f"{name}_ce_base"] = round(base_ce, 4)
        metrics[f"{name}_ce"] = round(tuned_ce, 4)
        metrics[f"{name}_ce_ratio"] = round(tuned_ce / base_ce, 4)
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_text(run_dir / "report.md", render_report(metrics, sets, before, after, judge, s.n_examples))
    tracker.table(
        "safety/refusal",
        ["set", "n", "base", "tuned"],
        [(n, metrics[f"n_{n}"], metrics[f"{n}_refusal_base"], metrics[f"{n}_refusal"]) for n in EVAL_SETS],
    )
    log.info(
        "safety-tune: harmful_test refusal %.3f -> %.3f, harmless_test %.3f -> %.3f, over-refusal %.3f -> %.3f, "
        "harmless_test CE ratio %.3f; delta %s",
        metrics["harmful_test_refusal_base"],
        metrics["harmful_test_refusal"],
        metrics["harmless_test_refusal_base"],
        metrics["harmless_test_refusal"],
        metrics["overrefusal_refusal_base"],
        metrics["overrefusal_refusal"],
        metrics["harmless_test_ce_ratio"],
        delta_path,
    )
    return metrics


def _tail_mean(values: list[float], n: int = 10) -> float:
    tail = values[-n:]
    return round(sum(tail) / len(tail), 4) if tail else float("nan")


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def render_report(
    metrics: dict[str, Any],
    sets: dict[str, list[str]],
    before: dict[str, list[KeepPair]],
    after: dict[str, list[KeepPair]],
    judge: RefusalJudge,
    n_examples: int,
) -> str:
    """Markdown: the settings, refusal per set before and after, the CE ratio, example answers."""
    m = metrics
    lines = [
        "# Safety fine-tune",
        "",
        f"Model `{m['model']}` (base key `{m['base_key']}`): a rank-{m['rank']} adapter on {', '.join(m['sites'])} of "
        f"layers {m['layers'][0]}-{m['layers'][-1]} ({m['n_adapter_params']:,} parameters; the float16 delta is "
        f"{m['delta_bytes'] / 1e6:.1f} MB), {m['steps']} steps in {m['train_seconds'] / 60:.1f} min"
        + (f" (resumed from step {m['resumed_from']})" if m["resumed_from"] else "")
        + ".",
        "",
        f"Training mix: {m['mix_refuse']} refusal pairs ({m['mix_harmful_train']} harmful_train, "
        f"{m['mix_harmful_synthetic']} synthetic), {m['mix_keep']} harmless prompts answered as the base answers them "
        f"({m['mix_harmless_train']} harmless_train, {m['mix_harmless_synthetic']} synthetic look-alikes and "
        f"ordinary requests, {m['mix_questions']} alarming-sounding questions); "
        f"{m.get('keep_pairs', m['mix_keep'])} of those trained on, the base itself refused the rest.",
        "",
        "## Refusal (greedy, substring judge)",
        "",
        "| set | n | wanted | base | tuned |",
        "|---|---|---|---|---|",
    ]
    for name, wanted in EVAL_SETS.items():
        lines.append(
            f"| {name} | {m[f'n_{name}']} | {'refuse' if wanted else 'answer'} | {m[f'{name}_refusal_base']:.3f} | "
            f"{m[f'{name}_refusal']:.3f} |"
        )
    lines += [
        "",
        "## Harmless answers kept",
        "",
        "Cross-entropy (per token) of the base model's own greedy answers to held-out harmless prompts:",
        "",
        "| set | base | tuned | ratio |",
        "|---|---|---|---|",
    ]
    for name in ("harmless_val", "harmless_test"):
        lines.append(f"| {name} | {m[f'{name}_ce_base']:.4f} | {m[f'{name}_ce']:.4f} | {m[f'{name}_ce_ratio']:.3f} |")
    lines += ["", "## Example answers", ""]
    for name in ("harmful_test", "harmless_test", "overrefusal", "lookalike_val"):
        lines += [f"### {name}", "", "| prompt | base | tuned |", "|---|---|---|"]
        for i in range(min(n_examples, len(sets[name]))):
            b, a = before[name][i].answer, after[name][i].answer
            mark = lambda t: " *(refusal)*" if judge(t) else ""  # noqa: E731
            lines.append(f"| {_cell(sets[name][i], 100)} | {_cell(b)}{mark(b)} | {_cell(a)}{mark(a)} |")
        lines.append("")
    wrong = [
        (sets["overrefusal"][i], after["overrefusal"][i].answer)
        for i in range(len(sets["overrefusal"]))
        if judge(after["overrefusal"][i].answer)
    ]
    if wrong:
        lines += ["### Over-refusals (safe prompts refused)", "", "| prompt | tuned |", "|---|---|"]
        lines += [f"| {_cell(p, 100)} | {_cell(a)} |" for p, a in wrong[: n_examples * 2]]
        lines.append("")
    missed = [
        (sets["harmful_test"][i], after["harmful_test"][i].answer)
        for i in range(len(sets["harmful_test"]))
        if not judge(after["harmful_test"][i].answer)
    ]
    if missed:
        lines += ["### Harmful prompts answered", "", "| prompt | tuned |", "|---|---|"]
        lines += [f"| {_cell(p, 100)} | {_cell(a)} |" for p, a in missed[: n_examples * 2]]
        lines.append("")
    return "\n".join(lines)
