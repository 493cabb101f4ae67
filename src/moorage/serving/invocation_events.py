"""What observers (metrics, data capture) see of each finished invocation, and how they subscribe.

The route builds one ``InvocationEvent`` after the reply has been sent and hands it to every
observer of the route; the front door only turns outcomes into HTTP. Headers travel as the block
the router forwarded to the instance (one bytes object, parsed only by an observer that asks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class InvocationEvent:
    """One finished invocation, as observers (metrics, data capture) see it after the reply is sent."""

    endpoint: str
    variant: str
    instance_id: str  # "" when no instance was reached (no capacity)
    status: int  # the instance's HTTP status, or the router's failure status (502/503/504)
    arrived: float  # epoch seconds when the request arrived
    model_seconds: float
    total_seconds: float  # arrival to reply; total - model is SageMaker's OverheadLatency
    request_body: bytes
    # The request headers the router passed on to the instance (content type, accept, inference id,
    # custom attributes, target model), as the HTTP header block it sent: b"content-type: text/csv\r\n...".
    # One bytes object the door builds anyway; observers that read a header (capture) parse it then,
    # often off the event loop, and a queue of bytes costs the garbage collector nothing.
    forwarded_headers: bytes
    response_body: bytes
    response_content_type: str | None
    # A serial pipeline's time in each container, in order (ContainerLatency); None for one container.
    container_seconds: tuple[tuple[str, float], ...] | None = None
    target_model: str | None = None  # a multi-model endpoint's TargetModel
    _observed: dict[bytes, str] | None = None

    def _header(self, name: bytes) -> str | None:
        observed = self._observed
        if observed is None:
            observed = self._observed = parse_header_block(self.forwarded_headers)
        return observed.get(name)

    @property
    def content_type(self) -> str | None:
        return self._header(b"content-type")

    @property
    def accept(self) -> str | None:
        return self._header(b"accept")

    @property
    def inference_id(self) -> str | None:
        return self._header(b"x-amzn-sagemaker-inference-id")

    @property
    def custom_attributes(self) -> str | None:
        return self._header(b"x-amzn-sagemaker-custom-attributes")


def header_value(block: bytes, name: bytes) -> str | None:
    """One header of a forwarded header block (``name``: lower-case), without parsing the rest."""
    marker = name + b": "
    start = block.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = block.find(b"\r\n", start)
    return block[start:end if end >= 0 else None].decode("latin-1")


def target_model(block: bytes) -> str | None:
    """The TargetModel a forwarded header block names, or None."""
    return header_value(block, b"x-amzn-sagemaker-target-model")


def parse_header_block(block: bytes) -> dict[bytes, str]:
    """A forwarded header block back to its headers (lower-case names, values as latin-1 text)."""
    out: dict[bytes, str] = {}
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out[name] = value.decode("latin-1")
    return out


class InvocationObserver(Protocol):
    """Sees every invocation of a route. ``observe`` runs on the event loop after the reply was sent:
    it must only enqueue (never block, never raise for a full queue: count the drop instead)."""

    def observe(self, event: InvocationEvent) -> None: ...
