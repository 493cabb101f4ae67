"""``moorage logs``: read and follow the per-instance log files a server keeps in its home.

Files are ``home/logs/{endpoint}/{variant}/{instance_id}.log``, with rotated parts ``.log.1``
(newest) ... ``.log.N`` beside it. The live instance list (and its order, which ``--instance N``
counts in) comes from the native API; files of instances that are gone (restarted, failed, scaled
in) are found on disk, so a failed deployment's logs can still be read.
"""

from __future__ import annotations

import heapq
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from moorage.config import default_home
from moorage.connection import ClientError, Connection

_PART = re.compile(r"^(?P<id>.+)\.log(?:\.(?P<n>\d+))?$")
# Timestamps as Python logging (asctime) and the server's own start lines write them, both local
# time; lines without one (print output, tracebacks) keep the previous line's.
_STAMP = re.compile(rb"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:[.,](\d{1,6}))?")
_BLOCK = 65536
POLL_SECONDS = 0.2
RESCAN_SECONDS = 2.0


class LogsError(Exception):
    pass


@dataclass
class LogSource:
    variant: str
    instance_id: str
    path: Path  # the live file, {instance_id}.log

    @property
    def label(self) -> str:
        return f"[{self.variant}/{self.instance_id}]"

    def parts(self) -> list[Path]:
        """Existing files of this log, oldest first: .log.N ... .log.1, .log."""
        numbered = []
        for candidate in self.path.parent.glob(f"{glob_escape(self.path.name)}.*"):
            suffix = candidate.name[len(self.path.name) + 1:]
            if suffix.isdigit():
                numbered.append((int(suffix), candidate))
        ordered = [p for _, p in sorted(numbered, reverse=True)]
        return [*ordered, self.path] if self.path.exists() else ordered


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@dataclass
class Selection:
    sources: list[LogSource]
    prefixed: bool
    logs_dir: Path
    variant: str | None
    pinned: bool = False
    notes: list[str] = field(default_factory=list)


def select_sources(endpoint: str, home: Path | None, url: str | None, variant: str | None,
                   instance: str | None) -> Selection:
    """The log files to show, in order, and where they live."""
    home_dir = Path(home or default_home()).expanduser()
    live: list[LogSource] = []
    logs_dir = home_dir / "logs" / endpoint
    notes: list[str] = []
    try:
        state = Connection.discover(home, url).native("GET", f"/moorage/v1/endpoints/{quote(endpoint, safe='')}")
    except ClientError as exc:
        state = None
        notes.append(f"live instance list unavailable ({exc}); reading {logs_dir}")
    if state is not None:
        for entry in state.get("Variants", []):
            if variant is not None and entry["VariantName"] != variant:
                continue
            for inst in entry.get("Instances", []):
                path = Path(inst["LogPath"]) if inst.get("LogPath") else None
                if path is None:
                    path = logs_dir / entry["VariantName"] / f"{inst['InstanceId']}.log"
                live.append(LogSource(entry["VariantName"], inst["InstanceId"], path))
        if live:
            # The server's home may differ from ours (another --home, a symlink): trust its paths.
            logs_dir = live[0].path.parent.parent
    everything = live + [s for s in scan_disk(logs_dir, variant) if (s.variant, s.instance_id) not in
                         {(x.variant, x.instance_id) for x in live}]
    if instance is None:
        if not everything:
            detail = f"; {notes[0]}" if notes else ""
            raise LogsError(f"no logs for endpoint {endpoint}" + (f" variant {variant}" if variant else "")
                            + f" under {logs_dir}{detail}")
        return Selection(everything, True, logs_dir, variant, notes=notes)
    if instance.isdigit():
        ordered = live or everything
        index = int(instance)
        if index < 1:
            raise LogsError("instance numbers start at 1 (the first instance the API lists)")
        if index > len(ordered):
            raise LogsError(f"endpoint {endpoint} has {len(ordered)} instance(s)"
                            + (f" in variant {variant}" if variant else "") + f"; there is no instance {index}")
        return Selection([ordered[index - 1]], False, logs_dir, variant, pinned=True, notes=notes)
    for source in everything:
        if source.instance_id == instance:
            return Selection([source], False, logs_dir, variant, pinned=True, notes=notes)
    raise LogsError(f"no instance {instance} in endpoint {endpoint}"
                    + (f" variant {variant}" if variant else "") + f" (looked under {logs_dir})")


