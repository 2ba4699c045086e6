"""The eventsourcing library's DCB recorder tests and a DCB application, run against
event_store's es_dcb_append and es_dcb_read (module eventsourcing_eventstore.dcb).

Each test gets a fresh database, as in test_recorders.py.
"""

from __future__ import annotations

import threading
from typing import Any

from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.dcb.persistence import DCBInfrastructureFactory
from eventsourcing.dcb.tests import DCBRecorderTestCase
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import Environment

from eventsourcing_eventstore.dcb import EventStoreDCBFactory, EventStoreDCBRecorder
from test_recorders import FreshDatabase


class TestDCBRecorder(FreshDatabase, DCBRecorderTestCase):
    def make_recorder(self) -> EventStoreDCBRecorder:
        env = dict(self.env_vars, PERSISTENCE_MODULE="eventsourcing_eventstore.dcb")
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


class TestDCBApplication(FreshDatabase):
    """The library's DCBApplication, on this module, saving and reading through it."""

    def test_application_appends_and_reads_through_the_recorder(self) -> None:
        from eventsourcing.dcb.application import DCBApplication

        env: dict[str, Any] = dict(self.env_vars, PERSISTENCE_MODULE="eventsourcing_eventstore.dcb")
        with DCBApplication(env=env) as app:
            assert isinstance(app.recorder, EventStoreDCBRecorder)
            last = app.recorder.append([DCBEvent(type="A", data=b"1", tags=["t"])])
            events = list(app.recorder.read(DCBQuery(items=[DCBQueryItem(tags=["t"])])))
            assert [e.position for e in events] == [last]
