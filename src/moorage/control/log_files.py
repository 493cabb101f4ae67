"""moorage's log files read as CloudWatch Logs streams: events with timestamps, positions, tokens, filters.

A stream is one log as moorage writes it: the live file and its rotated parts (``serving/logs.py``:
``name.N`` oldest ... ``name.1``, then ``name``); an event is one line (empty lines are skipped, a
line longer than CloudWatch's 256 KiB event limit comes out as several events).

**Timestamps.** CloudWatch stores a time beside each event; moorage's log files keep none beside
their lines, but most lines carry one in their text: the model server's Python logging (asctime,
milliseconds, local time), the platform's own lines (``--- moorage: starting instance ... at
2026-...T...+0000``), the monitoring and processing jobs' logs (asctime). An event's time is the
stamp its line starts with (searched in its first 120 bytes, as ``moorage logs`` reads them), else
the previous line's: output printed without a stamp (``print``, a traceback) is dated by the last
stamped line before it, exactly as ``moorage logs`` interleaves instances. Adding a stamp to every
line where the instance log is written was the alternative; it was not taken because it changes the
bytes users and FailureReason tails read, for little gain (the SDK only shows messages).
Times are kept non-decreasing within a stream (a line quoting an older date does not go back in
time) and never later than the part's last write (its mtime; a line quoting a future date does not
jump ahead), so ``startTime`` seeks and the SDK's ``(timestamp, skip)`` positions stay consistent
from one poll to the next. Lines before a part's first stamp take the previous part's last write
(its mtime), the stream's floor for the oldest part.

**Positions and tokens.** A position is (the part's inode, a byte offset in it, the time of the
line before it): inodes survive rotation (a rename), so a token handed out before a rotation still
points at the same bytes. A token whose file has rotated out of the kept parts resumes at the
oldest part kept. Forward tokens are ``f/...``, backward ones ``b/...``; reading past the end gives
back the same token, as CloudWatch does.

**Bounded memory.** Files are opened, sought and read line by line (each line at most
``MAX_EVENT_BYTES``); reading backwards keeps at most one page of events (``limit`` events, 1 MB).
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# CloudWatch's own limits: an event is at most 256 KiB; a page at most 10,000 events and 1 MB, each
# event counting its message's UTF-8 bytes plus 26.
MAX_EVENT_BYTES = 256 * 1024
MAX_PAGE_EVENTS = 10_000
MAX_PAGE_BYTES = 1_048_576
EVENT_OVERHEAD = 26
STAMP_SEARCH_BYTES = 120
# File times come from the kernel's coarse clock (a few ms behind the time a process reads; a second on
# file systems that keep whole seconds): a stamp is capped at its part's mtime plus this much, so a line
# written as the file was last touched keeps its own time.
MTIME_SLACK_MS = 1000

_STAMP = re.compile(rb"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,6}))?"
                    rb"(?: ?(Z|[+-]\d\d:?\d\d))?")
_PART = re.compile(r"^(?P<base>.+\.log)(?:\.(?P<n>\d+))?$")


class TokenError(ValueError):
    """A token this server did not issue."""


def stamp_ms(line: bytes) -> int | None:
    """The time a log line starts with (within its first 120 bytes), in epoch milliseconds; None if none.

    Without an offset the stamp is the machine's local time, as Python logging's asctime writes it.
    """
    match = _STAMP.search(line, 0, STAMP_SEARCH_BYTES)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    fraction = int((match[7] or b"0").ljust(6, b"0")[:6])
    try:
        fields = (year, month, day, hour, minute, second, 0, 0, -1)
        zone = match[8]
        if zone is None:
            seconds = time.mktime(fields)  # type: ignore[arg-type]
        else:
            seconds = float(calendar.timegm(fields))  # type: ignore[arg-type]
            if zone != b"Z":
                text = zone.replace(b":", b"")
                offset = int(text[1:3]) * 3600 + int(text[3:5]) * 60
                seconds -= offset if text[:1] == b"+" else -offset
    except (ValueError, OverflowError):
        return None
    return int(seconds * 1000) + fraction // 1000


@dataclass(frozen=True)
class Position:
    """A place in a stream: a part (by inode), a byte offset in it, and the time of the line before it."""

    inode: int
    offset: int
    time: int

    def token(self, direction: str) -> str:
        return f"{direction}/{self.inode:x}.{self.offset:x}.{self.time:x}"

    @classmethod
    def from_token(cls, token: str) -> tuple[str, Position]:
        direction, _, rest = token.partition("/")
        fields = rest.split(".")
        if direction not in ("f", "b") or len(fields) != 3:
            raise TokenError(token)
        try:
            inode, offset, stamp = (int(f, 16) for f in fields)
        except ValueError as exc:
            raise TokenError(token) from exc
        if min(inode, offset, stamp) < 0:
            raise TokenError(token)
        return direction, cls(inode, offset, stamp)


@dataclass(frozen=True)
class Event:
    time: int
    message: str
    start: Position  # where its line begins
    end: Position  # just after it
    part: int  # which part of this read's snapshot (oldest is 0): orders positions across parts

    @property
    def size(self) -> int:
        """What the event counts against a page's 1 MB."""
        return len(self.message.encode()) + EVENT_OVERHEAD


