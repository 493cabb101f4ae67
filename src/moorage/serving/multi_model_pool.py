"""A multi-model variant's pool: its instances are model hosts (``model_cache.py``), not model servers.

A model with ``Mode: MultiModel`` serves the archives under its ``ModelDataUrl`` prefix, one per
``TargetModel``. Each of the variant's instances is a ``ModelHost`` with a memory budget; a model
is loaded on its first request as an instance process of its own (its archive fetched and
unpacked, its own ``inference.py`` if it has one), kept while there is room, and stopped (its
memory returned) when the least recently used must make room. The router asks this pool for the
instance of a request's target (``acquire``) and gives it back after the answer (``release``).

It offers what the rest of the data plane reads of any pool: ``desired``, ``ready`` (the hosts in
service), ``instances`` (the model processes, for snapshots and utilisation), ``start``,
``scale_to``, ``close``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers import Launcher
from moorage.serving.model_cache import ModelCache, ModelHost, budget_for, resolve_target
from moorage.serving.pool import NoCapacity

Materialize = Callable[[str], Path]


class MultiModelPool:
    multi_model = True

    def __init__(self, endpoint: str, variant: str, launch: LaunchSpec, launcher: Launcher, log_dir: Path,
                 materialize: Materialize, start_timeout: float = 120.0):
        if launch.model_data_url is None:
            raise ValueError("a multi-model variant needs its ModelDataUrl prefix")
        self.endpoint = endpoint
        self.variant = variant
        self.launch = launch
        self.launches = [launch]
        self.launcher = launcher
        self.log_dir = log_dir
        self.materialize = materialize
        self.start_timeout = start_timeout
        self.prefix = launch.model_data_url
        self.budget = budget_for(launch.instance_type, launch.environment)
        self.hosts: list[ModelHost] = []
        self.cache: ModelCache | None = None
        self.desired = 0
        self.restarts = 0
        self.closed = False
        self._ids = itertools.count(1)

    # What the data plane reads --------------------------------------------------------------------
    @property
    def ready(self) -> list[ModelHost]:
        return list(self.hosts)

    @property
    def instances(self) -> list[Instance]:
        return [model.instance for host in self.hosts for model in host.loaded()]

    def pick(self) -> None:
        """No instance serves a request that names no model: the router asks ``cache`` by TargetModel."""
        return None

    async def acquire(self, timeout: float) -> Instance:
        raise NoCapacity(f"variant {self.variant} of endpoint {self.endpoint} is multi-model: a request names its "
                         f"model with TargetModel")

    # Sizing ---------------------------------------------------------------------------------------
    def _host(self) -> ModelHost:
        host_id = f"{self.variant}-host-{next(self._ids)}"
        return ModelHost(host_id, self.budget, lambda target: self._start_model(host_id, target),
                         caching=self.launch.model_caching)

    async def _start_model(self, host_id: str, target: str) -> Instance:
        url = resolve_target(self.prefix, target)
        model_dir = await asyncio.to_thread(self.materialize, url)
        launch = dataclasses.replace(self.launch, model_dir=model_dir, model_data_url=url,
                                     environment={**self.launch.environment, "SM_MODEL_DIR": str(model_dir)})
        # A process beside the server, or, in cluster mode, an actor on a Ray node (the host's models spread
        # over nodes like a variant's instances; the budget counts them together, as measured there).
        instance = self.launcher.member([launch], self.log_dir / host_id)
        assert not isinstance(instance, ContainerChain)
        try:
            await instance.start(self.start_timeout)
        except BaseException:
            await instance.stop(drain_timeout=0, term_timeout=5)
            raise
        return instance

    async def start(self, count: int) -> None:
        await self.scale_to(count)

    async def scale_to(self, count: int, drain_timeout: float = 30.0) -> None:
        self.desired = count
        while len(self.hosts) < count:
            self.hosts.append(self._host())
        if len(self.hosts) > count:
            # The least loaded hosts go: their models load again elsewhere on their next request.
            self.hosts.sort(key=lambda host: host.in_flight())
            gone, self.hosts = self.hosts[: len(self.hosts) - count], self.hosts[len(self.hosts) - count:]
            await asyncio.gather(*(host.close() for host in gone), return_exceptions=True)
        self.cache = ModelCache(self.hosts) if self.hosts else None

    async def close(self, drain_timeout: float = 30.0) -> None:
        self.closed = True
        hosts, self.hosts, self.cache = self.hosts, [], None
        await asyncio.gather(*(host.close() for host in hosts), return_exceptions=True)
