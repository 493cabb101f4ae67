"""What the monitors that need labels share: the window's captured predictions merged with ground truth.

Model quality and bias drift both read the capture files of the execution's window, the labels
collected up to its time (``ground_truth.py``) and merge the two; both fail the same way when the
window has no predictions or none of them has a label. ``JobInputError`` carries the reason, in
words for the execution's ``FailureReason``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from moorage.monitor.common.jobs import ExecutionWindow, iso


class JobInputError(Exception):
    """An execution's input cannot be used; the message is its FailureReason."""


def load_document(uri: str | None, what: str) -> dict[str, Any] | None:
    """The JSON document at ``uri`` (None without one); JobInputError saying which one could not be read."""
    from moorage.monitor.common import formats

    if not uri:
        return None
    try:
        return formats.load_json(uri)
    except Exception as exc:
        raise JobInputError(f"Could not read {what} {uri}: {type(exc).__name__}: {exc}") from exc


@dataclass
class LabelledWindow:
    merged: Any  # ground_truth.MergeResult
    labels: Any  # ground_truth.LabelScan
    scan: Any  # capture_reader.CaptureScan

    def counts(self) -> dict[str, Any]:
        """What the execution's record says of its inputs."""
        return {"Merge": self.merged.counts(), "Capture": self.scan.as_dict(), "GroundTruth": self.labels.counts()}


def labelled_window(spec: ExecutionWindow, ground_truth_uri: str, **attributes: Any) -> LabelledWindow:
    """The window's captured predictions merged with their labels (``attributes``: merge's keywords);
    JobInputError when there is nothing to evaluate, saying why."""
    from moorage.monitor.common.capture_reader import CaptureReadError, CaptureScan, capture_files, read_records
    from moorage.monitor.common.ground_truth import ground_truth_files, merge, read_labels

    if not spec.capture_uri:
        raise JobInputError(f"Endpoint {spec.endpoint_name} has no data capture configured (DataCaptureConfig "
                            "with EnableCapture): there are no captured predictions to evaluate.")
    start = dt.datetime.fromtimestamp(spec.window_start, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(spec.window_end, tz=dt.UTC)
    until = dt.datetime.fromtimestamp(max(spec.scheduled_time, spec.window_end), tz=dt.UTC)
    try:
        files = capture_files(spec.capture_uri, spec.endpoint_name, start, end)
        # A label is collected after its prediction: folders before the window hold none of its labels.
        labels = read_labels(ground_truth_files(ground_truth_uri, until, since=start))
        scan = CaptureScan(files=len(files))
        merged = merge(read_records(files, start, end, scan), labels, **attributes)
    except CaptureReadError as exc:
        raise JobInputError(str(exc)) from exc
    except Exception as exc:
        raise JobInputError(f"Merging the captured predictions with the ground truth failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    window = LabelledWindow(merged, labels, scan)
    if merged.captured == 0:
        raise _Empty(window, f"Job inputs had no data: no captured predictions of endpoint {spec.endpoint_name} "
                             f"between {iso(spec.window_start)} and {iso(spec.window_end)} ({len(files)} capture "
                             f"file(s) in the window's hour folders under {spec.capture_uri}).")
    if merged.matched == 0:
        raise _Empty(window, f"No ground truth for the {merged.captured} captured prediction(s) of the window: none "
                             f"of their inferenceId/eventId has a label under {ground_truth_uri} (labels collected "
                             f"up to {until:%Y-%m-%dT%H:%M:%SZ}: {labels.count} read).")
    return window


class _Empty(JobInputError):
    """Nothing to evaluate; the counts of what was read still go to the execution's record."""

    def __init__(self, window: LabelledWindow, message: str):
        super().__init__(message)
        self.window = window


def input_counts(error: JobInputError) -> dict[str, Any]:
    """The counts an empty window still has, for the execution's record."""
    return error.window.counts() if isinstance(error, _Empty) else {}
