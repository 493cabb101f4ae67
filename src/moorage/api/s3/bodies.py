"""Request bodies of the S3 API: streamed to a sink (a staged file, or memory for small XML), checked.

The ASGI receive loop hands over blocks of about 1 MiB; decoding, hashing and writing run in a
worker thread (``asyncio.to_thread``) so the event loop, which also carries InvokeEndpoint, never
hashes or writes a large body itself. Memory stays at one block whatever the object's size.

A body is whatever ``X-Amz-Content-SHA256`` declared (``sigv4.S3_PAYLOAD_MARKERS``):

* a hex SHA-256: the bytes must hash to it (XAmzContentSHA256Mismatch);
* ``UNSIGNED-PAYLOAD``: the bytes as they come;
* ``STREAMING-...``: ``aws-chunked`` framing (``SIZE[;chunk-signature=SIG]\\r\\nDATA\\r\\n`` ... ``0...``
  then optional trailing headers and an empty line). With ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` each
  chunk's signature is checked as it ends (a forged chunk stops the upload); with a ``-TRAILER``
  variant the trailer carries the checksum (``x-amz-checksum-crc32:...``), signed or not.

Then what S3 checks: ``Content-MD5`` (BadDigest), the flexible checksum from a header or the trailer
(CRC32, SHA1, SHA256 always; CRC32C and CRC64NVME when awscrt is installed, as botocore needs it to
send them) and the decoded length against what was declared.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import zlib
from typing import Any, Protocol

from moorage.api.sigv4 import STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, ChunkChain, S3Signature
from moorage.store.objects import ObjectStoreError

BLOCK = 1024 * 1024
MAX_LINE = 8192  # a chunk header or a trailer line; S3's are well under this


class ClientGone(Exception):
    """The client went away before its body was whole: nothing is stored, nothing is answered."""


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def md5_digest(self) -> bytes: ...


class MemorySink:
    """A small body (an XML document) held whole, up to ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data
        if len(self.data) > self.limit:
            raise ObjectStoreError("MaxMessageLengthExceeded", "Your request was too big.", 400)

    def md5_digest(self) -> bytes:
        return hashlib.md5(self.data, usedforsecurity=False).digest()


class StagedSink:
    """A staged file of the object store (which hashes MD5 as it writes)."""

    def __init__(self, staged: Any) -> None:
        self.staged = staged

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.staged.write(data)

    def md5_digest(self) -> bytes:
        return bytes(self.staged.md5.digest())


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class _Crt:
    """CRC32C / CRC64NVME through awscrt (botocore's own source for them)."""

    def __init__(self, function: Any, width: int) -> None:
        self.function = function
        self.width = width
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = self.function(bytes(data), self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width, "big")


def checksum_hasher(algorithm: str) -> Any:
    """A running checksum for ``algorithm`` (S3's name, upper case)."""
    if algorithm == "CRC32":
        return _Crc32()
    if algorithm in ("SHA1", "SHA256"):
        return hashlib.new(algorithm.lower())
    if algorithm in ("CRC32C", "CRC64NVME"):
        try:
            from awscrt import checksums  # type: ignore[import-not-found]
        except ImportError:
            raise ObjectStoreError(
                "NotImplemented", f"This server cannot verify {algorithm} checksums (awscrt is not installed); "
                "send CRC32, SHA1 or SHA256 instead (botocore's default is CRC32).", 501) from None
        return _Crt(checksums.crc32c, 4) if algorithm == "CRC32C" else _Crt(checksums.crc64nvme, 8)
    raise ObjectStoreError("InvalidRequest", f"Checksum algorithm {algorithm} is not one S3 supports.")


CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
_CHECKSUM_HEADERS = {f"x-amz-checksum-{a.lower()}": a for a in CHECKSUM_ALGORITHMS}

_SIZE, _DATA, _DATA_END, _TRAILER, _END = range(5)


