"""A router worker: one more core for InvokeEndpoint's HTTP, header block, body and SigV4.

``moorage serve`` with ``MOORAGE_ROUTER_WORKERS`` = N starts N of these (``python -m
moorage.api.router_worker CONFIG``), each with the server's listening socket: they accept the port's
connections beside the router process (each new connection goes to whichever of them takes it). A
connection whose first request is InvokeEndpoint stays with the worker, which admits each request as
the router's own door does (``RuntimeFrontDoor``: limits, the forwarded headers, SigV4, the key's
role, from a copy of the keys the router keeps current) and asks the router for the answer over the
router link (``api/router_link.py``); the router, which owns the route table and the instances,
invokes the endpoint and observes the invocation as for any other. Any other request is the
router's: the worker hands its connection over (the socket and the bytes read of it) before
answering anything, and the router serves it from there as if it had accepted it. A later request
on a worker's connection that is not InvokeEndpoint is handed over the same way when the worker
knows where it starts (it began a read of its own); one pipelined behind another in the same read
is answered 503 with ``Connection: close``, which SDKs retry on a new connection.

A worker holds nothing that must survive it: the router restarts a worker that dies, and a worker
whose link to the router closes exits (the router stopped or died).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from moorage.api.access import KeyedVerifier
from moorage.api.http_limits import HandedOver, edge_protocol
from moorage.api.responses import JSON, PENDING_BODIES, error_response
from moorage.api.router_link import (
    HANDOFF_HEAD,
    HANDOFF_PART,
    KEYS,
    KEYS_VERSION,
    LINK_HEAD,
    decode_headers,
)
from moorage.api.runtime import Answer, RuntimeFrontDoor, is_invocation
from moorage.control.access_keys import AccessKey
from moorage.errors import ServiceUnavailable
from moorage.runtimes import frames
from moorage.runtimes.allocator import reuse_large_buffers
from moorage.serving.frame_client import FrameClient
from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout, InstanceUnreachable

log = logging.getLogger("moorage.router_worker")

# How long a worker waits for the router's answer beyond the invocation timeout the router enforces.
LINK_MARGIN_SECONDS = 30.0
# A key-change wait is re-asked after this long, so a link that went silent is noticed.
KEYS_WAIT_SECONDS = 300.0


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What the router tells a worker it starts (JSON, the one argument)."""

    listener_fd: int
    link_path: str
    handoff_path: str
    account_id: str
    region: str
    invocation_timeout: float
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    keep_alive_timeout: float
    max_connections: int
    max_connections_per_client: int
    max_pending_body_bytes: int
    shutdown_grace: float
    log_level: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


class KeyCopy:
    """The router's access keys as this worker last heard of them (``AccessKeys``' reading side)."""

    def __init__(self) -> None:
        self.version = 0
        self._keys: dict[str, AccessKey] = {}

    def get(self, access_key_id: str) -> AccessKey | None:
        return self._keys.get(access_key_id)

    def replace(self, snapshot: bytes, verifier: KeyedVerifier) -> None:
        self.version = KEYS_VERSION.unpack_from(snapshot)[0]
        doc = orjson.loads(snapshot[KEYS_VERSION.size:])
        self._keys = {k["id"]: AccessKey(k["id"], k["secret"], k["role"],
                                         tuple(k["endpoints"]) if k["endpoints"] is not None else None, k["created"])
                      for k in doc["keys"]}
        verifier.replace_admin(doc["admin"])


class LinkAnswers:
    """The answers to admitted invocations, from the router over the link."""

    def __init__(self, link: FrameClient, timeout: float) -> None:
        self.link = link
        self.timeout = timeout

    async def answer(self, name: str, body: bytes, forwarded_headers: bytes, target_variant: str | None,
                     arrived: float, started: float) -> Answer:
        encoded_name = name.encode("latin-1")
        variant = target_variant.encode("latin-1") if target_variant else b""
        head = LINK_HEAD.pack(arrived, started, len(encoded_name), len(variant)) + encoded_name + variant \
            + forwarded_headers
        try:
            reply = await self.link.call(frames.INVOKE, body, head, self.timeout)
        except (InstanceConnectionError, InstanceUnreachable, InstanceTimeout) as exc:
            log.error("router link: %s", exc)
            return (*error_response(ServiceUnavailable("The router is not answering; try again."), JSON), None)
        return reply.status, decode_headers(reply.content_type.encode("latin-1")), reply.body, None


