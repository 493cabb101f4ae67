"""The instance server: one model behind SageMaker's container contract.

``GET /ping`` answers 200 once the model is loaded (the socket only exists from then on), and
``POST /invocations`` runs the handler contract. This is a raw ASGI app on uvicorn with uvloop and
httptools because it sits on every request's path; a framework's routing and request objects would
cost more than the rest of the hop.

Adaptive batching lives here, beside the model: requests queue while the model is busy, and the
next model call takes all of them (up to ``MOORAGE_MAX_BATCH_SIZE``) in one stacked ``predict``. At
low load a request never waits for others (``MOORAGE_MAX_BATCH_DELAY_MS`` defaults to 0), so
batching costs single requests nothing and multiplies throughput under concurrency.

The router reaches a built-in runtime over a framed link (``frames.py``) on ``<socket>.frames``:
``FrameConnection`` below feeds the same batcher and answers the same operations as the HTTP app,
which stays for everything else (bring-your-own-style clients, batch jobs, the monitors' explainer
calls, and a router told ``MOORAGE_INSTANCE_LINK=http``).

Health has a listener of its own: ``<socket>.health`` answers ``GET /ping`` from a thread, so that a
prediction running on the event loop (the fast path above) or holding the model thread for minutes
never makes a busy instance look dead to the platform's health checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from moorage.runtimes import frames
from moorage.runtimes.allocator import reuse_large_buffers
from moorage.runtimes.frameworks import FRAMEWORK_CLASSES, load_framework
from moorage.runtimes.handler import HandlerError, InferenceHandler

log = logging.getLogger("moorage.instance")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


@dataclass(slots=True)
class _Work:
    body: bytes
    content_type: str | None
    accept: str | None
    future: asyncio.Future[tuple[int, bytes, str]] | None = field(repr=False)


class Batcher:
    """Feeds queued requests to the model, one (stacked) call at a time.

    A slow model runs in a worker thread so that ``/ping`` still answers while it computes, and
    requests arriving meanwhile pile up into the next batch. A fast one (a batch under
    ``inline_s``, ONNX or a small tree model) runs on the event loop itself: the thread hand-off
    would cost more than the prediction, and requests still pile up in the sockets meanwhile and
    are read into the next batch. The switch has hysteresis so one slow batch does not flap it.
    """

    def __init__(self, handler: InferenceHandler, max_batch_size: int, max_delay_s: float,
                 inline_s: float = 0.002):
        self.handler = handler
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max_delay_s
        self.inline_s = inline_s
        self.inline = False
        self._ewma_s: float | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.pending: list[_Work] = []
        # Created lazily inside the running loop: an Event made before uvicorn starts its loop
        # would belong to no loop (or the wrong one).
        self._wakeup: asyncio.Event | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._in_thread = False  # a batch is running in the worker thread

    def run_now(self, requests: list[tuple[bytes, str | None, str | None]]) -> list[tuple[int, bytes, str]] | None:
        """Answer ``(body, content_type, accept)`` requests on the caller's stack, when the model is fast
        (inline) and nothing is queued or running: the framed link hands over every request of one
        read this way, so a fast model answers them without a trip through the queue and the loop.
        None when they must be submitted instead."""
        if not self.inline or self.pending or self._in_thread or self.max_delay_s:
            return None
        results: list[tuple[int, bytes, str]] = []
        size = self.max_batch_size
        for first in range(0, len(requests), size):
            results += self._run_here([_Work(body, content_type, accept, None) for body, content_type, accept in
                                       requests[first:first + size]])
        return results

    def submit(self, body: bytes, content_type: str | None, accept: str | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self._consumer is None:
            self._wakeup = asyncio.Event()
            self._consumer = loop.create_task(self._consume())
        future: asyncio.Future[tuple[int, bytes, str]] = loop.create_future()
        self.pending.append(_Work(body, content_type, accept, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.pending:
                if self.max_delay_s and len(self.pending) < self.max_batch_size:
                    await asyncio.sleep(self.max_delay_s)
                batch = self.pending[: self.max_batch_size]
                del self.pending[: self.max_batch_size]
                if self.inline:
                    results = self._run_here(batch)
                else:
                    started = time.perf_counter()
                    self._in_thread = True
                    try:
                        results = await loop.run_in_executor(self.executor, self._run, batch)
                    except BaseException as exc:  # the worker itself failed: fail the batch, keep serving
                        results = _batch_failed(exc, len(batch))
                    finally:
                        self._in_thread = False
                    self._observe(time.perf_counter() - started)
                for work, result in zip(batch, results, strict=True):
                    if work.future is not None and not work.future.done():
                        work.future.set_result(result)

    def _run_here(self, batch: list[_Work]) -> list[tuple[int, bytes, str]]:
        """One batch on the event loop, timed for the inline switch; a failure fails the batch, not the loop."""
        started = time.perf_counter()
        try:
            results = self._run(batch)
        except BaseException as exc:
            results = _batch_failed(exc, len(batch))
        self._observe(time.perf_counter() - started)
        return results

    def _observe(self, seconds: float) -> None:
        ewma = seconds if self._ewma_s is None else 0.8 * self._ewma_s + 0.2 * seconds
        self._ewma_s = ewma
        if self.inline:
            # Back to the thread as soon as one batch is clearly slow: the loop must stay responsive.
            if seconds > 5 * self.inline_s or ewma > 2 * self.inline_s:
                self.inline = False
        elif ewma < self.inline_s / 2:
            self.inline = True

    def _run(self, batch: list[_Work]) -> list[tuple[int, bytes, str]]:
        handler = self.handler
        if len(batch) == 1 or not handler.batchable:
            return [self._invoke_one(w) for w in batch]
        results: list[tuple[int, bytes, str] | None] = [None] * len(batch)
        decoded: list[Any] = []
        positions: list[int] = []
        for i, work in enumerate(batch):
            try:
                decoded.append(handler.decode(work.body, work.content_type))
                positions.append(i)
            except Exception as exc:
                results[i] = _error_result(exc)
        predictions = handler.predict_many(decoded) if decoded else []
        for i, prediction in zip(positions, predictions, strict=True):
            if isinstance(prediction, BaseException):
                results[i] = _error_result(prediction)
                continue
            try:
                body, content_type = handler.encode(prediction, batch[i].accept)
                results[i] = (200, body, content_type)
            except Exception as exc:
                results[i] = _error_result(exc)
        return results  # type: ignore[return-value]

    def _invoke_one(self, work: _Work) -> tuple[int, bytes, str]:
        try:
            body, content_type = self.handler.invoke(work.body, work.content_type, work.accept)
            return 200, body, content_type
        except Exception as exc:
            return _error_result(exc)


def _batch_failed(exc: BaseException, size: int) -> list[tuple[int, bytes, str]]:
    return [(500, f"{type(exc).__name__}: {exc}".encode(), "text/plain")] * size


def _error_result(exc: BaseException) -> tuple[int, bytes, str]:
    if isinstance(exc, HandlerError):
        if exc.status >= 500:
            log.error("model error: %s\n%s", exc, getattr(exc, "traceback", "") or "")
        return exc.status, str(exc).encode(), "text/plain"
    log.error("unexpected error: %s", "".join(traceback.format_exception(exc)))
    return 500, f"{type(exc).__name__}: {exc}".encode(), "text/plain"


class InstanceApp:
    def __init__(self, batcher: Batcher, execution_parameters: dict[str, Any]):
        self.batcher = batcher
        self.execution_parameters = orjson.dumps(execution_parameters)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        if path == "/invocations" and method == "POST":
            await self._invocations(scope, receive, send)
        elif path == "/ping" and method in ("GET", "HEAD"):
            await _respond(send, 200, b"", _TEXT)
        elif path == "/execution-parameters" and method == "GET":
            await _respond(send, 200, self.execution_parameters, [(b"content-type", b"application/json")])
        else:
            await _respond(send, 404, b"not found", _TEXT)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = accept = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"accept":
                accept = value.decode("latin-1")
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body"):
            chunks = [body]
            while message.get("more_body"):
                message = await receive()
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)
        status, payload, out_type = await self.batcher.submit(body, content_type, accept)
        await _respond(send, status, payload, [(b"content-type", out_type.encode("latin-1"))])


_TEXT_TYPE = _TEXT[0][1]
_JSON_TYPE = b"application/json"


class FrameConnection(frames.FramedProtocol):
    """One router connection on the framed link: requests in, replies out, many in flight at once.

    Every frame that arrived in one read goes to the batcher before any is answered, so they share a
    model call; replies finished in one turn of the loop leave in one write.
    """

    in_flight = 0  # requests of all connections submitted and not answered (for a graceful stop)

    def __init__(self, app: InstanceApp, max_frame: int) -> None:
        super().__init__(frames.FrameReader(self._on_frame, max_frame, self._on_oversize,
                                            min_head=frames.REQUEST_HEAD.size))
        self.app = app
        # The invocations cut from the read being handled: (id, body, content type, accept).
        self._arrived: list[tuple[int, bytes, str | None, str | None]] = []

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # replies still being computed are dropped: their requester is gone

    def malformed(self, exc: frames.FrameError) -> None:
        log.error("framed link: %s; closing the connection", exc)
        super().malformed(exc)

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)
        if self._arrived:
            arrived, self._arrived = self._arrived, []
            self._invoke(arrived)

    def _invoke(self, arrived: list[tuple[int, bytes, str | None, str | None]]) -> None:
        batcher = self.app.batcher
        results = batcher.run_now([(body, content_type, accept) for _, body, content_type, accept in arrived])
        if results is not None:
            for (request_id, *_), result in zip(arrived, results, strict=True):
                self._reply(request_id, *result)
            self.flush()  # every reply of this read is ready: no reason to wait for the loop's next turn
            return
        for request_id, body, content_type, accept in arrived:
            future = batcher.submit(body, content_type, accept)
            FrameConnection.in_flight += 1
            future.add_done_callback(functools.partial(self._answer, request_id))

    def _on_oversize(self, head: bytes, length: int) -> bool:
        request_id = frames.REQUEST_HEAD.unpack_from(head)[1] if len(head) >= frames.REQUEST_HEAD.size else 0
        self.queue(frames.encode_reply(request_id, 413, _TEXT_TYPE,
                                       f"request frame of {length} bytes is over this instance's limit of "
                                       f"{self.reader.max_frame} bytes".encode()))
        return True

    def _on_frame(self, buffer: bytearray, start: int, end: int) -> None:
        request_id, op, headers_length = frames.request_fields(buffer, start, end)
        offset = start + frames.REQUEST_FIELDS.size
        if op == frames.INVOKE or op == frames.INVOKE_SHARED:
            headers = bytes(buffer[offset:offset + headers_length])
            body = self.invocation_body(request_id, op, buffer, offset + headers_length, end)
            if body is None:
                return
            content_type = frames.header_value(headers, b"content-type")
            accept = frames.header_value(headers, b"accept")
            self._arrived.append((request_id, body, None if content_type is None else content_type.decode("latin-1"),
                                  None if accept is None else accept.decode("latin-1")))
        elif op == frames.PING:
            self.queue(frames.encode_reply(request_id, 200, _TEXT_TYPE, b""))
        elif op == frames.EXECUTION_PARAMETERS:
            self.queue(frames.encode_reply(request_id, 200, _JSON_TYPE, self.app.execution_parameters))
        elif op == frames.SHARE:
            self.map_shared(request_id, bytes(buffer[offset + headers_length:end]))
        else:
            self.queue(frames.encode_reply(request_id, 404, _TEXT_TYPE, f"no operation {op}".encode()))

    def _answer(self, request_id: int, future: asyncio.Future[tuple[int, bytes, str]]) -> None:
        FrameConnection.in_flight -= 1
        if future.cancelled():
            status, payload, content_type = 500, b"the request was cancelled", "text/plain"
        else:
            status, payload, content_type = future.result()
        self._reply(request_id, status, payload, content_type)

    def _reply(self, request_id: int, status: int, payload: bytes, content_type: str) -> None:
        if self.transport is not None:
            self.queue(frames.encode_reply_head(request_id, status, content_type.encode("latin-1"), len(payload)),
                       payload)


async def serve_frames(app: InstanceApp, path: str, max_frame: int) -> asyncio.AbstractServer | None:
    """Listen for the router's framed link on ``path``; None (and a warning) when it cannot."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_unix_server(lambda: FrameConnection(app, max_frame), path)
    except OSError as exc:  # e.g. a path past the Unix socket limit: the router then speaks HTTP
        log.warning("no framed link at %s: %s", path, exc)
        return None


