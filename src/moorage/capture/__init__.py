"""Data capture: what endpoints saw, sampled, in SageMaker's capture files, off the request path."""

from moorage.capture.config import CaptureConfig, Destination, WriterSettings
from moorage.capture.records import ServedBy
from moorage.capture.writer import CaptureCounters, CaptureObserver, CaptureWriter

__all__ = ["CaptureConfig", "CaptureCounters", "CaptureObserver", "CaptureWriter", "Destination", "ServedBy",
           "WriterSettings"]
