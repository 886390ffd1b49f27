#!/usr/bin/env bash
# Benchmarks chat-service against the Node.js Socket.IO reference (bench/node-reference) in the
# same run, with the same load generator (chat-bench), and writes a markdown table with ratios.
#
#   bench/run.sh s1|s3|custom [runs]
#
# Each server is pinned to core 0 and chat-bench to core 1 (taskset). Per run, the two servers
# are measured back to back (the order alternates between runs); the table reports the median of
# the runs. Scenario settings can be overridden with environment variables (CONNECTIONS,
# ROOM_SIZE, RATE, DURATION, WARMUP, MESSAGE_SIZE, WORKERS, EXTRA_ARGS, SERVERS="rust node").
# Results: bench/results/<scenario>-<server>-<run>.json and bench/results/<scenario>.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SCENARIO=${1:?usage: bench/run.sh s1|s3|custom [runs]}
RUNS=${2:-3}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/bench/results
mkdir -p "$OUT"

ulimit -n 20000

case "$SCENARIO" in
  s1) # direct chats: rooms of 2, equal offered load for both servers
    : "${CONNECTIONS:=2000}" "${ROOM_SIZE:=2}" "${RATE:=2000}" "${DURATION:=10}" "${WARMUP:=3}" ;;
  s3) # idle memory: authenticated connections, each in a room, no traffic
    : "${CONNECTIONS:=10000}" "${ROOM_SIZE:=2}" "${RATE:=0}" "${DURATION:=5}" "${WARMUP:=0}" ;;
  custom)
    : "${CONNECTIONS:=1000}" "${ROOM_SIZE:=2}" "${RATE:=1000}" "${DURATION:=10}" "${WARMUP:=3}" ;;
  *) echo "unknown scenario $SCENARIO (s1, s3, custom)" >&2; exit 2 ;;
esac
: "${MESSAGE_SIZE:=64}" "${WORKERS:=1}" "${EXTRA_ARGS:=}" "${SERVERS:=rust node}"

echo "building chat-service and chat-bench (release)..." >&2
cargo build --release --bins --quiet
if [ ! -d bench/node-reference/node_modules ]; then
  (cd bench/node-reference && npm ci --no-audit --no-fund --silent)
fi

SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT

# start_server rust|node LOG -> sets SERVER_PID and PORT
start_server() {
  local kind=$1 log=$2 data
  : >"$log"
  if [ "$kind" = rust ]; then
    data=$(mktemp -d)
    PORT=0 HOST=127.0.0.1 DATA_DIR="$data" RUST_LOG=warn \
      RATE_LIMIT_PER_SEC=0 EVENT_RATE_LIMIT_PER_SEC=0 MAX_CONNECTIONS_PER_USER=0 \
      AUTH_TIMEOUT_SECS=600 \
      taskset -c 0 "$TARGET/release/chat-service" >"$log" 2>&1 &
  else
    PORT=0 taskset -c 0 node bench/node-reference/server.js >"$log" 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$log" | head -n1)
    [ -n "$PORT" ] && return 0
    sleep 0.1
  done
  echo "$kind server did not start; log:" >&2
  cat "$log" >&2
  exit 1
}

for run in $(seq 1 "$RUNS"); do
  order=$SERVERS
  if [ $((run % 2)) -eq 0 ]; then order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for server in $order; do
    json="$OUT/$SCENARIO-$server-$run.json"
    start_server "$server" "$OUT/$SCENARIO-$server-$run.log"
    echo "== $SCENARIO run $run/$RUNS: $server (pid $SERVER_PID, port $PORT), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    # shellcheck disable=SC2086
    taskset -c 1 "$TARGET/release/chat-bench" --url "http://127.0.0.1:$PORT" \
      --connections "$CONNECTIONS" --room-size "$ROOM_SIZE" --rate "$RATE" \
      --duration "$DURATION" --warmup "$WARMUP" --message-size "$MESSAGE_SIZE" \
      --workers "$WORKERS" --source-ips 127.0.0.1-127.0.0.8 --server-pid "$SERVER_PID" \
      --label "$server" --json "$json" $EXTRA_ARGS >/dev/null || echo "($server run $run did not pass: see $json)" >&2
    stop_server
    sleep 2
  done
done

node bench/summarize.js "$SCENARIO" "$RUNS" "$OUT" | tee "$OUT/$SCENARIO.md"
