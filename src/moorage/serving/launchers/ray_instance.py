"""Endpoint instances as Ray actors (cluster mode): the same instance server, on whichever node has room.

``RayLauncher`` makes pool members (``RayInstance``) that each own one actor (``InstanceActor``). The
actor runs on a Ray node and starts the instance there exactly as the local launcher does (the same
``Instance``: the container contract, its log, its memory and thread limits), except that the server
listens on a TCP port of the node's address instead of a Unix socket. The router then talks to that
port with the same pooled keep-alive client it uses locally: Ray is the control path (place, start,
health, stop), never the request path, so an invocation costs one TCP hop more than locally and
nothing else.

Placement. Each actor asks for its instance type's CPUs, memory and GPUs (``ml.g*``/``ml.p*``), and
is pinned (softly) to the alive node that holds the fewest instances of its variant and can fit it:
a variant's instances spread over nodes, so losing one node leaves the variant serving. This is
Ray's node-affinity strategy with our own choice of node rather than a SPREAD placement group: a
placement group is sized once, while a variant's count changes with every scaling decision, and
re-creating the group would move every instance. ``soft=True`` lets Ray put it elsewhere when the
chosen node filled up meanwhile. A type no node of the cluster can ever hold is refused at once; one
that fits a node but finds no room now waits (Ray's autoscaler may add a node) until the start
timeout, and the reason then says it was pending.

Sharing. Over a database several routers share, every router serves every endpoint with the same
instances: a pool's member in slot N of a fleet (endpoint, endpoint config, variant) is the named,
detached actor ``ENDPOINT/CONFIG/VARIANT/N`` in the cluster's moorage namespace, got or created by
whichever router needs it first (Ray's get-if-exists is atomic), so N routers run the variant's count
once, not N times. Only the controller leader kills one (a slot scaled in, a fleet retired, a lost
node's instance replaced); another router that lets go of a slot only detaches, and a router that
stops while others serve on leaves them running. A slot's actor that outlived every use (a router
re-created it just as the leader retired it) is killed by the leader's sweep. With SQLite (one
router) actors are unnamed and belong to the router that made them.

Failure. The member watches its actor: the actor's ``wait_exit`` call ends when the instance process
exits, and fails when the actor or its node dies; a request that cannot even connect marks the
member lost at once (the router sends that request to another instance: it was never sent). Either
way the pool's supervisor replaces the member as it replaces a local process that died. The model
reaches the node from its artifact location (``LaunchSpec.on_this_node``), never through the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance, InstanceStartError, InstanceState
from moorage.serving.instance_client import InstanceClient, InstanceResponse, InstanceUnreachable
from moorage.serving.instance_types import lookup
from moorage.serving.launch_spec import LaunchSpec
from moorage.store.artifacts import ArtifactStore

log = logging.getLogger("moorage.instance")

ACTOR_CALL_MARGIN_S = 10.0  # on top of the instance's own bound, for Ray to deliver the call and its answer
STOP_TIMEOUT_S = 30.0
SUSPECT_FOR_S = 60.0  # a node whose instance stopped answering gets no new instance for this long, if others can
EXITED_WITH_NODE = -9  # the exit code a member reports when its actor or node died with it


class InstanceActor:
    """Runs on a Ray node: one instance of the container contract, reached over TCP (an async actor)."""

    def __init__(self) -> None:
        self.instance: Instance | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="moorage-ray-"))
        self._starting: asyncio.Task[dict[str, Any]] | None = None

    async def start(self, launch: dict[str, Any], log_dir: str, instance_id: str, timeout: float) -> dict[str, Any]:
        """Start the instance, or, for an actor every router shares, join the start under way or return
        the one running; an instance that exited is started again (once, whoever asks first)."""
        task = self._starting
        exited = self.instance is not None and self.instance.process is not None \
            and self.instance.process.returncode is not None
        if task is None or (task.done() and (task.exception() is not None or exited)):
            task = self._starting = asyncio.ensure_future(self._start(launch, log_dir, instance_id, timeout))
        return await asyncio.shield(task)

    async def _start(self, launch: dict[str, Any], log_dir: str, instance_id: str, timeout: float) -> dict[str, Any]:
        import ray

        logs = Path(log_dir)
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError:
            logs = self.scratch / "logs"  # not the server's machine: the log stays on this node
            logs.mkdir(parents=True, exist_ok=True)
        spec = await asyncio.to_thread(LaunchSpec.from_dict(launch).on_this_node,
                                       ArtifactStore(self.scratch / "models"))
        node_id = ray.get_runtime_context().get_node_id()
        # The address the node joined the cluster with (--node-ip-address), which routers reach it by.
        host = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id),
                    ray.util.get_node_ip_address())
        self.instance = Instance(spec, self.scratch, logs, instance_id=instance_id, listen_host=host)
        await self.instance.start(timeout)
        return {"host": host, "port": self.instance.port, "pid": self.instance.pid,
                "log_path": str(self.instance.log_path), "node_id": node_id,
                "setup_seconds": self.instance.setup_seconds}

    async def wait_exit(self) -> int:
        assert self.instance is not None
        return await self.instance.wait_exit()

    async def check_health(self, timeout: float) -> tuple[bool | None, str | None, int | None]:
        """(healthy, why it must be replaced for its memory, resident bytes)."""
        instance = self.instance
        if instance is None:
            return False, None, None
        return await instance.check_health(timeout), instance.memory_excess(), instance.resident_bytes()

    async def stop(self, term_timeout: float) -> None:
        if self.instance is not None:
            await self.instance.stop(drain_timeout=0, term_timeout=term_timeout)
        shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass(frozen=True)
class ActorResources:
    cpus: float
    memory: int | None
    gpus: int

    @classmethod
    def of(cls, instance_type: str) -> ActorResources:
        """The type's own size, not capped by the router's machine as local instances are: the nodes are
        other machines. A type moorage does not know (``local``) asks for one CPU and no memory."""
        known = lookup(instance_type)
        if known is None:
            return cls(1.0, None, 0)
        return cls(float(known.vcpus), int(known.memory_gib * 2**30), known.gpus)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_cpus": self.cpus}
        if self.memory:
            out["memory"] = self.memory
        if self.gpus:
            out["num_gpus"] = self.gpus
        return out

    def fits(self, totals: dict[str, float]) -> bool:
        return (totals.get("CPU", 0) >= self.cpus and (not self.memory or totals.get("memory", 0) >= self.memory)
                and totals.get("GPU", 0) >= self.gpus)

    def describe(self) -> str:
        parts = [f"{self.cpus:g} CPU"]
        if self.memory:
            parts.append(f"{self.memory / 2**30:.1f} GiB memory")
        if self.gpus:
            parts.append(f"{self.gpus} GPU")
        return ", ".join(parts)


def _available_per_node(ray: Any) -> dict[str, dict[str, float]]:
    """Free resources per alive node. Ray has no public call for it: its state module's, where present;
    else the cluster's total, as one node (which can only overstate the room)."""
    try:
        from ray._private.state import available_resources_per_node

        return dict(available_resources_per_node())
    except (ImportError, AttributeError):
        return {"cluster": dict(ray.available_resources())}


