"""Routing experiments' assignment queue (control/routing_experiments.py) over a real SQLite store: a
reward looked up while the periodic flush is still storing the rows it took finds them (it waits for that
flush), rather than finding the queue empty and the rows not yet stored."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.config import Settings
from moorage.control.context import Context
from moorage.control.routing_experiments import RoutingExperiments
from moorage.serving.route_table import RouteTable
from moorage.store.artifacts import ArtifactStore
from moorage.store.metadata import MetadataStore


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    settings = Settings.load(home=tmp_path / "home")
    settings.home.mkdir(parents=True, exist_ok=True)
    context = Context(settings, MetadataStore(settings.database_url), ArtifactStore(settings.models_dir),
                      RouteTable(settings.logs_dir))
    try:
        yield context
    finally:
        context.store.close()


def test_a_flush_waits_for_the_rows_another_flush_is_storing(ctx: Context) -> None:
    experiments = RoutingExperiments(ctx)
    record = experiments.assignments.record
    storing, release = threading.Event(), threading.Event()

    def slow_record(rows: list) -> None:  # the periodic flush's write, held until the test lets it go
        storing.set()
        assert release.wait(30)
        record(rows)

    now = time.time()
    experiments.pending.extend(("ep", f"id-{i}", "A", now, "1", "text/csv") for i in range(50))

    async def scenario() -> tuple[bool, dict]:
        experiments.assignments.record = slow_record  # type: ignore[method-assign]
        periodic = asyncio.ensure_future(experiments.flush())
        await asyncio.wait_for(asyncio.to_thread(storing.wait, 30), 35)
        experiments.assignments.record = record  # type: ignore[method-assign]
        second = asyncio.ensure_future(experiments.flush())  # as a reward's lookup flushes first
        await asyncio.sleep(0.2)
        waited = not second.done()
        release.set()
        await asyncio.wait_for(asyncio.gather(periodic, second), 30)
        found = experiments.assignments.answers("ep", [f"id-{i}" for i in range(50)], not_before=now - 60)
        return waited, found

    try:
        waited, found = asyncio.run(scenario())
    finally:
        release.set()
    assert waited, "the second flush returned while the first was still storing its rows"
    assert len(found) == 50
