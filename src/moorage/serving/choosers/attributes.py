"""The request's ``CustomAttributes`` as ``key=value`` pairs, for the choosers that route on them.

SageMaker passes the header through as an opaque string; moorage reads it as pairs separated by
``;`` or ``,`` (``user=42;beta=true``) and ignores whatever is not a pair, so callers that send
anything else are routed as before and their header still reaches the model untouched.
"""

from __future__ import annotations

import re

from moorage.serving.invocation_events import header_value

_SEPARATORS = re.compile(r"[;,]")


def custom_attributes(forwarded_headers: bytes) -> str | None:
    """The CustomAttributes header in a forwarded header block, or None."""
    return header_value(forwarded_headers, b"x-amzn-sagemaker-custom-attributes")


def attribute_pairs(text: str | None) -> dict[str, str]:
    """``key=value`` pairs of a CustomAttributes string, both sides stripped; the first of a key wins."""
    pairs: dict[str, str] = {}
    if not text:
        return pairs
    for part in _SEPARATORS.split(text):
        key, equals, value = part.partition("=")
        key = key.strip()
        if equals and key and key not in pairs:
            pairs[key] = value.strip()
    return pairs
