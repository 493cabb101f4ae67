"""Instances as processes on this machine, reached over Unix sockets (or loopback for BYO servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance, InstanceStartError
from moorage.serving.launch_spec import LaunchSpec


class LocalLauncher:
    def __init__(self, socket_dir: Path):
        # Unix socket paths are limited to ~108 bytes: the caller picks a short folder.
        self.socket_dir = socket_dir

    def member(self, launches: Sequence[LaunchSpec], log_dir: Path) -> Instance | ContainerChain:
        if len(launches) == 1:
            return Instance(launches[0], self.socket_dir, log_dir)
        return self.chain(launches, log_dir)

    def chain(self, launches: Sequence[LaunchSpec], log_dir: Path) -> ContainerChain:
        return ContainerChain([Instance(launch, self.socket_dir, log_dir) for launch in launches])

    async def start_chains(self, launches: Sequence[LaunchSpec], count: int, log_dir: Path,
                           timeout: float) -> list[ContainerChain]:
        """``count`` chains, all started; if any cannot start, every one is stopped and the first
        InstanceStartError raised."""
        chains = [self.chain(launches, log_dir) for _ in range(count)]
        results = await asyncio.gather(*(c.start(timeout) for c in chains), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await asyncio.gather(*(c.stop(drain_timeout=0, term_timeout=5) for c in chains), return_exceptions=True)
            first = failed[0]
            if isinstance(first, InstanceStartError):
                raise first
            raise InstanceStartError(f"{type(first).__name__}: {first}")
        return chains
