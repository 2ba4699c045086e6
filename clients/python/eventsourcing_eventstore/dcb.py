"""Dynamic Consistency Boundary recorder for the ``eventsourcing`` library on event_store.

Set ``PERSISTENCE_MODULE=eventsourcing_eventstore.dcb`` (plus the usual ``POSTGRES_*``
connection settings) and a ``DCBApplication`` stores its events in event_store through two
SQL functions only (docs/dcb.md):

* ``es_dcb_append``: the events and the append condition, checked and written atomically;
  a failed condition (SQLSTATE ES001) is the library's ``IntegrityError``;
* ``es_dcb_read``: the events a query matches, never past the feed's horizon.

Subscriptions pull with ``es_dcb_read`` whenever event_store sends a NOTIFY on channel
``event_store``. Mapping: event type = the DCB event's type, tags = its tags, event data =
``{"data": "<base64 of its bytes>"}``, position = global position. An event another append
wrote, whose data has no ``"data"`` field, is read with its data's JSON text (UTF-8) as its
bytes. Events are stored in streams event_store chooses (``dcb-<uuid>``, one per append).
"""

from __future__ import annotations

import base64
import binascii
import json
import weakref
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring_ascii as _quote
from threading import Thread
from typing import Any

import psycopg
from psycopg import pq

from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
    DCBSubscription,
)
from eventsourcing.dcb.persistence import (
    DCBInfrastructureFactory,
    DCBListenNotifySubscription,
)
from eventsourcing.postgres import BasePostgresFactory, PostgresDatastore
from eventsourcing.utils import retry
from eventsourcing.persistence import DataError, InterfaceError, OperationalError, ProgrammingError

from eventsourcing_eventstore import _library_error, _listen

__all__ = ["EventStoreDCBFactory", "EventStoreDCBRecorder", "Factory"]

DATA_KEY = "data"


# The JSON this module sends is written out here rather than by json.dumps, whose call costs
# three times as much as the text it writes (2.4 µs against 0.7 for a query of one item;
# benches/ section 13); names are quoted by the C function json.dumps quotes them with.
def _names(names: Sequence[str]) -> str:
    return ", ".join(map(_quote, names))


def _query(query: DCBQuery) -> str:
    """A query as es_dcb_read and a condition take it."""
    items = ", ".join(
        '{"types": [' + _names(i.types) + '], "tags": [' + _names(i.tags) + "]}"
        for i in query.items
    )
    return '{"items": [' + items + "]}"


# A decision is two calls, and psycopg's per-query work (adapting parameters, its prepared
# statement cache, result loaders) was a third of the client's CPU in one (benches/ section
# 13); this module's statements go to libpq through psycopg.pq, prepared once per connection.
_READ = (
    b"es_dcb_recorder_read_3",
    # The horizon first (the read depends on it), then the events. Every event up to the
    # horizon is committed and seen by the read, so the head never claims an event the read
    # could have missed. One row: the horizon, and the events as one JSON array of four: their
    # positions, types, data and tags, each in es_dcb_read's order (positions ascending).
    # Column by column, not an array per event: a tenth less work for a read of a few dozen
    # events (benches/ section 13). An event's data is its base64 text as this recorder
    # stores it, or, for an event whose data has no "data" field (written by another
    # append), a space and its JSON text: base64 has no spaces.
    b"SELECT h.h, (SELECT pg_catalog.json_build_array(pg_catalog.array_agg(r.global_position), "
    b"pg_catalog.array_agg(r.event_type), pg_catalog.array_agg(COALESCE(r.event_data ->> '"
    + DATA_KEY.encode()
    + b"', ' ' OPERATOR(pg_catalog.||) r.event_data::pg_catalog.text)), pg_catalog.json_agg(r.tags)) "
    b"FROM es_dcb_read($1::jsonb, $2::bigint, $3::integer) r WHERE h.h IS NOT NULL) "
    b"FROM (SELECT es_feed_horizon() AS h) h",
)
_APPEND = (b"es_dcb_recorder_append_1", b"SELECT es_dcb_append($1::jsonb, $2::jsonb)")
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
_DECODER = json.JSONDecoder()
_prepared: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()


def _run(
    datastore: PostgresDatastore, statement: tuple[bytes, bytes], params: list[bytes | None]
) -> tuple[Any, ...]:
    """Runs one of this module's statements on a connection of the datastore's pool and
    returns its one row as text (bytes; None for NULL). A failure raises the library's error
    (``_library_error``: ES001 and the other conflicts are IntegrityError).
    The connection is taken from the pool and given back directly: ``get_connection``'s
    two context managers cost 7 µs of a call's client CPU (benches/ section 13).
    libpq's call blocks (other threads run: it releases the GIL), so an interrupt waits for
    the statement to end; statement_timeout bounds it."""
    pool = datastore.pool
    if pool.closed:
        with datastore.get_connection():
            pass  # opened, as the library opens it
    name, sql = statement
    try:
        conn = pool.getconn()
        try:
            with conn.lock:
                pgconn = conn.pgconn
                done = _prepared.setdefault(conn, set())
                if name not in done:
                    _check(conn, pgconn.prepare(name, sql))
                    done.add(name)
                res = pgconn.exec_prepared(name, params)
                if res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000":
                    # Dropped since (DISCARD ALL): refused before it ran, so prepared again
                    # and rerun.
                    _check(conn, pgconn.prepare(name, sql))
                    res = pgconn.exec_prepared(name, params)
            _check(conn, res)
        finally:
            pool.putconn(conn)
    except psycopg.Error as e:
        raise _library_error(e) from e
    return tuple(res.get_value(0, i) for i in range(res.nfields))