@dataclass
class _Part:
    handle: IO[bytes]
    inode: int
    cap: int  # no line of the part is later than this (its mtime and the clock's slack; now for the live file)
    live: bool


def parts_of(live: Path) -> list[Path]:
    """The existing files of a log, oldest first: ``live.N`` ... ``live.1``, then ``live``."""
    numbered: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(live.parent):
            name = entry.name
            if name.startswith(live.name + ".") and name[len(live.name) + 1:].isdigit():
                numbered.append((int(name[len(live.name) + 1:]), Path(entry.path)))
    ordered = [p for _, p in sorted(numbered, reverse=True)]
    return [*ordered, live] if live.exists() else ordered


def log_base(name: str) -> str | None:
    """``x.log`` for ``x.log`` and its rotated parts ``x.log.N``; None for other files."""
    match = _PART.match(name)
    return match["base"] if match else None


class LogStream:
    """One log (a live file and its rotated parts) read as a CloudWatch stream."""

    def __init__(self, name: str, live: Path, floor: int = 0):
        self.name = name
        self.live = live
        self.floor = floor  # ms: the time of lines before the oldest part's first stamp

    def exists(self) -> bool:
        return bool(parts_of(self.live))

    def stored_bytes(self) -> int:
        total = 0
        for path in parts_of(self.live):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def last_write(self) -> int:
        """When the stream was last written (ms): the live file's mtime, else the newest part's."""
        for path in reversed(parts_of(self.live)):
            with contextlib.suppress(OSError):
                return int(path.stat().st_mtime * 1000)
        return self.floor

    def first_event_time(self) -> int | None:
        for event in self.events():
            return event.time
        return None

    def _open(self) -> list[_Part]:
        """Every part open at once (a rotation during the read renames files, it does not change them);
        a part seen twice (renamed between two opens) is kept once."""
        parts: list[_Part] = []
        seen: set[int] = set()
        paths = parts_of(self.live)
        now = int(time.time() * 1000)
        for path in paths:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed by _close
            except OSError:
                continue
            info = os.fstat(handle.fileno())
            if info.st_ino in seen:
                handle.close()
                continue
            seen.add(info.st_ino)
            live = path == self.live
            mtime = int(info.st_mtime * 1000) + MTIME_SLACK_MS
            parts.append(_Part(handle, info.st_ino, max(now, mtime) if live else mtime, live))
        return parts

    @staticmethod
    def _close(parts: list[_Part]) -> None:
        for part in parts:
            with contextlib.suppress(OSError):
                part.handle.close()

    def events(self, start: Position | None = None, *, since: int | None = None,
               stop: Position | None = None) -> Iterator[Event]:
        """Events in order from ``start`` (None: the oldest kept), up to ``stop`` (excluded).

        ``since`` (ms) lets whole parts last written before it be skipped unread: no line in them can be as
        late. Only complete lines of the live file are events (the rest is still being written).
        """
        parts = self._open()
        try:
            yield from self._events(parts, start, since, stop)
        finally:
            self._close(parts)

    def _events(self, parts: list[_Part], start: Position | None, since: int | None,
                stop: Position | None) -> Iterator[Event]:
        first, resume = 0, None
        if start is not None:
            found = next((i for i, p in enumerate(parts) if p.inode == start.inode), None)
            if found is not None:
                first, resume = found, start
        stop_part = None
        if stop is not None:
            stop_part = next((i for i, p in enumerate(parts) if p.inode == stop.inode), None)
            if stop_part is None:
                return  # the place to stop at has rotated out: nothing kept comes before it
        previous = self.floor
        for index in range(first, len(parts)):
            part = parts[index]
            if stop_part is not None and index > stop_part:
                return
            if index == first and resume is not None:
                offset, previous = resume.offset, resume.time
            else:
                # Every part starts from what is known of the one before without reading it (its last write),
                # so a line's time does not depend on where a read began.
                offset, previous = 0, self._base(parts, index)
            if since is not None and part.cap < since and not part.live:
                continue
            handle = part.handle
            size = os.fstat(handle.fileno()).st_size
            if offset > size:  # the file was started over (no backups kept): read it from the top
                offset, previous = 0, self._base(parts, index)
            handle.seek(offset)
            while True:
                if stop_part == index and stop is not None and offset >= stop.offset:
                    return
                line = handle.readline(MAX_EVENT_BYTES)
                if not line:
                    break
                if part.live and not line.endswith(b"\n") and len(line) < MAX_EVENT_BYTES:
                    break  # the rest of a line being written: it is an event once whole
                begin = Position(part.inode, offset, previous)
                offset += len(line)
                stamp = stamp_ms(line)
                if stamp is not None:
                    previous = max(previous, min(stamp, part.cap))
                text = line.rstrip(b"\r\n")
                if not text:
                    continue
                yield Event(previous, text.decode("utf-8", "replace"), begin, Position(part.inode, offset, previous),
                            index)

    def _base(self, parts: list[_Part], index: int) -> int:
        """The time of a part's lines before its first stamp: the previous part's last write, with the clock's
        slack, which none of that part's lines is later than (the floor for the oldest)."""
        return max(self.floor, parts[index - 1].cap) if index > 0 else self.floor

    def start_position(self) -> Position:
        """Where the stream begins now (its oldest kept part, offset 0)."""
        parts = self._open()
        try:
            return Position(parts[0].inode, 0, self.floor) if parts else Position(0, 0, self.floor)
        finally:
            self._close(parts)

    def end_position(self) -> Position:
        """Just after the last complete line (where a forward read with nothing new stays)."""
        last = None
        parts = self._open()
        try:
            if not parts:
                return Position(0, 0, self.floor)
            # Read only the newest part: positions need the time of the line before, so its lines are read.
            start = Position(parts[-1].inode, 0, self._base(parts, len(parts) - 1))
            for event in self._events(parts, start, None, None):
                last = event.end
            if last is None:
                return start
            # trailing empty lines advance nothing that matters: the next read skips them again
            return last
        finally:
            self._close(parts)


