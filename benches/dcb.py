"""Conditional appends (DCB) through the eventsourcing library's recorder API: event_store's
recorder (module eventsourcing_eventstore.dcb, on es_dcb_append and es_dcb_read) against the
library's own PostgreSQL DCB recorder (eventsourcing.dcb.postgres_tt), in the same cluster.

    python3 benches/dcb.py HOST PORT ES_DB TT_DB SECONDS ROUNDS CLIENTS... >> tps.txt

One operation is what a decision does: read the events of a random tag (of 10,000), then
append one event with that tag on the condition that nothing the query matches was stored
after the head the read returned. A refused append (another client's event of the tag came
first) counts as an operation and is reported. A third system appends the same events with
es_append, neither reading nor conditioned: what the condition costs. The systems take turns
in rounds; each round prints "NAME CLIENTS RATE" (report.py averages the rounds).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import Any, Callable

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.dcb.persistence import DCBInfrastructureFactory
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import Environment

TAGS = 10_000
DATA = b'{"course": "c1", "student": "s1", "at": "2026-12-07T09:00:00Z"}'


def factory(module: str, host: str, port: str, db: str, clients: int) -> Any:
    env = {
        "PERSISTENCE_MODULE": module,
        "POSTGRES_DBNAME": db,
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": port,
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
        "POSTGRES_POOL_SIZE": str(clients + 1),
        "POSTGRES_LOCK_TIMEOUT": "30",
    }
    return DCBInfrastructureFactory.construct(Environment("bench", env))


def decide(recorder: Any, rng: random.Random) -> bool:
    """One decision; False when its append was refused."""
    tag = f"tag-{rng.randrange(TAGS)}"
    query = DCBQuery(items=[DCBQueryItem(tags=[tag])])
    read = recorder.read(query)
    for _ in read:
        pass
    try:
        recorder.append(
            [DCBEvent(type="StudentJoined", data=DATA, tags=[tag])],
            DCBAppendCondition(fail_if_events_match=query, after=read.head),
        )
    except IntegrityError:
        return False
    return True


def unconditional(datastore: Any) -> Callable[[Any, random.Random], bool]:
    def op(_: Any, rng: random.Random) -> bool:
        # Tags of their own: these events' data is not in the recorder's format.
        tag = f"plain-{rng.randrange(TAGS)}"
        with datastore.get_connection() as conn:
            conn.execute(
                "SELECT es_append(%s, 'StudentJoined', %s::jsonb, tags => ARRAY[%s])",
                (f"course-{tag}", DATA.decode(), tag),
                prepare=True,
            )
        return True

    return op


def run(recorder: Any, op: Callable[[Any, random.Random], bool], clients: int, seconds: float) -> tuple[float, int]:
    done = [0] * clients
    refused = [0] * clients
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        rng = random.Random(i * 7919 + int(time.time()))
        barrier.wait()
        while time.monotonic() < stop:
            if not op(recorder, rng):
                refused[i] += 1
            done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.monotonic()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - start), sum(refused)


def main() -> None:
    host, port, es_db, tt_db = sys.argv[1:5]
    seconds, rounds = float(sys.argv[5]), int(sys.argv[6])
    for clients in map(int, sys.argv[7:]):
        es = factory("eventsourcing_eventstore.dcb", host, port, es_db, clients)
        tt = factory("eventsourcing.dcb.postgres_tt", host, port, tt_db, clients)
        systems = [
            ("es_dcb_append", es.dcb_recorder(), decide),
            ("library_dcb_recorder", tt.dcb_recorder(), decide),
            ("es_append_unconditional", None, unconditional(es.datastore)),
        ]
        for r in range(rounds):
            for i in range(len(systems)):
                name, recorder, op = systems[(r + i) % len(systems)]
                rate, refused = run(recorder, op, clients, seconds)
                print(f"dcb/{name}/c{clients} {clients} {rate:.1f}", flush=True)
                print(f"   ({refused} refused)", file=sys.stderr, flush=True)
        es.close()
        tt.close()


if __name__ == "__main__":
    main()
