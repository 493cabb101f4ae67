"""Large request bodies handed from the router to an instance through shared memory, not the socket.

Over the framed link (``frames.py``) a 1 MiB image crosses the Unix socket as bytes: the kernel
copies it from the router into socket buffers, then again into the instance, allocating and freeing
the buffers on the way. With a shared body the router copies it once into memory the instance has
mapped, and the frame carries only where it lies; the instance copies it out into the ``bytes`` its
handler gets (the one copy a body costs in Python, as before). Measured with 1 MiB bodies at
concurrency 32 on one core (bench/README.md): the kernel's two copies and the socket buffers' upkeep
were a fifth of what a request cost the two processes apart from its SHA-256.

The memory is a ``memfd`` per framed connection (``BodyArena``), cut into fixed slots, each a
sequence number and room for one body (the largest InvokeEndpoint takes, 6 MB). The instance opens it
by its ``/proc/<router pid>/fd/<fd>`` path, named in the connection's first frame (``SHARE``), and
maps it read-only (``SharedBodies``); nothing is left on disk, and the memory goes with the router's
process (Linux only: elsewhere, ``AVAILABLE`` is false and the socket carries every body). A body that
finds no free slot, is bigger than one, or is below ``SHARE_MIN`` (where the
socket is as cheap) travels in its frame as before, as it does on a connection whose instance did
not map the arena (an older runtime answers ``SHARE`` 404; a sandbox without ``/proc`` fails to open
it).

A slot is the router's until the request ends: its reply came, it timed out, its caller gave up, or
the connection went down. Then the slot may carry the next body while the instance has not yet read
the old frame (it was queued behind others, say). The sequence number says so: the router writes a
slot's new number before the body, and the instance checks the number before and after copying the
body out; a changed number means the body was withdrawn, and the request is answered 500 to a router
that no longer waits for it.

The pages an instance has read count in its resident memory as the kernel reports it (``ps``, and
the memory limit of its instance type, ``serving/instance.py``) though they are the router's: at most
the slots its connection had in flight at once, and ``KEEP`` slots once the arena has been idle.

Hand-written rather than ``multiprocessing.shared_memory``: that names a file in ``/dev/shm`` which
someone must unlink (and a crashed router leaves behind) and registers it with a resource tracker
process; a ``memfd`` needs neither.
"""

from __future__ import annotations

import contextlib
import heapq
import mmap
import os
import struct
import sys

__all__ = ["AVAILABLE", "SHARE_MIN", "SLOTS", "SLOT_BODY", "BodyArena", "SharedBodies", "WithdrawnBody"]

# memfd and /proc/<pid>/fd are Linux's: elsewhere (macOS) every body goes through the socket.
AVAILABLE = sys.platform == "linux" and hasattr(os, "memfd_create")

