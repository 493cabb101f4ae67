"""Leader election over a real PostgreSQL server (tests/postgres_support.py), the router registry, SQLite,
and what a leader settles.

Two ``Leadership`` objects stand for two routers on one database: exactly one leads; when the leader's
session is ended by the server (``pg_terminate_backend``, as a dead leader's session is), the leader
steps down and the other leads within the stated bound. Settling touches only the work of routers
that are gone; a claim succeeds once; a schedule's missed fire is its latest, named the same by every
router. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from moorage.config import Settings
from moorage.control.context import ENDPOINT, OWNER, Context
from moorage.control.endpoints import IN_SERVICE, UPDATING
from moorage.control.job_runs import FAILED, IN_PROGRESS, STOPPED, STOPPING, JobRuns
from moorage.control.leadership import LOCK_KEY, Leadership
from moorage.control.monitoring_scheduler import fired_execution_name, latest_fire
from moorage.control.routers import Routers, lease_seconds
from moorage.control.schedule_expressions import ScheduleExpression
from moorage.control.settling import Settling
from moorage.store.metadata import MetadataStore, Resource
from postgres_support import PostgresServer, postgres_server  # noqa: F401 - a fixture

INTERVAL = 0.2


class Events:
    """What one router's callbacks saw, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.ticks = 0

    async def lead(self) -> None:
        self.seen.append("lead")

    async def step_down(self) -> None:
        self.seen.append("step_down")

    async def tick(self) -> None:
        self.ticks += 1


def election(url: str, events: Events) -> Leadership:
    return Leadership(url, INTERVAL, on_lead=events.lead, on_step_down=events.step_down, while_leading=events.tick)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def terminate_lock_holder(url: str) -> int:
    """End, from the server's side, the session that holds the controllers' advisory lock."""
    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = (%s::bigint & x'ffffffffffffffff'::bigint)",
            (LOCK_KEY,)).fetchall()
    return len(rows)


def test_one_of_two_leads_and_the_other_takes_over(postgres_server: PostgresServer) -> None:  # noqa: F811
    url = postgres_server.new_database()

    async def scenario() -> None:
        a_events, b_events = Events(), Events()
        a, b = election(url, a_events), election(url, b_events)
        await a.start()
        await b.start()
        try:
            assert a.leading and not b.leading
            assert a_events.seen == ["lead"] and b_events.seen == []
            await until(lambda: a_events.ticks >= 2, 5, "the leader's per-interval work runs")
            await asyncio.sleep(3 * INTERVAL)
            assert not b.leading and b_events.ticks == 0  # a non-leader keeps trying, and fails

            assert terminate_lock_holder(url) == 1
            took = await until(lambda: b.leading, 5, "b leads once a's session is gone")
            await until(lambda: not a.leading, 5, "a stepped down")
            assert a_events.seen == ["lead", "step_down"] and b_events.seen == ["lead"]
            # b tries every interval; a's check fails within one interval: both well inside 2 intervals + slack.
            assert took < 2 * INTERVAL + 1.0, took
            # a, no longer leading, tries again and fails while b holds the lock.
            await asyncio.sleep(3 * INTERVAL)
            assert not a.leading and b.leading

            await b.stop()  # a clean stop lets go at once
            await until(lambda: a.leading, 5, "a leads again after b stopped")
            assert b_events.seen == ["lead", "step_down"] and a_events.seen == ["lead", "step_down", "lead"]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_a_closed_connection_steps_down_within_an_interval_and_another_leads(
        postgres_server: PostgresServer) -> None:  # noqa: F811
    """The leader's own connection closes under it (the session ends: PostgreSQL frees the lock at once):
    it stops its controllers at its next check, and the other router leads. Which comes first is a race
    of two checks one interval apart (docs/cluster.md says so); both happen within the bound."""
    url = postgres_server.new_database()

    async def scenario() -> None:
        a_events, b_events = Events(), Events()
        a = Leadership(url, INTERVAL, on_lead=a_events.lead, on_step_down=a_events.step_down)
        b = Leadership(url, INTERVAL, on_lead=b_events.lead, on_step_down=b_events.step_down)
        await a.start()
        await b.start()
        try:
            assert a.leading and not b.leading
            a._conn.pgconn.finish()
            await until(lambda: not a.leading, INTERVAL + 3, "a to step down within its check interval")
            assert a_events.seen == ["lead", "step_down"]
            await until(lambda: b.leading, 5, "b leads")
            assert b_events.seen == ["lead"]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_sqlite_always_leads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'moorage.db'}"

    async def scenario() -> None:
        events = Events()
        lead = election(url, events)
        await lead.start()
        try:
            assert lead.leading and events.seen == ["lead"]
            await until(lambda: events.ticks >= 1, 5, "the leader's per-interval work runs")
        finally:
            await lead.stop()
        assert events.seen == ["lead", "step_down"] and not lead.leading

    asyncio.run(scenario())


