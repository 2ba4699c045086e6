#!/usr/bin/env bash
# Benchmarks event_store against baselines measured in the same run on the same cluster:
# a plain INSERT of the same row (the floor), the handed design, and Message DB.
#   bash benches/run.sh [--quick] [--no-timescaledb]
# Writes benches/results/latest.md (and latest.png when matplotlib is available).
# Environment knobs (for trying the script out; a committed result uses none of them):
#   ES_BENCH_NO_INSTALL=1  skip scripts/setup.sh and building/installing the extension
#   ES_BENCH_OUT=DIR       write the report there instead of benches/results, with the raw
#                          figures in DIR/raw (python3 benches/report.py DIR/raw DIR "...")
#   ES_BENCH_DUR=S         seconds per scenario (split into rounds); ES_BENCH_ROUNDS=N
#   ES_BENCH_STREAMS=N     streams of 100 events loaded for the es_stream scenario
#   ES_BENCH_SECTIONS="1 3" run only these numbered sections (storage and the report always)
#                          (section 12, appends on the loaded store, follows section 4)
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
if [ $QUICK = 1 ]; then DUR=6; ROUNDS=3; STREAMS=10000; else DUR=30; ROUNDS=5; STREAMS=100000; fi
DUR=${ES_BENCH_DUR:-$DUR}
ROUNDS=${ES_BENCH_ROUNDS:-$ROUNDS}
STREAMS=${ES_BENCH_STREAMS:-$STREAMS}
ROUND_DUR=$(( DUR / ROUNDS > 0 ? DUR / ROUNDS : 1 ))
APPEND_STREAMS=10000   # user streams of the single-event appends
PORT=54330
OUT=${ES_BENCH_OUT:-benches/results}
MDB_DIR=${ES_MESSAGE_DB_DIR:-/var/tmp/event_store-message-db}
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT

if [ "${ES_BENCH_NO_INSTALL:-}" != 1 ]; then
    bash scripts/setup.sh >/dev/null
fi
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib || echo "no matplotlib: the chart is skipped"
python3 -c "import psycopg2" 2>/dev/null || python3 -m pip install --quiet psycopg2-binary || echo "no psycopg2: the listener probe is skipped"

# Message DB, the real thing: its npm package holds the SQL and the installer. Cached outside
# the repository; an unreachable registry only skips the Message DB scenarios.
MDB=0
if [ ! -f "$MDB_DIR/package/database/install.sh" ] && command -v npm >/dev/null; then
    mkdir -p "$MDB_DIR"
    (cd "$MDB_DIR" && tgz=$(npm pack --silent @eventide/message-db@1.3) && tar -xzf "$tgz") \
        || echo "could not fetch Message DB with npm"
fi
[ -f "$MDB_DIR/package/database/install.sh" ] && MDB=1 || echo "no Message DB: its scenarios are skipped"

if [ "${ES_BENCH_NO_INSTALL:-}" != 1 ]; then
    echo "== building and installing the extension (release)"
    install_extension
fi
cluster_stop bench
cluster_start bench $PORT "${PRELOAD:+$PRELOAD,}event_store" "max_worker_processes = 32"
trap 'rm -rf "$RAW"; cluster_stop bench; cluster_stop bench-plain' EXIT
es_psql $PORT postgres -q -c "DROP DATABASE IF EXISTS es_bench WITH (FORCE)" -c "DROP DATABASE IF EXISTS message_store WITH (FORCE)" \
    -c "DROP ROLE IF EXISTS es_bench_projector" -c "CREATE DATABASE es_bench"
[ -n "$PRELOAD" ] && es_psql $PORT es_bench -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION timescaledb"
es_psql $PORT es_bench -q -c "CREATE EXTENSION event_store" -f benches/baselines.sql
if [ $MDB = 1 ]; then
    # Its own installer, into its own database (message_store) of this cluster; as its
    # functions call each other unqualified, that database searches its schema first.
    PATH="$PG_BIN:$PATH" PGHOST="$ES_RUN_DIR" PGPORT=$PORT PGUSER=postgres DATABASE_NAME=message_store \
        bash "$MDB_DIR/package/database/install.sh" >"$RAW/message_db_install.log" 2>&1 \
        || { cat "$RAW/message_db_install.log"; exit 1; }
    es_psql $PORT postgres -q -c "ALTER DATABASE message_store SET search_path = message_store, public"
    echo "Message DB $(sed -n 's/.*"version": *"\(.*\)".*/\1/p' "$MDB_DIR/package/package.json") installed in database message_store"