# -- GetLogEvents ---------------------------------------------------------------------------------------
@dataclass
class Page:
    events: list[Event]
    forward: str
    backward: str


def _keep(event: Event, start_time: int | None) -> bool:
    return start_time is None or event.time >= start_time


def read_page(stream: LogStream, token: str | None, *, start_from_head: bool, start_time: int | None,
              end_time: int | None, limit: int) -> Page:
    """GetLogEvents: a page forward (a forward token, or from the head) or backward (a backward token, or the
    stream's latest events), ``start_time <= time < end_time``. Raises TokenError for a token not issued here."""
    direction, position = Position.from_token(token) if token else ("f" if start_from_head else "b", None)
    limit = max(1, min(limit, MAX_PAGE_EVENTS))
    if direction == "f":
        return _forward(stream, token, position, start_time, end_time, limit)
    return _backward(stream, token, position, start_time, end_time, limit)


def _forward(stream: LogStream, token: str | None, position: Position | None, start_time: int | None,
             end_time: int | None, limit: int) -> Page:
    events: list[Event] = []
    size = 0
    reached = position
    for event in stream.events(position, since=start_time):
        if end_time is not None and event.time >= end_time:
            break
        reached = event.end
        if not _keep(event, start_time):
            continue
        events.append(event)
        size += event.size
        if len(events) >= limit or size >= MAX_PAGE_BYTES:
            break
    if reached is None:
        reached = stream.start_position()
    forward = reached.token("f") if reached != position or token is None else token
    backward = events[0].start.token("b") if events else reached.token("b")
    return Page(events, forward, backward)


def _backward(stream: LogStream, token: str | None, position: Position | None, start_time: int | None,
              end_time: int | None, limit: int) -> Page:
    window: deque[Event] = deque()
    size = 0
    for event in stream.events(None, since=start_time, stop=position):
        if end_time is not None and event.time >= end_time:
            break
        if not _keep(event, start_time):
            continue
        window.append(event)
        size += event.size
        while len(window) > limit or (size > MAX_PAGE_BYTES and len(window) > 1):
            size -= window.popleft().size
    events = list(window)
    if events:
        return Page(events, events[-1].end.token("f"), events[0].start.token("b"))
    if token is not None and position is not None:
        return Page([], position.token("f"), token)
    end = stream.end_position()
    return Page([], end.token("f"), end.token("b"))


# -- FilterLogEvents ------------------------------------------------------------------------------------
class PatternError(ValueError):
    """A filter pattern moorage does not read (JSON or space-delimited patterns)."""


