"""The agent's capture spool: every inference on local disk until the server has it.

Layout under the spool directory::

    open.jsonl                         the open segment: capture records appended, one JSON line each
    sealed/{device}-{sequence:012d}.jsonl  sealed segments, immutable, oldest first by sequence
    rejected/                          segments the server refused for good (kept for a person)
    spool.json                         next sequence, records dropped and torn, each sealed segment's count

**Crash safety.** A record is one ``os.write`` of its whole line on an ``O_APPEND`` descriptor, done
before ``append`` returns: a ``kill -9`` after that loses nothing (the bytes are the kernel's), and
one during it leaves the file without that line or, at worst (a full disk, a power cut), with a
torn last line. The open segment is fsynced at most every ``fsync_interval_s`` (0: after every
record) and always before it is sealed. On start the open segment is read back line by line and any
line that is not a whole JSON record (no newline, or not JSON) is cut off and counted
(``torn_records``), so an upload never carries half a record.

**Sealing.** A segment is sealed when it reaches ``segment_bytes`` or is older than
``segment_age_s``: fsync, take the next sequence and write it to ``spool.json`` (staged, fsynced,
renamed) *before* the rename into ``sealed/``, so a sequence is never given twice, even across a
crash between the two (that leaves a gap, which is harmless). A sealed segment's name and bytes never
change, so uploading it twice (after a ``kill -9`` mid-upload) writes the same object to the same key.

**The cap.** Sealed plus open bytes stay under ``max_bytes``: past it the oldest sealed segments are
dropped first and their records counted (``dropped_records``, persisted). A segment is at most half
the cap, so dropping sealed ones always makes room. Memory is bounded: nothing is buffered beyond the
record being written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

OPEN = "open.jsonl"
SEALED = "sealed"
REJECTED = "rejected"
STATE = "spool.json"
SUFFIX = ".jsonl"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
MAX_SEGMENT_BYTES = 16 * 1024 * 1024  # what the server's capture door takes in one PUT
_NAME = re.compile(r"^(?P<device>.+)-(?P<sequence>\d{12})$")


class SpoolError(OSError):
    """A record could not be written (the disk is full, say); the spool is left as it was."""


@dataclass(frozen=True)
class SpoolStats:
    backlog_records: int  # records not yet uploaded: sealed and open
    backlog_bytes: int
    sealed_segments: int
    dropped_records: int  # dropped by the cap, since the spool was made
    torn_records: int  # cut off after a crash, since the spool was made
    rejected_records: int = 0  # in segments the server refused for good (kept in rejected/)


@dataclass(frozen=True)
class Segment:
    name: str  # {device}-{sequence:012d}
    path: Path
    records: int
    size: int

    @property
    def sequence(self) -> int:
        return int(self.name.rsplit("-", 1)[1])


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all: staged, fsynced, renamed, the directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


class Spool:
    """Append-only capture segments with a persisted sequence, a size cap and crash recovery."""

    def __init__(self, directory: Path | str, device: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, segment_age_s: float = 60.0,
                 fsync_interval_s: float = 1.0) -> None:
        if not device or "/" in device:
            raise ValueError(f"device name {device!r} cannot name a spool segment")
        if max_bytes < 2:
            raise ValueError("the spool's size cap must be at least 2 bytes")
        self.directory = Path(directory)
        self.device = device
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, MAX_SEGMENT_BYTES, max_bytes // 2))
        self.segment_age_s = segment_age_s
        self.fsync_interval_s = fsync_interval_s
        self._lock = threading.Lock()
        self._sealed_dir = self.directory / SEALED
        self._sealed_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = self.directory / STATE
        self._segments: dict[str, Segment] = {}
        self._next_sequence = 1
        self.dropped_records = 0
        self.torn_records = 0
        self.rejected_records = 0
        self._in_flight: str | None = None  # the segment being uploaded: the cap leaves it alone
        self._load_state()
        self._open_path = self.directory / OPEN
        self._open_records, self._open_size = self._recover_open()
        self._fd = os.open(self._open_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._open_since = time.monotonic() if self._open_records else None
        self._dirty = False
        self._last_fsync = time.monotonic()
        self._enforce_cap()

    # ------------------------------------------------------------------------------------- recovery

    def _load_state(self) -> None:
        state: dict[str, object] = {}
        try:
            state = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            pass
        except ValueError:
            state = {}  # only ever replaced whole; unreadable means someone else wrote it: start over
        counts = state.get("segments", {}) if isinstance(state.get("segments"), dict) else {}
        self.dropped_records = int(state.get("dropped_records", 0))  # type: ignore[call-overload]
        self.torn_records = int(state.get("torn_records", 0))  # type: ignore[call-overload]
        self.rejected_records = int(state.get("rejected_records", 0))  # type: ignore[call-overload]
        highest = int(state.get("next_sequence", 1)) - 1  # type: ignore[call-overload]
        for path in self._sealed_dir.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            match = _NAME.match(path.name.removesuffix(SUFFIX))
            if not path.name.endswith(SUFFIX) or match is None:
                continue
            name = path.name.removesuffix(SUFFIX)
            size = path.stat().st_size
            records = counts.get(name)  # type: ignore[union-attr]
            if not isinstance(records, int):
                records = _count_lines(path)
            self._segments[name] = Segment(name, path, records, size)
            highest = max(highest, int(match["sequence"]))
        self._segments = dict(sorted(self._segments.items(), key=lambda item: item[1].sequence))
        self._next_sequence = highest + 1

    def _recover_open(self) -> tuple[int, int]:
        """The open segment's whole records (a torn or unreadable line is cut off and counted)."""
        try:
            data = self._open_path.read_bytes()
        except FileNotFoundError:
            return 0, 0
        kept: list[bytes] = []
        torn = 0
        for line in data.splitlines(keepends=True):
            if line.endswith(b"\n") and _is_record(line):
                kept.append(line)
            elif line.strip(b"\0\n\r\t "):
                torn += 1
        good = b"".join(kept)
        if good != data:
            write_atomically(self._open_path, good)
        if torn:
            self.torn_records += torn
            self._write_state()
        return len(kept), len(good)

    # --------------------------------------------------------------------------------------- writing

    def append(self, line: bytes) -> None:
        """Write one record (its whole line, newline included) to the open segment."""
        with self._lock:
            if self._open_size and self._open_size + len(line) > self.segment_bytes:
                self._seal_locked()
            try:
                written = os.write(self._fd, line)
            except OSError as exc:
                raise SpoolError(exc.errno, f"capture record not spooled: {exc.strerror}") from None
            if written != len(line):  # a full disk: take the piece back so no torn line stays
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._open_size)
                raise SpoolError(28, f"capture record not spooled: {written} of {len(line)} bytes written")
            if self._open_records == 0:
                self._open_since = time.monotonic()
            self._open_records += 1
            self._open_size += written
            self._dirty = True
            if self.fsync_interval_s <= 0:
                os.fsync(self._fd)
                self._dirty = False
            if self._open_size >= self.segment_bytes:
                self._seal_locked()
            elif self._total_bytes() > self.max_bytes:
                self._enforce_cap()

    def tick(self, now: float | None = None) -> str | None:
        """Housekeeping, called often from the agent's background thread: fsync what is due and
        seal the open segment when it is old enough. Returns the name of a segment sealed now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._dirty and now - self._last_fsync >= self.fsync_interval_s:
                os.fsync(self._fd)
                self._dirty = False
                self._last_fsync = now
            if self._open_since is not None and now - self._open_since >= self.segment_age_s:
                return self._seal_locked()
        return None

    def seal(self) -> str | None:
        """Seal the open segment now, if it holds a record; its name, or None."""
        with self._lock:
            return self._seal_locked()

    def _seal_locked(self) -> str | None:
        if not self._open_records:
            return None
        os.fsync(self._fd)
        self._dirty = False
        sequence = self._next_sequence
        name = f"{self.device}-{sequence:012d}"
        target = self._sealed_dir / (name + SUFFIX)
        segment = Segment(name, target, self._open_records, self._open_size)
        self._next_sequence = sequence + 1
        self._segments[name] = segment
        self._write_state()  # the sequence is taken before the segment appears (see the module docstring)
        os.close(self._fd)
        os.replace(self._open_path, target)
        fsync_directory(self._sealed_dir)
        fsync_directory(self.directory)
        self._fd = os.open(self._open_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        self._open_records = self._open_size = 0
        self._open_since = None
        self._enforce_cap()
        return name

    def _total_bytes(self) -> int:
        return self._open_size + sum(segment.size for segment in self._segments.values())

    def _enforce_cap(self) -> None:
        dropped = 0
        while self._total_bytes() > self.max_bytes:
            victim = next((s for s in self._segments.values() if s.name != self._in_flight), None)
            if victim is None:
                break
            victim.path.unlink(missing_ok=True)
            del self._segments[victim.name]
            dropped += victim.records
        if dropped:
            self.dropped_records += dropped
            self._write_state()

    def _write_state(self) -> None:
        state = {"next_sequence": self._next_sequence, "dropped_records": self.dropped_records,
                 "torn_records": self.torn_records, "rejected_records": self.rejected_records,
                 "segments": {name: segment.records for name, segment in self._segments.items()}}
        write_atomically(self._state_path, json.dumps(state, separators=(",", ":")).encode("utf-8"))

    # ------------------------------------------------------------------------------------- uploading

    def oldest(self) -> Segment | None:
        """The oldest sealed segment, marked in flight (the cap keeps it until ``done``)."""
        with self._lock:
            segment = next(iter(self._segments.values()), None)
            self._in_flight = segment.name if segment is not None else None
            return segment

    def done(self, segment: Segment, uploaded: bool) -> None:
        """The upload of ``segment`` ended; when the server has it (``uploaded``), delete it."""
        with self._lock:
            self._in_flight = None
            if uploaded and segment.name in self._segments:
                del self._segments[segment.name]
                self._write_state()
                segment.path.unlink(missing_ok=True)
                fsync_directory(self._sealed_dir)
            self._enforce_cap()

    def reject(self, segment: Segment) -> None:
        """The server refused ``segment`` for good (malformed, or other bytes already stored under its
        name): move it to ``rejected/`` for a person to look at, so the segments after it still go."""
        with self._lock:
            self._in_flight = None
            if segment.name not in self._segments:
                return
            rejected = self.directory / REJECTED
            rejected.mkdir(exist_ok=True)
            del self._segments[segment.name]
            self.rejected_records += segment.records
            self._write_state()
            os.replace(segment.path, rejected / segment.path.name)
            fsync_directory(rejected)
            fsync_directory(self._sealed_dir)

    def stats(self) -> SpoolStats:
        with self._lock:
            sealed = list(self._segments.values())
            return SpoolStats(
                backlog_records=self._open_records + sum(s.records for s in sealed),
                backlog_bytes=self._open_size + sum(s.size for s in sealed),
                sealed_segments=len(sealed), dropped_records=self.dropped_records, torn_records=self.torn_records,
                rejected_records=self.rejected_records)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                if self._dirty:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
    return count
