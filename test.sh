#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test.
# Usage: bash test.sh            (everything)
#        bash test.sh --quick    (format, lints and the Rust tests; no Docker end-to-end)
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '==> %s\n' "$*"; }

# Debian packages the tests run for real: etcd (the raft the sidecar tests form).
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
# Headless Chromium loads the registry's dashboard in crates/registry/tests/dashboard.rs.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd-server's package starts a system etcd on the default ports; the tests use their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi

# Disk is the resource a failure most often turns out to be short of; the log says how much there was.
say "disk free here: $(df -h --output=avail . | tail -1 | tr -d ' '), in /tmp: $(df -h --output=avail /tmp | tail -1 | tr -d ' ')"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "supply chain (cargo-deny)"
bash scripts/supply-chain.sh

say "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

say "schemathesis against a live registry (every check)"
bash tests/api/schemathesis.sh

say "benchmark smoke run (so the benchmark cannot rot; figures are not checked)"
bash bench/run.sh --smoke

say "soak, short form (abusive clients against the registry: no panic, no undocumented 5xx, RSS capped)"
bash bench/soak.sh --short

if [ "${1:-}" = "--quick" ]; then
  say "--quick: Docker end-to-end tests not run"
  exit 0
fi

say "Docker end-to-end tests"
bash tests/e2e/docker.sh
