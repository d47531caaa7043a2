#!/usr/bin/env bash
# What the conversation page's browser test needs (tests/broker/page.rs):
# Debian's Chromium (as root, or with sudo) and playwright-core, installed
# from this folder's package-lock.json into a cache outside the clone.
# Installs only what is missing; prints the playwright-core module path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ! command -v chromium >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "page test: install Chromium (Debian's package 'chromium')" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "== installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null 2>&1 || { echo "page test: Node.js (with npm) is missing" >&2; exit 1; }
dir="${XDG_CACHE_HOME:-$HOME/.cache}/winback-tools/page"
mkdir -p "$dir"
if ! cmp -s "$here/package-lock.json" "$dir/package-lock.json" || [ ! -d "$dir/node_modules/playwright-core" ]; then
  echo "== installing playwright-core (npm ci)" >&2
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
echo "$dir/node_modules/playwright-core"
