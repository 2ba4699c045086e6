#!/usr/bin/env bash
# Measures es_apply_retention against the bare removal of the same rows, in the same run:
# a DELETE from a copy of event_store with the same indexes (plain PostgreSQL), or drop_chunks
# on a copy hypertable (TimescaleDB). Old events: STREAMS streams of 10 events.
#   bash benches/retention.sh [plain|tsdb] [STREAMS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
flavour=${1:-plain}; streams=${2:-20000}
if [ "$flavour" = tsdb ]; then
    port=54318; cluster_start bench-ret-tsdb $port timescaledb,event_store ""
else
    port=54317; cluster_start bench-ret-plain $port ""
fi
sql() { es_psql $port es_ret -qtA "$@"; }
es_psql $port postgres -q -c "DROP DATABASE IF EXISTS es_ret WITH (FORCE)" -c "CREATE DATABASE es_ret"
[ "$flavour" = tsdb ] && sql -c "SET client_min_messages = warning; CREATE EXTENSION timescaledb" >/dev/null
sql -c "CREATE EXTENSION event_store" >/dev/null
[ "$flavour" = tsdb ] && sql -c "SELECT set_chunk_time_interval('event_store', interval '10 seconds')" >/dev/null
for ((s = 1; s <= streams; s += 1000)); do
    sql -c "SELECT count(*) FROM generate_series($s, least($streams, $s + 999)) s,
            LATERAL es_append_batch('acct-' || s, (SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i))) FROM generate_series(1, 10) i))" >/dev/null
done
# The copy the bare removal works on, with event_store's indexes.
sql -c "CREATE TABLE bare (LIKE event_store INCLUDING INDEXES)" >/dev/null
[ "$flavour" = tsdb ] && sql -c "SELECT create_hypertable('bare', 'created_at', chunk_time_interval => interval '10 seconds', create_default_indexes => false)" >/dev/null
sql -c "INSERT INTO bare SELECT * FROM event_store" -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
sleep 11 # the chunks holding the events end
ms() { local t0 t1; t0=$(date +%s%N); sql -c "$1" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
if [ "$flavour" = tsdb ]; then
    bare=$(ms "SELECT drop_chunks('bare', older_than => now())")
else
    bare=$(ms "DELETE FROM bare WHERE created_at < now()")
fi
ret=$(ms "SELECT es_apply_retention(interval '0', 100000000)")
left=$(sql -c "SELECT count(*) FROM event_store WHERE stream_id NOT LIKE 'event_store-%'")
problems=$(sql -c "SELECT count(*) FROM es_verify()")
echo "$flavour: $((streams * 10)) events in $streams streams: es_apply_retention ${ret} ms, bare removal ${bare} ms ($(python3 -c "print(f'{$ret / max($bare, 1):.1f}')")x); left $left, es_verify problems $problems"
