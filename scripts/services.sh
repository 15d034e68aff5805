#!/usr/bin/env bash
# Installs (from Debian's packages) and starts what the test suite talks to:
# Redis, PostgreSQL with a `test` database reachable over 127.0.0.1 without a
# password, and Chromium for the browser tests. Safe to run again and again.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@"
}

# --- Redis -------------------------------------------------------------
if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null

# --- PostgreSQL --------------------------------------------------------
fresh_pg=0
if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  apt_install postgresql
  fresh_pg=1
fi
pg_version=$(ls /etc/postgresql | sort -V | tail -n 1)
if [ "$fresh_pg" = 1 ]; then
  # trust local connections, as on the development machines
  hba="/etc/postgresql/$pg_version/main/pg_hba.conf"
  as_root sed -i -E 's/^(local|host)(\s+all\s+all\s+.*\s)(peer|scram-sha-256|md5)$/\1\2trust/' "$hba"
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || true
  for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
fi
if [ "$fresh_pg" = 1 ]; then as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main reload || true; fi
pg_isready -h 127.0.0.1 -p 5432 -q
pg_user="${PGUSER:-$(id -un)}"
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_roles where rolname='$pg_user'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -c "create role \"$pg_user\" superuser login" >/dev/null
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -c "create database test" >/dev/null
fi

# --- the sqlite3 shell (a writer outside the app, in the capture tests) ---
if ! command -v sqlite3 >/dev/null; then apt_install sqlite3; fi

# --- Chromium ----------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi

echo "services: redis, postgresql $pg_version, sqlite3 and chromium ready"
