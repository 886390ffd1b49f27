#!/usr/bin/env bash
# Benchmarks chat-service against the Node.js Socket.IO reference (bench/node-reference) in the
# same run, with the same load generator (chat-bench), and writes a markdown table with ratios.
#
#   bench/run.sh s1|s2|s3|s3big|s4|s6|custom [runs]
#
# Each server is pinned to core 0 and chat-bench to core 1 (taskset). Per run, the two servers
# are measured back to back (the order alternates between runs); the table reports the median of
# the runs. Scenario settings can be overridden with environment variables (CONNECTIONS,
# ROOM_SIZE, RATE, DURATION, WARMUP, MESSAGE_SIZE, WORKERS, EXTRA_ARGS, SERVERS="rust node",
# REDIS_URL for s4 (a redis+cluster:// URL with SERVERS=rust), UPGRADE=1 for sessions that start on long-polling and upgrade).
# BASE_BIN=<another chat-service binary> adds it as a third server, `base`, measured in the
# same runs (a before/after comparison: the table gets its column and the ratio to it).
# RUST_BIN=<a chat-service binary> measures that one as `rust` instead of this checkout's
# release build (to compare two earlier commits with each other; chat-bench stays this one's).
# RUST_ENV / BASE_ENV="VAR=value ..." add settings to the `rust` / `base` server's environment
# (e.g. BASE_BIN=target/release/chat-service BASE_ENV=EMBEDDED_COMMIT_WINDOW_US=300 compares one
# setting of the same binary against another).
# Results: bench/results/<scenario>-<server>-<run>.json and bench/results/<scenario>.md (a set
# first removes the JSON results of the scenario's last set).
#
# RAMP=1 (any scenario) searches the maximum sustainable rate instead: chat-bench starts at RATE
# and multiplies it by RAMP_FACTOR (1.5) for up to RAMP_STEPS (10) steps, stopping at the first
# step that fails twice in a row (delivery < 100% or p99 > P99_MAX_MS (20); a failing step is
# run once more at the same rate, so one latency spike does not decide the maximum, which is the
# highest passing step). Results are named <scenario>-ramp-...,
# and bench/plot.py draws bench/results/<scenario>-ramp.png (latency vs offered load).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SCENARIO=${1:?usage: bench/run.sh s1|s2|s3|s3big|s4|s6|custom [runs]}
RUNS=${2:-3}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/bench/results
mkdir -p "$OUT"

ulimit -n 20000

# INSTANCES: server processes per measurement (s4 runs two sharing Redis).
INSTANCES=1
case "$SCENARIO" in
  s1) # direct chats: rooms of 2, equal offered load for both servers
    : "${CONNECTIONS:=10000}" "${ROOM_SIZE:=2}" "${RATE:=2000}" "${DURATION:=10}" "${WARMUP:=3}" ;;
  s2) # group fan-out: rooms of 100, 200 msg/s = 20,000 deliveries/s
    : "${CONNECTIONS:=1000}" "${ROOM_SIZE:=100}" "${RATE:=200}" "${DURATION:=10}" "${WARMUP:=3}" ;;
  s3) # idle memory: authenticated connections, each in a room, no traffic
    : "${CONNECTIONS:=10000}" "${ROOM_SIZE:=2}" "${RATE:=0}" "${DURATION:=5}" "${WARMUP:=0}" ;;
  s3big) # idle memory at 19,000 connections: two chat-bench processes, since one process's
    # open-file limit (20,000) cannot hold 19,000 sockets plus its own files
    : "${CONNECTIONS:=19000}" "${ROOM_SIZE:=2}" "${RATE:=0}" "${DURATION:=5}" "${WARMUP:=0}" "${WORKERS:=2}" ;;
  s4) # S2 on two instances sharing Redis: connections alternate between the instances
    # (chat-bench spreads them round robin over the URLs), so every room has members on both
    # and each message crosses Redis
    : "${CONNECTIONS:=1000}" "${ROOM_SIZE:=100}" "${RATE:=200}" "${DURATION:=10}" "${WARMUP:=3}"
    : "${REDIS_URL:=redis://127.0.0.1:6379}"
    INSTANCES=2 ;;
  s6) # one room of 10,000 members: each message is 10,000 deliveries (broadcast p99 is the figure)
    : "${CONNECTIONS:=10000}" "${ROOM_SIZE:=10000}" "${RATE:=1}" "${DURATION:=20}" "${WARMUP:=2}" ;;
  custom)
    : "${CONNECTIONS:=1000}" "${ROOM_SIZE:=2}" "${RATE:=1000}" "${DURATION:=10}" "${WARMUP:=3}" ;;
  *) echo "unknown scenario $SCENARIO (s1, s2, s3, s3big, s4, s6, custom)" >&2; exit 2 ;;
