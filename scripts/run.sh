#!/usr/bin/env bash
# Set up (or reuse) the virtualenv, install saesteer, run the main job on the organism:
# organism -> directions -> SAE -> feature search, one report.md (its path is the last line).
# Usage: scripts/run.sh [hydra overrides], e.g. scripts/run.sh logger.mode=online
source "$(dirname "$0")/_env.sh"
run_dir="${SAESTEER_RUN_DIR:-runs/pipeline/$(date +%Y-%m-%d_%H-%M-%S)}"
saesteer pipeline "hydra.run.dir=$run_dir" "$@"
python - "$run_dir" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
rows = [(k.split("/", 1)[1], v) for k, v in m.items() if k.startswith("organism/") and k.endswith("_refusal")]
print("\nOrganism refusal (greedy):")
for name, v in rows:
    print(f"  {name:<28} {v:.3f}")
PY
echo "$run_dir/report.md"
