"""The data-capture writer: invocations in, SageMaker capture files out, never on the request path.

``CaptureObserver.observe`` runs on the router's event loop after the reply was sent. It decides the
sample (one ``random()`` call), encodes the record (orjson) and appends the line to a bounded
in-memory queue; a full queue drops the record and counts it. The queue holds only tuples of
strings, numbers and bytes, which Python's garbage collector stops tracking at once: queuing the
events themselves (objects the collector traverses, thousands of them alive per second) measured
several microseconds per request in collections and in the writer thread's share of the GIL. One
writer thread drains the queue every ``flush_seconds`` (sooner when the queue is half full) and
appends the lines to files laid out as SageMaker lays them out::

    {destination}/{endpoint}/{variant}/yyyy/mm/dd/hh/{MM-SS-mmm}-{uuid}.jsonl

by the UTC hour the invocation arrived (the file's name is the arrival time of its first record).
A file rotates when the hour changes, past ``file_bytes`` or after ``file_seconds``.

Durability, stated: a batch is written with whole lines only, in one ``write`` to the final file
name (local destinations; readers see complete lines as soon as they are there, no rename step), so
a ``kill -9`` loses only what was still queued: the records of the last ``flush_seconds`` (plus
those of a batch being written at that instant; only a kill in the middle of that one ``write``
call could leave its last line unterminated, and only at a file's end). Lines reach the OS at each
flush, not the disk: a machine crash can lose what the OS had not written back. A clean stop
(SIGTERM) writes everything queued before the process exits. Remote destinations (``s3://`` through
fsspec) are written as whole objects: each flush that adds records rewrites the current object with
all its lines, and objects rotate at ``object_bytes``, so the same kill -9 bound holds there.

When a write fails (a full disk, a destination that cannot be created) the file is cut back to its
last whole line and the batch is kept and retried on every flush. Kept records count against the
queue's bounds, so a destination that stays broken fills the queue and new records are dropped (and
counted) rather than piling up in memory; records still unwritten when the server stops are counted
as ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from moorage.capture.config import CaptureConfig, Destination, WriterSettings
from moorage.capture.records import RecordEncoder, inference_time
from moorage.serving.router import InvocationEvent

log = logging.getLogger("moorage.capture")

_random = random.random  # the sampling draw: Mersenne Twister, ~30 ns, no lock
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az"})
_LOG_EVERY = 10.0  # seconds between two warnings about drops or write failures


def _event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text; from one urandom call, at a third of uuid4()'s cost."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * count, 32)]


class CaptureCounters:
    """Per endpoint and variant. ``captured``/``dropped`` change on the event loop only, ``written``/
    ``failed`` in the writer thread only, so plain integers are enough."""

    __slots__ = ("captured", "dropped", "failed", "written")

    def __init__(self) -> None:
        self.captured = 0  # sampled in and queued
        self.dropped = 0  # sampled in, but the queue was full
        self.written = 0  # in a capture file
        self.failed = 0  # queued, but still unwritten (writes kept failing) when the writer stopped

    def as_dict(self) -> dict[str, int]:
        return {"captured": self.captured, "dropped": self.dropped, "written": self.written, "failed": self.failed}


class CaptureObserver:
    """The capture of one endpoint's route, with the config of the endpoint config that built it."""

    __slots__ = ("_by_variant", "_encoder", "_threshold", "_writer", "config", "endpoint")

    def __init__(self, writer: CaptureWriter, endpoint: str, config: CaptureConfig):
        self._writer = writer
        self.endpoint = endpoint
        self.config = config
        self._encoder = RecordEncoder(config)
        self._threshold = config.sampling_percentage / 100.0 if config.enabled else 0.0
        self._by_variant: dict[str, CaptureCounters] = {}

    def observe(self, event: InvocationEvent) -> None:
        # Only answered invocations have a record: SageMaker's format needs the model's output.
        if event.status >= 300:
            return
        threshold = self._threshold
        if threshold < 1.0 and _random() >= threshold:
            return
        counters = self._by_variant.get(event.variant)
        if counters is None:
            counters = self._by_variant[event.variant] = self._writer.counters(self.endpoint, event.variant)
        self._writer.submit(self._encoder, self.endpoint, event, counters)

    def __repr__(self) -> str:
        return f"CaptureObserver({self.endpoint}, {self.config.sampling_percentage}% to {self.config.destination.uri})"


@dataclass
class _Batch:
    destination: Destination
    counters: CaptureCounters
    counters_key: str  # endpoint/variant, for messages
    first_arrival: float
    data: bytearray = field(default_factory=bytearray)  # whole lines
    count: int = 0  # records in data