@dataclass(frozen=True)
class FilterPattern:
    """CloudWatch's filter pattern for unstructured log events: terms all present (``ERROR Exception``),
    ``"quoted phrases"``, ``?alternatives`` (any one present), ``-excluded`` terms, and ``%regex%``; every
    match is case-sensitive, as CloudWatch's is."""

    required: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str | None) -> FilterPattern:
        text = (text or "").strip()
        if not text or text == '""':
            return cls()
        if text.startswith("{") or text.startswith("["):
            raise PatternError("moorage reads filter patterns of terms, \"quoted phrases\", ?alternatives, "
                               "-exclusions and %regular expressions%; JSON ({ $.field ... }) and space-delimited "
                               "([a, b, ...]) patterns are not supported.")
        if len(text) >= 2 and text.startswith("%") and text.endswith("%"):
            try:
                return cls(regex=re.compile(text[1:-1]))
            except re.error as exc:
                raise PatternError(f"The regular expression in the filter pattern is not valid: {exc}.") from exc
        required: list[str] = []
        any_of: list[str] = []
        excluded: list[str] = []
        for kind, term in _terms(text):
            {"": required, "?": any_of, "-": excluded}[kind].append(term)
        return cls(tuple(required), tuple(any_of), tuple(excluded))

    def matches(self, message: str) -> bool:
        if self.regex is not None:
            return self.regex.search(message) is not None
        if any(term in message for term in self.excluded):
            return False
        if not all(term in message for term in self.required):
            return False
        return not self.any_of or any(term in message for term in self.any_of)


def _terms(text: str) -> Iterator[tuple[str, str]]:
    """(kind, term) for each term: kind '' (required), '?' (alternative) or '-' (excluded)."""
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        kind = ""
        if text[i] in "?-" and i + 1 < n and not text[i + 1].isspace():
            kind, i = text[i], i + 1
        if text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise PatternError(f"The filter pattern has an unclosed quote: {text}")
            term, i = text[i + 1:end], end + 1
        else:
            end = i
            while end < n and not text[end].isspace():
                end += 1
            term, i = text[i:end], end
        if term:
            yield kind, term


@dataclass(frozen=True)
class FilterResume:
    """Where a FilterLogEvents page ended: after the event at (time, stream, position)."""

    time: int
    stream: str
    inode: int
    offset: int

    def token(self) -> str:
        return f"{self.time:x}.{self.inode:x}.{self.offset:x}.{self.stream.encode().hex()}"

    @classmethod
    def from_token(cls, token: str) -> FilterResume:
        fields = token.split(".")
        if len(fields) != 4:
            raise TokenError(token)
        try:
            stamp, inode, offset = (int(f, 16) for f in fields[:3])
            stream = bytes.fromhex(fields[3]).decode()
        except ValueError as exc:
            raise TokenError(token) from exc
        return cls(stamp, stream, inode, offset)


def filter_page(streams: list[LogStream], pattern: FilterPattern, *, start_time: int | None,
                end_time: int | None, limit: int, token: str | None) -> tuple[list[tuple[LogStream, Event]],
                                                                              str | None]:
    """FilterLogEvents over ``streams``: matching events interleaved by time (ties by stream name, then by
    place in the stream), a page at a time; the token resumes after the page's last event."""
    import heapq

    resume = FilterResume.from_token(token) if token else None
    since = start_time if resume is None else max(start_time or 0, resume.time)
    limit = max(1, min(limit, MAX_PAGE_EVENTS))
    ordered = sorted(streams, key=lambda s: s.name)

    def keyed(rank: int, stream: LogStream) -> Iterator[tuple[int, int, int, int, LogStream, Event]]:
        resume_part: int | None = None
        for event in stream.events(since=since):
            if resume is not None:
                if event.time < resume.time:
                    continue
                if event.time == resume.time:
                    if stream.name < resume.stream:
                        continue
                    if stream.name == resume.stream:
                        if resume_part is None and event.start.inode == resume.inode:
                            resume_part = event.part
                        if resume_part is None or (event.part, event.start.offset) <= (resume_part, resume.offset):
                            continue
            yield event.time, rank, event.part, event.start.offset, stream, event

    out: list[tuple[LogStream, Event]] = []
    size = 0
    merged = heapq.merge(*(keyed(rank, s) for rank, s in enumerate(ordered)), key=lambda k: k[:4])
    try:
        for stamp, _, _, _, stream, event in merged:
            if start_time is not None and stamp < start_time:
                continue
            if end_time is not None and stamp >= end_time:
                break
            if not pattern.matches(event.message):
                continue
            if len(out) >= limit or size + event.size > MAX_PAGE_BYTES:
                last_stream, last = out[-1]
                return out, FilterResume(last.time, last_stream.name, last.start.inode, last.start.offset).token()
            out.append((stream, event))
            size += event.size
    finally:
        merged.close()  # type: ignore[attr-defined]
    return out, None
