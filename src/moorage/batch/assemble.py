"""Writing one output object (``NAME.out``): mini-batch results in order, complete or not at all.

Results come back from the instances in any order; each file keeps the ones that arrived early
until the ones before them are written, so records stay in input order. The bytes go to a
temporary name (a hidden ``.NAME.out.<id>.part`` beside the final name on a local filesystem, a
spool file uploaded in one piece for object stores) and become ``NAME.out`` only when the last
mini-batch is in: a reader never sees a partial ``.out`` as if it were complete, and a failed or
stopped job leaves none behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

from moorage.store.locations import filesystem, is_local, join

OUT_SUFFIX = ".out"
COPY_CHUNK = 8 * 1024 * 1024


def output_url(output_path: str, name: str) -> str:
    return join(output_path, name + OUT_SUFFIX)


class OutputFile:
    def __init__(self, url: str, spool_dir: Path, assemble_with: str = "None"):
        self.url = url
        self.line = assemble_with == "Line"
        self.fs, self.path = filesystem(url)
        self.local = is_local(self.fs)
        token = uuid.uuid4().hex[:12]
        if self.local:
            final = Path(self.path)
            self.temp = final.parent / f".{final.name}.{token}.part"
        else:
            self.temp = spool_dir / f"{token}.part"
        self.temp.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = open(self.temp, "wb")  # noqa: SIM115 - closed in finish()/discard()
        self.next_seq = 0
        self.total: int | None = None  # mini-batches in the object, once its reader reached the end
        self.early: dict[int, bytes] = {}
        self.finished = False

    @property
    def complete(self) -> bool:
        return self.total is not None and self.next_seq >= self.total

    def add(self, seq: int, data: bytes) -> int:
        """Take mini-batch ``seq``'s output; write what is now in order. Returns how many were written."""
        self.early[seq] = data
        written = 0
        while self.next_seq in self.early:
            chunk = self.early.pop(self.next_seq)
            assert self._fh is not None
            self._fh.write(chunk)
            if self.line and chunk and not chunk.endswith(b"\n"):
                self._fh.write(b"\n")
            self.next_seq += 1
            written += 1
        return written

    def finish(self) -> None:
        """Give the complete output its final name."""
        assert self.complete and self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        if self.local:
            os.replace(self.temp, self.path)
        else:
            try:
                # A plain write, not put_file: that would create "folder" marker objects on the way.
                with open(self.temp, "rb") as source, self.fs.open(self.path, "wb") as target:
                    shutil.copyfileobj(source, target, COPY_CHUNK)
            finally:
                self.temp.unlink(missing_ok=True)
        self.finished = True

    def discard(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        if not self.finished:
            self.temp.unlink(missing_ok=True)
        self.early.clear()


def prepare_output_location(output_path: str) -> Any:
    """Create the output folder where that means something (local paths); object stores need nothing."""
    fs, path = filesystem(output_path)
    if is_local(fs):
        fs.makedirs(path, exist_ok=True)
    return fs
