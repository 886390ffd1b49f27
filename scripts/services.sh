#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on this machine, starting (and, on a
# fresh Debian machine, installing) each one that is missing: Redis on 127.0.0.1:6379 and
# RabbitMQ on 127.0.0.1:5672 (guest/guest), and, unless MONGODB_TEST_URI names a real MongoDB,
# the MongoDB stand-in nx-27017 (from .venv, see scripts/setup.sh) on 127.0.0.1:27017 with its
# SQLite files in a temp folder. Idempotent; fails loudly when one cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}
wait_port() { # port, name, seconds
  for _ in $(seq $(($3 * 10))); do port_open "$1" && return 0; sleep 0.1; done
  echo "services: $2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || install redis-server
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis 10
fi

if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null 2>&1 || install rabbitmq-server
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
  wait_port 5672 RabbitMQ 60
fi
if [ -z "${MONGODB_TEST_URI:-}" ] && ! port_open 27017; then
  [ -x .venv/bin/nx-27017 ] || { echo "services: .venv/bin/nx-27017 missing: run scripts/setup.sh" >&2; exit 1; }
  dir="${TMPDIR:-/tmp}/chat-service-nx-27017"
  rm -rf "$dir"; mkdir -p "$dir" # a fresh start: databases of earlier runs go
  echo "services: starting the MongoDB stand-in (nx-27017) on 127.0.0.1:27017, files in $dir"
  .venv/bin/nx-27017 --daemon --host 127.0.0.1 --port 27017 --data-dir "$dir" \
    --pid-file "$dir/nx-27017.pid" --log-file "$dir/nx-27017.log"
  wait_port 27017 "nx-27017" 30
fi
if [ -n "${MONGODB_TEST_URI:-}" ]; then mongo="MONGODB_TEST_URI"; else mongo="nx-27017 stand-in"; fi
echo "services: Redis, RabbitMQ and MongoDB ($mongo) are up"
