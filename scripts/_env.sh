# Shared by run.sh and test.sh: create or reuse .venv and install saesteer into it.
# The CPU torch wheel is installed first when no torch is present, so pip never pulls a
# multi-GB CUDA build onto a CPU machine (set SAESTEER_TORCH_SPEC to choose another).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAESTEER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.saesteer-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    if [ -n "${SAESTEER_TORCH_SPEC:-}" ]; then
      python -m pip install -q "$SAESTEER_TORCH_SPEC"
    elif ! nvidia-smi >/dev/null 2>&1; then
      # CPU machine: the CPU wheel where pip can find one (a local wheel or an index set in
      # pip's config / PIP_INDEX_URL); otherwise pip's default torch.
      python -m pip install -q "torch==2.13.0" 2>/dev/null || python -m pip install -q torch
    fi
  fi
  python -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
cd "$ROOT"