def scan_disk(logs_dir: Path, variant: str | None) -> list[LogSource]:
    """Instances with log files under ``logs_dir``, by variant, then by when they last wrote."""
    if not logs_dir.is_dir():
        return []
    found: list[tuple[str, float, str, Path]] = []
    for variant_dir in sorted(p for p in logs_dir.iterdir() if p.is_dir()):
        if variant is not None and variant_dir.name != variant:
            continue
        latest: dict[str, float] = {}
        for file in variant_dir.iterdir():
            match = _PART.match(file.name)
            if match and file.is_file():
                mtime = file.stat().st_mtime
                latest[match["id"]] = max(latest.get(match["id"], 0.0), mtime)
        for instance_id, mtime in latest.items():
            found.append((variant_dir.name, mtime, instance_id, variant_dir / f"{instance_id}.log"))
    found.sort()
    return [LogSource(v, i, p) for v, _, i, p in found]


# -- reading ---------------------------------------------------------------------------------------
def tail_lines(fh: IO[bytes], end: int, count: int | None) -> list[bytes]:
    """The last ``count`` complete-or-final lines of ``fh`` up to offset ``end`` (None: all)."""
    if count is None:
        fh.seek(0)
        data = fh.read(end)
    else:
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.splitlines(keepends=True)
    return lines if count is None else lines[-count:] if count else []


def read_tail(source: LogSource, count: int | None) -> tuple[list[bytes], IO[bytes] | None, int]:
    """The last ``count`` lines across the rotated parts, and the live file left open at its end."""
    lines: list[bytes] = []
    live_fh: IO[bytes] | None = None
    offset = 0
    try:
        live_fh = open(source.path, "rb")  # noqa: SIM115 - handed to the follower, which closes it
        offset = os.fstat(live_fh.fileno()).st_size
        lines = tail_lines(live_fh, offset, count)
    except FileNotFoundError:
        pass
    for part in reversed(source.parts()[:-1] if source.path.exists() else source.parts()):
        if count is not None and len(lines) >= count:
            break
        try:
            with open(part, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                older = tail_lines(fh, size, None if count is None else count - len(lines))
        except FileNotFoundError:
            continue
        if older and not older[-1].endswith(b"\n"):
            older[-1] += b"\n"
        lines = older + lines
    return lines, live_fh, offset


def _stamp_of(line: bytes) -> bytes | None:
    match = _STAMP.search(line, 0, 120)
    return None if match is None else match[1] + b"T" + match[2] + b"." + (match[3] or b"0").ljust(6, b"0")


def _mtime_stamp(path: Path) -> bytes:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return b""
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime)) + f".{int(mtime % 1 * 1e6):06d}").encode()


def _stamped(source: LogSource, lines: list[bytes]) -> Iterator[tuple[bytes, LogSource, bytes]]:
    # Lines before the first stamped one (a traceback cut by the tail, print output) get that
    # stamp; a window with none at all ends where the file was last written, so its mtime.
    stamp = next((s for s in map(_stamp_of, lines) if s is not None), None) or _mtime_stamp(source.path)
    for line in lines:
        stamp = _stamp_of(line) or stamp
        yield stamp, source, line


def merge(per_source: list[tuple[LogSource, list[bytes]]]) -> Iterator[tuple[LogSource, bytes]]:
    """All sources' lines interleaved by timestamp, each source's own order kept.

    heapq.merge only ever takes the head of each stream, so a file whose stamps go backwards (or
    has none) still comes out in its own order; ties go to the earlier source.
    """
    streams = [_stamped(source, lines) for source, lines in per_source]
    for _, source, line in heapq.merge(*streams, key=lambda item: item[0]):
        yield source, line


# -- output ----------------------------------------------------------------------------------------
class Printer:
    def __init__(self, prefixed: bool, out: IO[bytes] | None = None) -> None:
        self.prefixed = prefixed
        self.out = out or sys.stdout.buffer

    def line(self, source: LogSource, line: bytes) -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        if self.prefixed:
            self.out.write(source.label.encode() + b" " + line)
        else:
            self.out.write(line)

    def flush(self) -> None:
        self.out.flush()