def _local_addresses() -> set[str]:
    names = {"127.0.0.1", "::1", "localhost"}
    with contextlib.suppress(OSError):
        names.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    return names


class RayInstance:
    """A pool member whose instance runs in a Ray actor; requests go straight to its TCP port."""

    def __init__(self, launcher: RayLauncher, launch: LaunchSpec, log_dir: Path, fleet: str,
                 shared_name: str | None = None, wanted: Callable[[], bool] | None = None):
        self.launcher = launcher
        self.launch = launch
        self.fleet = fleet  # the variant's log folder names it: its members spread over nodes together
        # Every router's member of this fleet slot is the same named, detached actor (several routers over
        # one database): the leader creates and retires it, the others attach to it. None: this router's own.
        self.shared_name = shared_name
        self.wanted = wanted or (lambda: True)  # False once the pool no longer wants this slot
        self._held = False
        self.id = f"i-{uuid.uuid4().hex[:12]}"
        self.log_dir = log_dir
        self.log_path: Path = log_dir / f"{self.id}.log"
        self.state = InstanceState.PENDING
        self.outstanding = 0
        self.recycle_reason: str | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.node_id: str | None = None
        self.address: str | None = None
        self.client: InstanceClient | None = None
        self._pid: int | None = None
        self._actor: Any = None
        self._exit: asyncio.Future[int] | None = None
        self._lost = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._memory_excess: str | None = None
        self._resident: int | None = None
        # Why it is not placed yet, while the cluster has no room for it (the scaling activity says so).
        self.waiting: str | None = None

    # What the pool and the snapshots read ---------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The instance's process id where it is a process of this machine (a single-machine cluster)."""
        return self._pid

    @property
    def setup_seconds(self) -> float | None:
        if self.started_at is None or self.ready_at is None:
            return None
        return self.ready_at - self.started_at

    def memory_excess(self) -> str | None:
        return self._memory_excess

    def resident_bytes(self) -> int | None:
        return self._resident

    # Life -----------------------------------------------------------------------------------------
    async def start(self, timeout: float = 120.0) -> None:
        timeout = self.launch.startup_timeout or timeout
        self.started_at = time.monotonic()
        try:
            if self.shared_name:
                actor = await self.launcher.shared_actor(self)
                self.launcher.hold(self.shared_name)  # the leader's sweep leaves it alone while held
                self._held = True
            else:
                actor = await self.launcher.create_actor(self)
            self._actor = actor
            ref = actor.start.remote(self.launch.to_dict(), str(self.log_dir), self.id, timeout)
            self.waiting = await self.launcher.pending_reason(self)
            info = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout + ACTOR_CALL_MARGIN_S)
        except InstanceStartError as exc:  # no node can hold it, or the actor's start failed (Ray wraps it)
            self.state = InstanceState.FAILED
            await self.kill()
            cause = getattr(exc, "cause", None)
            if cause is None:
                raise
            raise InstanceStartError(str(cause)) from exc
        except TimeoutError as exc:
            self.state = InstanceState.FAILED
            pending = self.waiting or await self.launcher.pending_reason(self)
            await self.kill()
            raise InstanceStartError(f"instance {self.id} did not start on the Ray cluster within {timeout:g} s"
                                     + (f": {pending}" if pending else "")) from exc
        except Exception as exc:
            self.state = InstanceState.FAILED
            await self.kill()
            raise InstanceStartError(self.launcher.reason(exc, self.id)) from exc
        except BaseException:
            self.state = InstanceState.FAILED
            await self.kill()
            raise
        self.node_id = info["node_id"]
        self.launcher.placed(self, self.node_id)  # where it really is (a shared slot may predate this member)
        self.address = f"{info['host']}:{info['port']}"
        self.log_path = Path(info["log_path"])
        self._pid = info["pid"] if info["host"] in self.launcher.local_addresses else None
        self.client = InstanceClient(host=info["host"], port=info["port"])
        self._exit = asyncio.ensure_future(self._watch_actor())
        self.ready_at = time.monotonic()
        self.waiting = None
        self.state = InstanceState.IN_SERVICE
        log.info("instance %s of %s on Ray node %s at %s", self.id, self.fleet, self.node_id, self.address)

    async def _watch_actor(self) -> int:
        wait = asyncio.ensure_future(asyncio.wrap_future(self._actor.wait_exit.remote().future()))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({wait, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if self.state == InstanceState.IN_SERVICE:
            self.state = InstanceState.FAILED  # out of service whoever watches it (a pool, a model host)
        if wait.done() and not wait.cancelled() and wait.exception() is None:
            return int(wait.result())
        wait.cancel()
        return EXITED_WITH_NODE  # its actor or node died, or its port stopped answering

    async def wait_exit(self) -> int:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def ping(self, timeout: float = 5.0) -> bool:
        healthy = await self.check_health(timeout)
        return bool(healthy)

    async def check_health(self, timeout: float = 2.0) -> bool | None:
        if self._actor is None:
            return False
        try:
            ref = self._actor.check_health.remote(timeout)
            healthy, excess, resident = await asyncio.wait_for(asyncio.wrap_future(ref.future()),
                                                               timeout + ACTOR_CALL_MARGIN_S)
        except Exception:  # the actor is gone, or Ray could not reach it in time
            return False
        self._memory_excess, self._resident = excess, resident
        return healthy

    def close_connections(self) -> None:
        if self.client is not None:
            self.client.close()

    async def invoke(self, body: bytes, headers: bytes, timeout: float) -> InstanceResponse:
        assert self.client is not None
        self.outstanding += 1
        self._idle.clear()
        try:
            return await self.client.request(b"POST", b"/invocations", body, headers, timeout)
        except InstanceUnreachable:
            if not self._lost.is_set():
                self._lost.set()  # the supervisor replaces it now, not at the next health check
                self.launcher.suspect(self.node_id)
            raise
        finally:
            self.outstanding -= 1
            if self.outstanding == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> None:
        if self.state == InstanceState.IN_SERVICE:
            self.state = InstanceState.DRAINING
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, drain_timeout: float = 30.0, term_timeout: float = 10.0) -> None:
        await self.drain(drain_timeout)
        self.state = InstanceState.STOPPED
        self.close_connections()
        if self.shared_name and not self.launcher.retires_shared():
            self._detach()  # the leader's to stop (or, on this router's stop, the other routers' to keep)
            return
        if self._actor is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(self._actor.stop.remote(term_timeout).future()),
                                       term_timeout + ACTOR_CALL_MARGIN_S)
        await self.kill()

    async def kill(self) -> None:
        if self.shared_name and not self.launcher.retires_shared():
            self._detach()  # a router that does not lead never kills a shared actor; the leader replaces it
            return
        actor, self._actor = self._actor, None
        if actor is not None:
            await asyncio.to_thread(self.launcher.kill_actor, actor)
        self._lost.set()
        self._release()
        self.launcher.forget(self)

    def _detach(self) -> None:
        self._actor = None
        self._lost.set()
        self._release()

    def _release(self) -> None:
        if self._held and self.shared_name:
            self._held = False
            self.launcher.release(self.shared_name)


