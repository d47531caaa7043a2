#!/usr/bin/env bash
# The README's run command: installs the build packages if they are missing
# (deploy/build-deps.sh), builds winback and runs it with the arguments given
# (relative paths are taken from the current directory). It builds the profile
# the test command builds, so the two share one compile of RocksDB and
# librdkafka; later calls reuse it. A production build: `cargo build --release`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/deploy/build-deps.sh"
exec cargo run --locked --manifest-path "$root/Cargo.toml" --bin winback -- "$@"
