#!/usr/bin/env bash
# The whole test suite: unit tests (no PostgreSQL), then the integration tests against a
# real PostgreSQL 15, once with TimescaleDB and once without. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
# ES_TEST_PORT_BASE: the two clusters' ports (base, base + 1).
PLAIN_PORT=${ES_TEST_PORT_BASE:-54315}
TSDB_PORT=$((PLAIN_PORT + 1))

echo "== unit tests (pure Rust, no PostgreSQL): the core crate, then the extension's few"
cargo test -p event_store_core
cargo test --lib -p event_store

echo "== installing the extension, and the older versions' SQL for the upgrade tests"
install_extension
for old in 0.1.0 0.2.0 0.3.0 0.4.0 0.5.0 0.6.0; do bash scripts/old-version.sh $old; done
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
python3 scripts/update-script.py "$($PG_CONFIG --sharedir)/extension/event_store--$VERSION.sql" --check

# Without TimescaleDB and without preloading event_store: projections run by function call.
cluster_start test-plain $PLAIN_PORT ""
# Both preloaded: the projection worker runs, with quick retries for the failure tests.
cluster_start test-tsdb $TSDB_PORT timescaledb,event_store "event_store.projection_max_attempts = 3
event_store.projection_retry_delay = 20
max_worker_processes = 64
event_store.max_workers = 24
timescaledb.max_background_workers = 16"
trap 'cluster_stop test-plain; cluster_stop test-tsdb' EXIT
# Databases a failed earlier run kept for inspection.
for port in $PLAIN_PORT $TSDB_PORT; do
    es_psql $port postgres -qtA -c "SELECT format('DROP DATABASE %I WITH (FORCE);', datname) FROM pg_database WHERE datname LIKE 'es\_%'" \
        | es_psql $port postgres -q >/dev/null
done

for flavour in plain tsdb; do
    if [ $flavour = plain ]; then port=$PLAIN_PORT; tsdb=0; else port=$TSDB_PORT; tsdb=1; fi
    echo "== integration tests: PostgreSQL $PG_MAJOR, ${flavour/tsdb/with TimescaleDB and the projection worker}"
    ES_TEST_HOST=$ES_RUN_DIR ES_TEST_PORT=$port ES_TEST_TIMESCALEDB=$tsdb ES_TEST_WORKER=$tsdb \
        ES_TEST_PGDATA=$ES_RUN_DIR/test-$flavour ES_TEST_PG_BIN=$PG_BIN \
        cargo test --test '*' --no-fail-fast -- --test-threads=2
done

# The clients (clients/): the examples each in a database of its own, as an application role;
# the eventsourcing library's own recorder and application tests on our recorders.
echo "== clients: Node.js (pg) and Rust (tokio-postgres) examples, Python eventsourcing recorders"
cargo build -q -p event_store_example
for port in $PLAIN_PORT $TSDB_PORT; do
    for client in node rust; do
        db=es_client_$client
        es_psql $port postgres -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
        [ $port = $TSDB_PORT ] && es_psql $port $db -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION timescaledb"
        es_psql $port $db -q -c "CREATE EXTENSION event_store" -c "
            DO \$\$ BEGIN
                CREATE ROLE es_example_app LOGIN IN ROLE event_store_writer;
            EXCEPTION WHEN duplicate_object THEN NULL;
            END \$\$"
        echo "-- $client, port $port"
        if [ $client = node ]; then
            PGHOST=$ES_RUN_DIR PGPORT=$port PGUSER=es_example_app PGDATABASE=$db node clients/node/example.js
        else
            EVENT_STORE_URL="host=$ES_RUN_DIR port=$port user=es_example_app dbname=$db" target/debug/event_store_example
        fi
        es_psql $port postgres -q -c "DROP DATABASE $db WITH (FORCE)"
    done
    echo "-- python eventsourcing, port $port"
    ES_TEST_HOST=$ES_RUN_DIR ES_TEST_PORT=$port bash clients/python/run-tests.sh
done