def test_routers_alive_by_heartbeat(postgres_server: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    url = postgres_server.new_database()
    settings = Settings.load({"MOORAGE_LEADER_CHECK_SECONDS": "1"}, home=tmp_path / "a", database_url=url)
    store = MetadataStore(url)
    try:
        a, b = Routers(settings, store), Routers(settings, store)
        now = time.time()
        a.beat(now)
        b.beat(now)
        assert a.alive(now) == {a.id, b.id}
        lease = lease_seconds(1.0)
        assert lease == 5.0
        later = now + lease + 0.5
        a.beat(later)
        assert a.alive(later) == {a.id}  # b missed its beats
        assert {r["RouterId"] for r in a.describe()} == {a.id, b.id}
        a.beat(now + 11 * lease)  # b's row is ten leases old: forgotten
        assert {r["RouterId"] for r in a.describe()} == {a.id}
        b.beat(now + 11 * lease)  # a router that was only stalled registers again
        assert a.alive(now + 11 * lease) == {a.id, b.id}
        b.leave()
        assert a.alive(now + 11 * lease) == {a.id}
    finally:
        store.close()


def test_sqlite_routers_alive_is_this_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'moorage.db'}"
    settings = Settings.load({}, home=tmp_path, database_url=url)
    store = MetadataStore(url)
    try:
        earlier, this = Routers(settings, store), Routers(settings, store)
        earlier.beat()
        this.beat()
        # One server per home: whatever another id left was cut off by the last stop.
        assert this.alive() == {this.id}
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------
# settling what a gone router left, and firing a schedule once
# --------------------------------------------------------------------------------------------------
def _context(tmp_path: Path, url: str) -> Context:
    settings = Settings.load({}, home=tmp_path, database_url=url)
    store = MetadataStore(url)
    # Settling reads and writes rows only: no artifacts or routes are touched.
    return Context(settings, store, artifacts=None, routes=None)  # type: ignore[arg-type]


def test_only_work_of_routers_that_are_gone_is_settled(postgres_server: PostgresServer,  # noqa: F811
                                                       tmp_path: Path) -> None:
    ctx = _context(tmp_path, postgres_server.new_database())
    try:
        live, dead = "router-live", "router-dead"
        alive = {live}
        ctx.alive = lambda: alive
        runs = JobRuns(ctx, "transform-job", "transform job", "TransformEndTime", "The server stopped.")
        for name, owner in (("live-job", live), ("dead-job", dead), ("old-job", None)):
            body = {OWNER: owner} if owner else {}
            ctx.store.create("transform-job", name, f"arn:{name}", body, status=IN_PROGRESS)
        ctx.store.create("transform-job", "dead-stopping", "arn:dead-stopping", {OWNER: dead}, status=STOPPING)
        for name, owner in (("ep-live", live), ("ep-dead", dead)):
            ctx.store.create(ENDPOINT, name, f"arn:{name}", {OWNER: owner, "EndpointConfigName": "old",
                                                             "PendingDeploymentSummary": {"EndpointConfigName": "new"}},
                             status=UPDATING)
        settled = Settling(ctx, {"transform job": runs}).settle()
        assert settled == 4

        def status(kind: str, name: str) -> str | None:
            row = ctx.store.get(kind, name)
            assert row is not None
            return row.status

        assert status("transform-job", "live-job") == IN_PROGRESS  # a live router runs it: untouched
        assert status("transform-job", "dead-job") == FAILED
        assert status("transform-job", "old-job") == FAILED  # no owner: written before routers were named
        assert status("transform-job", "dead-stopping") == STOPPED
        assert status(ENDPOINT, "ep-live") == UPDATING
        ended = ctx.store.get(ENDPOINT, "ep-dead")
        assert ended is not None and ended.status == IN_SERVICE and "PendingDeploymentSummary" not in ended.body
        assert ended.body["EndpointConfigName"] == "old" and "rolled back" in ended.body["FailureReason"]
        alive.clear()  # the live router dies too
        assert Settling(ctx, {"transform job": runs}).settle() == 2
    finally:
        ctx.store.close()


def test_a_claim_succeeds_once(postgres_server: PostgresServer) -> None:  # noqa: F811
    store = MetadataStore(postgres_server.new_database())
    try:
        row = store.create("monitoring-execution", "e", "arn:e", {}, status="Pending")
        assert store.transition("monitoring-execution", "e", ["Pending"], "InProgress", {OWNER: "a"},
                                modified_at=row.modified_at)
        # A second router read the same Pending row: its claim fails, by status and by version.
        assert not store.transition("monitoring-execution", "e", ["Pending"], "InProgress", {OWNER: "b"})
        assert not store.transition("monitoring-execution", "e", ["InProgress"], "Pending", {},
                                    modified_at=row.modified_at)
        got = store.get("monitoring-execution", "e")
        assert got is not None and got.body == {OWNER: "a"}
    finally:
        store.close()


def test_a_missed_fire_runs_the_latest_and_its_name_is_the_same_everywhere() -> None:
    utc = dt.UTC
    every_4s = ScheduleExpression.parse("rate(4 seconds)")
    due = dt.datetime(2026, 1, 1, 0, 0, 4, tzinfo=utc)
    assert latest_fire(every_4s, due, dt.datetime(2026, 1, 1, 0, 0, 5, tzinfo=utc)) == due
    assert latest_fire(every_4s, due, dt.datetime(2026, 1, 1, 0, 0, 13, tzinfo=utc)) == due + dt.timedelta(seconds=8)
    hourly = ScheduleExpression.parse("cron(0 * ? * * *)")
    due = dt.datetime(2026, 1, 1, 3, 0, tzinfo=utc)
    assert latest_fire(hourly, due, dt.datetime(2026, 1, 2, 7, 30, tzinfo=utc)) == dt.datetime(2026, 1, 2, 7, 0,
                                                                                              tzinfo=utc)
    schedule = Resource("monitoring-schedule", "s", "arn:aws:sagemaker:r:1:monitoring-schedule/s", "Scheduled",
                        1767225600.25, 1767225600.25)
    again = Resource(**{**schedule.__dict__, "created_at": 1767225999.5})  # deleted and made again
    name = fired_execution_name(schedule, due)
    assert name == fired_execution_name(schedule, due) and name.startswith("model-monitoring-20260101030000-")
    assert name != fired_execution_name(schedule, due + dt.timedelta(hours=1))
    assert name != fired_execution_name(again, due)