class RayLauncher:
    """Makes pool members whose instances are Ray actors; connects to the cluster on first use."""

    def __init__(self, address: str, namespace: str = "moorage", *, shared: bool = False):
        self.address = address
        self.namespace = namespace
        # Several routers over one database: a fleet's instances are named, detached actors shared by all of
        # them (see shared_actor): any router gets or creates a slot's actor, only the leader (``leading``)
        # kills one, and a router stopping while others serve on (``detaching``) leaves them running.
        self.shared = shared
        self.leading = not shared
        self.detaching = False
        self._names: dict[str, int] = {}  # shared actors this router's members use now -> how many members
        self._orphans: dict[str, int] = {}  # shared actors no member here uses -> sweeps they were seen in
        self.local_addresses = _local_addresses()
        self._placed: dict[str, dict[str, str]] = {}  # fleet -> member id -> node id (placed or placing)
        # Nodes where an instance stopped answering, and when: Ray takes a while (its health checks) to
        # declare a dead node dead, and a replacement placed there meanwhile would wait for nothing.
        self._suspects: dict[str, float] = {}
        self._actor_class: Any = None

    def connect(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, namespace=self.namespace, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        if self._actor_class is None:
            self._actor_class = ray.remote(max_restarts=0)(InstanceActor)

    def member(self, launches: Sequence[LaunchSpec], log_dir: Path, shared_name: str | None = None,
               wanted: Callable[[], bool] | None = None) -> RayInstance | ContainerChain:
        if len(launches) == 1:
            return RayInstance(self, launches[0], log_dir, str(log_dir), shared_name, wanted)
        # A serial pipeline: a chain of actors, each container one; the chain's logic stays in the router.
        return ContainerChain([RayInstance(self, launch, log_dir, str(log_dir)) for launch in launches])  # type: ignore[list-item]

    def retires_shared(self) -> bool:
        """Whether this router stops shared actors: it leads and is not leaving the others to serve on."""
        return self.leading and not self.detaching

    async def shared_actor(self, member: RayInstance) -> Any:
        """The fleet slot's actor: the one alive under its name, whichever router made it, else a new one
        (Ray's get-if-exists is atomic, so routers racing for a slot get one actor)."""
        name = member.shared_name
        assert name is not None
        if not member.wanted():
            raise InstanceStartError(f"instance slot {name} is no longer wanted (scaled in or retired)")
        return await self.create_actor(member, name=name)

    def hold(self, name: str) -> None:
        self._names[name] = self._names.get(name, 0) + 1

    def release(self, name: str) -> None:
        if name in self._names:
            self._names[name] -= 1
            if self._names[name] <= 0:
                del self._names[name]

    async def create_actor(self, member: RayInstance, name: str | None = None) -> Any:
        need = ActorResources.of(member.launch.instance_type)
        node = await asyncio.to_thread(self._choose_node, member, need)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options = need.options()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        if name is not None:  # shared: the slot's actor if it lives (whichever router made it), else a new one
            options.update(name=name, namespace=self.namespace, get_if_exists=True, lifetime="detached")
        return self._actor_class.options(**options).remote()

    def _choose_node(self, member: RayInstance, need: ActorResources) -> str:
        """The alive node that can hold the instance and holds the fewest of its fleet (recorded as its)."""
        import ray

        self.connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        fitting = [n for n in nodes if need.fits(n.get("Resources") or {})]
        now = time.monotonic()
        trusted = [n for n in fitting if now - self._suspects.get(n["NodeID"], -SUSPECT_FOR_S) >= SUSPECT_FOR_S]
        fitting = trusted or fitting
        if not fitting:
            largest = max((n.get("Resources") or {} for n in nodes), key=lambda r: r.get("CPU", 0), default={})
            raise InstanceStartError(
                f"no node of the Ray cluster can hold an instance of {member.launch.instance_type} (it needs "
                f"{need.describe()}; the largest node has {largest.get('CPU', 0):g} CPU, "
                f"{largest.get('memory', 0) / 2**30:.1f} GiB memory, {largest.get('GPU', 0):g} GPU)")
        placed = self._placed.setdefault(member.fleet, {})
        counts = {n["NodeID"]: 0 for n in fitting}
        for node_id in placed.values():
            if node_id in counts:
                counts[node_id] += 1
        chosen = min(fitting, key=lambda n: (counts[n["NodeID"]], n["NodeID"]))["NodeID"]
        placed[member.id] = chosen
        return chosen

    async def pending_reason(self, member: RayInstance) -> str | None:
        """Why the instance waits to be placed: no alive node has room for it now; None when one has."""
        need = ActorResources.of(member.launch.instance_type)

        def room() -> bool:
            import ray

            # Per node: the cluster's total free CPU may be split over nodes none of which fits it.
            return any(need.fits(free) for free in _available_per_node(ray).values())

        try:
            if await asyncio.to_thread(room):
                return None
        except Exception:
            return None
        return (f"pending: no node of the Ray cluster has room for {need.describe()} now (Ray's autoscaler, where "
                f"configured, adds a node)")

    @staticmethod
    def reason(exc: BaseException, instance_id: str) -> str:
        """The message of an error raised inside the actor's start (a RayTaskError wraps it)."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, InstanceStartError):
            return str(cause)
        return f"instance {instance_id} could not start on the Ray cluster: {type(exc).__name__}: {exc}"[:1000]

    def placed(self, member: RayInstance, node_id: str | None) -> None:
        if node_id is not None:
            self._placed.setdefault(member.fleet, {})[member.id] = node_id

    def suspect(self, node_id: str | None) -> None:
        if node_id is not None:
            self._suspects[node_id] = time.monotonic()

    def sweep(self) -> list[str]:
        """The leader's clean-up: shared actors no member of this router uses, seen so in two sweeps in a row
        (a fleet retired while another router was replacing one of its slots, say), are killed."""
        import ray

        if not self.shared or not self.leading:
            self._orphans.clear()
            return []
        try:
            named = {entry["name"] if isinstance(entry, dict) else entry
                     for entry in ray.util.list_named_actors(all_namespaces=False)}
        except Exception:
            return []
        orphans = {name for name in named if name.count("/") >= 3 and name not in self._names}
        self._orphans = {name: self._orphans.get(name, 0) + 1 for name in orphans}
        killed = []
        for name, seen in list(self._orphans.items()):
            if seen >= 2:
                with contextlib.suppress(Exception):
                    ray.kill(ray.get_actor(name, self.namespace), no_restart=True)
                    killed.append(name)
                self._orphans.pop(name, None)
        if killed:
            log.warning("killed %d instance actor(s) no fleet uses: %s", len(killed), ", ".join(sorted(killed)))
        return killed

    def forget(self, member: RayInstance) -> None:
        placed = self._placed.get(member.fleet)
        if placed is not None:
            placed.pop(member.id, None)
            if not placed:
                self._placed.pop(member.fleet, None)

    @staticmethod
    def kill_actor(actor: Any) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