SLOTS = 64  # bodies in flight per connection (concurrency 32 of one client finds a slot each)
SLOT_BODY = 6 * 1024 * 1024  # the largest body a slot takes: InvokeEndpoint's limit
SHARE_MIN = 128 * 1024  # a body under this goes through the socket: copying it there costs as little
KEEP = 4  # slots whose memory is kept while the connection is idle; the others' goes back to the system
_HEADER = 64  # a slot's sequence number, then the body from the next cache line
# Slots start on a page, so that the memory of one can be given back on its own.
_SLOT = -(-(_HEADER + SLOT_BODY) // mmap.PAGESIZE) * mmap.PAGESIZE
_SEQUENCE = struct.Struct("=Q")
# What a frame carries instead of the body: the slot's offset in the arena, the body's length, and
# the slot's sequence number when the body was written.
REFERENCE = struct.Struct("!QQQ")
# The SHARE frame's body: the arena's size, then the path to open it by.
ARENA = struct.Struct("!Q")


class WithdrawnBody(Exception):
    """The slot a shared body was in carries another body now: its request ended before it was read."""


class BodyArena:
    """The router's side: the slots of one framed connection, written by the router, read by the
    instance. Slots are handed out lowest first, so the memory touched is what the connection's busiest
    moment needed; once no body has been in flight for a while (``trim``), the memory of the slots past
    the first ``KEEP`` goes back to the system (``MADV_REMOVE``: a memfd's pages are freed, not just
    unmapped), so a burst of large bodies leaves at most ``KEEP`` slots' worth behind."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.size = slots * _SLOT
        self._fd = os.memfd_create("moorage-bodies", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, self.size)
            self._map = mmap.mmap(self._fd, self.size)
        except OSError:
            os.close(self._fd)
            raise
        self._slots = slots
        self._free = list(range(slots))  # a heap of free slot numbers
        self._sequence = 0
        self._highest = -1  # the highest slot written since its memory was last given back

    @property
    def path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self._fd}"

    def share_request(self) -> bytes:
        """The body of the SHARE frame that asks the instance to map this arena."""
        return ARENA.pack(self.size) + os.fsencode(self.path)

    def put(self, body: bytes | bytearray | memoryview) -> tuple[int, bytes] | None:
        """Copy ``body`` into a free slot: (the slot, the reference its frame carries), or None when it
        is too big for one or none is free."""
        length = len(body)
        if length > SLOT_BODY or not self._free or self._map.closed:
            return None
        slot = heapq.heappop(self._free)
        if slot > self._highest:
            self._highest = slot
        offset = slot * _SLOT
        self._sequence += 1
        # The number first: an instance still reading this slot's previous body sees it change.
        _SEQUENCE.pack_into(self._map, offset, self._sequence)
        self._map[offset + _HEADER:offset + _HEADER + length] = body
        return slot, REFERENCE.pack(offset, length, self._sequence)

    def release(self, slot: int) -> bool:
        """Free ``slot``; whether the arena is idle now with memory to give back (``trim``)."""
        heapq.heappush(self._free, slot)
        return self._highest >= KEEP and len(self._free) == self._slots

    def trim(self) -> None:
        """Give back the memory of the slots past the first ``KEEP``, if no body is in flight. Called a
        while after the arena went idle, not at once: under load it goes idle between bursts many times
        a second, and each trim costs the next burst a page fault per 4 KiB."""
        if self._highest >= KEEP and len(self._free) == self._slots and not self._map.closed:
            with contextlib.suppress(OSError):  # a kernel that cannot: the memory stays until the connection ends
                self._map.madvise(mmap.MADV_REMOVE, KEEP * _SLOT, (self._highest + 1 - KEEP) * _SLOT)
            self._highest = KEEP - 1

    @property
    def free(self) -> int:
        return len(self._free)

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)


class SharedBodies:
    """The instance's side: the arena its router named in a SHARE frame, mapped read-only."""

    def __init__(self, request: bytes) -> None:
        """Map the arena a SHARE frame's body names; OSError or ValueError when it cannot be."""
        if len(request) <= ARENA.size:
            raise ValueError("a SHARE request without the arena's path")
        (size,) = ARENA.unpack_from(request)
        fd = os.open(os.fsdecode(request[ARENA.size:]), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < size:  # reading past a file's end is SIGBUS, not an exception
                raise ValueError(f"the arena is {os.fstat(fd).st_size} bytes, not the {size} named")
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.size = size

    def read(self, reference: bytes | bytearray | memoryview) -> bytes:
        """The body a frame's reference points at, copied out; ValueError for a reference outside the
        arena, WithdrawnBody when the slot was reused before it was read."""
        if len(reference) != REFERENCE.size:
            raise ValueError(f"a shared-body reference of {len(reference)} bytes, not {REFERENCE.size}")
        offset, length, sequence = REFERENCE.unpack(reference)
        start = offset + _HEADER
        if length > SLOT_BODY or start + length > self.size:
            raise ValueError(f"a shared body of {length} bytes at {offset}, outside the arena of {self.size}")
        before = _SEQUENCE.unpack_from(self._map, offset)[0]
        body = self._map[start:start + length]
        if before != sequence or _SEQUENCE.unpack_from(self._map, offset)[0] != sequence:
            raise WithdrawnBody(f"the shared body at {offset} was withdrawn before it was read")
        return body

    def close(self) -> None:
        self._map.close()