esac
: "${MESSAGE_SIZE:=64}" "${WORKERS:=1}" "${EXTRA_ARGS:=}" "${SERVERS:=rust node}" "${RAMP:=0}"
if [ -n "${RUST_BIN:-}" ] && [ ! -x "$RUST_BIN" ]; then
  echo "RUST_BIN=$RUST_BIN is not an executable" >&2; exit 2
fi
if [ -n "${BASE_BIN:-}" ]; then
  [ -x "$BASE_BIN" ] || { echo "BASE_BIN=$BASE_BIN is not an executable" >&2; exit 2; }
  case " $SERVERS " in *" base "*) ;; *) SERVERS="$SERVERS base" ;; esac
fi

# NAME prefixes the result files: a ramp's JSON has another shape than one run's, so it must
# not mix with the fixed-rate results of the same scenario in summarize.js.
# UPGRADE=1: Socket.IO sessions start on long-polling and upgrade to WebSocket (the browser
# default) instead of opening on a WebSocket; results are named <scenario>-upgrade-...
BASE=$SCENARIO
if [ "${UPGRADE:-0}" = 1 ]; then
  BASE=$SCENARIO-upgrade
  EXTRA_ARGS="$EXTRA_ARGS --upgrade"
fi
NAME=$BASE
RAMP_ARGS=()
if [ "$RAMP" = 1 ]; then
  NAME=$BASE-ramp
  RAMP_ARGS=(--ramp --p99-max-ms "${P99_MAX_MS:-20}" --ramp-factor "${RAMP_FACTOR:-1.5}"
    --ramp-steps "${RAMP_STEPS:-10}")
  # matplotlib for bench/plot.py, in the repo's venv (scripts/setup.sh creates it): installed
  # before the runs, so that a failing install does not come after an hour of measuring, and
  # again when bench/requirements.txt is newer than the stamp of the last install.
  if [ ! -f .venv/.bench-requirements-stamp ] || [ bench/requirements.txt -nt .venv/.bench-requirements-stamp ]; then
    echo "installing bench/requirements.txt into .venv/..." >&2
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
    touch .venv/.bench-requirements-stamp
  fi
fi

