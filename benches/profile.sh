#!/usr/bin/env bash
# Where a single-event append's time goes, against the floor's (a plain INSERT of the same row
# into a table with the same indexes): perf samples with call graphs on the backends of an
# N-client pgbench run of each, on the benchmark's cluster, in a database of its own.
#   bash benches/profile.sh [--no-timescaledb] [CLIENTS] [SECONDS]
# Prints, per call, the CPU each symbol took in both runs and the difference, largest first,
# and leaves the perf data in $ES_RUN_DIR/profile/ (perf report -i FILE). Needs perf and the
# extension installed (scripts/setup.sh, then install_extension from scripts/common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

PRELOAD=timescaledb
if [ "${1:-}" = --no-timescaledb ]; then PRELOAD=""; shift; fi
CLIENTS=${1:-8}
SECONDS_EACH=${2:-10}
PORT=54330
OUT=$ES_RUN_DIR/profile
command -v perf >/dev/null || { echo "profile.sh needs perf (Debian: linux-perf)" >&2; exit 1; }
$SUDO mkdir -p "$OUT"

cluster_start bench $PORT "${PRELOAD:+$PRELOAD,}event_store" "max_worker_processes = 32"
trap 'cluster_stop bench' EXIT
es_psql $PORT postgres -q -c "DROP DATABASE IF EXISTS es_profile WITH (FORCE)" -c "CREATE DATABASE es_profile"
[ -n "$PRELOAD" ] && es_psql $PORT es_profile -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION timescaledb"
es_psql $PORT es_profile -q -c "CREATE EXTENSION event_store" -f benches/baselines.sql

# profile NAME SCRIPT: pgbench for SECONDS_EACH + 4 s; perf on its backends for SECONDS_EACH.
profile() {
    local name=$1 script=$2
    "$PG_BIN/pgbench" -n -M prepared -h "$ES_RUN_DIR" -p $PORT -U postgres -c "$CLIENTS" -j "$CLIENTS" \
        -T $((SECONDS_EACH + 4)) -f "benches/scenarios/$script" -D streams=10000 -D cats=8 es_profile \
        >"$OUT/$name.pgbench" 2>&1 &
    local bench=$!
    sleep 2
    local pids
    pids=$(es_psql $PORT es_profile -qtA -c "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name = 'pgbench'")
    perf record -F 999 -g -p "$pids" -o "$OUT/$name.data" -- sleep "$SECONDS_EACH" >/dev/null 2>&1
    wait $bench
    perf report -i "$OUT/$name.data" --no-children --sort dso,symbol --stdio -g none -F sample,dso,symbol 2>/dev/null \
        | grep -v '^#' | grep -v '^$' >"$OUT/$name.samples"
    echo "$name: $(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUT/$name.pgbench") calls/s"
}
profile es_append es_append.pgbench
profile floor floor.pgbench

python3 - "$OUT" "$SECONDS_EACH" <<'EOF'
import re, sys
out, seconds = sys.argv[1], float(sys.argv[2])
def load(name):
    tps = float(re.search(r"^tps = ([0-9.]+)", open(f"{out}/{name}.pgbench").read(), re.M).group(1))
    calls, per = tps * seconds, {}
    for line in open(f"{out}/{name}.samples"):
        n, _, sym = line.strip().partition(" ")
        sym = " ".join(sym.split()).removesuffix(" - -")  # column widths differ between runs
        if n.isdigit():
            # perf samples the CPU clock at 999 Hz: a sample is about 1 ms of CPU.
            per[sym] = per.get(sym, 0) + int(n) * 1001.0 / calls
    return per
es, fl = load("es_append"), load("floor")
print(f"CPU per call: es_append {sum(es.values()):.0f} us, floor {sum(fl.values()):.0f} us")
print(f"{'es_append':>10} {'floor':>8} {'diff':>8}  symbol (us per call)")
for k in sorted(set(es) | set(fl), key=lambda k: -(es.get(k, 0) - fl.get(k, 0)))[:40]:
    print(f"{es.get(k, 0):10.1f} {fl.get(k, 0):8.1f} {es.get(k, 0) - fl.get(k, 0):+8.1f}  {k[:110]}")
EOF