async def _serve(app: InstanceApp, options: dict[str, Any], frames_path: str | None, max_frame: int) -> None:
    import uvicorn

    listener = await serve_frames(app, frames_path, max_frame) if frames_path else None
    try:
        await uvicorn.Server(uvicorn.Config(app, **options)).serve()
    finally:
        if listener is not None:
            listener.close()
            # The router drains an instance before stopping it; this bounds what a stop without a
            # drain (a signal from elsewhere) waits for.
            deadline = time.monotonic() + options.get("timeout_graceful_shutdown", 30)
            while FrameConnection.in_flight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _env_int(env: dict[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        return default


HEALTH_SUFFIX = ".health"  # the health listener's socket: the instance's socket path plus this
_PONG = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def serve_health(path: str) -> socket.socket:
    """Answer every request on the Unix socket ``path`` with 200, from a daemon thread.

    A blocking accept loop in a thread rather than a second asyncio server: the event loop is exactly
    what a long inline prediction blocks. Blocking socket calls release the GIL, and a pure-Python
    prediction yields it every switch interval, so a ping is answered within milliseconds either way.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(2.0)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head and len(head) < 16384:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    conn.sendall(_PONG)
                except OSError:
                    pass  # a checker that went away; the next one connects anew

    threading.Thread(target=serve, name="health", daemon=True).start()
    return listener


def _exit_with_parent(parent_pid: int) -> None:
    """Exit when the platform process that started us is gone, so no instance outlives its server."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moorage-instance", description="Serve one model (container contract).")
    parser.add_argument("--runtime", required=True, choices=sorted(FRAMEWORK_CLASSES))
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--socket", help="Unix socket path to listen on")
    parser.add_argument("--port", type=int, help="TCP port (default: SAGEMAKER_BIND_TO_PORT or 8080)")
    parser.add_argument("--health-socket", help="Over TCP: a Unix socket path for the health listener (see --socket)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = dict(os.environ)
    reuse_large_buffers()
    if env.get("MOORAGE_PARENT_PID", "").isdigit():
        _exit_with_parent(int(env["MOORAGE_PARENT_PID"]))

    started = time.perf_counter()
    try:
        handler = InferenceHandler.from_model_dir(args.model_dir, load_framework(args.runtime), env)
        handler.load()
    except Exception as exc:
        traceback.print_exc()
        # The supervisor reports the last line of the log as the reason the instance failed.
        print(f"moorage-instance: model failed to load: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    log.info("model loaded in %.3f s (runtime %s, batching %s)", time.perf_counter() - started, args.runtime,
             "on" if handler.batchable else "off")

    batcher = Batcher(
        handler,
        max_batch_size=_env_int(env, "MOORAGE_MAX_BATCH_SIZE", 64),
        max_delay_s=_env_int(env, "MOORAGE_MAX_BATCH_DELAY_MS", 0) / 1000.0,
        inline_s=_env_int(env, "MOORAGE_INLINE_PREDICT_US", 2000) / 1e6,
    )
    app = InstanceApp(batcher, {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6})

    options: dict[str, Any] = {
        "loop": "uvloop", "http": "httptools", "lifespan": "off", "access_log": False,
        "log_level": "warning", "timeout_keep_alive": 3600, "timeout_graceful_shutdown": 30,
        "proxy_headers": False, "server_header": False, "date_header": False,
    }
    frames_path = None
    if args.socket:
        options["uds"] = args.socket
        frames_path = args.socket + frames.SOCKET_SUFFIX
        try:
            serve_health(args.socket + HEALTH_SUFFIX)
        except OSError as exc:  # e.g. a path past the Unix socket limit: health then shares /ping
            log.warning("no health listener at %s%s: %s", args.socket, HEALTH_SUFFIX, exc)
    else:
        port = args.port or _env_int(env, "SAGEMAKER_BIND_TO_PORT", 8080)
        options.update(host=env.get("MOORAGE_BIND_HOST", "127.0.0.1"), port=port)
        if args.health_socket:  # an instance on a Ray node: reached over TCP, health-checked on its node
            try:
                serve_health(args.health_socket)
            except OSError as exc:
                log.warning("no health listener at %s: %s", args.health_socket, exc)
    import uvloop

    max_frame = _env_int(env, "MOORAGE_MAX_FRAME_BYTES", frames.DEFAULT_MAX_FRAME)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(app, options, frames_path, max_frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
