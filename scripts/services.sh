#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on this machine, starting (and, on a
# fresh Debian machine, installing) each one that is missing: Redis on 127.0.0.1:6379 and
# RabbitMQ on 127.0.0.1:5672 (guest/guest). Idempotent; fails loudly when one cannot be had.
set -euo pipefail

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
echo "services: Redis and RabbitMQ are up"
