#!/usr/bin/env bash
# The churn soak (issue 19.4): two chat-service instances on the local Redis, each on its own
# embedded store, and `chat-bench --churn` against both: clients in rooms, a message per
# second per room, and every 10 s a wave that disconnects 10% of the clients for 1-5 s (half
# abruptly), each resuming with `since`. Fails unless every acked message reached every member
# of its room and no duplicate reached the application. Prints chat-bench's JSON summary
# (delivery, duplicates, rejoin and replay p99, the servers' RSS slope and open files).
#
#   scripts/soak.sh [seconds] [clients] [extra chat-bench arguments...]
#
# Defaults: 180 s, 1000 clients (the test command's 3-minute version). The binaries are
# CHAT_BIN and CHAT_BENCH_BIN, default the debug builds; BENCHMARKS.md runs it on the release
# builds with 10,000 clients. SOAK_STORAGE=postgres puts both instances on one fresh database
# of the local PostgreSQL (dropped at the end) instead of an embedded store each;
# SOAK_ROOM_SIZE sets the room size (default 10); extra arguments go to chat-bench (e.g.
# `--churn-room-rate 0.4`). SOAK_SAMPLES=<file> writes the instances' RSS, threads, open files,
# runtime tasks and connections from their /metrics every SOAK_SAMPLE_EVERY seconds (30).
# SOAK_ENV_1 / SOAK_ENV_2: extra `NAME=value` settings of instance 1 / 2 only (an A/B in one
# run, e.g. SOAK_ENV_1=MALLOC_ARENA_MAX=2).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-180}"
clients="${2:-1000}"
shift $(( $# < 2 ? $# : 2 ))
target="${CARGO_TARGET_DIR:-$PWD/target}"
chat_bin="${CHAT_BIN:-$target/debug/chat-service}"
bench_bin="${CHAT_BENCH_BIN:-$target/debug/chat-bench}"
redis_url="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"

work="$(mktemp -d)"
pids=()
storage=(STORAGE=embedded)
db=""
if [ "${SOAK_STORAGE:-embedded}" = postgres ]; then
  db="soak_$$"
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
  storage=(STORAGE=postgres "DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db")
fi
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  if [ -n "$db" ]; then psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres || true; fi
}
trap cleanup EXIT

urls=()
for i in 1 2; do
  mkdir -p "$work/$i"
  own="SOAK_ENV_$i"
  read -r -a own_env <<<"${!own:-}"
  (cd "$work/$i" && exec env PORT=0 HOST=127.0.0.1 REDIS_URL="$redis_url" "${storage[@]}" \
    DATA_DIR="$work/$i/data" RATE_LIMIT_PER_SEC=0 EVENT_RATE_LIMIT_PER_SEC=0 RUST_LOG=warn \
    "${own_env[@]}" "$chat_bin" >"$work/$i/out" 2>"$work/$i/log") &
  pids+=("$!")
done
for i in 1 2; do
  for _ in $(seq 300); do
    url="$(sed -n 's/^listening on //p' "$work/$i/out" | head -1)"
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "soak: instance $i did not start"; cat "$work/$i/log"; exit 1; }
  urls+=("$url")
done

echo "soak: ${secs}s, $clients clients, instances ${urls[*]}"
# SOAK_SAMPLES=<file>: every SOAK_SAMPLE_EVERY seconds (30), one line per instance from its
# /metrics: seconds, instance, RSS bytes, OS threads, open files, runtime tasks, connections.
if [ -n "${SOAK_SAMPLES:-}" ]; then
  printf 't\tinstance\trss_bytes\tthreads\topen_files\ttasks\tconnections\n' >"$SOAK_SAMPLES"
  (
    start=$SECONDS
    while :; do
      for i in 1 2; do
        curl -s "${urls[$((i - 1))]}/metrics" | awk -v t=$((SECONDS - start)) -v i="$i" '
          /^process_resident_memory_bytes[{ ]/ {rss=$NF} /^process_threads[{ ]/ {thr=$NF}
          /^process_open_fds[{ ]/ {fds=$NF} /^chat_runtime_tasks[{ ]/ {tasks=$NF}
          /^chat_connections_open[{ ]/ {conns+=$NF}
          END {printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t, i, rss, thr, fds, tasks, conns}'
      done >>"$SOAK_SAMPLES"
      sleep "${SOAK_SAMPLE_EVERY:-30}"
    done
  ) &
  pids+=("$!")
fi
status=0
"$bench_bin" --churn --quiet --url "${urls[0]},${urls[1]}" --connections "$clients" \
  --room-size "${SOAK_ROOM_SIZE:-10}" --duration "$secs" --churn-every 10 --churn-fraction 0.1 \
  --server-pid "${pids[0]},${pids[1]}" --label soak "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "soak: FAILED (chat-bench exit $status)"
  for i in 1 2; do echo "--- instance $i log (tail)"; tail -20 "$work/$i/log"; done
fi
exit "$status"
