"""Variant choice and the invocation path of one endpoint.

An endpoint routes each request to a production variant (by weight, or the caller's
``TargetVariant``), then to an instance of that variant's pool. Later strategies (rules, sticky
assignment, shadow copies, bandits) plug in as other ways of choosing the variant; the pools and
the instance hop stay the same.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout
from moorage.serving.pool import InstancePool, NoCapacity

log = logging.getLogger("moorage.router")


class UnknownVariant(Exception):
    pass


class InvocationFailed(Exception):
    """The instance could not produce a response (it died, timed out, or there is none)."""

    def __init__(self, message: str, status: int, variant: str, instance_id: str = "", model_seconds: float = 0.0):
        super().__init__(message)
        self.status = status
        self.variant = variant
        self.instance_id = instance_id
        self.model_seconds = model_seconds


@dataclass(slots=True)
class Invocation:
    variant: str
    instance_id: str
    status: int
    content_type: str
    body: bytes
    custom_attributes: bytes | None
    model_seconds: float = 0.0  # the instance hop, as the router timed it (SageMaker's ModelLatency)


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


def header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``[(b"content-type", b"text/csv")]`` -> ``b"content-type: text/csv\r\n"``: what the door forwards."""
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)


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


class VariantRoute:
    __slots__ = ("current_weight", "desired_weight", "name", "pool")

    def __init__(self, name: str, weight: float, pool: InstancePool):
        self.name = name
        self.current_weight = weight
        self.desired_weight = weight
        self.pool = pool


class EndpointRoute:
    def __init__(self, name: str, variants: list[VariantRoute], invocation_timeout: float = 60.0,
                 acquire_timeout: float = 30.0):
        self.name = name
        self.variants = {v.name: v for v in variants}
        self.invocation_timeout = invocation_timeout
        self.acquire_timeout = acquire_timeout
        self._thresholds: list[float] = []
        self._ordered: list[VariantRoute] = []
        # Metrics and data capture; the front door skips building events while this is empty.
        self.observers: list[InvocationObserver] = []
        self.reweigh()

    def notify(self, event: InvocationEvent) -> None:
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:  # an observer's bug must never fail or slow the invocation path
                log.exception("observer %r failed on an invocation of %s", observer, self.name)

    def reweigh(self) -> None:
        """Recompute the cumulative weight table after weights change."""
        total = 0.0
        thresholds, ordered = [], []
        for variant in self.variants.values():
            if variant.current_weight > 0:
                total += variant.current_weight
                thresholds.append(total)
                ordered.append(variant)
        self._thresholds = [t / total for t in thresholds] if total else []
        self._ordered = ordered

    def choose(self, target_variant: str | None = None) -> VariantRoute:
        if target_variant:
            variant = self.variants.get(target_variant)
            if variant is None:
                raise UnknownVariant(target_variant)
            return variant
        ordered = self._ordered
        if len(ordered) == 1:
            return ordered[0]
        if not ordered:
            raise NoCapacity(f"every variant of endpoint {self.name} has weight 0; name one with TargetVariant")
        index = bisect.bisect_right(self._thresholds, random.random())
        return ordered[min(index, len(ordered) - 1)]

    async def invoke(self, body: bytes, headers: bytes, target_variant: str | None = None) -> Invocation:
        variant = self.choose(target_variant)
        try:
            instance = variant.pool.pick() or await variant.pool.acquire(self.acquire_timeout)
        except NoCapacity as exc:
            raise InvocationFailed(str(exc), 503, variant.name) from exc
        started = time.perf_counter()
        try:
            response = await instance.invoke(body, headers, self.invocation_timeout)
        except InstanceTimeout as exc:
            raise InvocationFailed(
                f"Your invocation timed out while waiting for a response from instance {instance.id} of "
                f"variant {variant.name} ({exc}).", 504, variant.name, instance.id,
                time.perf_counter() - started) from exc
        except InstanceConnectionError as exc:
            raise InvocationFailed(
                f"Instance {instance.id} of variant {variant.name} failed while serving the request ({exc}); "
                f"the instance is being replaced. See its log at {instance.log_path}.", 502, variant.name,
                instance.id, time.perf_counter() - started) from exc
        return Invocation(variant.name, instance.id, response.status, response.content_type, response.body,
                          response.custom_attributes, time.perf_counter() - started)
