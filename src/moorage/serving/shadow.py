"""Shadow variants: a sampled copy of each production request, sent after production has answered.

A ``ShadowMirror`` is one of the route's invocation observers, so it sees a production invocation
only once its reply is on its way: the caller's latency never includes the shadow's. ``observe``
only appends the event to a bounded queue (a copy that does not fit is dropped and counted, never
queued without bound); a few worker tasks send the copies to the shadow variant's pool, compare each
answer with production's (exactly, and number by number within a tolerance) and hand the shadow's
own ``InvocationEvent`` to the route's observers, so metrics and data capture record the shadow
under its variant name. A slow or failing shadow costs production nothing but those workers, and
the shadow's instances run only on spare CPU (``LaunchSpec.background``: SCHED_IDLE), so on a
machine whose cores production also needs, a shadow as busy as production yields to it at once
(under full load it falls behind, and its copies are dropped and counted).

The sampled share is SageMaker's: the shadow variant's weight over the production variants' (a
shadow at 0.5 next to a production variant at 1.0 receives half the requests), at most all of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable

from datasketches import kll_floats_sketch

from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout
from moorage.serving.invocation_events import InvocationEvent
from moorage.serving.pool import NoCapacity
from moorage.serving.router import VariantRoute

log = logging.getLogger("moorage.shadow")

ACQUIRE_TIMEOUT_S = 5.0
# Two answers agree "within tolerance" when every number in them is this close (relative or absolute).
TOLERANCE = 1e-3
_NUMBER = re.compile(rb"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class ShadowStats:
    """What the shadow did with its copies, beside production: counts, agreement, latencies."""

    def __init__(self) -> None:
        self.sampled = 0  # copies taken for the shadow
        self.dropped = 0  # copies that did not fit in the queue
        self.sent = 0
        self.errors = 0  # no answer, or an answer that was not a success
        self.compared = 0  # both answered with success
        self.agreed_exactly = 0
        self.agreed_within_tolerance = 0
        self.shadow_ms = kll_floats_sketch(200)
        self.production_ms = kll_floats_sketch(200)

    def to_dict(self) -> dict[str, object]:
        def quantiles(sketch: kll_floats_sketch) -> dict[str, float] | None:
            if sketch.is_empty():
                return None
            return {f"p{int(q * 100)}": round(sketch.get_quantile(q), 3) for q in (0.5, 0.9, 0.99)}

        compared = self.compared or 1
        return {"Sampled": self.sampled, "Dropped": self.dropped, "Sent": self.sent, "Errors": self.errors,
                "Compared": self.compared, "AgreementExact": round(self.agreed_exactly / compared, 4),
                "AgreementWithinTolerance": round(self.agreed_within_tolerance / compared, 4),
                "ShadowModelLatencyMs": quantiles(self.shadow_ms),
                "ProductionModelLatencyMs": quantiles(self.production_ms)}


def agree_within(a: bytes, b: bytes, tolerance: float = TOLERANCE) -> bool:
    """Same text around the numbers, and each pair of numbers within ``tolerance``."""
    if _NUMBER.sub(b"#", a) != _NUMBER.sub(b"#", b):
        return False
    return all(math.isclose(float(x), float(y), rel_tol=tolerance, abs_tol=tolerance)
               for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b), strict=True))


class ShadowMirror:
    def __init__(self, endpoint: str, shadow: VariantRoute, share: float, production: frozenset[str], *,
                 notify: Callable[[InvocationEvent], None], queue_records: int, concurrency: int,
                 timeout: float) -> None:
        self.endpoint = endpoint
        self.shadow = shadow
        self.share = min(1.0, max(0.0, share))
        self.production = production
        self.notify = notify
        self.queue_records = queue_records
        self.concurrency = concurrency
        self.timeout = timeout
        self.stats = ShadowStats()
        self._queue: deque[InvocationEvent] = deque()
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        return self.shadow.name

    def reshare(self, production_weight: float) -> None:
        """The shadow's or production's weights changed: its sampled share follows (SageMaker's ratio)."""
        self.share = min(1.0, max(0.0, self.shadow.current_weight / production_weight if production_weight else 0.0))

    # The observer: on the event loop, after production's reply -------------------------------------
    def observe(self, event: InvocationEvent) -> None:
        if event.variant not in self.production or event.status >= 300:
            return  # shadows' own events, and requests production did not answer
        if self.share < 1.0 and random.random() >= self.share:
            return
        self.stats.sampled += 1
        if len(self._queue) >= self.queue_records:
            self.stats.dropped += 1
            return
        self._queue.append(event)
        self._ready.set()

    # The workers --------------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.concurrency)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            event = self._queue.popleft()
            try:
                await self._mirror(event)
            except Exception:  # a shadow's failure is counted, never raised into anything
                log.exception("shadow %s of %s failed on a copy", self.name, self.endpoint)
                self.stats.errors += 1

    async def _mirror(self, event: InvocationEvent) -> None:
        arrived, started = time.time(), time.perf_counter()
        pool = self.shadow.pool
        self.stats.sent += 1
        instance_id, status, body, content_type, model_seconds = "", 503, b"", None, 0.0
        try:
            instance = pool.pick() or await pool.acquire(ACQUIRE_TIMEOUT_S)
            instance_id = instance.id
            hop = time.perf_counter()
            response = await instance.invoke(event.request_body, event.forwarded_headers, self.timeout)
            model_seconds = time.perf_counter() - hop
            status, body, content_type = response.status, response.body, response.content_type
        except NoCapacity:
            status = 503
        except InstanceTimeout:
            status = 504
        except InstanceConnectionError:
            status = 502
        stats = self.stats
        if status >= 300:
            stats.errors += 1
        else:
            stats.compared += 1
            stats.shadow_ms.update(model_seconds * 1000)
            stats.production_ms.update(event.model_seconds * 1000)
            if body == event.response_body:
                stats.agreed_exactly += 1
                stats.agreed_within_tolerance += 1
            elif agree_within(body, event.response_body):
                stats.agreed_within_tolerance += 1
        self.notify(InvocationEvent(self.endpoint, self.name, instance_id, status, arrived, model_seconds,
                                    time.perf_counter() - started, event.request_body, event.forwarded_headers,
                                    body, content_type))

    def backlog(self) -> int:
        return len(self._queue)

