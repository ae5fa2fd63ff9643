#!/usr/bin/env bash
# Write requirements.lock: install the newest versions pyproject.toml allows into a new virtualenv,
# run the test suite there, and freeze what it passed with. The lock is only written when the
# suite passes (--no-test skips the suite: for a quick look at what would change).
# Usage: scripts/lock.sh [--no-test] [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_tests=1
if [ "${1:-}" = "--no-test" ]; then run_tests=0; shift; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export SAESTEER_VENV="$work/venv" SAESTEER_UNLOCKED=1
if [ "$run_tests" = 1 ]; then
  bash "$ROOT/scripts/test.sh" "$@"
else
  bash -c "source '$ROOT/scripts/_env.sh'"
fi
py="$work/venv/bin/python"
{
  echo "# Exact versions the saesteer test suite passed with: installed by scripts/_env.sh unless SAESTEER_UNLOCKED=1."
  echo "# Written by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$py" --version), $(uname -m)$([ "$run_tests" = 1 ] || echo ', suite NOT run (--no-test)')."
  echo "# torch is installed before the rest and kept if already present (a local version such as +cpu is dropped here)."
  "$py" -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel|saesteer)==' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > "$ROOT/requirements.lock.tmp"
mv "$ROOT/requirements.lock.tmp" "$ROOT/requirements.lock"
echo "wrote $ROOT/requirements.lock ($(grep -vc '^#' "$ROOT/requirements.lock") packages)"
