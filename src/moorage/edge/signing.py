"""AWS Signature Version 4 for the agent's requests, written out by hand.

Why not botocore's signer: botocore with a ``sagemaker-edge`` client costs the agent 19 MB of resident
memory (a quarter of the whole agent, measured on top of it) and 0.12 s of start-up (its service
models, its credential chain, urllib3), and the agent signs four kinds of request with one static key.
So this module does what ``botocore.auth.SigV4Auth`` does for them and nothing more: the canonical
request from the method, the URI-encoded path, the sorted query, the signed headers (``host``,
``x-amz-date``, ``x-amz-content-sha256`` and ``content-type`` when there is one) and the body's
SHA-256; the string to sign under the ``AWS4-HMAC-SHA256`` scope; the derived key
(date, region, service) cached for the day. ``tests/unit/test_edge_signing.py`` checks it against
botocore's signer byte for byte, and the server's verifier checks every request it sends.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sagemaker"  # sagemaker-edge's signingName: the device door verifies under it
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Key:
    """A static access key: the device's own, or any key the server accepts on its device door."""

    access_key_id: str
    secret_access_key: str


def amz_date(epoch: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if epoch is None else epoch))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def wire_path(path: str) -> str:
    """The path as sent: each segment URI-encoded once (botocore's serialiser does the same)."""
    return quote(path, safe="/~")


def canonical_uri(sent_path: str) -> str:
    # For every service but S3, botocore quotes the path as sent once more in the canonical request.
    return quote(sent_path, safe="/~")


def canonical_query(query: Mapping[str, str] | None) -> str:
    if not query:
        return ""
    pairs = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in query.items())
    return "&".join(f"{name}={value}" for name, value in pairs)


class Signer:
    """Signs requests with one key for one region and service; the derived key is kept for its day."""

    def __init__(self, key: Key, region: str, service: str = SERVICE) -> None:
        self.key = key
        self.region = region
        self.service = service
        self._day = ""
        self._signing_key = b""

    def _key_for(self, day: str) -> bytes:
        if day != self._day:
            k_date = _hmac(("AWS4" + self.key.secret_access_key).encode("utf-8"), day)
            k_region = _hmac(k_date, self.region)
            k_service = _hmac(k_region, self.service)
            self._signing_key = _hmac(k_service, "aws4_request")
            self._day = day
        return self._signing_key

    def headers(self, method: str, host: str, sent_path: str, body: bytes = b"", *,
                query: Mapping[str, str] | None = None, content_type: str | None = None,
                payload_sha256: str | None = None, now: float | None = None) -> dict[str, str]:
        """The headers to send: ``Host``, ``X-Amz-Date``, ``X-Amz-Content-SHA256``, ``Authorization``
        (and ``Content-Type`` when given). ``sent_path``: as ``wire_path`` gives it; ``payload_sha256``:
        the body's hash when the caller has it."""
        stamp = amz_date(now)
        day = stamp[:8]
        payload = payload_sha256 or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)
        signed: dict[str, str] = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        if content_type is not None:
            signed["content-type"] = content_type
        names = sorted(signed)
        canonical_headers = "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names)
        signed_names = ";".join(names)
        canonical_request = "\n".join((method.upper(), canonical_uri(sent_path), canonical_query(query),
                                       canonical_headers, signed_names, payload))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()))
        signature = hmac.new(self._key_for(day), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        out = {"Host": host, "X-Amz-Date": stamp, "X-Amz-Content-SHA256": payload,
               "Authorization": (f"{ALGORITHM} Credential={self.key.access_key_id}/{scope}, "
                                 f"SignedHeaders={signed_names}, Signature={signature}")}
        if content_type is not None:
            out["Content-Type"] = content_type
        return out
