"""Instances as processes on this machine, reached over Unix sockets (or loopback for BYO servers).

A server's sockets live in a folder of its own (``socket_folder``), marked with the server's pid;
each instance records its process group there (``<id>.pgid``). A server killed with SIGKILL cannot
clean up: the kernel kills its instances' first processes (``setpriv --pdeathsig``), but what a BYO
server started lives on in their groups. The next server to start reaps such folders: the groups'
processes that are still instances of it (by their ``MOORAGE_INSTANCE_ID``) are killed, and the folder
removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psutil

from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance, InstanceStartError
from moorage.serving.launch_spec import LaunchSpec

log = logging.getLogger("moorage.instance")

SOCKET_PREFIX = "moorage-"
SERVER_MARK = "server.pid"  # "<pid> <process start time>" of the server that owns the folder
GROUP_SUFFIX = ".pgid"  # <instance id>.pgid: the instance's process group


def socket_folder(parent: str | None = None) -> Path:
    """A new socket folder for this process, after reaping those of servers that died without cleaning up."""
    reap_stale_socket_folders(parent)
    folder = Path(tempfile.mkdtemp(prefix=SOCKET_PREFIX, dir=parent))
    (folder / SERVER_MARK).write_text(f"{os.getpid()} {psutil.Process().create_time()!r}\n")
    return folder


def _owner_alive(mark: Path) -> bool:
    try:
        pid_text, started_text = mark.read_text().split()
        return abs(psutil.Process(int(pid_text)).create_time() - float(started_text)) < 1.0
    except (OSError, ValueError, psutil.Error):
        return False  # unreadable, or its process is gone (or the pid now belongs to another process)


def reap_stale_socket_folders(parent: str | None = None) -> list[Path]:
    """Remove the socket folders of dead servers of this user, killing their instances' leftover processes."""
    reaped = []
    uid = os.getuid()
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{SOCKET_PREFIX}*"):
        mark = folder / SERVER_MARK
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != uid or not mark.is_file():
                continue
        except OSError:
            continue
        if _owner_alive(mark):
            continue
        for record in folder.glob(f"*{GROUP_SUFFIX}"):
            with contextlib.suppress(OSError, ValueError):
                killed = kill_instance_group(int(record.read_text()), record.name[: -len(GROUP_SUFFIX)])
                if killed:
                    log.warning("killed %d leftover process(es) of instance %s (its server died without stopping "
                                "it)", killed, record.name[: -len(GROUP_SUFFIX)])
        shutil.rmtree(folder, ignore_errors=True)
        reaped.append(folder)
    return reaped


def kill_instance_group(pgid: int, instance_id: str) -> int:
    """SIGKILL the processes of group ``pgid`` that belong to instance ``instance_id``; how many there were.
    The environment check keeps a recycled group id from ever hitting someone else's processes."""
    killed = 0
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid or proc.environ().get("MOORAGE_INSTANCE_ID") != instance_id:
                continue
            proc.kill()
            killed += 1
        except (OSError, psutil.Error):
            continue
    return killed


class LocalLauncher:
    def __init__(self, socket_dir: Path):
        # Unix socket paths are limited to ~108 bytes: the caller picks a short folder.
        self.socket_dir = socket_dir

    def member(self, launches: Sequence[LaunchSpec], log_dir: Path) -> Instance | ContainerChain:
        if len(launches) == 1:
            return Instance(launches[0], self.socket_dir, log_dir)
        return self.chain(launches, log_dir)

    def chain(self, launches: Sequence[LaunchSpec], log_dir: Path) -> ContainerChain:
        return ContainerChain([Instance(launch, self.socket_dir, log_dir) for launch in launches])

    async def start_chains(self, launches: Sequence[LaunchSpec], count: int, log_dir: Path,
                           timeout: float) -> list[ContainerChain]:
        """``count`` chains, all started; if any cannot start, every one is stopped and the first
        InstanceStartError raised."""
        chains = [self.chain(launches, log_dir) for _ in range(count)]
        results = await asyncio.gather(*(c.start(timeout) for c in chains), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await asyncio.gather(*(c.stop(drain_timeout=0, term_timeout=5) for c in chains), return_exceptions=True)
            first = failed[0]
            if isinstance(first, InstanceStartError):
                raise first
            raise InstanceStartError(f"{type(first).__name__}: {first}")
        return chains
