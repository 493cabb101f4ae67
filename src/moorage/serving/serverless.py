"""A serverless variant's pool (``ServerlessConfig``): no instance until a request needs one.

SageMaker's serverless endpoints have no instances to size: a request that finds none waits while
one is provisioned (a cold start), at most ``MaxConcurrency`` requests are in flight at once (more
are throttled), ``ProvisionedConcurrency`` stays warm, and what sits idle goes away. Here that is an
``InstancePool`` of one instance process at most (the process's server serves concurrent requests
with the threads its memory size gives it), which:

* starts its instance when the first request arrives and makes the request wait for it (bounded by
  the start timeout); the wait shows in the request's ``OverheadLatency``, the start itself is the
  instance's ``ModelSetupTime`` (``metrics/sampler.py``);
* counts what is in flight (requests waiting for the cold start included) and raises ``Throttled``
  beyond ``MaxConcurrency``, before the request takes any capacity;
* keeps ``floor`` instances (1 with ProvisionedConcurrency, else 0) and stops the instance once
  nothing has been in flight for ``idle_timeout`` seconds (``MOORAGE_SERVERLESS_IDLE_TIMEOUT``).

The pool is a subclass rather than a wrapper around the route so that everything reading pools
(snapshots, metrics, the desired-state convergence) sees an ordinary pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moorage.serving.instance import InstanceState
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers import Launcher
from moorage.serving.pool import InstancePool, Member, NoCapacity

log = logging.getLogger("moorage.serverless")

# ServerlessConfig's bounds, as SageMaker checks them.
MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_CONCURRENCY = 200


@dataclass(frozen=True)
class ServerlessSpec:
    """A variant's ServerlessConfig and the server's idle time for it."""

    memory_mb: int
    max_concurrency: int
    provisioned_concurrency: int = 0
    idle_timeout: float = 300.0

    @property
    def floor(self) -> int:
        """Instances kept warm: one when any concurrency is provisioned."""
        return 1 if self.provisioned_concurrency > 0 else 0


class Throttled(Exception):
    """The variant already has MaxConcurrency invocations in flight."""


class ServerlessPool(InstancePool):
    def __init__(self, endpoint: str, variant: str, launch: LaunchSpec | Sequence[LaunchSpec], launcher: Launcher,
                 log_dir: Path, spec: ServerlessSpec, start_timeout: float = 120.0):
        super().__init__(endpoint, variant, launch, launcher, log_dir, start_timeout)
        self.spec = spec
        self.waiting = 0  # requests waiting for a cold start
        self.cold_starts = 0
        self._last_busy = time.monotonic()
        self._growth: asyncio.Task[None] | None = None
        self._growth_error: BaseException | None = None
        self._reaper: asyncio.Task[None] | None = None

    # Admission ------------------------------------------------------------------------------------
    def in_flight(self) -> int:
        return sum(i.outstanding for i in self.instances) + self.waiting

    def pick(self) -> Member | None:
        if self.in_flight() >= self.spec.max_concurrency:
            raise Throttled(f"variant {self.variant} of endpoint {self.endpoint} has {self.spec.max_concurrency} "
                            f"invocation(s) in flight, its MaxConcurrency")
        self._last_busy = time.monotonic()
        return super().pick()

    async def acquire(self, timeout: float) -> Member:
        """Wait for an instance, starting one when there is none (a cold start). The wait is bounded by
        the longer of ``timeout`` and the start timeout: a cold start takes what a start takes."""
        instance = super().pick()
        if instance is not None:
            return instance
        self.waiting += 1
        try:
            self._grow()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(timeout, self.start_timeout + 5.0)
            while instance is None:
                if self.closed:
                    raise NoCapacity(f"variant {self.variant} of endpoint {self.endpoint} is stopping")
                if self._growth is None and self._growth_error is not None and not self._live():
                    raise NoCapacity(f"variant {self.variant} of endpoint {self.endpoint} could not start an "
                                     f"instance: {self._growth_error}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoCapacity(f"variant {self.variant} of endpoint {self.endpoint} has no instance in "
                                     f"service after waiting {max(timeout, self.start_timeout + 5.0):g} s")
                self._ready_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready_changed.wait(), min(remaining, 1.0))
                instance = super().pick()
                if instance is None and not self._live() and self._growth is None:
                    self._grow()  # the instance went away (idle, crashed) while this request waited
            return instance
        finally:
            self.waiting -= 1
            self._last_busy = time.monotonic()

    def _live(self) -> list[Member]:
        return [i for i in self.instances if i.state in (InstanceState.IN_SERVICE, InstanceState.PENDING)]

    def _grow(self) -> None:
        """Start the instance in the background unless one is serving or starting."""
        if self._live() or (self._growth is not None and not self._growth.done()) or self.closed:
            return
        self.cold_starts += 1
        self._growth_error = None
        log.info("serverless variant %s of endpoint %s: cold start", self.variant, self.endpoint)
        self._growth = asyncio.get_running_loop().create_task(self._start_one())

    async def _start_one(self) -> None:
        try:
            await InstancePool.scale_to(self, max(1, self.spec.floor))
        except Exception as exc:  # the waiters report it; the next request tries again
            self._growth_error = exc
            log.error("serverless variant %s of endpoint %s: the instance did not start: %s", self.variant,
                      self.endpoint, exc)
            self.desired = self.spec.floor
        finally:
            self._growth = None
            self._ready_changed.set()

    # Sizing ---------------------------------------------------------------------------------------
    async def start(self, count: int) -> None:
        await super().start(count)
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def scale_to(self, count: int, drain_timeout: float = 30.0) -> None:
        """What the control plane asks (the provisioned floor) is a minimum: instances busy with
        requests stay until they have been idle for the idle timeout."""
        if count > len(self._live()):
            await InstancePool.scale_to(self, count, drain_timeout)

    async def _reap_idle(self) -> None:
        interval = min(1.0, max(0.05, self.spec.idle_timeout / 4))
        while not self.closed:
            await asyncio.sleep(interval)
            if self.in_flight() > 0 or (self._growth is not None and not self._growth.done()):
                self._last_busy = time.monotonic()
                continue
            live = self._live()
            if len(live) > self.spec.floor and time.monotonic() - self._last_busy >= self.spec.idle_timeout:
                log.info("serverless variant %s of endpoint %s: idle for %g s, stopping %d instance(s)",
                         self.variant, self.endpoint, self.spec.idle_timeout, len(live) - self.spec.floor)
                try:
                    await InstancePool.scale_to(self, self.spec.floor)
                except Exception:
                    log.exception("stopping the idle instance of %s/%s failed", self.endpoint, self.variant)

    async def close(self, drain_timeout: float = 30.0) -> None:
        self.closed = True
        tasks = [t for t in (self._reaper, self._growth) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().close(drain_timeout)
