#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on this machine, starting (and, on a
# fresh Debian machine, installing) each one that is missing: Redis on 127.0.0.1:6379, a
# 3-master Redis Cluster (no replicas) on 127.0.0.1:7001-7003 (ports from REDIS_CLUSTER_PORTS,
# space- or comma-separated; REDIS_CLUSTER=0 skips it) with its nodes.conf files in a temp
# folder, RabbitMQ on 127.0.0.1:5672 (guest/guest), and, unless MONGODB_TEST_URI names a real
# MongoDB, the MongoDB stand-in nx-27017 (from .venv, see scripts/setup.sh) on 127.0.0.1:27017
# with its SQLite files in a temp folder. Idempotent (a cluster that answers but is broken, as
# after a crash, is shut down, wiped and made anew); fails loudly when one cannot be had.
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

# Redis Cluster: healthy when every node answers, reports cluster_state:ok with all 16384 slots
# assigned and knows exactly the other nodes; otherwise its nodes are shut down (by port), their
# folders wiped and the cluster made anew.
cluster_up=""
if [ "${REDIS_CLUSTER:-1}" = 0 ]; then
  echo "services: Redis Cluster skipped (REDIS_CLUSTER=0)"
else
  ports="${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
  read -r -a cluster_ports <<<"${ports//,/ }"
  for p in "${cluster_ports[@]}"; do
    [[ "$p" =~ ^[0-9]+$ ]] || { echo "services: REDIS_CLUSTER_PORTS: '$p' is not a port" >&2; exit 1; }
  done
  [ "${#cluster_ports[@]}" -ge 3 ] || { echo "services: a Redis Cluster needs at least 3 ports, REDIS_CLUSTER_PORTS='$ports'" >&2; exit 1; }
  cluster_dir="${TMPDIR:-/tmp}/chat-service-redis-cluster"
  node_ok() { # port: answers, cluster_state:ok, 16384 slots, knows all the nodes
    local info
    port_open "$1" || return 1
    info="$(redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r')" || return 1
    grep -qx 'cluster_state:ok' <<<"$info" && grep -qx 'cluster_slots_assigned:16384' <<<"$info" &&
      grep -qx "cluster_known_nodes:${#cluster_ports[@]}" <<<"$info"
  }
  cluster_ok() { local p; for p in "${cluster_ports[@]}"; do node_ok "$p" || return 1; done; }
  if ! cluster_ok; then
    { command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || install redis-server redis-tools
    for p in "${cluster_ports[@]}"; do
      port_open "$p" || continue
      echo "services: Redis Cluster is not healthy: shutting down its node on 127.0.0.1:$p"
      redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true
      for _ in $(seq 100); do port_open "$p" || break; sleep 0.1; done
      if port_open "$p"; then echo "services: 127.0.0.1:$p is still taken after shutdown nosave" >&2; exit 1; fi
    done
    for p in "${cluster_ports[@]}"; do rm -rf "${cluster_dir:?}/$p"; done # a fresh start: old nodes.conf go
    echo "services: starting a Redis Cluster on 127.0.0.1 ports ${cluster_ports[*]}, files in $cluster_dir"
    for p in "${cluster_ports[@]}"; do
      mkdir -p "$cluster_dir/$p"
      redis-server --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --save "" --appendonly no --daemonize yes --bind 127.0.0.1 --port "$p" \
        --dir "$cluster_dir/$p" --logfile "$cluster_dir/$p/redis.log"
    done
    for p in "${cluster_ports[@]}"; do wait_port "$p" "Redis Cluster node" 10; done
    create_log="$cluster_dir/${cluster_ports[0]}/create.log"
    nodes=(); for p in "${cluster_ports[@]}"; do nodes+=("127.0.0.1:$p"); done
    if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$create_log" 2>&1; then
      cat "$create_log" >&2
      echo "services: redis-cli --cluster create failed (log above, node logs in $cluster_dir/PORT/redis.log)" >&2
      exit 1
    fi
    for _ in $(seq 200); do cluster_ok && break; sleep 0.1; done
    if ! cluster_ok; then
      for p in "${cluster_ports[@]}"; do
        echo "--- 127.0.0.1:$p cluster info:" >&2; redis-cli -h 127.0.0.1 -p "$p" cluster info >&2 || true
      done
      echo "services: the Redis Cluster did not reach cluster_state:ok within 20 s (node logs in $cluster_dir/PORT/redis.log)" >&2
      exit 1
    fi
  fi
  cluster_up="Redis Cluster (127.0.0.1:$(IFS=,; echo "${cluster_ports[*]}")), "
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
echo "services: Redis, ${cluster_up}RabbitMQ and MongoDB ($mongo) are up"
