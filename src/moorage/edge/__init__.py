"""moorage's edge agent and its package format: what runs on a small device, none of the server.

``from moorage.edge import Agent`` serves a signed package in-process (``Agent(package).predict(rows)``);
``moorage-edge serve`` puts the same agent behind SageMaker's container contract (``GET /ping``,
``POST /invocations``). The agent captures every inference to a crash-safe local spool in SageMaker's
capture format and, given a server, uploads it, reports in and pulls newer packages for its fleet.

Nothing here imports the rest of moorage (an import-linter contract says so): a device installs
``moorage[edge]`` (numpy, onnxruntime, cryptography) and pays for nothing else. ``Agent`` is imported
lazily, so that ``moorage.edge.package`` (which the compiler on the server side uses) does not load
onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Agent"]

if TYPE_CHECKING:
    from moorage.edge.agent import Agent


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from moorage.edge.agent import Agent

        return Agent
    raise AttributeError(f"module 'moorage.edge' has no attribute {name!r}")