if [ "$INSTANCES" -gt 1 ]; then
  # Both servers would start without Redis (chat-service then serves each instance's clients
  # alone), which would only show up as lost deliveries: fail early instead.
  # A Redis Cluster (REDIS_URL=redis+cluster://host:port,...; chat-service only: the Node.js
  # reference's adapter takes one Redis) is checked at its first seed node.
  ping_url=$REDIS_URL
  case "$REDIS_URL" in
    redis+cluster://*)
      case " $SERVERS " in *" node "*)
        echo "s4 on a Redis Cluster measures chat-service only: set SERVERS=rust" >&2; exit 2 ;;
      esac
      first=${REDIS_URL#redis+cluster://}; ping_url="redis://${first%%,*}" ;;
  esac
  if ! redis-cli -u "$ping_url" ping >/dev/null 2>&1; then
    echo "Redis is not reachable at $REDIS_URL (scripts/setup.sh installs it; scripts/services.sh starts it)" >&2
    exit 1
  fi
fi

echo "building chat-service and chat-bench (release)..." >&2
cargo build --release --bins --quiet
# Reinstalled when the lock file changed too (s4 needs the Redis adapter added to it), as
# scripts/setup.sh does for e2e/.
if [ ! -f bench/node-reference/node_modules/.package-lock.json ] \
  || [ bench/node-reference/package-lock.json -nt bench/node-reference/node_modules/.package-lock.json ]; then
  (cd bench/node-reference && npm ci --no-audit --no-fund --silent)
fi

SERVER_PIDS=()
DATA_DIRS=()
stop_server() {
  local pid
  # TERM every instance first, then wait: they shut down in parallel.
  for pid in "${SERVER_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in "${SERVER_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  SERVER_PIDS=()
  # The embedded stores of the chat-service instances (one per instance).
  if [ ${#DATA_DIRS[@]} -gt 0 ]; then rm -rf "${DATA_DIRS[@]}"; fi
  DATA_DIRS=()
}
trap stop_server EXIT

# start_instance rust|node LOG -> appends to SERVER_PIDS and PORTS
start_instance() {
  local kind=$1 log=$2 data port redis_env=() extra_env=()
  : >"$log"
  # Only s4 gives the servers Redis: a REDIS_URL or REDIS_HOST in the caller's environment must
  # not turn the single-instance scenarios into Redis ones.
  if [ "$INSTANCES" -gt 1 ]; then redis_env=(REDIS_URL="$REDIS_URL"); fi
  if [ "$kind" = rust ] || [ "$kind" = base ]; then
    local bin=${RUST_BIN:-$TARGET/release/chat-service}
    read -r -a extra_env <<<"${RUST_ENV:-}"
    if [ "$kind" = base ]; then bin=$BASE_BIN; read -r -a extra_env <<<"${BASE_ENV:-}"; fi
    data=$(mktemp -d)
    DATA_DIRS+=("$data")
    # MESSAGE_HISTORY_TTL: the Redis history cache of the bench rooms (run-unique names) expires
    # after an hour instead of the default week; the cache is written the same way either way.
    env -u REDIS_URL -u REDIS_HOST "${redis_env[@]}" MESSAGE_HISTORY_TTL=3600 \
      PORT=0 HOST=127.0.0.1 DATA_DIR="$data" RUST_LOG=warn \
      RATE_LIMIT_PER_SEC=0 EVENT_RATE_LIMIT_PER_SEC=0 MAX_CONNECTIONS_PER_USER=0 \
      AUTH_TIMEOUT_SECS=600 "${extra_env[@]}" \
      taskset -c 0 "$bin" >"$log" 2>&1 &
  else
    env -u REDIS_URL -u REDIS_HOST "${redis_env[@]}" PORT=0 taskset -c 0 node bench/node-reference/server.js >"$log" 2>&1 &
  fi
  SERVER_PIDS+=($!)
  for _ in $(seq 1 100); do
    port=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$log" | head -n1)
    if [ -n "$port" ]; then
      PORTS+=("$port")
      return 0
    fi
    sleep 0.1
  done
  echo "$kind server did not start; log:" >&2
  cat "$log" >&2
  exit 1
}

# start_server rust|node LOG_PREFIX -> INSTANCES processes, all on core 0; sets SERVER_PIDS,
# PORTS, and the comma lists URLS and PIDS that chat-bench takes (--url, --server-pid: it
# spreads the connections round robin over the URLs and sums CPU and RSS over the pids).
start_server() {
  local kind=$1 prefix=$2 i
  PORTS=()
  if [ "$INSTANCES" -eq 1 ]; then
    start_instance "$kind" "$prefix.log"
  else
    for i in $(seq 1 "$INSTANCES"); do start_instance "$kind" "$prefix.$i.log"; done
  fi
  URLS=$(printf 'http://127.0.0.1:%s,' "${PORTS[@]}")
  URLS=${URLS%,}
  PIDS=$(IFS=,; echo "${SERVER_PIDS[*]}")
}

# The table reads this set's results only: an earlier set's files (Node.js's, say, when SERVERS
# leaves it out now) would otherwise be summarized with them.
rm -f "$OUT/$NAME"-{rust,node,base}-[0-9]*.json

for run in $(seq 1 "$RUNS"); do
  order=$SERVERS
  if [ $((run % 2)) -eq 0 ]; then order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for server in $order; do
    json="$OUT/$NAME-$server-$run.json"
    start_server "$server" "$OUT/$NAME-$server-$run"
    echo "== $NAME run $run/$RUNS: $server (pid $PIDS, port ${PORTS[*]}), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    # shellcheck disable=SC2086
    taskset -c 1 "$TARGET/release/chat-bench" --url "$URLS" \
      --connections "$CONNECTIONS" --room-size "$ROOM_SIZE" --rate "$RATE" \
      --duration "$DURATION" --warmup "$WARMUP" --message-size "$MESSAGE_SIZE" \
      --workers "$WORKERS" --source-ips 127.0.0.1-127.0.0.8 --server-pid "$PIDS" \
      --label "$server" --json "$json" "${RAMP_ARGS[@]}" $EXTRA_ARGS >/dev/null \
      || echo "($server run $run did not pass: see $json)" >&2
    stop_server
    sleep 2
  done
done

node bench/summarize.js "$NAME" "$RUNS" "$OUT" | tee "$OUT/$NAME.md"
if [ "$RAMP" = 1 ]; then
  .venv/bin/python bench/plot.py "$BASE" "$RUNS" "$OUT" "$OUT/$NAME.png"
fi
