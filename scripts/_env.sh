# Shared by run.sh and test.sh: create or reuse the virtualenv and install saesteer into it.
#
# By default the exact versions in requirements.lock (the set the test suite last passed with,
# written by scripts/lock.sh) are installed; SAESTEER_UNLOCKED=1 installs instead the newest
# versions pyproject.toml allows. torch is installed first, on its own, so pip never pulls a
# multi-GB CUDA build onto a CPU machine: a torch already in the virtualenv is kept (CPU or CUDA),
# otherwise the lock's torch version (SAESTEER_TORCH_SPEC chooses another).
# Environment: SAESTEER_VENV (default .venv), PYTHON (default python3), SAESTEER_UNLOCKED, SAESTEER_TORCH_SPEC.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAESTEER_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LOCK="$ROOT/requirements.lock"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if [ "${SAESTEER_UNLOCKED:-0}" = 1 ]; then
  mode="unlocked"
else
  [ -f "$LOCK" ] || { echo "error: $LOCK is missing (run scripts/lock.sh, or set SAESTEER_UNLOCKED=1)" >&2; exit 1; }
  mode="locked $(sha256sum "$LOCK" | cut -c1-16)"
fi
want="$mode $(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
stamp="$VENV/.saesteer-installed"
# pip's output goes to a log, shown only when an install step fails.
pip_log="$VENV/pip-install.log"
pip_q() {
  python -m pip "$@" >> "$pip_log" 2>&1 || { tail -n 40 "$pip_log" >&2; echo "error: pip $* failed (log: $pip_log)" >&2; return 1; }
}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing saesteer into $VENV ($mode; log: $pip_log)" >&2
  : > "$pip_log"
  pip_q install --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    if [ -n "${SAESTEER_TORCH_SPEC:-}" ]; then
      pip_q install "$SAESTEER_TORCH_SPEC"
    elif ! nvidia-smi >/dev/null 2>&1; then
      # CPU machine: the lock's torch where pip finds a CPU wheel of it (a local wheel, or an
      # index set in pip's config / PIP_INDEX_URL); otherwise pip's default torch.
      torch_spec="$(grep -m1 '^torch==' "$LOCK" 2>/dev/null || echo torch)"
      python -m pip install "$torch_spec" >> "$pip_log" 2>&1 || pip_q install torch
    fi
  fi
  # Whatever torch is now installed stays: neither the lock nor an upgrade replaces it.
  keep_torch="$(mktemp)"
  python -c "import torch; print('torch==' + torch.__version__)" > "$keep_torch" 2>/dev/null
  if [ "$mode" = unlocked ]; then
    pip_q install --upgrade --upgrade-strategy eager -c "$keep_torch" -e "$ROOT[test]"
  else
    grep -v '^torch==' "$LOCK" > "$keep_torch.lock"
    pip_q install -c "$keep_torch" -r "$keep_torch.lock" -e "$ROOT[test]"
    rm -f "$keep_torch.lock"
  fi
  rm -f "$keep_torch"
  echo "$want" > "$stamp"
fi
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
cd "$ROOT"
