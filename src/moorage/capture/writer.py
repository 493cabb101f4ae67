"""The data-capture writer: invocations in, SageMaker capture files out, never on the request path.

``CaptureObserver.observe`` runs on the router's event loop after the reply was sent. It decides the
sample (one ``random()`` call) and appends the invocation's raw pieces (the bodies, the forwarded
header block, the response's content type, the arrival time) to its own bounded in-memory queue, as
a tuple of strings, a float and bytes, which Python's garbage collector stops tracking at once; when
the bounds (over all queues) are reached the record is dropped and counted. That is all the request
path pays: about half a microsecond. Everything else happens in one writer thread, in bulk: it wakes
every ``flush_seconds``, or once ``batch_records`` records wait, and turns each run of at most
``batch_records`` records into lines with C-level map/join over a per-content-type template (event
ids come from one ``urandom`` call per 4,096), writing each run before encoding the next, so only a
few hundred kilobytes are in flight. Fewer, larger runs measured cheaper than more, smaller ones
(each wake is a thread switch and a GIL hand-off), up to the point where a run's buffers stop fitting
in memory already mapped. The lines go to files laid out as SageMaker lays them out::

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
import itertools
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from moorage.capture.config import CaptureConfig, Destination, WriterSettings
from moorage.capture.records import RecordEncoder, ServedBy, stamp
from moorage.serving.invocation_events import InvocationEvent

log = logging.getLogger("moorage.capture")

_random = random.random  # the sampling draw: Mersenne Twister, ~30 ns, no lock
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az"})
_LOG_EVERY = 10.0  # seconds between two warnings about drops or write failures


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
# Where each of a UUID's 32 hex digits goes in its 36-character text (dashes at 8, 13, 18, 23).
_UUID_DIGIT_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
# Bytes a queued record is counted for beyond its two bodies (its tuple, header block, strings).
_RECORD_OVERHEAD = 256


def _event_ids(count: int) -> list[bytes]:
    """``count`` random (version 4) UUIDs as ASCII bytes, from one ``urandom`` call, formatted in bulk
    by numpy: about a fifth of ``str(uuid4())``'s cost each."""
    raw = np.frombuffer(os.urandom(16 * count), np.uint8).reshape(count, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    digits = np.empty((count, 32), np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[raw >> 4]
    digits[:, 1::2] = _HEX_DIGITS[raw & 0x0F]
    text = np.full((count, 36), ord("-"), np.uint8)
    text[:, _UUID_DIGIT_COLUMNS] = digits
    blob = text.tobytes()
    return [blob[i:i + 36] for i in range(0, 36 * count, 36)]


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

    __slots__ = ("__weakref__", "_by_variant", "_queue", "_threshold", "_writer", "config", "endpoint")

    def __init__(self, writer: CaptureWriter, endpoint: str, config: CaptureConfig, queue: deque[_Queued]):
        self._writer = writer
        self.endpoint = endpoint
        self.config = config
        self._queue = queue  # this observer's records; the writer holds it too, and drains it
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
        self._writer.submit(self._queue, event, counters)

    def serve_as(self, served_by: ServedBy | None) -> None:
        """From the next record on, say which fleet served (None: SageMaker's records, no note)."""
        self._queue = self._writer.relabel(self, served_by)

    def __repr__(self) -> str:
        return f"CaptureObserver({self.endpoint}, {self.config.sampling_percentage}% to {self.config.destination.uri})"


@dataclass
class _Source:
    """One observer's queue, and what the writer needs to turn its records into lines."""

    queue: deque[_Queued]
    encoder: RecordEncoder
    endpoint: str
    destination: Destination
    observer: weakref.ref[CaptureObserver]  # dead once the route dropped it: then no record can follow
    replaced: bool = False  # the observer queues elsewhere now (serve_as): no record can follow either


@dataclass
class _Batch:
    destination: Destination
    counters: CaptureCounters
    counters_key: str  # endpoint/variant, for messages
    first_arrival: float
    data: bytes | bytearray = b""  # whole lines
    count: int = 0  # records in data

    def add(self, lines: bytes | bytearray, count: int) -> None:
        if not self.data:
            self.data = lines  # a run alone is kept as it is, not copied
        else:
            if isinstance(self.data, bytes):
                self.data = bytearray(self.data)  # several runs (remote files, retries): grow in place
            self.data += lines
        self.count += count


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
# What the event loop queues per record: variant, arrival (epoch seconds), forwarded header block,
# request body, response content type, response body. Strings, a float and bytes only: the garbage
# collector stops tracking such a tuple at its first look.
_Queued = tuple[str, float, bytes, bytes, "str | None", bytes]


class CaptureWriter:
    def __init__(self, settings: WriterSettings | None = None):
        self.settings = settings or WriterSettings()
        self._max_records = self.settings.queue_records
        self._max_bytes = self.settings.queue_bytes
        # The writer is woken once a run's worth of records waits (it also wakes every flush_seconds).
        self._wake_at = max(1, min(self.settings.batch_records, self.settings.queue_records // 2))
        # Queued = enqueued - drained, over all observers' queues. Each counter has a single writing
        # thread (enqueued: the event loop; drained: the writer), so no lock is needed.
        self._enqueued = self._enqueued_bytes = 0
        self._drained = self._drained_bytes = 0
        # Records (and their bytes) kept after a failed write: they count against the queue's bounds.
        self._retained = 0
        self._retained_bytes = 0
        self._counters: dict[tuple[str, str], CaptureCounters] = {}
        self._sources: dict[int, _Source] = {}
        self._source_ids = itertools.count()
        self._event_id_pool: list[bytes] = []  # the writer thread's only
        self._files: dict[_Key, _LocalFile | _RemoteFile] = {}
        self._retry: dict[_Key, _Batch] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_write_warning = -_LOG_EVERY
        self._last_loss_warning = -_LOG_EVERY
        self._reported_losses = 0

    # The event loop's side ---------------------------------------------------------------------
    def observer(self, endpoint: str, config: CaptureConfig) -> CaptureObserver:
        queue: deque[_Queued] = deque()
        observer = CaptureObserver(self, endpoint, config, queue)
        self._sources[next(self._source_ids)] = _Source(queue, RecordEncoder(config), endpoint, config.destination,
                                                        weakref.ref(observer))
        return observer

    def relabel(self, observer: CaptureObserver, served_by: ServedBy | None) -> deque[_Queued]:
        """A new queue for ``observer``, whose records are encoded with ``served_by``'s note. The old
        queue drains first (sources drain in the order they were added), so lines keep their order."""
        for source in list(self._sources.values()):  # a copy: the writer thread deletes drained sources
            if source.observer() is observer and not source.replaced:
                source.replaced = True
        queue: deque[_Queued] = deque()
        self._sources[next(self._source_ids)] = _Source(queue, RecordEncoder(observer.config, served_by),
                                                        observer.endpoint, observer.config.destination,
                                                        weakref.ref(observer))
        return queue

    def counters(self, endpoint: str, variant: str) -> CaptureCounters:
        key = (endpoint, variant)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = CaptureCounters()
        return counters

    def submit(self, queue: deque[_Queued], event: InvocationEvent, counters: CaptureCounters) -> None:
        request_body, response_body = event.request_body, event.response_body
        size = len(request_body) + len(response_body) + _RECORD_OVERHEAD
        queued = self._enqueued - self._drained + self._retained
        if (queued >= self._max_records
                or self._enqueued_bytes - self._drained_bytes + self._retained_bytes + size > self._max_bytes):
            counters.dropped += 1
            return
        queue.append((event.variant, event.arrived, event.forwarded_headers, request_body,
                      event.response_content_type, response_body))
        self._enqueued += 1
        self._enqueued_bytes += size
        counters.captured += 1
        if queued + 1 == self._wake_at:
            self._wake.set()

    # Counters, for metrics -----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Totals over every endpoint: captured, dropped, written, failed, and pending (not yet written)."""
        totals = {"captured": 0, "dropped": 0, "written": 0, "failed": 0}
        for counters in list(self._counters.values()):
            for name, value in counters.as_dict().items():
                totals[name] += value
        totals["pending"] = self._enqueued - self._drained + sum(b.count for b in list(self._retry.values()))
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
                          timeout, self._enqueued - self._drained)
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

    def _flush(self) -> None:
        # Records kept after failed writes go first, so a file's lines stay in arrival order.
        pending = self._retry
        self._retry = {}
        self._write_pending(pending, final=True)
        run = self.settings.batch_records
        drained = drained_bytes = 0
        for number, source in list(self._sources.items()):
            # An observer already gone queued its last record before this drain: forget it after.
            retired = source.replaced or source.observer() is None
            queue = source.queue
            popleft = queue.popleft
            # What is queued now; what arrives meanwhile waits for the next flush. In runs of at most
            # batch_records, each written before the next is encoded: a few hundred kilobytes in
            # memory at a time, reused, rather than megabytes freshly allocated and freed each flush.
            count = len(queue)
            while count:
                take = min(count, run)
                drained_bytes += self._encode(source, [popleft() for _ in range(take)], pending)
                drained += take
                count -= take
                self._write_pending(pending, final=False)
            if retired:
                del self._sources[number]
        self._drained += drained
        self._drained_bytes += drained_bytes
        self._write_pending(pending, final=True)
        self._retained = sum(b.count for b in self._retry.values())
        self._retained_bytes = sum(len(b.data) for b in self._retry.values())
        self._rotate()
        self._report_losses()

    def _write_pending(self, pending: dict[_Key, _Batch], final: bool) -> None:
        """Writes (and removes) the pending batches: local ones at once; remote ones, whose every
        write puts the whole object again, only at the end of a flush."""
        for key, batch in list(pending.items()):
            if final or batch.destination.local:
                del pending[key]
                if batch.count:
                    self._write(key, batch)

    def _encode(self, source: _Source, records: list[_Queued], batches: dict[_Key, _Batch]) -> int:
        """Adds one observer's records to the batches of their files; returns the bytes they were counted for."""
        variants, arrivals, headers, requests, response_types, responses = zip(*records, strict=True)
        counted = sum(map(len, requests)) + sum(map(len, responses)) + _RECORD_OVERHEAD * len(records)
        count = len(records)
        event_ids = self._take_event_ids(count)
        seconds = list(map(int, arrivals))
        by_second = {second: stamp(second) for second in set(seconds)}
        stamps = list(map(by_second.__getitem__, seconds))
        hour = seconds[0] // 3600
        # tuple.count compares (identical objects at once) where a set would hash every header block
        if (variants.count(variants[0]) == count and headers.count(headers[0]) == count
                and response_types.count(response_types[0]) == count
                and min(seconds) // 3600 == hour == max(seconds) // 3600):
            # The usual flush: one variant, one kind of request, one hour, all lines from one template.
            run = source.encoder.lines(headers[0], response_types[0], requests, responses, event_ids, stamps)
            if run is not None:
                self._batch(batches, source, variants[0], arrivals[0]).add(run, count)
                return counted
        line = source.encoder.line
        lines: dict[int, tuple[_Batch, list[bytes]]] = {}
        for variant, arrived, block, request, response_type, response, event_id, second_stamp in zip(
                variants, arrivals, headers, requests, response_types, responses, event_ids, stamps, strict=True):
            batch = self._batch(batches, source, variant, arrived)
            try:
                encoded = line(block, request, response_type, response, event_id, second_stamp)
            except Exception:  # a bug in encoding one record must not cost the others
                batch.counters.failed += 1
                log.exception("data capture could not encode a record of %s", batch.counters_key)
                continue
            lines.setdefault(id(batch), (batch, []))[1].append(encoded)
        for batch, encoded_lines in lines.values():
            batch.add(b"".join(encoded_lines), len(encoded_lines))
        return counted

    def _take_event_ids(self, count: int) -> list[bytes]:
        """Event ids from a pool refilled 4,096 at a time (numpy's fixed cost per call, amortised)."""
        pool = self._event_id_pool
        if len(pool) < count:
            pool += _event_ids(max(4096, count))
        taken = pool[-count:]
        del pool[-count:]
        return taken

    def _batch(self, batches: dict[_Key, _Batch], source: _Source, variant: str, arrived: float) -> _Batch:
        key = (source.destination.root, source.endpoint, variant, int(arrived // 3600))
        batch = batches.get(key)
        if batch is None:
            batch = batches[key] = _Batch(source.destination, self.counters(source.endpoint, variant),
                                          f"{source.endpoint}/{variant}", arrived)
        return batch

    def _write(self, key: _Key, batch: _Batch) -> None:
        if key in self._retry:  # this file already failed during this flush: keep the order, retry later
            self._keep_for_retry(key, batch, None)
            return
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

    def _keep_for_retry(self, key: _Key, batch: _Batch, exc: Exception | None) -> None:
        kept = self._retry.get(key)
        if kept is None:
            self._retry[key] = batch
        else:
            kept.add(batch.data, batch.count)
        now = time.monotonic()
        if exc is not None and now - self._last_write_warning >= _LOG_EVERY:
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
