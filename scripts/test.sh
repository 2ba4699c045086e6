#!/usr/bin/env bash
# The whole test suite: unit tests (no PostgreSQL), then the integration tests against a
# real PostgreSQL 15, once with TimescaleDB and once without. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

echo "== unit tests (pure Rust, no PostgreSQL)"
cargo test --lib

echo "== installing the extension"
install_extension

cluster_start test-plain 54315 ""
cluster_start test-tsdb 54316 timescaledb
trap 'cluster_stop test-plain; cluster_stop test-tsdb' EXIT

for flavour in plain tsdb; do
    if [ $flavour = plain ]; then port=54315; tsdb=0; else port=54316; tsdb=1; fi
    echo "== integration tests: PostgreSQL $PG_MAJOR, ${flavour/tsdb/with TimescaleDB}"
    ES_TEST_HOST=$ES_RUN_DIR ES_TEST_PORT=$port ES_TEST_TIMESCALEDB=$tsdb \
        cargo test --test '*' --no-fail-fast -- --test-threads=2
done
