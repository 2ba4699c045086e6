"""Persistence module for the Python ``eventsourcing`` library on top of event_store.

Set ``PERSISTENCE_MODULE=eventsourcing_eventstore`` (plus the usual ``POSTGRES_*``
connection settings) and an application stores its events in event_store's
``event_store`` table, through event_store's SQL functions only:

* writes: ``es_append_multi`` (all or nothing, consecutive global positions,
  expected version checked per stream) and ``es_save_checkpoint``;
* reads: ``es_stream``, ``es_stream_version``, ``es_read_category`` and
  ``es_checkpoint``; subscriptions wait on ``LISTEN event_store``.

Mapping (see README.md):

* stream id = ``<category>-<originator id>``, where the category is
  ``<application name lower-cased>_events`` (``stored_events`` without a name) for
  the application's events and ``<name>_snapshots`` for its snapshots;
* event type = topic; event data = ``{"state": "<base64 of the state bytes>"}``;
  the originator version is kept in the metadata key ``originatorVersion``;
* notification id = global position (so ids of one application have gaps where
  other categories, e.g. its snapshots, were appended);
* tracking: checkpoint consumer ``<name>_tracking:<upstream application>``.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from threading import Thread
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg.types.json import Jsonb

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    InternalError,
    ListenNotifySubscription,
    NotSupportedError,
    Notification,
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres import BasePostgresFactory, PostgresDatastore
from eventsourcing.utils import resolve_topic, retry
from eventsourcing.persistence import InterfaceError, OperationalError

__all__ = [
    "EventStoreAggregateRecorder",
    "EventStoreApplicationRecorder",
    "EventStoreFactory",
    "EventStoreProcessRecorder",
    "EventStoreTrackingRecorder",
    "Factory",
]

# SQLSTATEs of event_store that mean "record conflict" for the library:
# ES001 wrong expected version, ES002 event id reused with other content,
# ES007 checkpoint not later than the saved one; 23505 unique violation.
CONFLICT_SQLSTATES = frozenset({"ES001", "ES002", "ES007", "23505"})

VERSION_KEY = "originatorVersion"
STATE_KEY = "state"
NOTIFY_CHANNEL = "event_store"


# psycopg's errors as the datastore's get_connection translates them, subclasses first.
_LIBRARY_ERRORS = (
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, DataError),
    (psycopg.IntegrityError, IntegrityError),
    (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError),
    (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
    (psycopg.Error, PersistenceError),
)


def _library_error(e: psycopg.Error) -> PersistenceError:
    """The library's error for psycopg's ``e``: event_store's conflicts are IntegrityError
    (its own SQLSTATE class "ES" would otherwise become a plain DatabaseError), the rest what
    the datastore's ``get_connection`` makes of them."""
    if e.sqlstate in CONFLICT_SQLSTATES:
        return IntegrityError(str(e))
    return next(ours for theirs, ours in _LIBRARY_ERRORS if isinstance(e, theirs))(str(e))


@contextmanager
def _library_errors() -> Iterator[None]:
    """Raises psycopg's errors as the library's (``_library_error``)."""
    try:
        yield
    except psycopg.Error as e:
        raise _library_error(e) from e


def _category_name(name: str) -> str:
    # The category is the part of a stream id before the first '-'.
    category = name.replace("-", "_")
    if not category:
        msg = "empty category name"
        raise ProgrammingError(msg)
    if category == "event_store":
        msg = "category 'event_store' is reserved by event_store"
        raise ProgrammingError(msg)
    return category


class EventStoreRecorder:
    """Base class: holds the datastore, ensures the extension exists."""

    def __init__(self, datastore: PostgresDatastore):
        self.datastore = datastore

    def create_table(self) -> None:
        """There are no tables to create: event_store owns its schema. This only
        creates the extension when it is missing (needs the privilege to)."""
        if getattr(self.datastore, "_event_store_checked", False):
            return
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT 1 AS ok FROM pg_extension WHERE extname = 'event_store'"
            ).fetchone()
            if row is None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS event_store")
        self.datastore._event_store_checked = True  # type: ignore[attr-defined]


