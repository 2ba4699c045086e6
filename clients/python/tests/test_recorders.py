"""The eventsourcing library's generic recorder tests, run against event_store.

Each test gets a fresh database, made with CREATE DATABASE ... TEMPLATE from the
database named by ES_TEST_TEMPLATE_DB (which has the extension installed), so that
global positions start at 1 as the generic tests expect; it is dropped afterwards.

Environment: ES_TEST_HOST (socket dir or host), ES_TEST_PORT, ES_TEST_USER
(default postgres), ES_TEST_PASSWORD (default empty), ES_TEST_TEMPLATE_DB.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, ClassVar
from unittest import TestCase
from uuid import uuid4

import psycopg
from psycopg import sql

from eventsourcing.persistence import InfrastructureFactory
# Imported as modules, not names: pytest would collect the generic base classes
# themselves if they were names in this module.
from eventsourcing.tests import application as generic_app
from eventsourcing.tests import persistence as generic
from eventsourcing.utils import Environment

import eventsourcing_eventstore as es_module
from eventsourcing_eventstore import (
    EventStoreAggregateRecorder,
    EventStoreApplicationRecorder,
    EventStoreFactory,
    EventStoreProcessRecorder,
    EventStoreTrackingRecorder,
)

HOST = os.environ.get("ES_TEST_HOST", "/var/tmp/event_store")
PORT = os.environ.get("ES_TEST_PORT", "54320")
USER = os.environ.get("ES_TEST_USER", "postgres")
PASSWORD = os.environ.get("ES_TEST_PASSWORD", "")
TEMPLATE_DB = os.environ.get("ES_TEST_TEMPLATE_DB", "es_py_dev")

_counter = itertools.count(1)


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, dbname="postgres",
        autocommit=True,
    )


class FreshDatabase(TestCase):
    """Mixin: a fresh event_store database per test, and the library's env vars."""

    extra_env: ClassVar[dict[str, str]] = {}

    def setUp(self) -> None:
        self.dbname = f"{TEMPLATE_DB}_{os.getpid()}_{next(_counter)}"
        assert self.dbname.startswith("es_py_")
        with _admin() as conn:
            for attempt in range(50):
                try:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(self.dbname), sql.Identifier(TEMPLATE_DB)
                        )
                    )
                    break
                except psycopg.errors.ObjectInUse:
                    # A projection worker was still leaving the template (run-tests.sh
                    # closed it to connections): wait for it.
                    if attempt == 49:
                        raise
                    time.sleep(0.1)
        self._saved_environ = dict(os.environ)
        self.env_vars = {
            "PERSISTENCE_MODULE": "eventsourcing_eventstore",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": HOST,
            "POSTGRES_PORT": PORT,
            "POSTGRES_USER": USER,
            "POSTGRES_PASSWORD": PASSWORD,
            **self.extra_env,
        }
        os.environ.update(self.env_vars)
        # Used by InfrastructureFactoryTestCase.setUp to construct its factory.
        self.env = Environment(env=dict(self.env_vars))
        self._factories: list[InfrastructureFactory[Any]] = []
        super().setUp()

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            for factory in self._factories:
                factory.close()
            os.environ.clear()
            os.environ.update(self._saved_environ)
            with _admin() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.dbname)
                    )
                )

    def make_factory(self, name: str = "") -> EventStoreFactory:
        factory = InfrastructureFactory.construct(Environment(name, self.env_vars))
        assert isinstance(factory, EventStoreFactory)
        self._factories.append(factory)
        return factory


# -- aggregate recorder ---------------------------------------------------------


class TestAggregateRecorder(FreshDatabase, generic.AggregateRecorderTestCase):
    def create_recorder(self) -> EventStoreAggregateRecorder:
        recorder = self.make_factory().aggregate_recorder()
        assert isinstance(recorder, EventStoreAggregateRecorder)
        return recorder


class TestAggregateRecorderTextIDs(TestAggregateRecorder):
    extra_env: ClassVar[dict[str, str]] = {"ORIGINATOR_ID_TYPE": "text"}

    def new_originator_id(self) -> str:
        return f"account:{uuid4()}"


class TestSnapshotRecorder(FreshDatabase, generic.AggregateRecorderTestCase):
    def create_recorder(self) -> EventStoreAggregateRecorder:
        recorder = self.make_factory("App").aggregate_recorder("snapshots")
        assert isinstance(recorder, EventStoreAggregateRecorder)
        assert recorder.category == "app_snapshots"
        return recorder


# -- application recorder -------------------------------------------------------


