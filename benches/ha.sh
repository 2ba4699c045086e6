#!/usr/bin/env bash
# Appends on a highly available cluster (scripts/ha-cluster.sh: etcd, three Patroni nodes,
# quorum synchronous replication) at each synchronous_commit level a writer may use, in
# alternating rounds, then the time a failover takes: from SIGKILL of the leader (Patroni
# and postmaster) to the first append acknowledged by the new leader.
#   bash benches/ha.sh            writes benches/results/ha.md
# Knobs: ES_BENCH_DUR (seconds per level, default 30), ES_BENCH_ROUNDS (default 5),
# ES_BENCH_NO_INSTALL=1, ES_BENCH_OUT=DIR, ES_HA_TTL (Patroni's ttl, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
DUR=${ES_BENCH_DUR:-30}
ROUNDS=${ES_BENCH_ROUNDS:-5}
ROUND_DUR=$(( DUR / ROUNDS > 0 ? DUR / ROUNDS : 1 ))
OUT=${ES_BENCH_OUT:-benches/results}
PORT=24700
DIR=$ES_RUN_DIR/bench-ha
LEVELS=(local on remote_apply)

if [ "${ES_BENCH_NO_INSTALL:-}" != 1 ]; then
    bash scripts/setup.sh >/dev/null
    install_extension
fi
bash scripts/ha-cluster.sh stop "$DIR" 2>/dev/null || true
bash scripts/ha-cluster.sh start "$DIR" $PORT "timescaledb,event_store"
trap 'bash scripts/ha-cluster.sh stop "$DIR"' EXIT
node_port() { echo $((PORT + 10 + $1)); }
q() { "$PG_BIN/psql" -X -qtA -h 127.0.0.1 -p "$(node_port "$1")" -U postgres -d postgres -c "$2" 2>/dev/null; }
leader() {
    local n
    for n in 1 2 3; do
        [ "${1:-0}" = $n ] && continue
        [ "$(q $n "SELECT NOT pg_is_in_recovery()")" = t ] && { echo $n; return 0; }
    done
    return 1
}
L=$(leader)
q "$L" "SET client_min_messages = warning; CREATE EXTENSION timescaledb" >/dev/null
q "$L" "CREATE EXTENSION event_store" >/dev/null

declare -A TPS
for ((round = 0; round < ROUNDS; round++)); do
    for ((i = 0; i < ${#LEVELS[@]}; i++)); do
        level=${LEVELS[(round + i) % ${#LEVELS[@]}]}
        for c in 1 8; do
            tps=$(PGOPTIONS="-c synchronous_commit=$level" "$PG_BIN/pgbench" -n -M prepared \
                -h 127.0.0.1 -p "$(node_port "$L")" -U postgres -c $c -j $c -T $ROUND_DUR \
                -f benches/scenarios/es_append.pgbench -D streams=10000 -D cats=1 postgres 2>&1 \
                | sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
            echo "-- synchronous_commit = $level, $c client(s): $tps/s"
            TPS[$level/$c]="${TPS[$level/$c]:-} $tps"
        done
    done
done
mean() { tr ' ' '\n' | awk 'NF { s += $1; n++ } END { printf "%.0f", s / n }'; }

# Failover: appends from one client in a loop; the leader is killed; the time until the
# first append acknowledged by another node.
kill -9 "$(cat "$DIR/node$L/patroni.pid")" "$(head -n1 "$DIR/node$L/data/postmaster.pid")"
start=$(date +%s.%N)
until N=$(leader "$L") && q "$N" "SELECT 1 FROM es_append('failover-1', 'Happened', '{}')" >/dev/null; do
    sleep 0.1
done
FAILOVER=$(echo "$(date +%s.%N) - $start" | bc)
echo "-- failover: node$N took appends ${FAILOVER}s after node$L was killed"

mkdir -p "$OUT"
{
    echo "# Appends on a Patroni cluster, by synchronous_commit level"
    echo
    echo "$(date -u +%Y-%m-%d), \`bash benches/ha.sh\`: three PostgreSQL 15 nodes with TimescaleDB and"
    echo "event_store preloaded, one etcd, \`synchronous_mode: quorum\` (ANY 1 of the two replicas),"
    echo "all on this 2-core machine over loopback (fsync off: the nodes share one disk, so only"
    echo "the replication round trips are measured). es_append of one event over 10,000 streams,"
    echo "$ROUNDS alternating rounds of ${ROUND_DUR}s per level, mean rate. The feed serves an event"
    echo "once the standbys confirm it whatever level its writer used (docs/high-availability.md)."
    echo
    echo "| synchronous_commit | 1 client | 8 clients | 1 client vs local | 8 clients vs local |"
    echo "|---|---:|---:|---:|---:|"
    for level in "${LEVELS[@]}"; do
        one=$(mean <<<"${TPS[$level/1]}"); eight=$(mean <<<"${TPS[$level/8]}")
        l1=$(mean <<<"${TPS[local/1]}"); l8=$(mean <<<"${TPS[local/8]}")
        printf '| %s | %s/s | %s/s | %.2fx | %.2fx |\n' "$level" "$one" "$eight" \
            "$(echo "$one / $l1" | bc -l)" "$(echo "$eight / $l8" | bc -l)"
    done
    echo
    echo "Failover: the first append acknowledged by the new leader came ${FAILOVER%???????} s after"
    echo "SIGKILL of the leader's Patroni and postmaster (Patroni ttl ${ES_HA_TTL:-10} s, loop_wait 1 s,"
    echo "retry_timeout 3 s)."
} >"$OUT/ha.md"
cat "$OUT/ha.md"
