"""A container chain hosted inside a Ray actor, on whatever node Ray placed it.

The actor's methods are called from Ray's threads; the chain lives on an event loop of its own,
in a thread of the actor's process, and every call hops onto it. The model is unpacked on the node
from its artifact location unless the node shares the server's disk (``LaunchSpec.on_this_node``);
logs go to the server's log folder when it is reachable, else stay on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from moorage.serving.chain import ContainerChain
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers.local import LocalLauncher
from moorage.store.artifacts import ArtifactStore

T = TypeVar("T")
START_TIMEOUT_S = 120.0


class NodeChainHost:
    def __init__(self, launches: list[dict[str, Any]], log_dir: str, start_timeout: float = START_TIMEOUT_S):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="instance-loop", daemon=True).start()
        self.scratch = scratch = Path(tempfile.mkdtemp(prefix="moorage-ray-"))
        logs = Path(log_dir)
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError:
            logs = scratch / "logs"  # not the server's machine: keep the logs on this node
        artifacts = ArtifactStore(scratch / "models")
        specs = [LaunchSpec.from_dict(launch).on_this_node(artifacts) for launch in launches]
        self.chain: ContainerChain = self.run(LocalLauncher(scratch).start_chains(specs, 1, logs, start_timeout))[0]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the chain's loop and wait for its result (from any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.chain.stop(drain_timeout=0, term_timeout=5))
        shutil.rmtree(self.scratch, ignore_errors=True)  # the model unpacked here (and logs kept on the node)
