#!/usr/bin/env bash
# Where a single-event append's time goes, against the floor's (a plain INSERT of the same row
# into a table with the same indexes): perf samples with call graphs on the backends of an
# N-client pgbench run of each, on the benchmark's cluster, in a database of its own.
#   bash benches/profile.sh [--no-timescaledb] [CLIENTS] [SECONDS]
# Prints, per call, the CPU each symbol took in both runs and the difference, largest first,
# then where an es_append call and the floor's INSERT spend it (inclusive, a call tree from
# DWARF unwinding, which sees through Rust and PostgreSQL frames alike), and leaves the perf
# data in $ES_RUN_DIR/profile/ (perf report -i FILE). The streams exist before the runs, as
# they do after a benchmark's first round. Needs perf and the
# extension installed (scripts/setup.sh, then install_extension from scripts/common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

PRELOAD=timescaledb
if [ "${1:-}" = --no-timescaledb ]; then PRELOAD=""; shift; fi
CLIENTS=${1:-8}
SECONDS_EACH=${2:-10}
HZ=299   # a sample carries 8 KB of stack for unwinding
PORT=54330
OUT=$ES_RUN_DIR/profile
command -v perf >/dev/null || { echo "profile.sh needs perf (Debian: linux-perf)" >&2; exit 1; }
$SUDO mkdir -p "$OUT"

cluster_start bench $PORT "${PRELOAD:+$PRELOAD,}event_store" "max_worker_processes = 32"
trap 'cluster_stop bench' EXIT
es_psql $PORT postgres -q -c "DROP DATABASE IF EXISTS es_profile WITH (FORCE)" -c "CREATE DATABASE es_profile"
[ -n "$PRELOAD" ] && es_psql $PORT es_profile -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION timescaledb"
es_psql $PORT es_profile -q -c "CREATE EXTENSION event_store" -f benches/baselines.sql
es_psql $PORT es_profile -q -c "SELECT count(*) FROM generate_series(1, 10000) s, es_append('user' || s % 8 || '-' || s, 'Made', '{}')" \
    -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null

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
    perf record -F $HZ --call-graph dwarf,8192 -p "$pids" -o "$OUT/$name.data" -- sleep "$SECONDS_EACH" >/dev/null 2>&1
    wait $bench
    perf report -i "$OUT/$name.data" --no-children --sort dso,symbol --stdio -g none -F sample,dso,symbol 2>/dev/null \
        | grep -v '^#' | grep -v '^$' >"$OUT/$name.samples"
    perf script -i "$OUT/$name.data" -F ip,sym 2>/dev/null >"$OUT/$name.stacks"
    echo "$name: $(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUT/$name.pgbench") calls/s"
}
profile es_append es_append.pgbench
profile floor floor.pgbench

python3 - "$OUT" "$SECONDS_EACH" "$HZ" <<'EOF'
import collections, re, sys
out, seconds, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def load(name):
    tps = float(re.search(r"^tps = ([0-9.]+)", open(f"{out}/{name}.pgbench").read(), re.M).group(1))
    calls, per = tps * seconds, {}
    for line in open(f"{out}/{name}.samples"):
        n, _, sym = line.strip().partition(" ")
        sym = " ".join(sym.split()).removesuffix(" - -")  # column widths differ between runs
        if n.isdigit():
            # perf samples the CPU clock at hz: a sample is 1/hz s of CPU.
            per[sym] = per.get(sym, 0) + int(n) * 1e6 / hz / calls
    return per
es, fl = load("es_append"), load("floor")
print(f"CPU per call: es_append {sum(es.values()):.0f} us, floor {sum(fl.values()):.0f} us")
print(f"{'es_append':>10} {'floor':>8} {'diff':>8}  symbol (us per call)")
for k in sorted(set(es) | set(fl), key=lambda k: -(es.get(k, 0) - fl.get(k, 0)))[:40]:
    print(f"{es.get(k, 0):10.1f} {fl.get(k, 0):8.1f} {es.get(k, 0) - fl.get(k, 0):+8.1f}  {k[:110]}")

# Inclusive time under a frame, as a tree; pgrx's FFI guard frames are left out.
GUARDS = ("cee_scape", "pgrx_pg_sys::submodules", "__sigsetjmp", "__GI___sigsetjmp", "core::ops::function", "std::panic")
def tree(name, root, depth=4, least=2.0):
    tps = float(re.search(r"^tps = ([0-9.]+)", open(f"{out}/{name}.pgbench").read(), re.M).group(1))
    us = 1e6 / hz / (tps * seconds)
    counts, stack = collections.Counter(), []
    def take(frames):
        frames = frames[::-1]
        if root in frames:
            path = [f for f in frames[frames.index(root) + 1:] if not f.startswith(GUARDS) and f != "[unknown]"]
            for d in range(min(depth, len(path)) + 1):
                counts[tuple(path[:d])] += 1
    for line in open(f"{out}/{name}.stacks"):
        line = line.strip()
        if line:
            stack.append(line.split(None, 1)[-1].split("+0x")[0])
        elif stack:
            take(stack)
            stack = []
    if stack:
        take(stack)
    print(f"\n{name}: {root} {counts[()] * us:.1f} us per call")
    def show(prefix):
        kids = [(k, v) for k, v in counts.items() if len(k) == len(prefix) + 1 and k[:-1] == prefix]
        for k, v in sorted(kids, key=lambda kv: -kv[1]):
            if v * us >= least:
                print(f"{'  ' * len(k)}{v * us:6.1f} {k[-1][:100]}")
                show(k)
    show(())
tree("es_append", "es_append")
tree("floor", "standard_ExecutorRun")
EOF
