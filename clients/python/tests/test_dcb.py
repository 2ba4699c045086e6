"""The eventsourcing library's DCB recorder tests, and its DCB application with its projection
runner, against event_store's es_dcb_append and es_dcb_read (module eventsourcing_eventstore.dcb).

Each test gets a fresh database, as in test_recorders.py.
"""

from __future__ import annotations

import threading
from typing import Any

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.dcb.persistence import DCBInfrastructureFactory
from eventsourcing.dcb.tests import DCBRecorderTestCase
from eventsourcing.persistence import DataError, IntegrityError
from eventsourcing.popo import POPOTrackingRecorder
# A module, not names: pytest would collect the generic base classes themselves.
from eventsourcing.tests import projection as generic_projection
from eventsourcing.utils import Environment

from eventsourcing_eventstore.dcb import EventStoreDCBFactory, EventStoreDCBRecorder
from test_recorders import FreshDatabase, _admin


class TestDCBRecorder(FreshDatabase, DCBRecorderTestCase):
    def make_recorder(self, **settings: str) -> EventStoreDCBRecorder:
        env = dict(self.env_vars, PERSISTENCE_MODULE="eventsourcing_eventstore.dcb", **settings)
        factory = DCBInfrastructureFactory.construct(Environment("", env))
        assert isinstance(factory, EventStoreDCBFactory)
        self._factories.append(factory)
        recorder = factory.dcb_recorder()
        assert isinstance(recorder, EventStoreDCBRecorder)
        return recorder

    def test_append_read(self) -> None:
        self._test_append_read(self.make_recorder())

    def test_append_subscribe(self) -> None:
        self._test_append_subscribe(self.make_recorder())

    def test_concurrent_conditional_appends_let_one_win(self) -> None:
        recorder = self.make_recorder()
        recorder.append([DCBEvent(type="CourseDefined", data=b"{}", tags=["course:1"])])
        head = recorder.read().head
        condition = DCBAppendCondition(
            fail_if_events_match=DCBQuery(items=[DCBQueryItem(tags=["course:1"])]),
            after=head,
        )
        barrier = threading.Barrier(8)
        outcomes: list[str] = []

        def join(i: int) -> None:
            barrier.wait()
            try:
                recorder.append(
                    [DCBEvent(type="Joined", data=b"x", tags=["course:1", f"student:{i}"])],
                    condition,
                )
                outcomes.append("won")
            except IntegrityError:
                outcomes.append("refused")

        threads = [threading.Thread(target=join, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused"] * 7 + ["won"], outcomes
        # The refused appends used no position.
        assert recorder.read().head == 2


    def test_statements_prepared_again_after_discard_all(self) -> None:
        # The recorder prepares its statements once per connection; a pool's DISCARD ALL
        # drops them, and the next call prepares them again (one connection: the one dropped).
        recorder = self.make_recorder(POSTGRES_POOL_SIZE="1")
        query = DCBQuery(items=[DCBQueryItem(tags=["t"])])
        recorder.append([DCBEvent(type="A", data=b"\x00\xff", tags=["t"])])
        assert [e.event.data for e in recorder.read(query)] == [b"\x00\xff"]
        with recorder.datastore.get_connection() as conn:
            conn.execute("DISCARD ALL")
        head = recorder.read(query).head
        appended = recorder.append(
            [DCBEvent(type="B", data=b"", tags=["t"])], DCBAppendCondition(query, head)
        )
        assert appended == 2
        assert [(e.event.type, e.position) for e in recorder.read(query, after=1)] == [("B", 2)]

    def test_a_read_is_an_iterator_consumed_once(self) -> None:
        recorder = self.make_recorder()
        recorder.append([DCBEvent(type=t, data=t.encode(), tags=["t"]) for t in "ABC"])
        response = recorder.read(DCBQuery(items=[DCBQueryItem(tags=["t"])]))
        assert next(response).event.data == b"A"
        assert [e.position for e in response] == [2, 3]
        assert list(response) == []
        assert response.head == 3

    def test_errors_are_the_library_s(self) -> None:
        # What psycopg would raise, as the library maps it: an invalid query is a DataError
        # (22023); a refused condition an IntegrityError (ES001).
        recorder = self.make_recorder()
        with self.assertRaises(DataError):
            recorder.read(DCBQuery(items=[DCBQueryItem(tags=[""])]))
        recorder.append([DCBEvent(type="A", data=b"", tags=["t"])])
        with self.assertRaises(IntegrityError):
            recorder.append(
                [DCBEvent(type="A", data=b"", tags=["t"])],
                DCBAppendCondition(DCBQuery(items=[DCBQueryItem(tags=["t"])]), None),
            )

    def test_a_lost_connection_is_retried_on_a_new_one(self) -> None:
        # The library's retry runs again on an OperationalError, as get_connection maps a
        # lost connection; the pool replaces the connection lost.
        recorder = self.make_recorder(POSTGRES_POOL_SIZE="1", POSTGRES_MAX_OVERFLOW="0")
        recorder.append([DCBEvent(type="A", data=b"a", tags=["t"])])
        with recorder.datastore.get_connection() as conn:
            pid = conn.pgconn.backend_pid
        with recorder.datastore.get_connection() as conn:
            assert conn.pgconn.backend_pid == pid
        with _admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        assert [e.event.data for e in recorder.read()] == [b"a"]
        with recorder.datastore.get_connection() as conn:
            assert conn.pgconn.backend_pid != pid

    def test_events_other_appends_wrote_are_read_with_their_json(self) -> None:
        # es_dcb_read shows every event with the query's tags, whoever appended it; one whose
        # data is not this recorder's ({"data": "<base64>"}) comes back as its JSON text.
        recorder = self.make_recorder()
        query = DCBQuery(items=[DCBQueryItem(tags=["course:1"])])
        recorder.append([DCBEvent(type="CourseDefined", data=b"\x00", tags=["course:1"])])
        with recorder.datastore.get_connection() as conn:
            conn.execute(
                "SELECT es_append('course-1', 'StudentJoined', %s::jsonb, tags => %s)",
                ('{"student": "ann", "data": null}', ["course:1"]),
            )
        assert [(e.event.type, e.event.data) for e in recorder.read(query)] == [
            ("CourseDefined", b"\x00"),
            ("StudentJoined", b'{"data": null, "student": "ann"}'),
        ]
        with recorder.datastore.get_connection() as conn:
            conn.execute(
                "SELECT es_append('course-1', 'Noted', '{\"data\": \"not base64!\"}', tags => %s)",
                (["course:1"],),
            )
        with self.assertRaises(DataError):
            recorder.read(query)

    def test_names_with_quotes_backslashes_and_other_scripts_go_and_come_back(self) -> None:
        # The recorder writes its JSON itself (not with json.dumps): every name is quoted.
        recorder = self.make_recorder()
        odd = ['say "hi"', "back\\slash", "kurs:ü-名", "a/b\\u0041"]
        recorder.append([DCBEvent(type='Joined "late"', data=b"x", tags=odd)])
        query = DCBQuery(items=[DCBQueryItem(types=['Joined "late"'], tags=odd[1:])])
        (read,) = recorder.read(query)
        assert (read.event.type, read.event.tags) == ('Joined "late"', odd)
        condition = DCBAppendCondition(fail_if_events_match=query, after=read.position - 1)
        with self.assertRaises(IntegrityError):
            recorder.append([DCBEvent(type="Left", data=b"y", tags=odd[:1])], condition)

# -- the library's DCB application and projection runner ---------------------------

class Counters(POPOTrackingRecorder, generic_projection.EventCountersView):
    """The view the library's test counts into, in memory (the view is not what is tested:
    the application's events, written and read through event_store, are)."""

    def __init__(self) -> None:
        super().__init__()
        self._counts = [0, 0]

    def _incr(self, i: int, tracking: Any) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self._insert_tracking(tracking)
            self._counts[i] += 1

    def get_created_event_counter(self) -> int:
        return self._counts[0]

    def get_subsequent_event_counter(self) -> int:
        return self._counts[1]

    def incr_created_event_counter(self, tracking: Any) -> None:
        self._incr(0, tracking)

    def incr_subsequent_event_counter(self, tracking: Any) -> None:
        self._incr(1, tracking)


class TestDCBApplicationProjection(
    FreshDatabase, generic_projection.TaggedDecisionCountersProjectionTestCase
):
    """The library's DCBApplication saving enduring objects' decisions through this module,
    and its projection runner following them through this module's subscription."""

    view_class = Counters

    def setUp(self) -> None:
        super().setUp()
        self.env = dict(  # type: ignore[assignment]
            self.env_vars,
            PERSISTENCE_MODULE="eventsourcing_eventstore.dcb",
            MAPPER_TOPIC="eventsourcing.dcb.msgpack:MessagePackMapper",
            # The projection (named "eventcounters") keeps its view in memory.
            EVENTCOUNTERS_PERSISTENCE_MODULE="eventsourcing.popo",
        )
