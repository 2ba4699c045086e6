#!/usr/bin/env bash
# Runs the eventsourcing library's generic recorder/application tests against
# event_store. Needs a running cluster with the extension installed:
#   ES_TEST_HOST  socket directory (or host), default /var/tmp/event_store
#   ES_TEST_PORT  port, default 5432
#   ES_TEST_USER  default postgres; ES_TEST_PASSWORD default empty
# Creates a fresh database es_py_<pid> with the extension (each test clones it as
# a template), runs pytest, drops the databases, exits non-zero on failure.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"

export ES_TEST_HOST=${ES_TEST_HOST:-/var/tmp/event_store}
export ES_TEST_PORT=${ES_TEST_PORT:-5432}
export ES_TEST_USER=${ES_TEST_USER:-postgres}
export ES_TEST_PASSWORD=${ES_TEST_PASSWORD:-}
PSQL=${PSQL:-psql}
command -v "$PSQL" >/dev/null 2>&1 || PSQL=/usr/lib/postgresql/15/bin/psql

if ! python3 -c "import eventsourcing, psycopg, psycopg_pool, Crypto, msgspec, pytest" 2>/dev/null; then
    python3 -m pip install -q -r requirements.txt
fi

export ES_TEST_TEMPLATE_DB="es_py_$$"
psql_admin() {
    PGPASSWORD="$ES_TEST_PASSWORD" "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$ES_TEST_HOST" \
        -p "$ES_TEST_PORT" -U "$ES_TEST_USER" "$@"
}
cleanup() {
    # The template and any per-test database a crashed run left behind.
    local dbs
    dbs=$(psql_admin -d postgres -At -c \
        "SELECT datname FROM pg_database WHERE datname = '$ES_TEST_TEMPLATE_DB' OR datname LIKE '${ES_TEST_TEMPLATE_DB}\\_%'" || true)
    for db in $dbs; do
        psql_admin -d postgres -c "ALTER DATABASE \"$db\" WITH IS_TEMPLATE false" \
            -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
}
trap cleanup EXIT

psql_admin -d postgres -c "CREATE DATABASE \"$ES_TEST_TEMPLATE_DB\""
psql_admin -d "$ES_TEST_TEMPLATE_DB" -c "CREATE EXTENSION event_store"
# A template takes no connections, so that copies can be made of it: not even the projection
# worker's, which a cluster preloading event_store starts in every database that has it.
psql_admin -d postgres -c "ALTER DATABASE \"$ES_TEST_TEMPLATE_DB\" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false" \
    -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$ES_TEST_TEMPLATE_DB'" >/dev/null

status=0
python3 -m pytest -p no:cacheprovider -q -rsfE tests "$@" || status=$?
exit $status