def _check(conn: Any, res: Any) -> None:
    if res.status in _OK:
        return
    if conn.pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(res.get_error_message())
    raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


class _Response(DCBReadResponse):
    def __init__(self, events: list[DCBSequencedEvent], head: int | None):
        self._events = iter(events)
        self._head = head

    @property
    def head(self) -> int | None:
        return self._head

    def __iter__(self) -> Iterator[DCBSequencedEvent]:
        # The list's own iterator, so that a loop over the response runs in C; the one
        # __next__ takes from, so that the response is consumed once, as an iterator is.
        return self._events

    def __next__(self) -> DCBSequencedEvent:
        return next(self._events)


class EventStoreDCBRecorder(DCBRecorder):
    def __init__(self, datastore: PostgresDatastore):
        self.datastore = datastore

    def create_table(self) -> None:
        """There are no tables to create: event_store owns its schema. This only creates the
        extension when it is missing (needs the privilege to)."""
        with self.datastore.get_connection() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS event_store")

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def read(
        self,
        query: DCBQuery | None = None,
        *,
        after: int | None = None,
        limit: int | None = None,
    ) -> DCBReadResponse:
        params = [
            None if query is None else _query(query).encode(),
            None if after is None else str(after).encode(),
            None if limit is None else str(limit).encode(),
        ]
        horizon, events = _run(self.datastore, _READ, params)
        b64decode = binascii.a2b_base64
        positions, types, datas, tags = (
            _DECODER.raw_decode(events.decode())[0] if events else (None,) * 4
        )
        try:
            events = [
                # Positional arguments, in the dataclasses' field order (type, data, tags;
                # event, position): a third less client CPU per event than keywords.
                DCBSequencedEvent(
                    DCBEvent(
                        event_type,
                        (
                            b64decode(data, strict_mode=True)
                            if data[:1] != " "
                            else data[1:].encode()
                        ),
                        event_tags,
                    ),
                    position,
                )
                for position, event_type, data, event_tags in zip(
                    positions or (), types or (), datas or (), tags or ()
                )
            ]
        except binascii.Error as e:
            msg = (
                'an event\'s data has a "data" field that is not base64: it was not '
                f"written by this recorder ({e})"
            )
            raise DataError(msg) from e
        last = events[-1].position if events else None
        if limit is not None:
            head = last
        else:
            head = max(int(horizon or 0), last or 0) or None
        return _Response(events, head)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def append(
        self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None
    ) -> int:
        if not events:
            msg = "no events to append"
            raise ProgrammingError(msg)
        # Base64 needs no quoting.
        payload = ", ".join(
            '{"type": '
            + _quote(e.type)
            + ', "data": {"'
            + DATA_KEY
            + '": "'
            + base64.b64encode(e.data).decode("ascii")
            + '"}, "tags": ['
            + _names(e.tags)
            + "]}"
            for e in events
        )
        cond = None
        if condition is not None:
            after = condition.after
            cond = (
                '{"fail_if_events_match": '
                + _query(condition.fail_if_events_match)
                + ', "after": '
                + (str(after) if type(after) is int else json.dumps(after))
                + "}"
            ).encode()
        # A failed condition is ES001: the library's IntegrityError.
        (last,) = _run(self.datastore, _APPEND, [("[" + payload + "]").encode(), cond])
        return int(last)

    def subscribe(
        self, query: DCBQuery | None = None, *, after: int | None = None
    ) -> DCBSubscription[EventStoreDCBRecorder]:
        return EventStoreDCBSubscription(recorder=self, query=query, after=after)


class EventStoreDCBSubscription(DCBListenNotifySubscription[EventStoreDCBRecorder]):
    """Pulls with es_dcb_read whenever event_store sends a NOTIFY (after commits)."""

    def __init__(
        self,
        recorder: EventStoreDCBRecorder,
        query: DCBQuery | None = None,
        after: int | None = None,
    ) -> None:
        super().__init__(recorder=recorder, query=query, after=after)
        self._listen_thread = Thread(target=_listen, args=(self,), daemon=True)
        self._listen_thread.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._listen_thread.join()


class EventStoreDCBFactory(
    BasePostgresFactory[Any],
    DCBInfrastructureFactory[Any],
):
    """Infrastructure factory: the library's usual POSTGRES_* connection settings."""

    def dcb_recorder(self) -> DCBRecorder:
        recorder = EventStoreDCBRecorder(self.datastore)
        if self.env_create_table():
            recorder.create_table()
        return recorder


Factory = EventStoreDCBFactory