class TestApplicationRecorder(FreshDatabase, generic.ApplicationRecorderTestCase):
    def create_recorder(self) -> EventStoreApplicationRecorder:
        recorder = self.make_factory().application_recorder()
        assert isinstance(recorder, EventStoreApplicationRecorder)
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()

    def test_categories_are_separate(self) -> None:
        # Two applications in one database: each sees its own events only.
        app1 = self.make_factory("App1").application_recorder()
        app2 = self.make_factory("App2").application_recorder()
        from eventsourcing.persistence import StoredEvent

        id1, id2 = self.new_originator_id(), self.new_originator_id()
        app1.insert_events([StoredEvent(id1, 1, "t", b"a")])
        app2.insert_events([StoredEvent(id2, 1, "t", b"b")])
        self.assertEqual([n.originator_id for n in app1.select_notifications(None, 10)], [id1])
        self.assertEqual([n.originator_id for n in app2.select_notifications(None, 10)], [id2])
        self.assertEqual(app1.max_notification_id(), 1)
        self.assertEqual(app2.max_notification_id(), 2)
        self.assertEqual(app2.select_events(id1), [])


class TestApplicationRecorderTextIDs(TestApplicationRecorder):
    extra_env: ClassVar[dict[str, str]] = {"ORIGINATOR_ID_TYPE": "text"}

    def new_originator_id(self) -> str:
        return f"account:{uuid4()}"


class TestNonInterleavingNotificationIDs(
    FreshDatabase, generic.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> EventStoreApplicationRecorder:
        recorder = self.make_factory().application_recorder()
        assert isinstance(recorder, EventStoreApplicationRecorder)
        return recorder


# -- tracking and process recorders ---------------------------------------------


class TestTrackingRecorder(FreshDatabase, generic.TrackingRecorderTestCase):
    def create_recorder(self) -> EventStoreTrackingRecorder:
        recorder = self.make_factory().tracking_recorder()
        assert isinstance(recorder, EventStoreTrackingRecorder)
        return recorder


class TestProcessRecorder(FreshDatabase, generic.ProcessRecorderTestCase):
    def create_recorder(self) -> EventStoreProcessRecorder:
        recorder = self.make_factory().process_recorder()
        assert isinstance(recorder, EventStoreProcessRecorder)
        return recorder


# -- factory ----------------------------------------------------------------------


class MyTrackingRecorder(EventStoreTrackingRecorder):
    pass


class TestFactory(FreshDatabase, generic.InfrastructureFactoryTestCase[EventStoreFactory]):
    def expected_factory_class(self) -> type[EventStoreFactory]:
        return EventStoreFactory

    def expected_aggregate_recorder_class(self) -> type[EventStoreAggregateRecorder]:
        return EventStoreAggregateRecorder

    def expected_application_recorder_class(
        self,
    ) -> type[EventStoreApplicationRecorder]:
        return EventStoreApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[EventStoreTrackingRecorder]:
        return EventStoreTrackingRecorder

    def tracking_recorder_subclass(self) -> type[EventStoreTrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[EventStoreProcessRecorder]:
        return EventStoreProcessRecorder


# -- the library's example application ------------------------------------------


class TestExampleApplication(FreshDatabase, generic_app.ExampleApplicationTestCase):
    expected_factory_topic = "eventsourcing_eventstore:EventStoreFactory"


def test_module_exports_one_factory() -> None:
    assert es_module.Factory is EventStoreFactory


# -- more of the library's generic tests, with PERSISTENCE_MODULE pointing here --

from eventsourcing.tests import projection as generic_projection  # noqa: E402


class TestEventSourcedProjection(
    FreshDatabase, generic_projection.EventSourcedProjectionTestCase
):
    """Application + event-sourced projection (a process application): exercises
    subscribe (LISTEN event_store + es_read_category), the process recorder
    (events and checkpoint in one transaction) and TrackingRecorder.wait."""


class TestApplication(FreshDatabase, generic_app.ApplicationTestCase):
    """The library's generic application tests, run with our persistence module."""


class TestWhereEventsGo(FreshDatabase):
    """Checks that the library's application really writes through event_store."""

    def test_application_uses_event_store(self) -> None:
        app = generic_app.BankAccounts(env={"IS_SNAPSHOTTING_ENABLED": "y"})
        try:
            self.assertIsInstance(app.factory, EventStoreFactory)
            account_id = app.open_account("Alice", "alice@example.com")
            app.take_snapshot(account_id)
        finally:
            app.close()
        with psycopg.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=self.dbname
        ) as conn:
            rows = conn.execute(
                "SELECT stream_id, stream_version, event_type, "
                "metadata->>'originatorVersion' FROM es_read_all(0, 10)"
            ).fetchall()
        self.assertEqual(
            [(r[0], r[1], r[3]) for r in rows],
            [
                (f"bankaccounts_events-{account_id}", 1, "1"),
                (f"bankaccounts_snapshots-{account_id}", 1, "1"),
            ],
        )
        self.assertEqual(rows[0][2], "eventsourcing.tests.domain:BankAccount.Opened")
