#!/usr/bin/env bash
# Do what a newcomer does: clone this repository (its committed HEAD) into a temporary folder and
# run the first two commands of the README's first bash block, exactly as written, with nothing
# cached (a new virtualenv, an empty saesteer cache). Prints each command's exit code and time;
# exits non-zero when either fails. The clone and its logs stay in the printed folder (--clean
# removes them). Extra environment for both commands can be given, e.g. SAESTEER_UNLOCKED=1.
# Usage: scripts/check_fresh.sh [--clean]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d -t saesteer-fresh-XXXXXX)"
[ "${1:-}" = "--clean" ] && trap 'rm -rf "$work"' EXIT
git clone -q "$ROOT" "$work/saesteer" || exit 1
cd "$work/saesteer"
mapfile -t cmds < <(awk '/^```bash/{f=1; next} /^```/{if (f) exit} f' README.md | sed -E 's/[[:space:]]*#.*$//' | grep -v '^[[:space:]]*$' | head -2)
if [ "${#cmds[@]}" -ne 2 ]; then
  echo "error: expected two commands in README.md's first bash block, found ${#cmds[@]}" >&2
  exit 1
fi
export SAESTEER_CACHE="$work/cache"
echo "fresh clone: $work/saesteer (commit $(git rev-parse --short HEAD)), $(nproc) cores"
status=0
results=()
for i in 0 1; do
  cmd="${cmds[$i]}"
  log="$work/cmd$((i + 1)).log"
  echo "running: $cmd  (log: $log)"
  start=$(date +%s)
  bash -c "$cmd" > "$log" 2>&1 < /dev/null
  rc=$?
  secs=$(( $(date +%s) - start ))
  [ "$rc" -eq 0 ] || status=1
  results+=("$(awk -v c="$cmd" -v r="$rc" -v s="$secs" -v l="$(tail -n 1 "$log")" 'BEGIN { printf "%-20s exit %-3s %5d s (%4.1f min)  last line: %s", c, r, s, s / 60, l }')")
done
echo
printf '%s\n' "${results[@]}"
exit "$status"
