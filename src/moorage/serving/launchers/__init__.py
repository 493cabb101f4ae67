"""Where instances run: one launcher a backend.

A launcher turns launch specs into pool members: one spec is an ``Instance``, several a
``ContainerChain`` (a serial inference pipeline). ``local`` starts them as processes beside the
server; ``ray_node`` hosts a chain inside a Ray actor on whichever node Ray placed it (transform
jobs on Ray today; endpoints in cluster mode later). Endpoint pools and transform jobs both go
through here, so an instance is started one way wherever it serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance
from moorage.serving.launch_spec import LaunchSpec


class Launcher(Protocol):
    def member(self, launches: Sequence[LaunchSpec], log_dir: Path) -> Instance | ContainerChain:
        """A not-yet-started pool member for ``launches`` (its containers, in order)."""
