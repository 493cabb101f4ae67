"""How far a transform job is: files and records done, bytes read, for DescribeTransformJob's
native sibling (``GET /moorage/v1/transform-jobs/NAME``) and the CLI's progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    files_total: int = 0
    files_done: int = 0
    records_done: int = 0
    batches_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    backend: str = "local"
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None  # when the instances were up and the first mini-batch could go
    instances: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "Backend": self.backend, "FilesTotal": self.files_total, "FilesDone": self.files_done,
            "RecordsDone": self.records_done, "MiniBatchesDone": self.batches_done,
            "BytesTotal": self.bytes_total, "BytesDone": self.bytes_done, "StartedAt": self.started_at,
            "InstancesReadyAt": self.ready_at,
            "Instances": list(self.instances),
        }

    def update(self, data: dict[str, Any]) -> None:
        """Take a snapshot another process reported (the Ray driver's)."""
        self.files_total = int(data.get("FilesTotal", self.files_total))
        self.files_done = int(data.get("FilesDone", self.files_done))
        self.records_done = int(data.get("RecordsDone", self.records_done))
        self.batches_done = int(data.get("MiniBatchesDone", self.batches_done))
        self.bytes_total = int(data.get("BytesTotal", self.bytes_total))
        self.bytes_done = int(data.get("BytesDone", self.bytes_done))
        if data.get("InstancesReadyAt"):
            self.ready_at = float(data["InstancesReadyAt"])
        if "Instances" in data:
            self.instances = list(data["Instances"])
