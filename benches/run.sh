#!/usr/bin/env bash
# Benchmarks event_store against baselines measured in the same run on the same cluster.
#   bash benches/run.sh [--quick] [--no-timescaledb]
# Writes benches/results/latest.md (and latest.png when matplotlib is available).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

QUICK=0; PRELOAD=timescaledb
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        --no-timescaledb) PRELOAD="" ;;
        *) echo "usage: $0 [--quick] [--no-timescaledb]" >&2; exit 2 ;;
    esac
done
if [ $QUICK = 1 ]; then DUR=5; STREAMS=10000; else DUR=30; STREAMS=100000; fi
ROUNDS=5
PORT=54330
OUT=benches/results
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT

bash scripts/setup.sh >/dev/null
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib || echo "no matplotlib: the chart is skipped"
echo "== building and installing the extension (release)"
install_extension
cluster_stop bench
cluster_start bench $PORT "${PRELOAD:+$PRELOAD,}event_store" "max_worker_processes = 32"
trap 'rm -rf "$RAW"; cluster_stop bench' EXIT
es_psql $PORT postgres -q -c "DROP DATABASE IF EXISTS es_bench WITH (FORCE)" -c "DROP ROLE IF EXISTS es_bench_projector" \
    -c "CREATE DATABASE es_bench"
[ -n "$PRELOAD" ] && es_psql $PORT es_bench -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION timescaledb"
es_psql $PORT es_bench -q -c "CREATE EXTENSION event_store" -f benches/baselines.sql

sql() { es_psql $PORT es_bench -qtA "$@"; }

# bench NAME SCRIPT CLIENTS [extra pgbench args]: appends "name clients tps" and a latency log;
# runs for $BENCH_DUR seconds when set, else $DUR. A name measured in several rounds gets the
# mean of their rates (report.py).
bench() {
    local name=$1 script=$2 clients=$3; shift 3
    local prefix=${name//\//_} dur=${BENCH_DUR:-$DUR}
    echo "-- $name, $clients client(s), ${dur}s"
    local out
    out=$(cd "$RAW" && "$PG_BIN/pgbench" -n -M prepared -h "$ES_RUN_DIR" -p $PORT -U postgres \
        -c "$clients" -j "$clients" -T "$dur" -f "$OLDPWD/benches/scenarios/$script" \
        --log --log-prefix="$prefix" "$@" es_bench 2>&1) || { echo "$out"; exit 1; }
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
    echo "$name $clients $tps" >>"$RAW/tps.txt"
    cat "$RAW/$prefix".* | awk -v n="$name" '{print n, $3}' >>"$RAW/latency.txt"
    rm -f "$RAW/$prefix".*
}

echo "== 1. single-event append"
for c in 1 8; do
    bench "floor/spread/c$c" floor.pgbench $c
    bench "handed/spread/c$c" handed.pgbench $c
    bench "catlock/spread/c$c" catlock.pgbench $c
    bench "es_append/spread/c$c" es_append.pgbench $c
    bench "floor/one-stream/c$c" floor_one.pgbench $c
    bench "catlock/one-stream/c$c" catlock_one.pgbench $c
    bench "es_append/one-stream/c$c" es_append_one.pgbench $c
done

echo "== 2. batch append, 1,000 events per call"
bench "floor/batch1000/c1" floor_batch.pgbench 1
bench "es_append_batch/batch1000/c1" es_append_batch.pgbench 1

echo "== 3. es_stream of a 100-event stream among $STREAMS streams"
start=$(date +%s)
# Two loaders (one per core), committing every 1,000 streams.
load_streams() {
    for ((s = $1; s <= $2; s += 1000)); do
        sql -c "SELECT count(*) FROM generate_series($s, least($2, $s + 999)) s,
                LATERAL es_append_batch('load-' || s, (SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i))) FROM generate_series(1, 100) i))" >/dev/null
    done
}
load_streams 1 $((STREAMS / 2)) & load_streams $((STREAMS / 2 + 1)) $STREAMS & wait
echo "loaded $((STREAMS * 100)) events in $(( $(date +%s) - start ))s"
# Measure steady state, not the load's aftermath (autovacuum, a checkpoint of its writes).
settle() { sql -c "VACUUM ANALYZE" -c "CHECKPOINT"; }
settle
bench "es_stream/100-of-$((STREAMS * 100))/c1" es_stream.pgbench 1 -D streams=$STREAMS
bench "es_stream/100-of-$((STREAMS * 100))/c8" es_stream.pgbench 8 -D streams=$STREAMS

