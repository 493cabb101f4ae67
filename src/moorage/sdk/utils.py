"""Helpers the SDK's classes share, as ``sagemaker.utils`` holds them for SageMaker's SDK.

Here so that ``model`` (which makes Transformers) and ``transformer`` both import them, and
neither imports the other back.
"""

from __future__ import annotations

import time


def name_from_base(base: str) -> str:
    """A SageMaker-valid name unique to the millisecond: ``base-YYYY-MM-DD-HH-MM-SS-mmm``."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    return f"{base[:63 - len(stamp) - 1]}-{stamp}"
