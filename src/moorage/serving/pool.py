"""The instances of one production variant: load balancing, health, replacement and resizing.

A member of the pool is an ``Instance`` or, for a model of several containers, a ``ContainerChain``
that behaves as one; the pool's launcher (``launchers/``) makes them, wherever they run.

The load balancer sends each request to the in-service instance with the fewest outstanding
requests, which keeps a slow instance (a long prediction, a GC pause) from collecting a queue while
its siblings idle. A supervisor task per instance replaces a process that dies, with exponential
backoff so a model that crashes at once cannot spin the machine.

Health checks go to a listener that predictions cannot block (``Instance.check_health``), so a busy
instance is never taken for a dead one. An instance that did not answer a request within the
invocation timeout is recycled (``recycle``): its work cannot be cancelled from outside the process,
and left running it would hold the model, and every request queued behind it, for as long as it takes.
So is one whose processes' resident memory passes its limit (its type's memory by default, watched at
each health check): a leaking model is replaced, with a log line and a count, before it takes the
machine's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance, InstanceStartError, InstanceState
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers import Launcher

log = logging.getLogger("moorage.pool")

Member = Instance | ContainerChain  # what the pool holds and balances over

MAX_BACKOFF_S = 30.0
RECYCLE_DRAIN_S = 30.0  # an instance recycled for its memory finishes its requests for at most this long


class NoCapacity(Exception):
    """No instance of the variant is in service (yet, or any more)."""


class InstancePool:
    multi_model = False  # see multi_model_pool.py
    def __init__(self, endpoint: str, variant: str, launch: LaunchSpec | Sequence[LaunchSpec], launcher: Launcher,
                 log_dir: Path, start_timeout: float = 120.0, on_change: Callable[[], None] | None = None,
                 fleet: str | None = None):
        self.endpoint = endpoint
        self.variant = variant
        # Names the pool's members where every router shares them (cluster mode on Ray over a shared
        # database): slot N of the fleet is the same actor for all routers. None: members are this pool's.
        self.fleet = fleet
        self._slots: dict[str, int] = {}  # member id -> its slot (0, 1, ...), shared members only
        # The containers of each member, in order; ``launch`` is the first (its runtime and type).
        self.launches: list[LaunchSpec] = [launch] if isinstance(launch, LaunchSpec) else list(launch)
        self.launch = self.launches[0]
        self.launcher = launcher
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self.instances: list[Member] = []
        self.ready: list[Member] = []
        self.desired = 0
        self.restarts = 0
        self.closed = False
        self._rr = 0
        self._ready_changed = asyncio.Event()
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._replacements: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references
        self._on_change = on_change
        self.health_checks = 0  # made since the pool started (a test waits on it rather than on time)
        # Instances replaced on purpose, by cause ("timeout", "memory"); counted in restarts too.
        self.recycled: dict[str, int] = {}

    # Load balancing -------------------------------------------------------------------------------
    def pick(self) -> Member | None:
        ready = self.ready
        n = len(ready)
        if n == 0:
            return None
        if n == 1:
            return ready[0]
        # Rotate the scan start so ties spread over instances instead of piling on the first.
        self._rr = (self._rr + 1) % n
        best = ready[self._rr]
        for i in range(1, n):
            candidate = ready[(self._rr + i) % n]
            if candidate.outstanding < best.outstanding:
                best = candidate
        return best

    async def acquire(self, timeout: float) -> Member:
        instance = self.pick()
        if instance is not None:
            return instance
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while instance is None:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closed:
                raise NoCapacity(f"variant {self.variant} of endpoint {self.endpoint} has no instance in service")
            self._ready_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_changed.wait(), remaining)
            instance = self.pick()
        return instance

    def _set_ready(self) -> None:
        self.ready = [i for i in self.instances if i.state == InstanceState.IN_SERVICE]
        self._ready_changed.set()
        if self._on_change:
            self._on_change()

    # Sizing ---------------------------------------------------------------------------------------
    async def start(self, count: int) -> None:
        """Bring up ``count`` instances; raise InstanceStartError (stopping any started) if one fails."""
        self.desired = count
        try:
            await self._add(count)
        except InstanceStartError:
            await self.close()
            raise

    async def scale_to(self, count: int, drain_timeout: float = 30.0) -> None:
        self.desired = count
        live = [i for i in self.instances if i.state in (InstanceState.IN_SERVICE, InstanceState.PENDING)]
        if count > len(live):
            await self._add(count - len(live))
        elif count < len(live):
            # Retire the least busy first: they drain fastest. Shared members go from the highest slot down,
            # so that every router retires the same ones.
            def order(member: Member) -> int:
                return -self._slots.get(member.id, 0) if self._shared() else member.outstanding

            victims = sorted(live, key=order)[: len(live) - count]
            await asyncio.gather(*(self._retire(v, drain_timeout) for v in victims))

    def _shared(self) -> bool:
        return self.fleet is not None and bool(getattr(self.launcher, "shared", False))

    def _new_members(self, count: int) -> list[Member]:
        if not self._shared():
            return [self.launcher.member(self.launches, self.log_dir) for _ in range(count)]
        # The lowest free slots; a member being replaced (failed, not yet removed) frees its slot at once.
        taken = {self._slots[i.id] for i in self.instances if i.id in self._slots and i.state != InstanceState.FAILED}
        free = [n for n in range(len(taken) + count) if n not in taken][:count]
        out = []
        for slot in free:
            member = self.launcher.member(  # type: ignore[call-arg]
                self.launches, self.log_dir, shared_name=f"{self.endpoint}/{self.fleet}/{self.variant}/{slot}",
                wanted=lambda slot=slot: not self.closed and slot < self.desired)
            self._slots[member.id] = slot
            out.append(member)
        return out

    async def _add(self, count: int) -> None:
        new = self._new_members(count)
        self.instances.extend(new)
        results = await asyncio.gather(*(i.start(self.start_timeout) for i in new), return_exceptions=True)
        if self.closed:
            # close() ran while these were starting: it could not stop a process not yet spawned.
            await asyncio.gather(*(i.stop(0) for i in new), return_exceptions=True)
            for instance in new:
                with contextlib.suppress(ValueError):
                    self.instances.remove(instance)
            self._set_ready()
            raise InstanceStartError(f"variant {self.variant} of endpoint {self.endpoint} was stopped while starting")
        failures = [r for r in results if isinstance(r, BaseException)]
        for instance, result in zip(new, results, strict=True):
            if not isinstance(result, BaseException):
                self._supervise(instance)
        self._set_ready()
        if failures:
            for instance, result in zip(new, results, strict=True):
                if isinstance(result, BaseException):
                    with contextlib.suppress(ValueError):
                        self.instances.remove(instance)
                    self._slots.pop(instance.id, None)
            first = failures[0]
            if isinstance(first, InstanceStartError):
                raise first
            raise InstanceStartError(f"{type(first).__name__}: {first}")

    async def _retire(self, instance: Member, drain_timeout: float) -> None:
        task = self._supervisors.pop(instance.id, None)
        if task:
            task.cancel()
        instance.state = InstanceState.DRAINING
        self._set_ready()
        await instance.stop(drain_timeout)
        with contextlib.suppress(ValueError):
            self.instances.remove(instance)
        self._slots.pop(instance.id, None)
        self._set_ready()

    # Supervision ----------------------------------------------------------------------------------
    def _supervise(self, instance: Member) -> None:
        self._supervisors[instance.id] = asyncio.get_running_loop().create_task(self._watch(instance))

    def recycle(self, instance: Member, reason: str, cause: str = "timeout") -> None:
        """Replace ``instance`` now: out of the balancer at once and a new one started.

        ``cause`` "timeout" (a request timed out on it; MOORAGE_RECYCLE_ON_TIMEOUT): it is killed at
        once, since what it is still computing holds every request queued behind it. "memory" (past
        its resident-memory limit): it finishes the requests it has (bounded) and is then stopped.
        """
        if cause == "timeout" and not self.launch.instances.recycle_on_timeout:
            return
        if (self.closed or instance not in self.instances or instance.state != InstanceState.IN_SERVICE
                or instance.id not in self._supervisors):
            return
        log.warning("recycling instance %s of %s/%s: %s", instance.id, self.endpoint, self.variant, reason)
        instance.recycle_reason = reason
        instance.state = InstanceState.FAILED  # out of the balancer; its supervisor replaces it once it exits
        self.recycled[cause] = self.recycled.get(cause, 0) + 1
        self._set_ready()
        loop = asyncio.get_running_loop()
        for coro in (self._replace(), self._retire_recycled(instance, cause)):
            task = loop.create_task(coro)
            self._replacements.add(task)
            task.add_done_callback(self._replacements.discard)

    @staticmethod
    async def _retire_recycled(instance: Member, cause: str) -> None:
        if cause != "timeout":
            await instance.drain(RECYCLE_DRAIN_S)
        await instance.kill()

    async def _watch(self, instance: Member) -> None:
        exit_task = asyncio.ensure_future(instance.wait_exit())
        settings = self.launch.instances
        failures = 0
        try:
            while not exit_task.done():
                done, _ = await asyncio.wait({exit_task}, timeout=settings.health_check_interval)
                if done or instance.state != InstanceState.IN_SERVICE:
                    break
                excess = instance.memory_excess()
                if excess is not None:
                    self.recycle(instance, excess, cause="memory")
                    continue
                healthy = await instance.check_health(timeout=min(2.0, settings.health_check_interval))
                if healthy is None:
                    continue  # busy and cannot be asked apart from its requests: alive by definition
                self.health_checks += 1
                failures = 0 if healthy else failures + 1
                if failures >= settings.health_check_failures:
                    log.warning("instance %s failed %d health checks; replacing it", instance.id, failures)
                    await instance.kill()
            code = await exit_task
        except asyncio.CancelledError:
            exit_task.cancel()
            raise
        if self.closed or instance.state in (InstanceState.STOPPED, InstanceState.DRAINING):
            return
        if instance.recycle_reason is None:
            log.warning("instance %s of %s/%s exited with code %s; replacing it (log: %s)",
                        instance.id, self.endpoint, self.variant, code, instance.log_path)
        instance.state = InstanceState.FAILED
        instance.close_connections()
        self._supervisors.pop(instance.id, None)
        with contextlib.suppress(ValueError):
            self.instances.remove(instance)
        self._slots.pop(instance.id, None)
        self._set_ready()
        self.restarts += 1
        loop = asyncio.get_running_loop()
        # What is left of it goes: a chain's other containers, an instance's port and memory limit.
        cleanup = loop.create_task(self._discard(instance))
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)
        replacement = loop.create_task(self._replace())
        self._replacements.add(replacement)
        replacement.add_done_callback(self._replacements.discard)

    @staticmethod
    async def _discard(member: Member) -> None:
        with contextlib.suppress(Exception):
            await member.stop(drain_timeout=0, term_timeout=5)
        member.state = InstanceState.FAILED  # it failed; the stop only cleaned up after it

    async def _replace(self) -> None:
        backoff = 0.5
        while not self.closed:
            live = [i for i in self.instances if i.state in (InstanceState.IN_SERVICE, InstanceState.PENDING)]
            if len(live) >= self.desired:
                return
            try:
                await self._add(1)
                return
            except InstanceStartError as exc:
                log.error("replacement instance for %s/%s failed: %s", self.endpoint, self.variant, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def close(self, drain_timeout: float = 30.0) -> None:
        self.closed = True
        for task in self._supervisors.values():
            task.cancel()
        self._supervisors.clear()
        instances = list(self.instances)
        for instance in instances:
            if instance.state == InstanceState.IN_SERVICE:
                instance.state = InstanceState.DRAINING
        self._set_ready()
        await asyncio.gather(*(i.stop(drain_timeout) for i in instances), *self._cleanups, return_exceptions=True)
        self.instances.clear()
        self._set_ready()
