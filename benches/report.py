"""Turns a benchmark run's raw figures into benches/results/latest.md (and latest.png)."""
import datetime
import os
import sys
from collections import defaultdict

raw, out, machine = sys.argv[1], sys.argv[2], sys.argv[3]

rates = defaultdict(list)
clients = {}
for line in open(os.path.join(raw, "tps.txt")):
    name, c, t = line.split()
    rates[name].append(float(t))
    clients[name] = int(c)
# Rounds of equal length: their mean rate is the rate over all of them.
tps = {name: sum(r) / len(r) for name, r in rates.items()}

lat = defaultdict(list)
for line in open(os.path.join(raw, "latency.txt")):
    name, us = line.split()
    lat[name].append(int(us) / 1000.0)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))] if values else float("nan")


def ratio(a, b):
    return f"{tps[a] / tps[b]:.2f}x" if a in tps and b in tps and tps[b] else "n/a"


rows = []
for name in tps:
    v = lat[name]
    rows.append((name, clients[name], tps[name], pct(v, 50), pct(v, 95), pct(v, 99)))

lines = [
    f"# Benchmark results",
    "",
    f"{datetime.date.today()}, {machine}. Produced by `bash benches/run.sh`; every figure below comes",
    "from the same run on the same cluster. Latencies are per call, in milliseconds.",
    "",
    "| scenario | clients | calls/s | p50 ms | p95 ms | p99 ms |",
    "|---|---:|---:|---:|---:|---:|",
]
for name, c, t, p50, p95, p99 in rows:
    lines.append(f"| {name} | {c} | {t:,.0f} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")

lines += ["", "## Ratios (same run)", "", "| comparison | ratio | target |", "|---|---:|---|"]
for c in (1, 8):
    lines.append(f"| es_append / floor INSERT, spread streams, {c} client(s) | {ratio(f'es_append/spread/c{c}', f'floor/spread/c{c}')} | >= 0.8x at 8 clients |")
    lines.append(f"| es_append / category-lock design, spread streams, {c} client(s) | {ratio(f'es_append/spread/c{c}', f'catlock/spread/c{c}')} | >= 2x at 8 clients |")
    lines.append(f"| es_append / handed design, spread streams, {c} client(s) | {ratio(f'es_append/spread/c{c}', f'handed/spread/c{c}')} | |")
    lines.append(f"| es_append / floor INSERT, one stream, {c} client(s) | {ratio(f'es_append/one-stream/c{c}', f'floor/one-stream/c{c}')} | |")
lines.append(f"| projection lag p95 at 500 events/s, ms | {pct(lat['projection_lag/500-events-per-s'], 95):.2f} | < 20 ms |")
lines.append(f"| es_append_batch / floor multi-row INSERT, 1,000 events | {ratio('es_append_batch/batch1000/c1', 'floor/batch1000/c1')} | >= 0.7x |")
for n in (100, 10000, 100000):
    lines.append(f"| es_state_at without snapshots / PL/pgSQL loop, {n:,} events (speed-up) | {ratio(f'state_at/rust/{n}-events', f'state_at/plpgsql/{n}-events')} | >= 10x at 10,000 |")
lines.append(f"| time of es_state_at without snapshots / time of only reading its 10,000 events in order | {ratio('state_at/read-only/10000-events', 'state_at/rust/10000-events')} | |")
for n in (10000, 100000):
    lines.append(f"| es_state_at with snapshots, 100 / {n:,} events (how much slower) | {ratio('state_at/snapshots/100-events', f'state_at/snapshots/{n}-events')} | <= 2x at 100,000 |")

storage = [l.split() for l in open(os.path.join(raw, "storage.txt")) if l.strip()]
if storage:
    lines += ["", "## Storage", "", "| table | total size | bytes per event |", "|---|---:|---:|"]
    for t, *size, per in storage:
        lines.append(f"| {t} | {' '.join(size)} | {per} |")
    per = {s[0]: float(s[-1]) for s in storage}
    if per.get("bench_floor"):
        lines.append(f"\nevent_store uses {per['event_store'] / per['bench_floor']:.2f}x the floor's bytes per event (target <= 1.5x).")

os.makedirs(out, exist_ok=True)
chart = os.path.join(out, "latest.png")
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) + 1.5))
    y = range(len(names))
    ax.barh([i + 0.27 for i in y], [r[3] for r in rows], height=0.27, label="p50")
    ax.barh(list(y), [r[4] for r in rows], height=0.27, label="p95")
    ax.barh([i - 0.27 for i in y], [r[5] for r in rows], height=0.27, label="p99")
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, ms (log scale)")
    ax.set_title(f"event_store benchmarks, {datetime.date.today()}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(chart, dpi=110)
    lines += ["", "![latencies](latest.png)"]
except ImportError:
    lines += ["", "(matplotlib is not installed: no chart)"]

open(os.path.join(out, "latest.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
