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
latency_file = os.path.join(raw, "latency.txt")  # absent when only timed sections ran
for line in open(latency_file) if os.path.exists(latency_file) else []:
    name, us = line.split()
    lat[name].append(int(us) / 1000.0)


def read(file):
    path = os.path.join(raw, file)
    return [l.split() for l in open(path) if l.strip()] if os.path.exists(path) else []


def pct(name, p):
    values = sorted(lat.get(name, []))
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))] if values else None


# A scenario whose fastest round beat its slowest by more than this ran while the shared
# machine was busy with something else: its mean, and every ratio over it, is flagged.
NOISY = 1.3


def spread(name):
    r = rates.get(name, [])
    return max(r) / min(r) if len(r) > 1 and min(r) > 0 else None


noisy = sorted(n for n in rates if (spread(n) or 1.0) > NOISY)


class Ratio(float):
    """A ratio of two scenarios' rates that knows whether either was noisy."""
    noisy = False


def rate_ratio(a, b):
    if a not in tps or b not in tps or not tps[b]:
        return None
    r = Ratio(tps[a] / tps[b])
    r.noisy = a in noisy or b in noisy
    return r


def x(v):
    if v is None:
        return "n/a"
    return f"{v:.2f}x" + (" (noisy)" if getattr(v, "noisy", False) else "")


rows = [(name, clients[name], tps[name], pct(name, 50), pct(name, 95), pct(name, 99)) for name in tps]


def ms(v):
    return f"{v:.2f}" if v is not None else "n/a"


lines = [
    "# Benchmark results",
    "",
    f"{datetime.date.today()}, {machine}. Produced by `bash benches/run.sh`; every figure below comes",
    "from the same run on the same cluster. Systems compared on one workload take turns in short",
    "rounds; a rate is the mean of its rounds. Latencies are per call, in milliseconds.",
    "",
    "- **floor**: a plain INSERT of the same row into a table with event_store's indexes (no",
    "  versions, no concurrency control): what any append costs at least.",
    "- **handed**: the design we were handed (three indexes, no concurrency control).",
    "- **message_db**: Message DB 1.3 (npm `@eventide/message-db`), installed by its own installer",
    "  into database `message_store` of the same cluster; `write_message` takes an advisory lock",
    "  per category.",
    "- Single-event appends go to 10,000 user streams, all in one category or spread over 8.",
    "- *bulk/...*: 100,000 events loaded in one transaction per round: COPY ... FROM STDIN into the",
    "  floor table, 100 calls of es_append_batch (1,000 events each), 100 of es_append_multi (100",
    "  streams x 10 events); their rate is events per second.",
    "- *loaded-8-categories*: the single-event appends again once es_stream's scenario has loaded",
    "  event_store (the floor table and Message DB's keep what the earlier scenarios wrote).",
    "",
    f"- *rounds*: the slowest and fastest round; **noisy** when they differ by more than {NOISY}x",
    "  (the machine was busy with something else meanwhile), and so is every ratio over it.",
    "",
    "| scenario | clients | calls/s | rounds | p50 ms | p95 ms | p99 ms |",
    "|---|---:|---:|---:|---:|---:|---:|",
]


def round_range(name):
    r = rates[name]
    if len(r) < 2:
        return ""
    return f"{min(r):,.0f}-{max(r):,.0f}" + (" **noisy**" if name in noisy else "")


for name, c, t, p50, p95, p99 in rows:
    lines.append(f"| {name} | {c} | {t:,.0f} | {round_range(name)} | {ms(p50)} | {ms(p95)} | {ms(p99)} |")

# The targets of the issue, each as (what, measured text, met: True/False/None = not measured).
targets = []


def target(what, value, text, ok):
    targets.append((what, text if value is not None else "n/a", None if value is None else ok(value)))


LAYOUTS = (("one-category", "one category"), ("8-categories", "8 categories"))
# Appends issue: >= 0.85x the floor with one client, >= 0.8x with eight; never slower than
# Message DB, and >= 1.2x it with eight clients (where its category lock serialises writers).
for c, floor_need, mdb_need in ((1, 0.85, 1.0), (8, 0.8, 1.2)):
    for layout, words in LAYOUTS:
        r = rate_ratio(f"es_append/{layout}/c{c}", f"floor/{layout}/c{c}")
        target(f"single-event append >= {floor_need:g}x floor, {words}, {c} client(s)", r, x(r), lambda v, n=floor_need: v >= n)
        r = rate_ratio(f"es_append/{layout}/c{c}", f"message_db/{layout}/c{c}")
        target(f"single-event append >= {mdb_need:g}x Message DB, {words}, {c} client(s)", r, x(r), lambda v, n=mdb_need: v >= n)
