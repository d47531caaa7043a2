#!/usr/bin/env bash
# Runs a command with a fresh single-node Apache Kafka (kafka.sh beside this
# file) in a temporary directory, its address in WINBACK_TEST_BROKERS, and
# stops the broker by its PID when the command ends, whatever its outcome
# (its PID is in WINBACK_TEST_BROKER_PID meanwhile):
#
#   deploy/dev-kafka/with-kafka.sh cargo bench --bench runtime -- catchup
#
# WINBACK_KEEP_BROKER_LOG=FILE keeps the broker's log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
broker_dir=$(mktemp -d)
cleanup() {
  "$here/kafka.sh" stop "$broker_dir" || true
  if [ -n "${WINBACK_KEEP_BROKER_LOG:-}" ]; then
    cp "$broker_dir/broker.log" "$WINBACK_KEEP_BROKER_LOG" 2>/dev/null || true
  fi
  rm -rf "$broker_dir"
}
trap cleanup EXIT
WINBACK_TEST_BROKERS=$("$here/kafka.sh" start "$broker_dir")
# The benchmarks read the broker's CPU time from /proc with it.
WINBACK_TEST_BROKER_PID=$(cat "$broker_dir/pid")
export WINBACK_TEST_BROKERS WINBACK_TEST_BROKER_PID
echo "== broker: Apache Kafka on $WINBACK_TEST_BROKERS" >&2
"$@"
