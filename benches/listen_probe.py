"""Listener wake-up latency: from an append's commit to a LISTEN event_store client holding a
notification that covers it.

    python3 listen_probe.py HOST PORT DBNAME NAME RATE SECONDS RAW_DIR [cold]

With `cold`, the database's projection workers are stopped before each append (and gone from
pg_stat_activity): its commit finds no worker connected, and the pool starts one to announce it.

A listener process LISTENs on event_store and stamps each notification as it reads it; the
writer appends at RATE per second in autocommit and stamps each call when it sends it and when
it returns, i.e. after its commit. Both read CLOCK_MONOTONIC, one clock for every process on
the machine. A notification's payload is the highest position committed, and one may cover
several commits, so an append at position p is covered by the first notification read after
its call was sent whose payload is >= p. Latency runs from the call's return: PostgreSQL can
signal a listener before the writer has read its reply, so it can be slightly negative.

Appends "NAME us" lines to RAW_DIR/latency.txt, "NAME 1 rate" to RAW_DIR/tps.txt and
"NAME notifications uncovered early" to RAW_DIR/listen.txt.
"""
import bisect
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
    received = []
    while not stop.is_set():
        if select.select([conn], [], [], 0.2)[0]:
            conn.poll()
            now = time.monotonic_ns()
            while conn.notifies:
                received.append((now, int(conn.notifies.pop(0).payload)))
    out.send(received)


def main():
    host, port, db, name, rate, seconds, raw = sys.argv[1:8]
    cold = sys.argv[8:9] == ["cold"]
    admin = connect(host, port, db).cursor() if cold else None
    rate, seconds = float(rate), float(seconds)
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    parent, child = multiprocessing.Pipe()
    listener = multiprocessing.Process(target=listen, args=(host, port, db, ready, stop, child))
    listener.start()
    ready.wait(30)

    conn = connect(host, port, db)
    cur = conn.cursor()
    cur.execute("SET event_store.notify = on")
    committed = []
    start = time.monotonic()
    i = 0
    while True:
        due = start + i / rate
        if due - start >= seconds:
            break
        if cold:
            admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND backend_type = 'event_store projections'")
            while True:
                admin.execute("SELECT count(*) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND backend_type = 'event_store projections'")
                if admin.fetchone()[0] == 0:
                    break
                time.sleep(0.002)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent = time.monotonic_ns()
        cur.execute("SELECT global_position FROM es_append(%s, 'ListenProbe', '{}')", (f"listen-{i % 1000}",))
        committed.append((cur.fetchone()[0], sent, time.monotonic_ns()))
        i += 1
    time.sleep(1)  # let the last notifications arrive
    stop.set()
    received = parent.recv()
    listener.join()

    # received is in reading order; the first covering notification is searched from the
    # first one read after the call was sent. One read before the call returned ("early")
    # either beat the writer to its reply or announced a later commit before this one.
    times = [t for t, _ in received]
    lat = []
    for position, sent, done in committed:
        for k in range(bisect.bisect_left(times, sent), len(received)):
            if received[k][1] >= position:
                lat.append((received[k][0] - done) // 1000)
                break
    lat.sort()
    missed = len(committed) - len(lat)
    early = sum(1 for us in lat if us < 0)
    with open(os.path.join(raw, "latency.txt"), "a") as f:
        f.writelines(f"{name} {us}\n" for us in lat)
    with open(os.path.join(raw, "tps.txt"), "a") as f:
        f.write(f"{name} 1 {len(committed) / seconds:.1f}\n")

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100.0 * (len(lat) - 1))))] / 1000.0 if lat else float("nan")

    print(f"{name}: {len(committed)} appends, {len(received)} notifications, {missed} appends never covered, "
          f"{early} covered early; commit -> listener p50 {pct(50):.2f} ms, p95 {pct(95):.2f} ms, p99 {pct(99):.2f} ms")
    if missed:
        print(f"WARNING: {missed} appends were never covered by a notification")
    with open(os.path.join(raw, "listen.txt"), "a") as f:
        f.write(f"{name} {len(received)} {missed} {early}\n")

if __name__ == "__main__":
    main()
