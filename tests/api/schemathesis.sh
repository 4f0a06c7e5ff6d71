#!/usr/bin/env bash
# schemathesis (from PyPI) against a live rollcall-registry built from this tree, every check on.
# It reads the registry's own /openapi.json, which is generated from the code.
# Usage: bash tests/api/schemathesis.sh [extra schemathesis args]
set -euo pipefail
cd "$(dirname "$0")/../.."
SCHEMATHESIS_VERSION=4.32.5
if ! command -v schemathesis >/dev/null 2>&1 || ! schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "==> installing schemathesis $SCHEMATHESIS_VERSION from PyPI"
  python3 -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
cargo build -q -p rollcall-registry
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
log=$(mktemp)
token="schemathesis-$RANDOM$RANDOM"
# Blocking reads are cut to 1s so that generated index/wait values cannot stall the run.
ROLLCALL_TOKEN="$token" ./target/debug/rollcall-registry --listen "127.0.0.1:$port" --data-dir "$data" \
  --max-watch-wait 1s --ttl 5s --interval 1s --startup-grace 1s --quiet-period 1s >"$log" 2>&1 &
pid=$!
cleanup() {
  status=$?
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  # A failing run shows what the registry itself said went wrong.
  if [ "$status" -ne 0 ]; then grep -E 'ERROR|WARN.*panic' "$log" | tail -n 20 >&2 || true; fi
  rm -rf "$data" "$log"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
cd tests/api
schemathesis run "http://127.0.0.1:$port/openapi.json" --checks all \
  -H "Authorization: Bearer $token" "$@"
