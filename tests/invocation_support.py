"""Building the forwarded header block an InvocationEvent carries, as the runtime door does inline."""

from __future__ import annotations

from collections.abc import Iterable


def header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``[(b"content-type", b"text/csv")]`` -> ``b"content-type: text/csv\r\n"``."""
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
