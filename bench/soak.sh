#!/usr/bin/env bash
# The soak of issue 14: the registry binary under its heartbeat workload while abusive clients
# of every kind come and go, then with eight readers on the dashboard (crates/bench/src/soak).
#
# Usage: bash bench/soak.sh           ten minutes, release build; figures for RELIABILITY.md
#        bash bench/soak.sh --short   about a minute, debug build (shared with the tests); what
#                                     bash test.sh runs: fails on a panic, an undocumented 5xx,
#                                     a socket that outlives its deadline or RSS over 256 MiB
# Extra arguments go to `rollcall-bench soak` (e.g. --registry-arg=--max-watchers --registry-arg=64).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

mode=()
if [ "${1:-}" = "--short" ]; then
  mode=(--short)
  shift
  say "building (dev profile, shared with the tests)"
  cargo build --quiet -p rollcall-registry -p rollcall-bench
  bin_dir=target/debug
else
  say "building release binaries"
  cargo build --release --quiet -p rollcall-registry -p rollcall-bench
  bin_dir=target/release
fi

work=$(mktemp -d -t rollcall-soak.XXXXXX)
mkdir -p "$work/pids" "$work/bin"
cleanup() {
  for f in "$work"/pids/*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
cp "$bin_dir/rollcall-registry" "$bin_dir/rollcall-bench" "$work/bin/"

# The abusers hold hundreds of sockets at once; the client needs descriptors for them.
ulimit -n 8192 2>/dev/null || true

status=0
"$work/bin/rollcall-bench" soak "${mode[@]}" \
  --registry-bin "$work/bin/rollcall-registry" \
  --work-dir "$work/run" --pid-dir "$work/pids" \
  --markdown "target/soak-report.md" "$@" || status=$?
if [ "$status" -ne 0 ] && [ -f "$work/run/registry.log" ]; then
  say "the end of the registry's log:"
  tail -n 30 "$work/run/registry.log" >&2
fi
exit "$status"