class EventStoreAggregateRecorder(EventStoreRecorder, AggregateRecorder):
    """Stores each originator's events in the stream ``<category>-<originator_id>``.

    Originator versions must increase within a stream: a batch whose first
    version is not above the stream's last one is refused with IntegrityError
    (the library's SQL recorders would accept a missing lower version; with
    aggregates and snapshots that never happens). Gaps between versions are
    allowed (snapshots use them).
    """

    def __init__(self, datastore: PostgresDatastore, *, category: str = "stored_events"):
        super().__init__(datastore)
        self.category = _category_name(category)
        self.stream_prefix = self.category + "-"
        self.originator_id_is_uuid = datastore.originator_id_type == "uuid"

    # -- mapping --------------------------------------------------------------

    def stream_id(self, originator_id: UUID | str) -> str:
        return self.stream_prefix + str(originator_id)

    def originator_id(self, stream_id: str) -> UUID | str:
        raw = stream_id[len(self.stream_prefix):]
        return UUID(raw) if self.originator_id_is_uuid else raw

    @staticmethod
    def encode_state(state: bytes) -> dict[str, str]:
        return {STATE_KEY: base64.b64encode(state).decode("ascii")}

    @staticmethod
    def decode_state(event_data: dict[str, Any]) -> bytes:
        return base64.b64decode(event_data[STATE_KEY])

    # -- writing --------------------------------------------------------------

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(stored_events, **kwargs)
        return None

    def _insert(
        self,
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None = None,
        **_: Any,
    ) -> list[int]:
        if not stored_events and tracking is None:
            return []
        # Group by stream, keeping the order of first appearance.
        streams: dict[str, list[tuple[StoredEvent, str]]] = {}
        for stored_event in stored_events:
            sid = self.stream_id(stored_event.originator_id)
            streams.setdefault(sid, []).append((stored_event, str(uuid4())))
        for sid, events in streams.items():
            versions = [e.originator_version for e, _ in events]
            for lower, higher in zip(versions, versions[1:]):
                if higher <= lower:
                    msg = (
                        f"originator versions must increase within one insert: "
                        f"{sid} has {lower} then {higher}"
                    )
                    raise IntegrityError(msg)

        with self.datastore.get_connection() as conn, _library_errors():
            expected: dict[str, int] = {}
            if streams:
                # Current version and last originator version of each stream.
                rows = conn.execute(
                    "SELECT s.sid, es_stream_version(s.sid) AS n, "
                    f"(SELECT (e.metadata->>'{VERSION_KEY}')::bigint "
                    "   FROM es_stream(s.sid, greatest(es_stream_version(s.sid), 1), 1) e"
                    ") AS last_version "
                    "FROM unnest(%s::text[]) AS s(sid)",
                    (list(streams),),
                    prepare=True,
                ).fetchall()
                for row in rows:
                    sid = row["sid"]
                    first_new = streams[sid][0][0].originator_version
                    last = row["last_version"]
                    if last is not None and first_new <= last:
                        msg = (
                            f"stream {sid} is already at originator version {last}, "
                            f"cannot insert version {first_new}"
                        )
                        raise IntegrityError(msg)
                    expected[sid] = row["n"]
            appends = [
                {
                    "stream_id": sid,
                    "expected_version": expected[sid],
                    "events": [
                        {
                            "type": e.topic,
                            "data": self.encode_state(e.state),
                            "metadata": {VERSION_KEY: e.originator_version},
                            "id": event_id,
                        }
                        for e, event_id in events
                    ],
                }
                for sid, events in streams.items()
            ]
            with conn.transaction():
                if tracking is not None:
                    conn.execute(
                        "SELECT es_save_checkpoint(%s, %s)",
                        (self.consumer_name(tracking.application_name),
                         tracking.notification_id),
                        prepare=True,
                    )
                if not appends:
                    return []
                rows = conn.execute(
                    "SELECT event_id, global_position FROM es_append_multi(%s)",
                    (Jsonb(appends),),
                    prepare=True,
                ).fetchall()
        positions = {str(r["event_id"]): r["global_position"] for r in rows}
        by_event = {id(e): event_id for evs in streams.values() for e, event_id in evs}
        return [positions[by_event[id(e)]] for e in stored_events]

    def consumer_name(self, application_name: str) -> str:  # pragma: no cover
        msg = "this recorder does not track"
        raise ProgrammingError(msg)

    # -- reading --------------------------------------------------------------

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        sid = self.stream_id(originator_id)
        params: list[Any] = []
        if gt is None and lte is None and desc and limit is not None:
            # The newest `limit` events: read only the tail of the stream.
            source = "es_stream(%s, greatest(es_stream_version(%s) - %s + 1, 1))"
            params += [sid, sid, limit]
        else:
            source = "es_stream(%s)"
            params.append(sid)
        where = []
        if gt is not None:
            where.append(f"(metadata->>'{VERSION_KEY}')::bigint > %s")
            params.append(gt)
        if lte is not None:
            where.append(f"(metadata->>'{VERSION_KEY}')::bigint <= %s")
            params.append(lte)
        statement = (
            f"SELECT event_type, event_data, (metadata->>'{VERSION_KEY}')::bigint AS v "
            f"FROM {source} e"
        )
        if where:
            statement += " WHERE " + " AND ".join(where)
        statement += " ORDER BY stream_version" + (" DESC" if desc else "")
        if limit is not None:
            statement += " LIMIT %s"
            params.append(limit)
        with self.datastore.get_connection() as conn:
            rows = conn.execute(statement, params, prepare=True).fetchall()
        return [
            StoredEvent(
                originator_id=originator_id,
                originator_version=row["v"],
                topic=row["event_type"],
                state=self.decode_state(row["event_data"]),
            )
            for row in rows
        ]


