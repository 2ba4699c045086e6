"""Listener wake-up latency: from an append's commit to a LISTEN event_store client holding its
notification.

    python3 listen_probe.py HOST PORT DBNAME NAME RATE SECONDS RAW_DIR

A listener process LISTENs on event_store and stamps each notification (payload: the append's
global position) as it reads it; the writer appends at RATE per second in autocommit and stamps
the moment each call returns, i.e. after its commit. Both read CLOCK_MONOTONIC, which is one
clock for every process on the machine. Appends "NAME us" lines to RAW_DIR/latency.txt,
"NAME 1 rate" to RAW_DIR/tps.txt and, if any notification is lost, "NAME lost sent" to
RAW_DIR/missed.txt.

PostgreSQL signals listeners during commit, before the writer's client has read the reply, so
a latency can be slightly negative: it is measured from the writer's view of its commit.
"""
import multiprocessing
import os
import select
import sys
import time

import psycopg2
import psycopg2.extensions


def connect(host, port, db):
    conn = psycopg2.connect(host=host, port=port, dbname=db, user="postgres")
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    return conn


def listen(host, port, db, ready, stop, out):
    conn = connect(host, port, db)
    conn.cursor().execute("LISTEN event_store")
    ready.set()
    received = {}
    while not stop.is_set():
        if select.select([conn], [], [], 0.2)[0]:
            conn.poll()
            now = time.monotonic_ns()
            while conn.notifies:
                n = conn.notifies.pop(0)
                received.setdefault(n.payload, now)
    out.send(received)


def main():
    host, port, db, name, rate, seconds, raw = sys.argv[1:8]
    rate, seconds = float(rate), float(seconds)
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    parent, child = multiprocessing.Pipe()
    listener = multiprocessing.Process(target=listen, args=(host, port, db, ready, stop, child))
    listener.start()
    ready.wait(30)

    conn = connect(host, port, db)
    cur = conn.cursor()
    cur.execute("SET event_store.notify = on")
    committed = {}
    start = time.monotonic()
    i = 0
    while True:
        due = start + i / rate
        if due - start >= seconds:
            break
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        cur.execute("SELECT global_position FROM es_append(%s, 'ListenProbe', '{}')", (f"listen-{i % 1000}",))
        committed[str(cur.fetchone()[0])] = time.monotonic_ns()
        i += 1
    time.sleep(1)  # let the last notifications arrive
    stop.set()
    received = parent.recv()
    listener.join()

    lat = sorted((received[p] - t) // 1000 for p, t in committed.items() if p in received)
    missed = len(committed) - len(lat)
    with open(os.path.join(raw, "latency.txt"), "a") as f:
        f.writelines(f"{name} {us}\n" for us in lat)
    with open(os.path.join(raw, "tps.txt"), "a") as f:
        f.write(f"{name} 1 {len(committed) / seconds:.1f}\n")

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100.0 * (len(lat) - 1))))] / 1000.0 if lat else float("nan")

    print(f"{name}: {len(committed)} appends, {missed} notifications missed, "
          f"commit -> listener p50 {pct(50):.2f} ms, p95 {pct(95):.2f} ms, p99 {pct(99):.2f} ms")
    if missed:
        print(f"WARNING: {missed} notifications never arrived")
        with open(os.path.join(raw, "missed.txt"), "a") as f:
            f.write(f"{name} {missed} {len(committed)}\n")


if __name__ == "__main__":
    main()