fi

sql() { es_psql $PORT es_bench -qtA "$@"; }

# bench NAME SCRIPT CLIENTS [extra pgbench args]: appends "name clients tps" and a latency log;
# runs for $BENCH_DUR seconds when set, else $DUR, against database $BENCH_DB (es_bench). A name
# measured in several rounds gets the mean of their rates (report.py).
bench() {
    local name=$1 script=$2 clients=$3; shift 3
    local prefix=${name//\//_} dur=${BENCH_DUR:-$DUR} db=${BENCH_DB:-es_bench}
    echo "-- $name, $clients client(s), ${dur}s"
    local out
    out=$(cd "$RAW" && "$PG_BIN/pgbench" -n -M prepared -h "$ES_RUN_DIR" -p $PORT -U postgres \
        -c "$clients" -j "$clients" -T "$dur" -f "$OLDPWD/benches/scenarios/$script" \
        --log --log-prefix="$prefix" "$@" "$db" 2>&1) || {
        # Recorded, reported and the run's exit status, but the other scenarios still run.
        echo "$out" | grep -E "error|ERROR|HINT" | head -5
        echo "$name $(grep -m1 -oE "ERROR: .*" <<<"$out" || echo "pgbench failed")" >>"$RAW/failed.txt"
        rm -f "$RAW/$prefix".*
        return 0
    }
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
    echo "$name $clients $tps" >>"$RAW/tps.txt"
    cat "$RAW/$prefix".* | awk -v n="$name" '{print n, $3}' >>"$RAW/latency.txt"
    rm -f "$RAW/$prefix".*
}

# Measure steady state, not a load's aftermath (autovacuum, a checkpoint of its writes).
settle() { sql -c "VACUUM ANALYZE" -c "CHECKPOINT"; }
want() { [ -z "${ES_BENCH_SECTIONS:-}" ] || [[ " $ES_BENCH_SECTIONS " == *" $1 "* ]]; }

# rounds NAME:SCRIPT[:DB] ... -- CLIENTS [pgbench args]: the systems take turns in $ROUNDS short
# rounds, each round starting with the next system, so that a burst of noise on this shared
# machine falls on all of them alike rather than on whichever ran at the time.
rounds() {
    local systems=()
    while [ "$1" != -- ]; do systems+=("$1"); shift; done
    shift
    local clients=$1; shift
    local n=${#systems[@]} round i name script db
    for ((round = 0; round < ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do
            IFS=: read -r name script db <<<"${systems[(round + i) % n]}"
            BENCH_DUR=$ROUND_DUR BENCH_DB=${db:-es_bench} bench "$name" "$script" "$clients" "$@"
        done
    done
}

if want 1; then
echo "== 1. single-event append, $APPEND_STREAMS user streams in one category, then over 8"
for c in 1 8; do
    for cats in 1 8; do
        layout=$([ $cats = 1 ] && echo one-category || echo 8-categories)
        systems=("floor/$layout/c$c:floor.pgbench" "handed/$layout/c$c:handed.pgbench" "es_append/$layout/c$c:es_append.pgbench")
        [ $MDB = 1 ] && systems+=("message_db/$layout/c$c:message_db.pgbench:message_store")
        rounds "${systems[@]}" -- $c -D streams=$APPEND_STREAMS -D cats=$cats
    done
done
fi

if want 2; then
echo "== 2. batch append, 1,000 events per call to one stream"
rounds "floor/batch1000/c1:floor_batch.pgbench" "es_append_batch/batch1000/c1:es_append_batch.pgbench" -- 1
fi

if want 3; then
echo "== 3. multi-stream append, 100 streams x 10 events per call"
if [ "$(sql -c "SELECT to_regprocedure('es_append_multi(jsonb)') IS NOT NULL")" = t ]; then
    rounds "floor/multi100x10/c1:floor_multi.pgbench" "es_append_multi/multi100x10/c1:es_append_multi.pgbench" -- 1
else
    echo "skipped: this event_store has no es_append_multi(jsonb)"
fi
fi

if want 4; then
echo "== 4. es_stream of a 100-event stream among $STREAMS streams"
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
settle
bench "es_stream/100-of-$((STREAMS * 100))/c1" es_stream.pgbench 1 -D streams=$STREAMS
bench "es_stream/100-of-$((STREAMS * 100))/c8" es_stream.pgbench 8 -D streams=$STREAMS
# A Prometheus scrape of the same store (its streams, and the projections made so far).
if [ "$(sql -c "SELECT to_regprocedure('es_metrics_prometheus()') IS NOT NULL")" = t ]; then
    BENCH_DUR=$ROUND_DUR bench "metrics/scrape-$((STREAMS * 100))-events" metrics.pgbench 1
fi
fi

if want 12; then
echo "== 12. single-event append on the loaded store (after section 4), 8 categories"
for c in 1 8; do
    systems=("floor/loaded-8-categories/c$c:floor.pgbench" "es_append/loaded-8-categories/c$c:es_append.pgbench")
    [ $MDB = 1 ] && systems+=("message_db/loaded-8-categories/c$c:message_db.pgbench:message_store")
    rounds "${systems[@]}" -- $c -D streams=$APPEND_STREAMS -D cats=8
done
fi

if want 5; then
echo "== 5. es_state_at with reducers: with snapshots, without, and as a PL/pgSQL loop"
for n in 100 10000 100000; do
    # Appended 50 at a time with automatic snapshots every 100 events (the default).
    sql -c "SET event_store.snapshot_every = 100" -c "SELECT bench_load_user_stream('fold-$n', $n, 50)" >/dev/null
    bench "state_at/snapshots/$n-events" state_snapshots.pgbench 1 -D stream=fold-$n -D n=$n
    sql -c "SELECT es_drop_snapshots('fold-$n')" >/dev/null
    # What any fold pays before folding: reading the stream in order (at 10,000 events).
    rounds "state_at/rust/$n-events:state_rust.pgbench" \
        $([ $n = 10000 ] && echo "state_at/read-only/$n-events:state_read.pgbench") \
        "state_at/plpgsql/$n-events:state_plpgsql.pgbench" -- 1 -D stream=fold-$n
done
fi

if want 6; then
settle
echo "== 6. projection lag, commit to projected row, at a steady 500 events/s"
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
        UPDATE _event_store.es_projection_state SET position = _event_store._es_feed_horizon() WHERE name = 'bench_lag'" >/dev/null
for _ in $(seq 60); do
    [ "$(sql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_store projections' AND datname = 'es_bench'")" = 1 ] && break
    sleep 0.5
done
bench "append_at_500/s" lag_probe.pgbench 2 -R 500
sleep 2
sql -F ' ' -c "SELECT 'projection_lag/500-events-per-s', lag_us FROM bench_lag" >>"$RAW/latency.txt"
echo "projection_lag/500-events-per-s 0 $(sql -c "SELECT count(*) / $DUR.0 FROM bench_lag")" >>"$RAW/tps.txt"
sql -c "SELECT 'projected ' || count(*) || ' events, lag p95 ' || round((percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_us) / 1000.0)::numeric, 2) || ' ms' FROM bench_lag"
fi

if want 7; then
echo "== 7. listener wake-up, commit of an append to a LISTEN event_store client, 200 appends/s"
if python3 -c "import psycopg2" 2>/dev/null; then
    # Preloaded, a worker of the database sends the notifications: the first commit brings one
    # if none is connected. Start it beforehand, then measure with one connected.
    sql -c "SELECT _event_store._es_wake_projections(true)" >/dev/null
    for _ in $(seq 60); do
        [ "$(sql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_store projections' AND datname = 'es_bench'")" = 1 ] && break
        sleep 0.5
    done
    python3 benches/listen_probe.py "$ES_RUN_DIR" $PORT es_bench listen/idle 200 $DUR "$RAW"
    # The same while 8 clients append as fast as they can (their notifications queue too).
    (cd "$RAW" && "$PG_BIN/pgbench" -n -M prepared -h "$ES_RUN_DIR" -p $PORT -U postgres -c 8 -j 8 -T $((DUR + 2)) \
        -f "$OLDPWD/benches/scenarios/es_append.pgbench" -D streams=$APPEND_STREAMS -D cats=8 es_bench >/dev/null 2>&1) &
    load=$!
    sleep 1
    python3 benches/listen_probe.py "$ES_RUN_DIR" $PORT es_bench listen/under-8-appenders 200 $DUR "$RAW"
    wait $load
    # With no worker connected at any append's commit: each is stopped before the next append,
    # so every announcement waits for a worker the pool starts for it.
    python3 benches/listen_probe.py "$ES_RUN_DIR" $PORT es_bench listen/no-worker-connected 10 $DUR "$RAW" cold
    # Without preloading each append notifies at its own commit: the same probe on a
    # cluster of its own that does not preload event_store.
    cluster_stop bench-plain
    cluster_start bench-plain $((PORT + 1)) ""
    es_psql $((PORT + 1)) postgres -q -c "DROP DATABASE IF EXISTS es_bench WITH (FORCE)" -c "CREATE DATABASE es_bench"
    es_psql $((PORT + 1)) es_bench -q -c "CREATE EXTENSION event_store"
    python3 benches/listen_probe.py "$ES_RUN_DIR" $((PORT + 1)) es_bench listen/idle-not-preloaded 200 $DUR "$RAW"
    cluster_stop bench-plain
else
    echo "skipped: no psycopg2"
fi
fi

if want 8; then
echo "== 8. catalog: a 10-field event appended with a JSON Schema to check, and without"
if [ "$(sql -c "SELECT to_regprocedure('es_define_event_type(text, jsonb, integer, text, text[], text)') IS NOT NULL")" = t ]; then
    sql -c "SELECT es_define_event_type('Typed', '{
        \"type\": \"object\", \"additionalProperties\": false,
        \"required\": [\"userId\", \"email\", \"name\", \"age\", \"plan\", \"country\", \"active\", \"score\", \"tags\", \"createdAt\"],
        \"properties\": {
            \"userId\": {\"type\": \"string\", \"pattern\": \"^u-[0-9]+$\"},
            \"email\": {\"type\": \"string\", \"format\": \"email\"},
            \"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 200},
            \"age\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 150},
            \"plan\": {\"enum\": [\"free\", \"pro\", \"enterprise\"]},
            \"country\": {\"type\": \"string\", \"pattern\": \"^[A-Z]{2}$\"},
            \"active\": {\"type\": \"boolean\"},
            \"score\": {\"type\": \"number\"},
            \"tags\": {\"type\": \"array\", \"items\": {\"type\": \"string\"}, \"maxItems\": 20},
            \"createdAt\": {\"type\": \"string\", \"format\": \"date-time\"}}}')" >/dev/null
    rounds "catalog/schema/c1:es_append_typed.pgbench" "catalog/no-schema/c1:es_append_untyped.pgbench" -- 1 -D streams=$APPEND_STREAMS
    # Two personal-data fields sealed with the subject's key (one subject per stream), against
    # the same append of a type that declares none.
    sql -c "SELECT es_define_event_type('Personal', personal_data => '{/email,/name}', subject => '/userId')" >/dev/null
    rounds "personal/sealed/c1:es_append_personal.pgbench" "personal/plain/c1:es_append_personal_off.pgbench" -- 1 -D streams=$APPEND_STREAMS
else
    echo "skipped: this event_store has no catalog"
fi
fi

if want 10; then
echo "== 10. 8-client appends in a database no worker can serve, and in one a worker serves"
# Preloaded, a commit never notifies (which would take the cluster-wide notify-queue lock): it
# hands its announcement to the pool. The same appends, alternately while the database has its
# worker, and while it cannot have one: the pool is cut to one slot, held by another database's
# handler that never returns, and this database's worker is stopped.
es_psql $PORT postgres -q -c "DROP DATABASE IF EXISTS es_bench_hog WITH (FORCE)" -c "CREATE DATABASE es_bench_hog" \
    -c "ALTER DATABASE es_bench_hog SET event_store.projection_timeout = 0"
es_psql $PORT es_bench_hog -q -c "CREATE EXTENSION event_store" \
    -c "CREATE ROLE es_bench_hog_owner IN ROLE event_store_reader" \
    -c "CREATE FUNCTION public.hog(e event_store) RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(36000)'" \
    -c "GRANT EXECUTE ON FUNCTION public.hog(event_store) TO es_bench_hog_owner" \
    -c "SET ROLE es_bench_hog_owner" -c "SELECT es_create_projection('hog', 'public.hog(event_store)')" \
    -c "RESET ROLE" -c "SELECT es_append('hog-1', 'Hog', '{}')" >/dev/null
workers_in() { es_psql $PORT "$1" -qtA -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$1' AND backend_type = 'event_store projections'"; }
for _ in $(seq 100); do [ "$(workers_in es_bench_hog)" = 1 ] && break; sleep 0.1; done
for ((round = 0; round < ROUNDS; round++)); do
    for state in served unserved; do
        if [ $state = served ]; then
            es_psql $PORT postgres -qtA -c "ALTER SYSTEM RESET event_store.max_workers" -c "SELECT pg_reload_conf()" >/dev/null
            sql -c "SELECT _event_store._es_wake_projections(true)" >/dev/null
            for _ in $(seq 100); do [ "$(workers_in es_bench)" -ge 1 ] && break; sleep 0.1; done
        else
            es_psql $PORT postgres -qtA -c "ALTER SYSTEM SET event_store.max_workers = 1" -c "SELECT pg_reload_conf()" >/dev/null
            sleep 0.2
            sql -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'es_bench' AND backend_type = 'event_store projections'" >/dev/null
            for _ in $(seq 100); do [ "$(workers_in es_bench)" = 0 ] && break; sleep 0.1; done
        fi
        echo "   es_bench's worker: $(sql -c "SELECT state FROM _event_store._es_worker_state()")"
        BENCH_DUR=$ROUND_DUR bench "workers/$state/c8" es_append.pgbench 8 -D streams=$APPEND_STREAMS -D cats=8
    done
done
es_psql $PORT postgres -qtA -c "ALTER SYSTEM RESET event_store.max_workers" -c "SELECT pg_reload_conf()" \
    -c "DROP DATABASE es_bench_hog WITH (FORCE)" -c "DROP ROLE es_bench_hog_owner" >/dev/null
fi

if want 11; then
echo "== 11. bulk: 100,000 events per round, es_append_batch and es_append_multi against COPY"
# COPY ... FROM STDIN of the same rows into the floor table is the bar; each system loads
# 100,000 events in one transaction, the three taking turns, and a rate is events per second.
BULK=$ES_RUN_DIR/es_bench_bulk.copy
sql -c "COPY (SELECT nextval('bench_floor_seq'), gen_random_uuid(), 'copy-' || (i / 100), i % 100 + 1, 'ItemAdded',
                     jsonb_build_object('sku', 'sku-' || i, 'qty', i % 5 + 1, 'price', 9.99), '{}', 1, clock_timestamp()
                FROM generate_series(0, 99999) AS i) TO '$BULK'" >/dev/null
# timed NAME SQL...: runs psql with the statements, appends NAME's events per second.
timed() {
    local name=$1; shift
    local t0 t1
    t0=$(date +%s%N)
    sql "$@" >/dev/null || { echo "$name failed" | tee -a "$RAW/failed.txt"; return 0; }
    t1=$(date +%s%N)
    echo "$name 1 $(python3 -c "print(f'{100000 / (($t1 - $t0) / 1e9):.1f}')")" | tee -a "$RAW/tps.txt"
}
bulk_systems=(copy batch multi)
for ((round = 0; round < ROUNDS; round++)); do
    for ((i = 0; i < 3; i++)); do
        case ${bulk_systems[(round + i) % 3]} in
            copy) timed bulk/copy -c "\\copy bench_floor (global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, event_version, created_at) FROM '$BULK'" ;;
            batch) timed bulk/es_append_batch -c "SELECT count(*) FROM generate_series(1, 100) AS g,
                       LATERAL es_append_batch('bulk-$round-' || g, (SELECT events FROM bench_payload))" ;;
            multi) timed bulk/es_append_multi -c "SELECT count(*) FROM bench_multi_payload p, LATERAL es_append_multi(p.appends)" ;;
        esac
    done
done
rm -f "$BULK"
fi

if want 13; then
echo "== 13. conditional appends (DCB) against the eventsourcing library's PostgreSQL DCB recorder"
# Both through the library's recorder API (benches/dcb.py), each in an empty database of its own.
python3 -c "import eventsourcing, psycopg, psycopg_pool" 2>/dev/null \
    || python3 -m pip install --quiet -r clients/python/requirements.txt
es_psql $PORT postgres -q -c "DROP DATABASE IF EXISTS es_bench_dcb WITH (FORCE)" -c "DROP DATABASE IF EXISTS tt_bench_dcb WITH (FORCE)" \
    -c "CREATE DATABASE es_bench_dcb" -c "CREATE DATABASE tt_bench_dcb"
[ -n "$PRELOAD" ] && es_psql $PORT es_bench_dcb -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION timescaledb"
es_psql $PORT es_bench_dcb -q -c "CREATE EXTENSION event_store" -f benches/dcb.sql
PYTHONPATH=clients/python python3 benches/dcb.py "$ES_RUN_DIR" $PORT es_bench_dcb tt_bench_dcb "$ROUND_DUR" "$ROUNDS" 1 8 \
    | tee -a "$RAW/tps.txt" || echo "dcb failed" | tee -a "$RAW/failed.txt"
# The same decisions from pgbench (a C client: what the servers do, without Python's share of
# these two cores), on the stores the Python run left: each side's statements as its recorder
# sends them, the library's read by its tag table.
for c in 1 8; do
    rounds "dcb-sql/es_dcb_append/c$c:dcb_es.pgbench:es_bench_dcb" "dcb-sql/library_dcb_recorder/c$c:dcb_library.pgbench:tt_bench_dcb" -- $c
done
# What one flush allows: the library's recorder holds its table lock across its commit, so its
# rate at 8 clients can be no higher; how far below it is says what else bounds it (docs/dcb.md).
rounds "dcb-sql/commit/c1:commit.pgbench:es_bench_dcb" -- 1
es_psql $PORT postgres -q -c "DROP DATABASE es_bench_dcb WITH (FORCE)" -c "DROP DATABASE tt_bench_dcb WITH (FORCE)"
fi

echo "== 9. storage"
sql -F ' ' -c "
    SELECT t, pg_size_pretty(bytes), coalesce(round(bytes::numeric / nullif(rows, 0), 1)::text, 'n/a')
      FROM (SELECT 'event_store' AS t, (SELECT count(*) FROM event_store) AS rows, bench_bytes('event_store') AS bytes
            UNION ALL
            SELECT 'bench_floor', (SELECT count(*) FROM bench_floor), bench_bytes('bench_floor')) s" >"$RAW/storage.txt"
[ $MDB = 1 ] && es_psql $PORT message_store -qtA -F ' ' -c "
    SELECT 'message_db', pg_size_pretty(b), coalesce(round(b::numeric / nullif(n, 0), 1)::text, 'n/a')
      FROM (SELECT count(*) AS n, pg_total_relation_size('message_store.messages') AS b FROM message_store.messages) s" >>"$RAW/storage.txt"
cat "$RAW/storage.txt"

python3 benches/report.py "$RAW" "$OUT" "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, PostgreSQL 15, ${PRELOAD:-no} TimescaleDB, fsync on, ${DUR}s per scenario in $ROUNDS rounds"
echo "== wrote $OUT/latest.md"
[ "$OUT" != benches/results ] && rm -rf "$OUT/raw" && cp -r "$RAW" "$OUT/raw"
if [ -s "$RAW/failed.txt" ]; then
    echo "== FAILED scenarios:"; cat "$RAW/failed.txt"; exit 1
fi