class EventStoreApplicationRecorder(EventStoreAggregateRecorder, ApplicationRecorder):
    """Application sequence = the category's events in global position order."""

    read_batch_size = 1000

    def __init__(self, datastore: PostgresDatastore, *, category: str = "stored_events"):
        super().__init__(datastore, category=category)
        self._max_seen: int | None = None
        self._max_lock = threading.Lock()

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert(stored_events, **kwargs)

    def _read_category(
        self, conn: Any, after: int, max_count: int
    ) -> list[dict[str, Any]]:
        return conn.execute(
            "SELECT global_position, stream_id, event_type, event_data, "
            f"(metadata->>'{VERSION_KEY}')::bigint AS v "
            "FROM es_read_category(%s, %s, %s)",
            (self.category, after, max_count),
            prepare=True,
        ).fetchall()

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        if start is None:
            after = 0
        else:
            after = max(start - 1 if inclusive_of_start else start, 0)
        wanted = set(topics)
        result: list[Notification] = []
        if limit <= 0:
            return result
        batch = limit if not wanted and stop is None else max(limit, self.read_batch_size)
        with self.datastore.get_connection() as conn:
            while True:
                rows = self._read_category(conn, after, batch)
                for row in rows:
                    position = row["global_position"]
                    if stop is not None and position > stop:
                        return result
                    if wanted and row["event_type"] not in wanted:
                        continue
                    result.append(
                        Notification(
                            id=position,
                            originator_id=self.originator_id(row["stream_id"]),
                            originator_version=row["v"],
                            topic=row["event_type"],
                            state=self.decode_state(row["event_data"]),
                        )
                    )
                    if len(result) >= limit:
                        return result
                if len(rows) < batch:
                    return result
                after = rows[-1]["global_position"]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def max_notification_id(self) -> int | None:
        """Highest position of this category that the feed can return now.

        Reads forward from the highest position seen before with
        es_read_category (positions never appear below the feed's horizon later).
        """
        with self._max_lock:
            after = self._max_seen or 0
        highest = self._max_seen
        with self.datastore.get_connection() as conn:
            while True:
                row = conn.execute(
                    "SELECT max(global_position) AS m, count(*) AS n "
                    "FROM es_read_category(%s, %s, %s)",
                    (self.category, after, self.read_batch_size * 10),
                    prepare=True,
                ).fetchone()
                assert row is not None
                if row["m"] is not None:
                    highest = row["m"] if highest is None else max(highest, row["m"])
                    after = row["m"]
                if row["n"] < self.read_batch_size * 10:
                    break
        with self._max_lock:
            if highest is not None and (self._max_seen is None or highest > self._max_seen):
                self._max_seen = highest
            return self._max_seen

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return EventStoreSubscription(recorder=self, gt=gt, topics=topics)


def _listen(subscription: Any) -> None:
    """The LISTEN thread of a subscription (this module's, or the DCB recorder's): sets
    ``_has_been_notified`` after commits, until the subscription stops.

    The payload is the highest committed position. The feed may stop short of it while
    lower positions are still in flight, and an append that rolls back sends no NOTIFY, so
    keep pulling (every 0.1s) until the feed horizon has passed the announced position.
    """
    try:
        with subscription._recorder.datastore.get_connection() as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            try:
                pending: int | None = None
                while not subscription._has_been_stopped and not subscription._thread_error:
                    # Wake up at least every 0.1s to check whether to stop.
                    for notify in conn.notifies(timeout=0.1, stop_after=1):
                        try:
                            position = int(notify.payload)
                        except ValueError:
                            subscription._has_been_notified.set()
                            continue
                        if pending is None or position > pending:
                            pending = position
                    if pending is not None:
                        row = conn.execute("SELECT es_feed_horizon() AS h").fetchone()
                        if row is not None and row["h"] is not None and row["h"] >= pending:
                            pending = None
                        subscription._has_been_notified.set()
            finally:
                with contextlib.suppress(Exception):
                    conn.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
    except BaseException as e:
        if subscription._thread_error is None:
            subscription._thread_error = e
        subscription.stop()