echo "== 4. es_state_at with reducers: with snapshots, without, and as a PL/pgSQL loop"
for n in 100 10000 100000; do
    # Appended 50 at a time with automatic snapshots every 100 events (the default).
    sql -c "SET event_store.snapshot_every = 100" -c "SELECT bench_load_user_stream('fold-$n', $n, 50)" >/dev/null
    bench "state_at/snapshots/$n-events" state_snapshots.pgbench 1 -D stream=fold-$n -D n=$n
    sql -c "SELECT es_drop_snapshots('fold-$n')" >/dev/null
    # The fold and its baselines alternate in short rounds, so that a burst of noise on this
    # shared machine falls on all of them alike rather than on whichever ran at the time.
    for ((round = 0; round < ROUNDS; round++)); do
        BENCH_DUR=$((DUR / ROUNDS)) bench "state_at/rust/$n-events" state_rust.pgbench 1 -D stream=fold-$n
        # What any fold pays before folding: reading the stream in order.
        [ $n = 10000 ] && BENCH_DUR=$((DUR / ROUNDS)) bench "state_at/read-only/$n-events" state_read.pgbench 1 -D stream=fold-$n
        BENCH_DUR=$((DUR / ROUNDS)) bench "state_at/plpgsql/$n-events" state_plpgsql.pgbench 1 -D stream=fold-$n
    done
done

settle
echo "== 5. projection lag, commit to projected row, at a steady 500 events/s"
# The handler records how long after the event's created_at (taken just before its commit)
# its row was projected; the worker is woken by the commit.
sql -c "CREATE ROLE es_bench_projector; GRANT event_store_reader TO es_bench_projector;
        GRANT CREATE ON SCHEMA public TO es_bench_projector"
sql -c "SET ROLE es_bench_projector;
        CREATE TABLE bench_lag (position bigint, lag_us bigint);
        CREATE FUNCTION bench_lag_handler(e event_store) RETURNS void LANGUAGE sql AS
            'INSERT INTO bench_lag VALUES (e.global_position, (extract(epoch FROM clock_timestamp() - e.created_at) * 1e6)::bigint)';
        SELECT es_create_projection('bench_lag', 'bench_lag_handler(event_store)', event_types => ARRAY['LagProbe']);
        RESET ROLE;
        UPDATE es_projection_state SET position = _es_feed_horizon() WHERE name = 'bench_lag'" >/dev/null
for _ in $(seq 60); do
    [ "$(sql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_store projections' AND datname = 'es_bench'")" = 1 ] && break
    sleep 0.5
done
bench "append_at_500/s" lag_probe.pgbench 2 -R 500
sleep 2
sql -F ' ' -c "SELECT 'projection_lag/500-events-per-s', lag_us FROM bench_lag" >>"$RAW/latency.txt"
echo "projection_lag/500-events-per-s 0 $(sql -c "SELECT count(*) / $DUR.0 FROM bench_lag")" >>"$RAW/tps.txt"
sql -c "SELECT 'projected ' || count(*) || ' events, lag p95 ' || round((percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_us) / 1000.0)::numeric, 2) || ' ms' FROM bench_lag"

echo "== 6. storage"
sql -F ' ' -c "
    SELECT t, pg_size_pretty(bytes), round(bytes::numeric / rows, 1)
      FROM (SELECT 'event_store' AS t, (SELECT count(*) FROM event_store) AS rows, bench_bytes('event_store') AS bytes
            UNION ALL
            SELECT 'bench_floor', (SELECT count(*) FROM bench_floor), bench_bytes('bench_floor')) s" >"$RAW/storage.txt"
cat "$RAW/storage.txt"

python3 benches/report.py "$RAW" "$OUT" "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, PostgreSQL 15, ${PRELOAD:-no} TimescaleDB, fsync on, ${DUR}s per scenario"
echo "== wrote $OUT/latest.md"
