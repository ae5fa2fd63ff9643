#!/usr/bin/env bash
# Set up (or reuse) the virtualenv, install saesteer, run the main job on the organism:
# organism -> directions -> SAE -> feature search -> anchoring vs attacks -> backups -> emergent misalignment,
# one report.md (its path is the last line). Stages whose inputs are unchanged are reused from the cache.
# The quick budget (conf/budget/quick.yaml: fewer held-out prompts, smaller searches) runs by default; budget=full
# reads every held-out prompt (docs/results.md records each stage's time).  With model=... no default budget is added;
# give the model its own: scripts/run.sh model=smollm2_safe budget=smollm2.
# Usage: scripts/run.sh [hydra overrides], e.g. scripts/run.sh budget=full logger.mode=online, scripts/run.sh model=smollm2_safe budget=smollm2
source "$(dirname "$0")/_env.sh"
run_dir="${SAESTEER_RUN_DIR:-runs/pipeline/$(date +%Y-%m-%d_%H-%M-%S)}"
budget=budget=quick
for arg in "$@"; do
    case "$arg" in budget=*|model=*) budget= ;; esac
done
saesteer pipeline "hydra.run.dir=$run_dir" $budget "$@"
python - "$run_dir" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
print("\nOrganism refusal (greedy):")
for k, v in m.items():
    if k.startswith("organism/") and k.endswith("_refusal"):
        print(f"  {k.split('/', 1)[1]:<28} {v:.3f}")
keys = ["directions/selected_layer", "directions/affine_ablation_harmful_refusal", "directions/addition_harmless_refusal",
        "train_sae/explained_variance", "search/topk_ablation_harmful_refusal", "search/topk_zero_ablation_harmful_refusal",
        "search/random_k_ablation_harmful_refusal", "search/topk_clamp_harmless_refusal",
        "anchor/asr_ablation_affine_undefended", "anchor/asr_ablation_affine_anchored", "anchor/harmless_refusal_anchored",
        "backups/n_backup_features", "emergent/finetuned_refusal_other_categories"]
print("\nHeadline figures:")
for k in keys:
    if k in m:
        v = m[k]
        print(f"  {k:<46} {v:.3f}" if isinstance(v, float) else f"  {k:<46} {v}")
print(f"\nstage seconds: " + ", ".join(f"{k.split('/')[0]} {v}" for k, v in m.items() if k.endswith("/stage_seconds")))
PY
echo "$run_dir/report.md"