class EventStoreSubscription(ListenNotifySubscription[EventStoreApplicationRecorder]):
    """Pulls with es_read_category whenever event_store sends a NOTIFY on
    channel ``event_store`` (after commits)."""

    def __init__(
        self,
        recorder: EventStoreApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._listen_thread = Thread(target=_listen, args=(self,), daemon=True)
        self._listen_thread.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._listen_thread.join()


class EventStoreTrackingRecorder(EventStoreRecorder, TrackingRecorder):
    """Tracking = event_store checkpoints, consumer ``<tracking name>:<upstream>``."""

    def __init__(
        self, datastore: PostgresDatastore, *, tracking_name: str = "notification_tracking"
    ):
        super().__init__(datastore)
        self.tracking_name = tracking_name

    def consumer_name(self, application_name: str) -> str:
        return f"{self.tracking_name}:{application_name}"

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_tracking(self, tracking: Tracking) -> None:
        with self.datastore.get_connection() as conn, _library_errors():
            conn.execute(
                "SELECT es_save_checkpoint(%s, %s)",
                (self.consumer_name(tracking.application_name), tracking.notification_id),
                prepare=True,
            )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def max_tracking_id(self, application_name: str) -> int | None:
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT es_checkpoint(%s) AS position",
                (self.consumer_name(application_name),),
                prepare=True,
            ).fetchone()
        assert row is not None
        return row["position"]


class EventStoreProcessRecorder(
    EventStoreTrackingRecorder, EventStoreApplicationRecorder, ProcessRecorder
):
    """Events and the tracking checkpoint in one transaction."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        category: str = "stored_events",
        tracking_name: str = "notification_tracking",
    ):
        EventStoreTrackingRecorder.__init__(self, datastore, tracking_name=tracking_name)
        EventStoreApplicationRecorder.__init__(self, datastore, category=category)


class EventStoreFactory(
    BasePostgresFactory[EventStoreTrackingRecorder],
    InfrastructureFactory[EventStoreTrackingRecorder],
):
    """Infrastructure factory. Connection settings are the library's usual
    POSTGRES_DBNAME, POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER,
    POSTGRES_PASSWORD (and the other POSTGRES_* pool settings).

    EVENTSTORE_CATEGORY_PREFIX overrides the application name as the prefix of
    the category names (``<prefix>_events``, ``<prefix>_snapshots``,
    ``<prefix>_tracking``).
    """

    EVENTSTORE_CATEGORY_PREFIX = "EVENTSTORE_CATEGORY_PREFIX"

    aggregate_recorder_class = EventStoreAggregateRecorder
    application_recorder_class = EventStoreApplicationRecorder
    tracking_recorder_class = EventStoreTrackingRecorder
    process_recorder_class = EventStoreProcessRecorder

    def _prefix(self, default: str) -> str:
        prefix = self.env.get(self.EVENTSTORE_CATEGORY_PREFIX) or self.env.name.lower()
        return prefix or default

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        recorder = type(self).aggregate_recorder_class(
            datastore=self.datastore,
            category=self._prefix("stored") + "_" + purpose,
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls: type[EventStoreApplicationRecorder] = (
            resolve_topic(topic) if topic else type(self).application_recorder_class
        )
        assert issubclass(cls, EventStoreApplicationRecorder)
        recorder = cls(datastore=self.datastore, category=self._prefix("stored") + "_events")
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def tracking_recorder(
        self, tracking_recorder_class: type[Any] | None = None
    ) -> Any:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = (
                resolve_topic(topic) if topic else type(self).tracking_recorder_class
            )
        assert tracking_recorder_class is not None
        assert issubclass(tracking_recorder_class, EventStoreTrackingRecorder)
        recorder = tracking_recorder_class(
            datastore=self.datastore,
            tracking_name=self._prefix("notification") + "_tracking",
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls: type[EventStoreProcessRecorder] = (
            resolve_topic(topic) if topic else type(self).process_recorder_class
        )
        assert issubclass(cls, EventStoreProcessRecorder)
        recorder = cls(
            datastore=self.datastore,
            category=self._prefix("stored") + "_events",
            tracking_name=self._prefix("notification") + "_tracking",
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder


Factory = EventStoreFactory
