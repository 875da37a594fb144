#!/usr/bin/env bash
# Start a local PostgreSQL (installing it from Debian packages when missing) with a test database,
# and export DSM5LAB_TEST_POSTGRES for the multi-worker HPO test. Sourced by .ci/run.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
pg_version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^${pg_version} main"; then
  pg_createcluster "$pg_version" main >/dev/null
fi
pg_ctlcluster "$pg_version" main start 2>/dev/null || pg_ctlcluster "$pg_version" main status >/dev/null
for _ in $(seq 30); do
  pg_isready -q -h 127.0.0.1 && break
  sleep 1
done
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='dsm5lab'\" | grep -q 1 || psql -q -c \"CREATE USER dsm5lab PASSWORD 'dsm5lab'\""
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='dsm5lab_test'\" | grep -q 1 || createdb -O dsm5lab dsm5lab_test"
export DSM5LAB_TEST_POSTGRES="postgresql+psycopg2://dsm5lab:dsm5lab@127.0.0.1:5432/dsm5lab_test"
export DSM5LAB_REQUIRE_POSTGRES=1
