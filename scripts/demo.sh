#!/usr/bin/env bash
# One command for a newcomer: installs everything (scripts/setup.sh), builds and installs the
# extension, starts a local PostgreSQL 15 with TimescaleDB, and runs the demonstration in
# scripts/demo.sql. The cluster keeps running afterwards so you can explore it with psql.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

if [ "${1:-}" = stop ]; then
    cluster_stop demo
    exit 0
fi

bash scripts/setup.sh
echo "== building and installing the extension (release)"
install_extension
PORT=${ES_DEMO_PORT:-54320}
cluster_start demo "$PORT" timescaledb
es_psql "$PORT" postgres -q -c "DROP DATABASE IF EXISTS event_store_demo WITH (FORCE)" -c "CREATE DATABASE event_store_demo"
es_psql "$PORT" event_store_demo -q -c "SET client_min_messages = warning" \
    -c "CREATE EXTENSION timescaledb" -c "CREATE EXTENSION event_store"
es_psql "$PORT" event_store_demo -c "SELECT hypertable_name, num_chunks FROM timescaledb_information.hypertables"
es_psql "$PORT" event_store_demo -f scripts/demo.sql

cat <<MSG

The demo database is still running. Explore it with:
    $PG_BIN/psql -h $ES_RUN_DIR -p $PORT -U postgres event_store_demo
Stop it with:
    bash scripts/demo.sh stop
MSG