for layout, words in LAYOUTS:
    es99, fl99 = pct(f"es_append/{layout}/c8", 99), pct(f"floor/{layout}/c8", 99)
    r = es99 / fl99 if es99 is not None and fl99 else None
    target(f"p99 latency at 8 clients <= 2x the floor's, {words}", r,
           f"{x(r)} ({ms(es99)} vs {ms(fl99)} ms)", lambda v: v <= 2.0)
r = rate_ratio("es_append_batch/batch1000/c1", "floor/batch1000/c1")
target("es_append_batch of 1,000 events >= 0.7x the floor's multi-row INSERT", r, x(r), lambda v: v >= 0.7)
r = rate_ratio("es_append_multi/multi100x10/c1", "floor/multi100x10/c1")
target("es_append_multi, 100 streams x 10 events, >= 0.5x the floor's multi-row INSERT", r, x(r), lambda v: v >= 0.5)
v = pct("projection_lag/500-events-per-s", 95)
target("projection lag p95 at 500 events/s < 20 ms", v, f"{ms(v)} ms", lambda v: v < 20)
for system in ("es_append_batch", "es_append_multi"):
    r = rate_ratio(f"bulk/{system}", "bulk/copy")
    target(f"bulk: {system}, 100,000 events, >= 0.8x COPY of the same rows", r, x(r), lambda v: v >= 0.8)
r = rate_ratio("workers/unserved/c8", "workers/served/c8")
target("8-client appends in a database no worker serves >= 0.9x in one a worker serves", r, x(r), lambda v: v >= 0.9)
for n in ("listen/under-8-appenders", "listen/no-worker-connected"):
    v = pct(n, 95)
    target(f"listener wake-up p95 < 50 ms, {n.split('/')[1].replace('-', ' ')}", v, f"{ms(v)} ms", lambda v: v < 50)
r = rate_ratio("catalog/schema/c1", "catalog/no-schema/c1")
target("single-event append of a 10-field event with a JSON Schema >= 0.85x without (validation adds <= 15%)", r, x(r), lambda v: v >= 0.85)
r = rate_ratio("personal/plain/c1", "personal/sealed/c1")
target("append with two personal-data fields sealed <= 1.3x the time of the same append without", r, x(r), lambda v: v <= 1.3)
scrape = [n for n in tps if n.startswith("metrics/scrape-")]
v = pct(scrape[0], 95) if scrape else None
target(f"es_metrics_prometheus() p95 on the {scrape[0].split('-', 1)[1] if scrape else 'loaded'} store < 1 s (a scrape every 15 s)", v, f"{ms(v)} ms", lambda v: v < 1000)
r = rate_ratio("state_at/rust/10000-events", "state_at/plpgsql/10000-events")
target("es_state_at without snapshots >= 10x the PL/pgSQL loop, 10,000 events", r, x(r), lambda v: v >= 10)
r = rate_ratio("state_at/snapshots/100-events", "state_at/snapshots/100000-events")
target("es_state_at with snapshots: 100,000 events <= 2x slower than 100", r, x(r), lambda v: v <= 2)
# DCB issue: a decision (read a tag, then append on the condition nothing of it came after the
# head read) >= 1.5x the eventsourcing library's PostgreSQL DCB recorder with one client, >= 3x
# with eight.
# Measured twice: through the library's recorder API from Python (dcb/), and as each
# recorder's statements from pgbench (dcb-sql/), without the Python client's CPU.
for c, need in ((1, 1.5), (8, 3.0)):
    for prefix, how in (("dcb", "through the library's API"), ("dcb-sql", "their statements from pgbench")):
        r = rate_ratio(f"{prefix}/es_dcb_append/c{c}", f"{prefix}/library_dcb_recorder/c{c}")
        target(f"conditional append >= {need:g}x the eventsourcing library's PostgreSQL DCB recorder, {how}, {c} client(s)", r, x(r), lambda v, n=need: v >= n)

storage = read("storage.txt")
per = {s[0]: float(s[-1]) for s in storage if s[-1] != "n/a"}
r = per["event_store"] / per["bench_floor"] if per.get("bench_floor") and "event_store" in per else None
target("bytes per event <= 1.5x the floor's", r, x(r), lambda v: v <= 1.5)

lines += ["", "## Targets", "", "| target | measured | met? |", "|---|---:|:---:|"]
for what, text, ok in targets:
    lines.append(f"| {what} | {text} | {'n/a' if ok is None else 'yes' if ok else '**no**'} |")
