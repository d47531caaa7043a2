#!/usr/bin/env bash
# The test command: installs the build packages if missing, starts a
# single-node Apache Kafka in a temporary directory, runs `cargo test`
# against it (arguments are passed on) and stops the broker by its PID.
#
#   tests/run.sh                      # everything
#   tests/run.sh --test delivery      # one test binary
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/build-deps.sh
exec deploy/dev-kafka/with-kafka.sh cargo test --locked "$@"
