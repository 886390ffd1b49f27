#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh Debian machine:
# Node.js + npm, Debian's Chromium (browser test), redis-server (multi-instance tests), nginx (deployment test),
# systemd's systemd-analyze (check of the systemd unit), Prometheus and promtool (the metrics
# test scrapes a running instance with a real Prometheus), the e2e npm packages, and the Python venv
# (.venv/) of the python-socketio client test, of the MongoDB stand-in (nx-27017), of the
# deployment checks (kubernetes-validate) and of the API fuzzer (schemathesis).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Redis: the multi-instance tests run against a real one (scripts/test.sh starts it).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# nginx: the deployment test runs deploy/nginx.conf in a real nginx (as a child, in a temp prefix).
[ -x /usr/sbin/nginx ] || missing+=(nginx)
# systemd-analyze: scripts/check_deploy.py verifies deploy/chat-service.service with it (it needs
# no running systemd).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Prometheus: tests/api/prometheus.rs runs /usr/bin/prometheus (a child on a free port, with its
# own config and data folder) against an instance, and /usr/bin/promtool on the exposition.
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
# Debian's python3 has the venv module but no ensurepip until python3-venv is installed.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages of the e2e suites (socket.io-client, playwright-core): reinstalled when the
# lock file changed.
if [ ! -f e2e/node_modules/.package-lock.json ] || [ e2e/package-lock.json -nt e2e/node_modules/.package-lock.json ]; then
  echo "setup: npm ci in e2e/"
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

# Python venv (.venv/) of e2e/python (python-socketio client), of the MongoDB stand-in
# (nx-27017), of the deployment checks (kubernetes-validate) and of the API fuzzer
# (schemathesis): created when missing, reinstalled when a requirements file is newer than the
# stamp written after the last successful install.
requirements=(e2e/python/requirements.txt scripts/mongo-standin-requirements.txt scripts/deploy-check-requirements.txt scripts/api-fuzz-requirements.txt)
stale=false
[ -x .venv/bin/python ] && [ -f .venv/.requirements-stamp ] || stale=true
for r in "${requirements[@]}"; do [ "$r" -nt .venv/.requirements-stamp ] && stale=true; done
if $stale; then
  echo "setup: python venv .venv/ + pip install (python-socketio client, nx-27017, kubernetes-validate, schemathesis)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "${requirements[@]/#/-r}"
  touch .venv/.requirements-stamp
fi

# PostgreSQL for the `postgres` tests (postgres://postgres@127.0.0.1:5432/test): started when
# installed but not running, the `test` database created when missing.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1; then
  echo "setup: starting PostgreSQL"
  for v in $(ls /etc/postgresql); do pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
fi
if command -v psql >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1; then
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE test"
fi
