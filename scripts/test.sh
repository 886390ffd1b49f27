#!/usr/bin/env bash
# The whole test suite: format, lints, the Rust black-box tests (with the multi-instance ones on
# a real Redis and the notification ones on a real RabbitMQ, started when not running), the official socket.io-client end-to-end suite
# (polling, websocket and upgrade, wscat, two instances behind a real nginx) once against one
# instance, once across two instances (on a Redis Cluster), and once each on the PostgreSQL and
# MongoDB stores, the two-instance Rust tests once more on the Redis Cluster,
# a 3-minute churn soak (scripts/soak.sh), the checks of the deployment examples (systemd unit, Kubernetes manifests), a schema-driven
# fuzzer (schemathesis) of the REST API against its OpenAPI document,
# the python-socketio client test, and
# the real-browser test of the page.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# Each step's heading shows the seconds since the start, so a slow step shows in the log.
step() { printf '\n== [%ss] %s\n' "$SECONDS" "$*"; }

step "Redis, RabbitMQ and the MongoDB stand-in (started when not running)"
scripts/services.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "Rust tests (unit + black-box through spawn_app + the fault lab, tests/lab)"
# The lab's network and disk scenarios need root (network namespaces, TUN devices, a tmpfs);
# without it they pass after printing SKIPPED, which cargo hides: say it here.
if [ "$(id -u)" = 0 ] && ip netns list >/dev/null 2>&1 && [ -e /dev/net/tun ]; then
  echo "fault lab: the network and disk scenarios run (root, ip netns)"
else
  echo "SKIPPED: fault lab network and disk scenarios (needs root and ip netns)"
fi
cargo test --locked
# The end-to-end suites run the binaries `cargo test` just built for the black-box tests
# (target/debug/chat-service and chat-bench). A separate `cargo build` would compile ~90 crates
# again (dev-dependencies unify other features into them) for the same code: 2 minutes in CI.
export CHAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/chat-service"
for bin in "$CHAT_BIN" "${CARGO_TARGET_DIR:-$PWD/target}/debug/chat-bench"; do
  [ -x "$bin" ] || { echo "test.sh: $bin was not built by cargo test"; exit 1; }
done

step "the two-instance Rust tests again, on the local 3-master Redis Cluster (sharded pub/sub)"
export REDIS_CLUSTER_URL="redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
TEST_REDIS_URL="$REDIS_CLUSTER_URL" cargo test --locked --test api -- \
  multi_instance redis_outage lifecycle::instances admin:: erase::

step "churn soak, 3 minutes: two instances on Redis, 1000 clients in waves of disconnects resuming with since"
scripts/soak.sh 180 1000

step "deployment examples: systemd unit and Kubernetes manifests against the binary"
.venv/bin/python scripts/check_deploy.py -v

step "REST API against its OpenAPI document: schemathesis --checks all, AUTH_MODE=jwt and none"
.venv/bin/python scripts/fuzz_api.py

step "socket.io-client e2e suite"
(cd e2e && npm test)

step "socket.io-client e2e suite across two instances on the Redis Cluster (E2E_CLUSTER=1)"
(cd e2e && E2E_CLUSTER=1 TEST_REDIS_URL="$REDIS_CLUSTER_URL" npm test)

step "socket.io-client e2e suite on PostgreSQL (E2E_STORAGE=postgres)"
(cd e2e && E2E_STORAGE=postgres npm test)

step "socket.io-client e2e suite on MongoDB (E2E_STORAGE=mongodb: nx-27017, or MONGODB_TEST_URI)"
(cd e2e && E2E_STORAGE=mongodb npm test)

step "python-socketio client"
.venv/bin/python -m unittest discover -s e2e/python -v

step "browser test (Debian Chromium via playwright-core)"
(cd e2e && npm run test:browser)

printf '\nall test suites passed in %s s\n' "$SECONDS"
