#!/usr/bin/env bash
# The benchmark of issue 5: the same workloads against rollcall-registry, etcd 3.4, Redis 7
# (appendfsync always) and a bare axum ceiling, all on loopback. Prints a table and writes
# BENCHMARKS.md (crates/bench does the work; this script builds, installs and cleans up).
#
# Usage: bash bench/run.sh            full run (about 20 minutes on 2 cores), writes BENCHMARKS.md
#        bash bench/run.sh --smoke    seconds, tiny populations, debug build; checks that the
#                                     benchmark works and writes target/bench-smoke/BENCHMARKS.md
# Extra arguments after the mode go to `rollcall-bench suite` (e.g. --systems registry,ceiling).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

mode=full
if [ "${1:-}" = "--smoke" ]; then
  mode=smoke
  shift
fi

# Debian packages the benchmark compares against.
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packages start system services on the default ports; the benchmark runs its own.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop etcd >/dev/null 2>&1 || true
  systemctl stop redis-server >/dev/null 2>&1 || true
fi

if [ "$mode" = smoke ]; then
  say "building (dev profile, shared with the tests)"
  cargo build --quiet -p rollcall-registry -p rollcall-bench
  bin_dir=target/debug
  out_dir=target/bench-smoke
  mkdir -p "$out_dir"
  markdown="$out_dir/BENCHMARKS.md"
  json="$out_dir/results.json"
  extra=(--smoke)
else
  say "building release binaries"
  cargo build --release --quiet -p rollcall-registry -p rollcall-bench
  bin_dir=target/release
  markdown=BENCHMARKS.md
  json=target/bench-results.json
  extra=()
fi

work=$(mktemp -d -t rollcall-bench.XXXXXX)
mkdir -p "$work/pids" "$work/bin"
bench_pid=
cleanup() {
  # Every server the bench started left its pid here; kill each one by pid, then the bench.
  for f in "$work"/pids/*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  if [ -n "$bench_pid" ]; then kill -9 "$bench_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Copies, so that a rebuild during the run cannot change what is measured.
cp "$bin_dir/rollcall-registry" "$bin_dir/rollcall-bench" "$bin_dir/rollcall-bench-ceiling" "$work/bin/"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain -- crates 2>/dev/null)" ]; then revision="$revision + uncommitted changes"; fi

say "running the $mode suite (work dir $work)"
"$work/bin/rollcall-bench" suite "${extra[@]}" \
  --registry-bin "$work/bin/rollcall-registry" \
  --ceiling-bin "$work/bin/rollcall-bench-ceiling" \
  --etcd-bin "$(command -v etcd)" \
  --redis-bin "$(command -v redis-server)" \
  --work-dir "$work" --pid-dir "$work/pids" \
  --note "rollcall revision $revision" \
  --json "$json" --markdown "$markdown" --analysis bench/analysis.md \
  "$@" &
bench_pid=$!
wait "$bench_pid"
bench_pid=
say "wrote $markdown and $json"
