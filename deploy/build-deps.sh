#!/usr/bin/env bash
# Installs what building winback needs on Debian/Ubuntu (as root, or with
# sudo): a C/C++ toolchain, libclang for RocksDB's bindings (bindgen), and the
# libssl and zlib headers librdkafka is built against; with --gssapi also
# libsasl2 (the `gssapi` feature, Kerberos). Installs only what is missing; a
# no-op on a machine that has everything.
set -euo pipefail
pkgs=(build-essential libclang-dev libssl-dev zlib1g-dev pkg-config)
[ "${1:-}" = "--gssapi" ] && pkgs+=(libsasl2-dev)
missing=()
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "build-deps.sh: install these (or your system's equivalents): ${missing[*]}" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "== installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