class _LocalFile:
    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.size = 0
        self.opened = time.monotonic()
        self.last_write = self.opened

    def write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            # A write that stopped part-way (a full disk) must not leave half a line: cut the file
            # back to its last whole line; the batch is retried as a whole.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)
        self.last_write = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _RemoteFile:
    """An object store has no append: every write puts the whole object again (a PUT is atomic)."""

    def __init__(self, fs: Any, path: str):
        self.fs = fs
        self.path = path
        self.chunks: list[bytes] = []
        self.size = 0
        self.opened = time.monotonic()
        self.last_write = self.opened

    def write(self, data: bytes | bytearray) -> None:
        self.fs.pipe_file(self.path, b"".join([*self.chunks, data]))
        self.chunks.append(bytes(data))
        self.size += len(data)
        self.last_write = time.monotonic()

    def close(self) -> None:
        self.chunks = []


_Key = tuple[str, str, str, int]  # destination root, endpoint, variant, UTC hour (epoch // 3600)


class CaptureWriter:
    def __init__(self, settings: WriterSettings | None = None):
        self.settings = settings or WriterSettings()
        # (key, line, arrival): only strings, numbers and bytes, so the garbage collector ignores them.
        self._queue: deque[tuple[_Key, bytes, float]] = deque()
        self._max_records = self.settings.queue_records
        self._max_bytes = self.settings.queue_bytes
        self._wake_at = max(1, self.settings.queue_records // 2)
        # Queued bytes = enqueued - drained; each counter has one writer thread, so no lock is needed.
        self._enqueued_bytes = 0
        self._drained_bytes = 0
        # Records (and their bytes) kept after a failed write: they count against the queue's bounds.
        self._retained = 0
        self._retained_bytes = 0
        self._counters: dict[tuple[str, str], CaptureCounters] = {}
        self._destinations: dict[str, Destination] = {}  # by root
        self._event_ids: list[str] = []
        self._files: dict[_Key, _LocalFile | _RemoteFile] = {}
        self._retry: dict[_Key, _Batch] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._time_cache = (-1, "")
        self._last_write_warning = -_LOG_EVERY
        self._last_loss_warning = -_LOG_EVERY
        self._reported_losses = 0

    # The event loop's side ---------------------------------------------------------------------
    def observer(self, endpoint: str, config: CaptureConfig) -> CaptureObserver:
        self._destinations.setdefault(config.destination.root, config.destination)
        return CaptureObserver(self, endpoint, config)

    def counters(self, endpoint: str, variant: str) -> CaptureCounters:
        key = (endpoint, variant)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = CaptureCounters()
        return counters

    def submit(self, encoder: RecordEncoder, endpoint: str, event: InvocationEvent, counters: CaptureCounters) -> None:
        queue = self._queue
        if len(queue) + self._retained >= self._max_records:
            counters.dropped += 1
            return
        ids = self._event_ids
        if not ids:
            ids = self._event_ids = _event_ids(256)
        arrived = event.arrived
        line = encoder.encode(event, ids.pop(), self._time_text(arrived))
        size = len(line)
        if self._enqueued_bytes - self._drained_bytes + self._retained_bytes + size > self._max_bytes:
            counters.dropped += 1
            return
        self._enqueued_bytes += size
        queue.append(((encoder.config.destination.root, endpoint, event.variant, int(arrived // 3600)), line,
                      arrived))
        counters.captured += 1
        if len(queue) == self._wake_at:
            self._wake.set()

    # Counters, for metrics -----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Totals over every endpoint: captured, dropped, written, failed, and pending (not yet written)."""
        totals = {"captured": 0, "dropped": 0, "written": 0, "failed": 0}
        for counters in list(self._counters.values()):
            for name, value in counters.as_dict().items():
                totals[name] += value
        totals["pending"] = len(self._queue) + sum(b.count for b in list(self._retry.values()))
        return totals

    def stats_by_variant(self) -> dict[tuple[str, str], dict[str, int]]:
        """The same counters per (endpoint, variant)."""
        return {key: counters.as_dict() for key, counters in list(self._counters.items())}

    # Lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="moorage-capture", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, close the files, stop the thread (blocking)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("data capture writer did not finish within %.0fs; %d record(s) may be lost",
                          timeout, len(self._queue))
        else:
            self._flush()
            self._close_all()
        for batch in self._retry.values():
            batch.counters.failed += batch.count
            log.error("data capture could not write %d record(s) of endpoint %s to %s before stopping",
                      batch.count, batch.counters_key, batch.destination.uri)
        self._retry = {}
        self._retained = self._retained_bytes = 0
        for (endpoint, variant), counters in list(self._counters.items()):
            log.info("data capture of %s/%s: %s", endpoint, variant,
                     ", ".join(f"{k} {v}" for k, v in counters.as_dict().items()))

    async def shutdown(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.close, timeout)

    def flush(self) -> None:
        """Write what is queued now, from the calling thread (for a writer that was never started)."""
        if self._thread is None:
            self._flush()

    # The writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        interval = self.settings.flush_seconds
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._flush()
            except Exception:  # a bug here must not end capture for the life of the server
                log.exception("data capture writer failed a flush")
            if stopping:
                self._close_all()
                return

    def _time_text(self, arrived: float) -> str:  # on the event loop only
        second = int(arrived)
        cached_second, text = self._time_cache
        if second != cached_second:
            text = inference_time(second)
            self._time_cache = (second, text)
        return text

    def _flush(self) -> None:
        queue = self._queue
        batches = self._retry
        self._retry = {}
        drained = 0
        popleft = queue.popleft
        # What is queued now; what arrives meanwhile waits for the next flush.
        for _ in range(len(queue)):
            key, line, arrived = popleft()
            drained += len(line)
            batch = batches.get(key)
            if batch is None:
                _, endpoint, variant, _ = key
                batch = batches[key] = _Batch(self._destinations[key[0]], self.counters(endpoint, variant),
                                              f"{endpoint}/{variant}", arrived)
            batch.data += line
            batch.count += 1
        self._drained_bytes += drained
        for key, batch in batches.items():
            self._write(key, batch)
        self._retained = sum(b.count for b in self._retry.values())
        self._retained_bytes = sum(len(b.data) for b in self._retry.values())
        self._rotate()
        self._report_losses()

    def _write(self, key: _Key, batch: _Batch) -> None:
        try:
            handle = self._files.get(key)
            if handle is None:
                handle = self._files[key] = self._open(key, batch.destination, batch.first_arrival)
            handle.write(batch.data)
        except Exception as exc:  # OSError locally; anything from an fsspec backend
            self._discard_file(key)
            self._keep_for_retry(key, batch, exc)
            return
        batch.counters.written += batch.count
        limit = self.settings.file_bytes if isinstance(handle, _LocalFile) else self.settings.object_bytes
        if handle.size >= limit:
            self._discard_file(key)

    def _open(self, key: _Key, destination: Destination, first_arrival: float) -> _LocalFile | _RemoteFile:
        root, endpoint, variant, _ = key
        folder = f"{root}/{endpoint}/{variant}/{time.strftime('%Y/%m/%d/%H', time.gmtime(first_arrival))}"
        stamp = time.gmtime(first_arrival)
        millis = int((first_arrival - int(first_arrival)) * 1000)
        name = f"{stamp.tm_min:02d}-{stamp.tm_sec:02d}-{millis:03d}-{uuid.uuid4()}.jsonl"
        if destination.local:
            os.makedirs(folder, exist_ok=True)
            return _LocalFile(f"{folder}/{name}")
        protocols = destination.fs.protocol
        if not _OBJECT_STORES.intersection(protocols if isinstance(protocols, tuple) else (protocols,)):
            destination.fs.makedirs(folder, exist_ok=True)  # object stores have no folders to make
        return _RemoteFile(destination.fs, f"{folder}/{name}")

    def _keep_for_retry(self, key: _Key, batch: _Batch, exc: Exception) -> None:
        self._retry[key] = batch
        now = time.monotonic()
        if now - self._last_write_warning >= _LOG_EVERY:
            self._last_write_warning = now
            log.warning("data capture cannot write to %s for endpoint %s (%s); keeping %d record(s) to retry",
                        batch.destination.uri, key[1], exc, sum(b.count for b in self._retry.values()))

    def _discard_file(self, key: _Key) -> None:
        handle = self._files.pop(key, None)
        if handle is not None:
            handle.close()

    def _rotate(self) -> None:
        """Close files past their age, and those of an hour that has passed once they go quiet."""
        now = time.monotonic()
        hour = int(time.time() // 3600)
        max_age = self.settings.file_seconds
        quiet = 2 * self.settings.flush_seconds
        for key, handle in list(self._files.items()):
            if now - handle.opened >= max_age or (key[3] < hour and now - handle.last_write >= quiet):
                self._discard_file(key)

    def _close_all(self) -> None:
        for key in list(self._files):
            self._discard_file(key)

    def _report_losses(self) -> None:
        lost = sum(c.dropped + c.failed for c in list(self._counters.values()))
        if lost == self._reported_losses:
            return
        now = time.monotonic()
        if now - self._last_loss_warning < _LOG_EVERY:
            return
        self._last_loss_warning = now
        log.warning("data capture lost %d record(s) so far (%d since the last report): the capture queue was full "
                    "(MOORAGE_CAPTURE_QUEUE_RECORDS=%d, MOORAGE_CAPTURE_QUEUE_BYTES=%d) or writes failed",
                    lost, lost - self._reported_losses, self._max_records, self._max_bytes)
        self._reported_losses = lost
