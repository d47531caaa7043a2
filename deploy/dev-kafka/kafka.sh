#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker and controller in one process) for
# winback's tests, benchmarks and local trials. The same script is what .ci/run
# uses, so a developer runs the broker CI runs:
#
#   deploy/dev-kafka/kafka.sh start DIR   # format DIR, start, print the bootstrap address
#   deploy/dev-kafka/kafka.sh stop DIR    # stop the broker started in DIR (by its PID)
#   deploy/dev-kafka/kafka.sh jars        # only fetch the jars (print their folder)
#
# The jars come from Maven Central through pom.xml beside this file, cached under
# $WINBACK_KAFKA_CACHE (default ~/.cache/winback-kafka), outside the clone.
# Needs Java 17+ and Maven. Ports are free ones picked at start; DIR/bootstrap
# holds the address, DIR/pid the process, DIR/broker.log its log.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${WINBACK_KAFKA_CACHE:-$HOME/.cache/winback-kafka}"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
libs="$cache/$version/libs"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch_jars() {
  if [ -f "$libs/.complete" ] && [ "$(cat "$libs/.complete")" = "$(cksum <"$here/pom.xml")" ]; then
    return
  fi
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch the broker's jars"
  rm -rf "$libs"
  mkdir -p "$libs"
  echo "kafka.sh: fetching Apache Kafka $version's jars into $libs" >&2
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2 ||
    die "mvn could not fetch the broker's jars"
  cksum <"$here/pom.xml" >"$libs/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Replaces the (sub)shell it runs in with the JVM: called as `( java_cmd ... ) &`,
# $! is the broker's own PID, which `stop` signals.
java_cmd() {
  exec java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$libs/*" "$@"
}

start() {
  dir="$1"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    die "a broker already runs from $dir (pid $(cat "$dir/pid"))"
  fi
  fetch_jars
  command -v java >/dev/null 2>&1 || die "Java 17 or newer is needed to run the broker"
  port="${WINBACK_KAFKA_PORT:-$(free_port)}"
  cport="$(free_port)"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  rm -rf "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
# Topics are created by winback and by the tests, never by a fetch or a produce.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A test group's first round need not wait for members that never come.
group.initial.rebalance.delay.ms=0
EOF
  cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/broker.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.state.name=state.change.logger
logger.state.level=WARN
EOF
  : >"$dir/broker.log"
  cluster_id="$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
  (java_cmd kafka.tools.StorageTool format --config "$dir/server.properties" \
    --cluster-id "$cluster_id" --ignore-formatted) >"$dir/format.log" 2>&1 ||
    { cat "$dir/format.log" >&2; die "formatting $dir failed"; }
  (java_cmd kafka.Kafka "$dir/server.properties") >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 600); do
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      tail -50 "$dir/stdout.log" "$dir/broker.log" >&2
      die "the broker exited during start"
    fi
    if grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null &&
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "127.0.0.1:$port" >"$dir/bootstrap"
      echo "127.0.0.1:$port"
      return
    fi
    sleep 0.2
  done
  tail -50 "$dir/broker.log" >&2
  stop "$dir"
  die "the broker did not start within 120 s"
}

stop() {
  dir="$1"
  [ -f "$dir/pid" ] || return 0
  pid="$(cat "$dir/pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

case "${1:-}" in
  start) [ $# -eq 2 ] || die "usage: kafka.sh start DIR"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: kafka.sh stop DIR"; stop "$2" ;;
  jars) fetch_jars; echo "$libs" ;;
  *) die "usage: kafka.sh start DIR | stop DIR | jars" ;;
esac