class Handover:
    """The connection to the router's handoff listener; ``send`` gives it one client connection."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10.0)  # the router reads these at once; a full queue means it is stuck
        self.sock.connect(path)

    def send(self, fd: int, read: bytes) -> bool:
        try:
            first = read[:HANDOFF_PART]
            socket.send_fds(self.sock, [HANDOFF_HEAD.pack(len(read)) + first], [fd])
            for start in range(len(first), len(read), HANDOFF_PART):
                self.sock.send(read[start:start + HANDOFF_PART])
        except OSError as exc:
            log.error("handing a connection to the router failed: %s", exc)
            return False
        return True


_RETRY_BODY = orjson.dumps({"__type": "ServiceUnavailable",
                            "message": "This request came pipelined behind an InvokeEndpoint on the same "
                                       "connection; send it on a new connection."})
_RETRY_ELSEWHERE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    b"x-amzn-errortype: ServiceUnavailable\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
                    % len(_RETRY_BODY)) + _RETRY_BODY


def worker_protocol(base: type[HttpToolsProtocol], handover: Handover) -> type[HttpToolsProtocol]:
    """The HTTP edge's protocol, keeping what a request's reads brought until it knows whether the
    request is InvokeEndpoint; anything else goes to the router with those bytes."""

    class WorkerEdge(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read: list[bytes] | None = None  # this request's reads, while they are known to be only its
            self._at_start = True  # the next read begins a request
            self._begun = False  # a request began in the reads kept
            self._ended = False  # the last thing parsed ended a request
            self._refuse_next = False  # a request that could not be handed over waits for the answer before it

        def data_received(self, data: bytes) -> None:
            if self._at_start:
                self._read, self._begun = [data], False
            elif self._read is not None:
                self._read.append(data)
            self._at_start = False
            super().data_received(data)
            if self._ended:
                self._at_start = True

        def on_message_begin(self) -> None:
            if self._begun:
                self._read = None  # a second request in the same reads: where it starts is not known
            self._begun = True
            self._ended = False
            super().on_message_begin()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._ended = True

        def on_headers_complete(self) -> None:
            method = self.parser.get_method().decode("latin-1")
            path = httptools.parse_url(self.url).path.decode("latin-1")
            if not is_invocation(method, path):
                self._hand_over()
            self._read = None  # this request is served here: its body need not be kept twice
            super().on_headers_complete()

        def _hand_over(self) -> None:
            read = self._read
            quiet = self.cycle is None or self.cycle.response_complete
            transport = self.transport
            if read is not None and quiet and transport.get_write_buffer_size() == 0:
                sock = transport.get_extra_info("socket")
                if sock is not None and handover.send(sock.fileno(), b"".join(read)):
                    transport.close()  # this process's copy; the router's keeps the connection open
                    raise HandedOver
            # Pipelined behind a request still being answered: that answer first, then this refusal.
            transport.pause_reading()
            if quiet:
                self._retry_elsewhere()
            else:
                self._refuse_next = True
            raise HandedOver

        def on_response_complete(self) -> None:
            if self._refuse_next:
                self.server_state.total_requests += 1
                self._retry_elsewhere()
                return
            super().on_response_complete()

        def _retry_elsewhere(self) -> None:
            self.transport.write(_RETRY_ELSEWHERE)
            self.transport.close()

    return WorkerEdge


async def _follow_keys(link: FrameClient, keys: KeyCopy, verifier: KeyedVerifier, first: asyncio.Future[None],
                       stop: Callable[[], None]) -> None:
    while True:
        try:
            reply = await link.call(KEYS, b"", KEYS_VERSION.pack(keys.version), KEYS_WAIT_SECONDS)
        except InstanceTimeout:
            continue  # nothing changed for a while: ask again
        except (InstanceConnectionError, InstanceUnreachable) as exc:
            log.info("the router's link closed (%s): this worker stops", exc)
            if not first.done():
                first.set_exception(exc)
            stop()
            return
        keys.replace(reply.body, verifier)
        if not first.done():
            first.set_result(None)


def run(config: WorkerConfig) -> None:
    import uvicorn

    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s")
    reuse_large_buffers()
    PENDING_BODIES.limit = config.max_pending_body_bytes
    listener = socket.socket(fileno=config.listener_fd)
    keys = KeyCopy()
    verifier = KeyedVerifier({}, account_id=config.account_id, region=config.region, keys=keys)  # type: ignore[arg-type]
    link = FrameClient(config.link_path, share_bodies=True)  # a large body reaches the router through memory
    door = RuntimeFrontDoor(verifier, LinkAnswers(link, config.invocation_timeout + LINK_MARGIN_SECONDS))
    handover = Handover(config.handoff_path)
    protocol = worker_protocol(edge_protocol(
        max_header_bytes=config.max_header_bytes, max_headers=config.max_headers,
        header_timeout=config.header_timeout, body_timeout=config.body_timeout,
        max_connections=config.max_connections, max_connections_per_client=config.max_connections_per_client,
        invocations=door), handover)
    uv_config = uvicorn.Config(door, loop="uvloop", http=protocol, lifespan="off", access_log=False,
                               log_level="warning", timeout_graceful_shutdown=config.shutdown_grace,
                               timeout_keep_alive=config.keep_alive_timeout, proxy_headers=False,
                               server_header=False)
    server = uvicorn.Server(uv_config)

    async def main() -> None:
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        follow = asyncio.ensure_future(_follow_keys(link, keys, verifier, first,
                                                    lambda: setattr(server, "should_exit", True)))
        await first  # no request is admitted before the keys are here
        gc.freeze()  # as the router does: what is loaded lives as long as the worker, out of the collector's scans
        try:
            await server.serve(sockets=[listener])
        finally:
            follow.cancel()
            link.close()

    import uvloop

    uvloop.run(main())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    run(WorkerConfig(**json.loads(args[0])))


if __name__ == "__main__":
    main()
