"""MetricsConfig.MetricPublishFrequencyInSeconds: each endpoint's metrics are published at its own period.

The service's ticker is driven with explicit times (``tick(now=...)``), so the test is exact and
needs no waiting: an endpoint at 10 s gets one datapoint per 10 s, one at the server's 60 s one per
minute, and a window stays open (its requests kept, none lost) until its endpoint's period ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moorage.config import Settings
from moorage.metrics.service import MetricsService
from moorage.metrics.vocabulary import INVOCATION_NAMESPACE, INVOCATIONS
from moorage.serving.invocation_events import InvocationEvent
from moorage.serving.route_table import RouteTable
from moorage.store.metadata import MetadataStore

T0 = 1_800_000_000.0  # a multiple of 60 and of 10


def _event(endpoint: str) -> InvocationEvent:
    return InvocationEvent(endpoint=endpoint, variant="AllTraffic", instance_id="i-1", status=200, arrived=T0,
                           model_seconds=0.001, total_seconds=0.002, request_body=b"", forwarded_headers=b"",
                           response_body=b"", response_content_type=None)


@pytest.fixture()
def service(tmp_path: Path) -> MetricsService:
    settings = Settings.load({"MOORAGE_METRICS_PERIOD": "60"}, home=tmp_path)
    store = MetadataStore(settings.database_url or "")
    svc = MetricsService(settings, store, RouteTable(tmp_path / "logs"))
    svc.sampler = None  # no instance processes here: invocations only
    svc._last_tick = T0 + 0.05
    return svc


def _sums(svc: MetricsService, endpoint: str, period: int) -> dict[float, float]:
    points = svc.statistics(INVOCATION_NAMESPACE, INVOCATIONS, {"EndpointName": endpoint, "VariantName": "AllTraffic"},
                            "Sum", T0 - 600, T0 + 600, period)
    return {p.timestamp - T0: p.value for p in points}


def test_each_endpoint_publishes_at_its_own_period(service: MetricsService) -> None:
    service.set_publish_period("fast", 10)
    assert service.tick_period == 10
    assert service.publish_period("fast") == 10 and service.publish_period("slow") == 60

    async def run() -> None:
        for second in range(0, 60):  # one request to each endpoint per second, a tick after each 10 s
            assert service.recorder is not None
            service.recorder.observe(_event("fast"))
            service.recorder.observe(_event("slow"))
            if second % 10 == 9:
                await service.tick(now=T0 + second + 1.05)
                # The slow endpoint's window is open until its minute ends: nothing of it published yet.
                if second < 59:
                    assert _sums(service, "slow", 10) == {}
                    assert ("slow", "AllTraffic", "i-1") in service.recorder.windows

    asyncio.run(run())
    assert _sums(service, "fast", 10) == {0.0: 10, 10.0: 10, 20.0: 10, 30.0: 10, 40.0: 10, 50.0: 10}
    assert _sums(service, "slow", 10) == {0.0: 60}  # one datapoint for the minute
    assert _sums(service, "fast", 60) == _sums(service, "slow", 60) == {0.0: 60}


def test_the_flush_on_stop_publishes_every_open_window(service: MetricsService) -> None:
    service.set_publish_period("fast", 10)

    async def run() -> None:
        assert service.recorder is not None
        for _ in range(3):
            service.recorder.observe(_event("fast"))
            service.recorder.observe(_event("slow"))
        await service.tick(now=T0 + 10.05)  # fast's first 10 s
        for _ in range(2):
            service.recorder.observe(_event("fast"))
            service.recorder.observe(_event("slow"))
        await service.tick(final=True, now=T0 + 15)

    asyncio.run(run())
    assert _sums(service, "fast", 10) == {0.0: 3, 10.0: 2}
    assert _sums(service, "slow", 60) == {0.0: 5}  # nothing lost: the partial minute on stop


def test_back_to_the_servers_period(service: MetricsService) -> None:
    service.set_publish_period("fast", 10)
    service.set_publish_period("fast", None)
    assert service.tick_period == 60
    service.set_publish_period("other", 60)  # the server's own: no change
    assert service.tick_period == 60 and service.publish_period("other") == 60