class BodyDecoder:
    """Decodes and checks one request body into a sink; ``feed`` blocks, then ``finish``."""

    def __init__(self, sink: Sink, headers: dict[str, str], signed: S3Signature, limit: int) -> None:
        self.sink = sink
        self.limit = limit
        payload = signed.payload
        self.chunked = payload.startswith("STREAMING-")
        self.chain = ChunkChain(signed) if payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER) else None
        self.signed_trailer = payload == STREAMING_SIGNED_TRAILER
        self.sha256 = hashlib.sha256() if len(payload) == 64 else None
        self.expected_sha256 = payload if self.sha256 is not None else None
        length = headers.get("x-amz-decoded-content-length") if self.chunked else headers.get("content-length")
        try:
            self.declared = int(length) if length is not None and length.strip() else None
        except ValueError:
            raise ObjectStoreError("InvalidArgument", f"The declared length {length!r} is not a number.") from None
        if self.declared is not None and self.declared > limit:
            raise too_large(limit)
        self.content_md5 = headers.get("content-md5")
        if self.content_md5 is not None:
            try:
                digest = base64.b64decode(self.content_md5, validate=True)
            except (binascii.Error, ValueError):
                digest = b""
            if len(digest) != 16:
                raise ObjectStoreError("InvalidDigest", "The Content-MD5 you specified was invalid.")
        self.checksum_algorithm: str | None = None
        self.checksum_expected: str | None = None
        self.checksum_trailer: str | None = None
        for name, algorithm in _CHECKSUM_HEADERS.items():
            if name in headers:
                if self.checksum_algorithm is not None:
                    raise ObjectStoreError("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple "
                                           "checksum Types are not allowed.")
                self.checksum_algorithm, self.checksum_expected = algorithm, headers[name].strip()
        trailer = headers.get("x-amz-trailer", "").strip().lower()
        if trailer:
            if not self.chunked:
                raise ObjectStoreError("InvalidRequest", "x-amz-trailer is only accepted with an aws-chunked body.")
            if trailer not in _CHECKSUM_HEADERS:
                raise ObjectStoreError("InvalidRequest", f"The trailer {trailer} is not a checksum S3 supports.")
            if self.checksum_algorithm is not None:
                raise ObjectStoreError("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple "
                                       "checksum Types are not allowed.")
            self.checksum_algorithm, self.checksum_trailer = _CHECKSUM_HEADERS[trailer], trailer
        self.checksum = checksum_hasher(self.checksum_algorithm) if self.checksum_algorithm else None
        self.size = 0
        self._state = _SIZE
        self._line = bytearray()
        self._remaining = 0
        self._chunk_sha: Any = None
        self._chunk_signature = ""
        self._trailers: list[tuple[str, str]] = []

    # -- the bytes ------------------------------------------------------------------------------------
    def _emit(self, piece: bytes | bytearray | memoryview) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            raise too_large(self.limit)
        if self.sha256 is not None:
            self.sha256.update(piece)
        if self.checksum is not None:
            self.checksum.update(piece)
        self.sink.write(piece)

    def feed(self, data: bytes | bytearray) -> None:
        if not self.chunked:
            self._emit(data)
            return
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self._state == _DATA:
                take = min(self._remaining, n - i)
                piece = view[i:i + take]
                if self._chunk_sha is not None:
                    self._chunk_sha.update(piece)
                self._emit(piece)
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    self._state = _DATA_END
                continue
            end = data.find(b"\n", i)
            if end < 0:
                self._line += view[i:]
                if len(self._line) > MAX_LINE:
                    raise _framing("a chunk header or trailer line is too long")
                return
            self._line += view[i:end + 1]
            i = end + 1
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        if self._state == _SIZE:
            size_text, _, extension = line.partition(b";")
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _framing(f"{size_text[:20]!r} is not a chunk size") from None
            if size < 0:
                raise _framing("a chunk size is negative")
            name, _, signature = extension.partition(b"=")
            self._chunk_signature = signature.decode("latin-1").strip() if name.strip() == b"chunk-signature" else ""
            if self.chain is not None and not self._chunk_signature:
                raise _chunk_mismatch()
            if size == 0:
                self._verify_chunk(hashlib.sha256(b"").hexdigest())
                self._state = _TRAILER
            else:
                self._remaining = size
                self._chunk_sha = hashlib.sha256() if self.chain is not None else None
                self._state = _DATA
        elif self._state == _DATA_END:
            if line:
                raise _framing("a chunk is longer than its declared size")
            if self._chunk_sha is not None:
                self._verify_chunk(self._chunk_sha.hexdigest())
            self._state = _SIZE
        elif self._state == _TRAILER:
            if not line:
                self._state = _END
                return
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise _framing("a trailer line is not NAME:VALUE")
            self._trailers.append((name.strip().lower(), value.strip()))
        elif line.strip():
            raise _framing("bytes after the body's last chunk")

    def _verify_chunk(self, sha256_hex: str) -> None:
        if self.chain is not None and not self.chain.chunk(sha256_hex, self._chunk_signature):
            raise _chunk_mismatch()

    # -- the checks -----------------------------------------------------------------------------------
    def finish(self) -> dict[str, str]:
        """Check everything the request declared; the verified checksum, to store with the object."""
        # A last chunk with no trailer may come without the closing empty line.
        closed = self._state == _END or (self._state == _TRAILER and not self._trailers and not self._line)
        if self.chunked and not closed:
            raise ObjectStoreError("IncompleteBody", "The request body ended before its last chunk.")
        if self.declared is not None and self.size != self.declared:
            raise ObjectStoreError("IncompleteBody", "You did not provide the number of bytes specified by the "
                                   "Content-Length HTTP header.", NumberBytesExpected=str(self.declared),
                                   NumberBytesProvided=str(self.size))
        trailers = dict(self._trailers)
        if self.signed_trailer and self.chain is not None:
            signature = trailers.pop("x-amz-trailer-signature", "")
            lines = "".join(f"{name}:{value}\n" for name, value in self._trailers if name != "x-amz-trailer-signature")
            if not self.chain.trailer(lines.encode("latin-1"), signature):
                raise _chunk_mismatch()
        if self.sha256 is not None and self.sha256.hexdigest() != self.expected_sha256:
            raise ObjectStoreError("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not "
                                   "match what was computed.", ClientComputedContentSHA256=self.expected_sha256,
                                   S3ComputedContentSHA256=self.sha256.hexdigest())
        if self.content_md5 is not None and base64.b64decode(self.content_md5) != self.sink.md5_digest():
            raise ObjectStoreError("BadDigest", "The Content-MD5 you specified did not match what we received.")
        if self.checksum is None or self.checksum_algorithm is None:
            return {}
        expected = self.checksum_expected
        if self.checksum_trailer is not None:
            expected = trailers.get(self.checksum_trailer)
            if expected is None:
                raise ObjectStoreError("MalformedTrailerError", "The request's trailer lacks the "
                                       f"{self.checksum_trailer} it announced in x-amz-trailer.")
        computed = base64.b64encode(self.checksum.digest()).decode()
        if expected != computed:
            raise ObjectStoreError("BadDigest", f"The {self.checksum_algorithm} you specified did not match the "
                                   "calculated checksum.")
        return {self.checksum_algorithm: computed}


def too_large(limit: int) -> ObjectStoreError:
    return ObjectStoreError("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                            MaxSizeAllowed=str(limit))


def _framing(detail: str) -> ObjectStoreError:
    return ObjectStoreError("IncompleteBody", f"The aws-chunked body is malformed: {detail}.")


def _chunk_mismatch() -> ObjectStoreError:
    return ObjectStoreError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                            "you provided (an aws-chunked chunk or trailer signature).", 403)


async def receive_into(receive: Any, decoder: BodyDecoder) -> dict[str, str]:
    """Stream the request body through ``decoder``, a block at a time in a worker thread."""
    block = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        block += message.get("body", b"")
        more = message.get("more_body", False)
        if block and (len(block) >= BLOCK or not more):
            data, block = block, bytearray()
            await asyncio.to_thread(decoder.feed, data)
        if not more:
            break
    return await asyncio.to_thread(decoder.finish)
