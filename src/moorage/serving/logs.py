"""Per-instance logs: the process's output, read from a pipe and written with size-based rotation.

An instance's stdout and stderr go to a pipe that the server drains, rather than straight into a
file, because a file the child holds open cannot be rotated: after a rename the child would keep
writing into the renamed file. Draining costs one read and one write per 64 KiB chunk on the
server's event loop; the router's invocation path never touches a log.

Files are ``{instance_id}.log`` with backups ``.log.1`` (newest) ... ``.log.N``. Rotation happens at
line boundaries, so a line is never split between two files unless it alone is longer than the
limit. The last few KiB of output are kept in memory as well, so the reason an instance failed can
quote its last lines even when they were just rotated out of the live file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moorage.settings import InstanceSettings

log = logging.getLogger("moorage.logs")

MAX_BYTES_ENV = "MOORAGE_LOG_MAX_BYTES"
BACKUPS_ENV = "MOORAGE_LOG_BACKUPS"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
READ_CHUNK = 65536
TAIL_BYTES = 16384
# A partial line is held back until its newline arrives (so rotation can respect line boundaries),
# but never more than this: a process that writes without newlines still gets logged.
MAX_PENDING = 65536


@dataclass(frozen=True)
class LogPolicy:
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS

    @classmethod
    def from_env(cls, *sources: Mapping[str, str], default: LogPolicy | None = None) -> LogPolicy:
        """The policy the first source naming each variable sets (e.g. container Environment, then server)."""
        default = default or cls()
        return cls(max_bytes=max(1, _first_int(sources, MAX_BYTES_ENV, default.max_bytes)),
                   backups=max(0, _first_int(sources, BACKUPS_ENV, default.backups)))

    @classmethod
    def for_instance(cls, container_env: Mapping[str, str], instances: InstanceSettings) -> LogPolicy:
        """The container Environment's values (SageMaker's contract, per model), else the server's settings."""
        return cls.from_env(container_env, default=cls(instances.log_max_bytes, instances.log_backups))


def _first_int(sources: tuple[Mapping[str, str], ...], name: str, default: int) -> int:
    for source in sources:
        value = source.get(name)
        if value is not None and value.strip():
            try:
                return int(value)
            except ValueError:
                log.warning("ignoring %s=%r: not an integer", name, value)
    return default


def clip_tail(tail: str, limit: int) -> str:
    """The end of a log tail, at most ``limit`` characters, cut at a line start when possible.

    SageMaker's FailureReason is at most 1024 characters, and the last line is the one that matters.
    """
    if len(tail) <= limit:
        return tail
    cut = tail[-limit:]
    newline = cut.find("\n")
    return cut[newline + 1:] if 0 <= newline < len(cut) - 1 else cut


def rotated_paths(path: Path, backups: int) -> list[Path]:
    """Oldest first: ``.log.N`` ... ``.log.1``, then the live ``.log``."""
    return [path.with_name(f"{path.name}.{i}") for i in range(backups, 0, -1)] + [path]


class RotatingLog:
    """Writes bytes to ``path``, rotating at ``policy.max_bytes``; keeps the last output in memory."""

    def __init__(self, path: Path, policy: LogPolicy | None = None):
        self.path = path
        self.policy = policy or LogPolicy()
        self.dropped = 0  # bytes that could not be written (disk full...): counted, never silent
        self._tail = bytearray()
        self._pending = bytearray()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab")  # noqa: SIM115 - owned by this object, closed in close()
        self.size = self._fh.tell()

    def write(self, data: bytes) -> None:
        if not data:
            return
        tail = self._tail
        tail += data
        if len(tail) > 2 * TAIL_BYTES:
            del tail[:-TAIL_BYTES]
        if self._pending:
            data = bytes(self._pending) + data
            self._pending.clear()
        end = data.rfind(b"\n") + 1
        if end < len(data) and len(data) - end <= MAX_PENDING:
            self._pending += data[end:]
            data = data[:end]
        self._write_lines(data)

    def line(self, text: str) -> None:
        """A line from the platform itself (start banners, environment notes)."""
        self.write(f"--- moorage: {text}\n".encode())

    def _write_lines(self, data: bytes) -> None:
        limit = self.policy.max_bytes
        try:
            while data:
                room = limit - self.size
                if room <= 0:
                    self._rotate()
                    continue
                if len(data) <= room:
                    self._fh.write(data)
                    self.size += len(data)
                    break
                cut = data.rfind(b"\n", 0, room) + 1
                if cut == 0:
                    if self.size > 0:
                        self._rotate()  # the next line fits better in a fresh file
                        continue
                    cut = room  # one line longer than the whole limit: split it rather than outgrow the limit
                self._fh.write(data[:cut])
                self.size += cut
                data = data[cut:]
                self._rotate()
            self._fh.flush()
        except (OSError, ValueError) as exc:  # ValueError: written after close()
            if not self.dropped:
                log.error("cannot write instance log %s: %s", self.path, exc)
            self.dropped += len(data)

    def _rotate(self) -> None:
        self._fh.close()
        backups = self.policy.backups
        if backups > 0:
            names = rotated_paths(self.path, backups)
            for older, newer in itertools.pairwise(names):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(newer, older)
            self._fh = open(self.path, "ab")  # noqa: SIM115
        else:
            self._fh = open(self.path, "wb")  # noqa: SIM115 - no backups: start the file over
        self.size = 0

    def tail(self, lines: int = 12) -> str:
        text = bytes(self._tail[-TAIL_BYTES:]).decode("utf-8", "replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def flush_pending(self) -> None:
        if self._pending:
            data = bytes(self._pending) + b"\n"
            self._pending.clear()
            self._write_lines(data)

    async def pump(self, stream: asyncio.StreamReader) -> None:
        """Copy ``stream`` into the log until EOF (the process and every holder of its pipe are gone)."""
        try:
            while True:
                chunk = await stream.read(READ_CHUNK)
                if not chunk:
                    break
                self.write(chunk)
        finally:
            self.flush_pending()

    def close(self) -> None:
        self.flush_pending()
        with contextlib.suppress(OSError):
            self._fh.close()
