#!/usr/bin/env bash
# The test command: installs the build packages and what the conversation
# page's browser test needs (Chromium, playwright-core) if missing, starts a
# single-node Apache Kafka in a temporary directory, runs `cargo test`
# against it (arguments are passed on) and stops the broker by its PID. The
# page test's screenshot is kept in artifacts/.
#
#   tests/run.sh                      # everything
#   tests/run.sh --test delivery      # one test binary
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/build-deps.sh
WINBACK_PLAYWRIGHT="$(tests/page/setup.sh)"
export WINBACK_PLAYWRIGHT
exec deploy/dev-kafka/with-kafka.sh cargo test --locked "$@"