if noisy:
    lines += ["", f"Noisy scenarios this run (rounds more than {NOISY}x apart; rerun before trusting a ratio over them): "
              + ", ".join(f"{n} ({round_range(n).removesuffix(' **noisy**')})" for n in noisy) + "."]
if "es_append_multi/multi100x10/c1" not in tps:
    lines.append("\nThe multi-stream scenario did not run: this event_store has no `es_append_multi(jsonb)`.")

lines += ["", "## Other ratios (same run)", "", "| comparison | ratio |", "|---|---:|"]
for c in (1, 8):
    for layout, words in LAYOUTS:
        lines.append(f"| es_append / handed design, {words}, {c} client(s) | {x(rate_ratio(f'es_append/{layout}/c{c}', f'handed/{layout}/c{c}'))} |")
        lines.append(f"| Message DB / floor, {words}, {c} client(s) | {x(rate_ratio(f'message_db/{layout}/c{c}', f'floor/{layout}/c{c}'))} |")
for c in (1, 8):
    lines.append(f"| es_append / floor, loaded store, 8 categories, {c} client(s) | {x(rate_ratio(f'es_append/loaded-8-categories/c{c}', f'floor/loaded-8-categories/c{c}'))} |")
    lines.append(f"| es_append / Message DB, loaded store, 8 categories, {c} client(s) | {x(rate_ratio(f'es_append/loaded-8-categories/c{c}', f'message_db/loaded-8-categories/c{c}'))} |")
for n in (100, 100000):
    lines.append(f"| es_state_at without snapshots / PL/pgSQL loop, {n:,} events (speed-up) | {x(rate_ratio(f'state_at/rust/{n}-events', f'state_at/plpgsql/{n}-events'))} |")
lines.append(f"| time of es_state_at without snapshots / time of only reading its 10,000 events in order | {x(rate_ratio('state_at/read-only/10000-events', 'state_at/rust/10000-events'))} |")
for c in (1, 8):
    lines.append(f"| conditional append (read, then append) / es_append without either, {c} client(s) | {x(rate_ratio(f'dcb/es_dcb_append/c{c}', f'dcb/es_append_unconditional/c{c}'))} |")
# The library's recorder serialises its appends across their commit's flush: near 1x, its rate
# is this disk's flush rate; far below, the work under its lock bounds it (docs/dcb.md, Speed).
lines.append(f"| the library's DCB recorder at 8 clients (through its API) / empty committing transactions at 1 client | {x(rate_ratio('dcb/library_dcb_recorder/c8', 'dcb-sql/commit/c1'))} |")
lines.append(f"| es_state_at with snapshots, 100 / 10,000 events (how much slower) | {x(rate_ratio('state_at/snapshots/100-events', 'state_at/snapshots/10000-events'))} |")

listen = [n for n in tps if n.startswith("listen/")]
if listen:
    lines += ["", "## Listener wake-up", "",
              "From an append's commit (the writer's call returned) to a client that LISTENs on",
              "`event_store` reading a notification that covers it (payload >= its position; one",
              "notification may cover several commits), at 200 appends/s. *Early*: covered by a",
              "notification read before the call returned (negative latency): one that beat the",
              "writer to its reply, or one announcing a later commit before this one committed.",
              "*Never*: appends no notification covered before the probe stopped (1 s after the last).", "",
              "| run | appends/s | notifications | p50 ms | p95 ms | p99 ms | early | never |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    stats = {l[0]: l[1:] for l in read("listen.txt")}
    for n in listen:
        got, never, early = stats.get(n, ["?", "?", "?"])
        lines.append(f"| {n} | {tps[n]:,.0f} | {got} | {ms(pct(n, 50))} | {ms(pct(n, 95))} | {ms(pct(n, 99))} | {early} | {never} |")

failed = [" ".join(f) for f in read("failed.txt")]
if failed:
    lines += ["", "## Failed scenarios (no figures)", ""] + [f"- {f}" for f in dict.fromkeys(failed)]

if storage:
    lines += ["", "## Storage", "", "| table | total size | bytes per event |", "|---|---:|---:|"]
    for t, *size, p in storage:
        lines.append(f"| {t} | {' '.join(size)} | {p} |")

os.makedirs(out, exist_ok=True)
chart = os.path.join(out, "latest.png")
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(names) + 1.5))
    y = range(len(names))
    # A log axis cannot show a listener latency at or below zero: such bars sit at 0.01 ms.
    floor = 0.01
    for offset, col, label in ((0.27, 3, "p50"), (0, 4, "p95"), (-0.27, 5, "p99")):
        ax.barh([i + offset for i in y], [max(r[col] or floor, floor) for r in rows], height=0.27, label=label)
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