@dataclass
class _Follower:
    source: LogSource
    fh: IO[bytes] | None
    offset: int
    pending: bytes = b""
    inode: int | None = None

    def __post_init__(self) -> None:
        if self.fh is not None:
            self.inode = os.fstat(self.fh.fileno()).st_ino

    def poll(self) -> list[bytes]:
        """Complete lines written since the last poll, across a rotation if one happened."""
        lines: list[bytes] = []
        try:
            current = os.stat(self.source.path)
        except FileNotFoundError:
            current = None
        if self.fh is not None:
            lines += self._read()
            rotated = current is None or current.st_ino != self.inode
            truncated = current is not None and not rotated and current.st_size < self.offset
            if rotated or truncated:
                # The file we hold was renamed to .log.1 (or cut): what it still had is read above;
                # what follows is in the new live file, from its start.
                if self.pending:
                    lines.append(self.pending + b"\n")
                    self.pending = b""
                self.fh.close()
                self.fh, self.inode, self.offset = None, None, 0
        if self.fh is None and current is not None:
            try:
                self.fh = open(self.source.path, "rb")  # noqa: SIM115 - closed in close()
            except FileNotFoundError:
                return lines
            self.inode = os.fstat(self.fh.fileno()).st_ino
            self.offset = 0
            lines += self._read()
        return lines

    def _read(self) -> list[bytes]:
        assert self.fh is not None
        self.fh.seek(self.offset)
        data = self.fh.read()
        self.offset += len(data)
        if not data:
            return []
        data = self.pending + data
        complete, newline, self.pending = data.rpartition(b"\n")
        return [line + b"\n" for line in complete.split(b"\n")] if newline else []

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def show(selection: Selection, lines: int | None, follow: bool, printer: Printer | None = None) -> None:
    """Print the tails, then (``follow``) new lines as they are written until SIGINT or SIGTERM."""
    printer = printer or Printer(selection.prefixed)
    followers: dict[tuple[str, str], _Follower] = {}
    # Installed before the first line is printed, so whoever sees output can stop us with a signal.
    restore = _stop_on_signals() if follow else None
    try:
        per_source = []
        for source in selection.sources:
            tail, fh, offset = read_tail(source, lines)
            per_source.append((source, tail))
            followers[(source.variant, source.instance_id)] = _Follower(source, fh, offset)
        for source, line in merge(per_source):
            printer.line(source, line)
        printer.flush()
        if follow:
            _follow(selection, followers, printer)
    except _Stopped:
        pass
    finally:
        if restore is not None:
            restore()
        for follower in followers.values():
            follower.close()
        if follow:
            try:
                printer.flush()
            except BrokenPipeError:
                pass


def _follow(selection: Selection, followers: dict[tuple[str, str], _Follower], printer: Printer) -> None:
    next_scan = time.monotonic() + RESCAN_SECONDS
    while True:
        wrote = False
        for follower in list(followers.values()):
            for line in follower.poll():
                printer.line(follower.source, line)
                wrote = True
        if wrote:
            printer.flush()
        if not selection.pinned and time.monotonic() >= next_scan:
            # Instances started after we began (restarts, scale-out) get followed too.
            for source in scan_disk(selection.logs_dir, selection.variant):
                key = (source.variant, source.instance_id)
                if key not in followers:
                    followers[key] = _Follower(source, None, 0)
            next_scan = time.monotonic() + RESCAN_SECONDS
        time.sleep(POLL_SECONDS)


class _Stopped(BaseException):
    """SIGINT or SIGTERM while following; a BaseException so that no ``except Exception`` swallows it."""


def _stop_on_signals() -> Callable[[], None]:
    """Make SIGINT and SIGTERM end the follow; returns what puts the previous handlers back.

    Both are set explicitly: a process inherits an ignored SIGINT from a shell that starts it in the
    background (and Python then leaves it ignored), yet ``kill -INT`` should stop it as Ctrl-C does.
    """
    stopped = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopped
        # A second signal before the handlers are put back asks the same; raised, it would escape the cleanup.
        if not stopped:
            stopped = True
            raise _Stopped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, so there is nothing to put back
                signal.signal(sig, handler)

    return restore
