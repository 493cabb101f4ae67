"""Verification of AWS Signature Version 4 on incoming requests.

boto3 signs every request it sends, so the server checks the signature the way AWS does: rebuild
the canonical request from what arrived on the wire, derive the signing key from the secret the
access key id names, and compare. botocore's signer (``botocore.auth.SigV4Auth`` and
``SigV4QueryAuth``) is the reference: every canonicalisation rule here mirrors what it does, so a
request botocore signed verifies byte for byte.

This runs on the hot path of every invocation, hence the shape of the code: one pass over the
headers, string work kept to what the canonical request needs, the derived signing key cached per
(secret, date, region, service) so a request costs two SHA-256s and one HMAC, and the slower
alternatives (AWS's decoded-and-re-encoded query form, ``UNSIGNED-PAYLOAD`` for presigned URLs)
tried only when the first candidate does not match.

S3 signs differently, and ``verify_s3`` checks it so: the canonical URI is the path exactly as sent
(no second encoding, no dot-segment normalisation: botocore's ``S3SigV4Auth``), the body may be left
unsigned (``UNSIGNED-PAYLOAD``, ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``), and a body sent as
``aws-chunked`` with ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` signs each chunk in a chain that starts
at the request's signature (``ChunkChain``). The other services keep refusing unsigned bodies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

from botocore.utils import normalize_url_path

__all__ = ["ALGORITHM", "Action", "AuthError", "ChunkChain", "Principal", "S3Signature", "ScopeError", "SigV4Verifier",
           "headers_by_name"]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# Payload markers a signer may put in X-Amz-Content-SHA256 instead of a hash; the body is then
# deliberately outside the signature.
_UNSIGNED_MARKERS = frozenset({UNSIGNED_PAYLOAD, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
# What S3 takes in X-Amz-Content-SHA256 besides a hex SHA-256.
S3_PAYLOAD_MARKERS = frozenset({UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED,
                                STREAMING_SIGNED_TRAILER})
_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
# AWS refuses presigned URLs valid for longer than a week.
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
_SIGNING_KEY_CACHE_SIZE = 256
# Authorization headers (the part before the signature) parsed and checked, remembered at most.
_AUTHORIZATIONS_SIZE = 1024
_SIGNATURE_SEPARATOR = ", Signature="
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)

MSG_MISSING_TOKEN = "Missing Authentication Token"
MSG_UNKNOWN_KEY = "The security token included in the request is invalid."
MSG_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
MSG_BOTH_MECHANISMS = ("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the "
                       "Authorization header should be specified.")
MSG_HOST_UNSIGNED = "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
MSG_UNSIGNED_PAYLOAD = ("X-Amz-Content-SHA256: UNSIGNED-PAYLOAD is accepted on presigned URLs only; sign the "
                        "request's body (its SHA-256).")
MSG_NO_PRESIGNED = (f"{MSG_MISSING_TOKEN}: this API does not take presigned URLs (X-Amz-Signature in the query); "
                    "sign the request's Authorization header.")
MSG_UNSIGNED_BODY = ("A presigned URL signed over UNSIGNED-PAYLOAD is accepted here only for a request without a "
                     "body; presign the body's SHA-256.")
MSG_PAYLOAD_HASH = "The provided 'x-amz-content-sha256' header does not match what was computed."


class AuthError(Exception):
    """A request that failed authentication; ``code`` is the AWS error code boto3 will raise."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ScopeError(AuthError):
    """A credential scoped to another region or service than the one that received it.

    AWS checks the scope before the signature (a key derived for another scope can never match) and
    names what was wrong; the S3 door rewords it as S3 does, so the parts are kept.
    """

    def __init__(self, message: str, *, region: str, expected_region: str, service: str,
                 expected_service: str | None) -> None:
        super().__init__("InvalidSignatureException", message)
        self.region = region
        self.expected_region = expected_region
        self.service = service
        self.expected_service = expected_service


def _incomplete(message: str) -> AuthError:
    # AWS documents IncompleteSignature as a client error (400), unlike the 403s of a wrong key.
    return AuthError("IncompleteSignatureException", message, 400)


def _invalid(message: str) -> AuthError:
    return AuthError("InvalidSignatureException", message)


@dataclass(frozen=True)
class Principal:
    """Who signed a request, and the scope they signed it for."""

    access_key_id: str
    region: str
    service: str


@dataclass(frozen=True)
class Action:
    """What a verified request asks to do, for ``SigV4Verifier.authorize``: the IAM service prefix
    (``sagemaker``, ``cloudwatch``..., ``s3``, ``moorage`` for the native API), the operation (an AWS
    operation name; ``METHOD /route`` on the native API and S3), and the endpoints it names."""

    service: str
    operation: str
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class S3Signature:
    """A verified S3 request: who signed it, what it declared its body to be (X-Amz-Content-SHA256, or
    UNSIGNED-PAYLOAD on a presigned URL), and what a chain of chunk signatures needs to go on from it."""

    principal: Principal
    payload: str
    signing_key: bytes
    amz_date: str
    scope: str
    signature: str


class ChunkChain:
    """The chunk signatures of an ``aws-chunked`` body signed with STREAMING-AWS4-HMAC-SHA256-PAYLOAD:
    each signs its chunk's SHA-256 and the signature before it, the first the request's own; the
    optional trailer (STREAMING-...-PAYLOAD-TRAILER) is signed last, over its header lines."""

    def __init__(self, signed: S3Signature) -> None:
        self._key = signed.signing_key
        self._prefix = f"{ALGORITHM}-PAYLOAD\n{signed.amz_date}\n{signed.scope}\n"
        self._trailer_prefix = f"{ALGORITHM}-TRAILER\n{signed.amz_date}\n{signed.scope}\n"
        self._previous = signed.signature

    def chunk(self, sha256_hex: str, provided: str) -> bool:
        """Whether ``provided`` signs the chunk whose SHA-256 is ``sha256_hex``; the chain moves on."""
        text = f"{self._prefix}{self._previous}\n{EMPTY_SHA256}\n{sha256_hex}"
        return self._check(text, provided)

    def trailer(self, canonical_lines: bytes, provided: str) -> bool:
        """Whether ``provided`` signs the trailing headers, as ``name:value\\n`` lines."""
        text = f"{self._trailer_prefix}{self._previous}\n{hashlib.sha256(canonical_lines).hexdigest()}"
        return self._check(text, provided)

    def _check(self, text: str, provided: str) -> bool:
        calculated = hmac.digest(self._key, text.encode(), "sha256").hex()
        if not hmac.compare_digest(calculated.encode(), provided.encode("latin-1")):
            return False
        self._previous = calculated
        return True


def _format_amz_date(epoch: float) -> str:
    return time.strftime(_AMZ_DATE_FORMAT, time.gmtime(epoch))


def _parse_amz_date(text: str) -> float | None:
    # Hand-rolled because strptime costs several microseconds per call on the hot path.
    if len(text) != 16 or text[8] != "T" or text[15] != "Z" or not text.isascii():
        return None
    try:
        return datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=UTC,
        ).timestamp()
    except ValueError:
        return None


def _skew_text(seconds: int) -> str:
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def _trim(value: bytes) -> str:
    # botocore's Trimall: strip and collapse whitespace runs. Header bytes are decoded as
    # latin-1 because that is how http.client encoded botocore's str values onto the wire.
    text = value.decode("latin-1")
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text  # the usual value: no whitespace but single spaces inside, nothing to trim
    return " ".join(text.split())


def _s3_canonical_uri(raw_path: bytes) -> str:
    # S3SigV4Auth signs the URL's path as it is: already percent-encoded once, never normalised.
    return raw_path.decode("latin-1") if raw_path else "/"


# Canonical URIs of the paths seen last: a client invokes the same endpoint's path again and again.
_CANONICAL_URIS: dict[bytes, str] = {}
_CANONICAL_URIS_SIZE = 1024


def _canonical_uri(raw_path: bytes) -> str:
    # botocore signs quote(remove_dot_segments(path), safe='/~') over the path as already
    # percent-encoded in the URL, so non-S3 services see "double" encoding: %20 -> %2520.
    known = _CANONICAL_URIS.get(raw_path)
    if known is not None:
        return known
    path = raw_path
    if not path:
        return "/"
    if b"/." in path or b"//" in path:
        path = normalize_url_path(path.decode("latin-1")).encode("latin-1")
    canonical = quote_from_bytes(path, "/~")
    if len(_CANONICAL_URIS) >= _CANONICAL_URIS_SIZE:
        _CANONICAL_URIS.clear()  # bounded whatever paths a client makes up; the hot ones come back at once
    _CANONICAL_URIS[raw_path] = canonical
    return canonical


def _query_pairs(query: bytes, drop_signature: bool) -> list[bytes]:
    pairs = query.split(b"&")
    if drop_signature:
        pairs = [p for p in pairs if not p.startswith(b"X-Amz-Signature=") and p != b"X-Amz-Signature"]
    return pairs


def _query_as_sent(pairs: list[bytes]) -> str:
    # What botocore signs: the URL's own key=value pairs, sorted, not re-encoded. boto3 builds
    # the query with percent_encode_sequence, so this is already AWS's canonical encoding.
    split = sorted(p.decode("latin-1").partition("=")[::2] for p in pairs)
    return "&".join(f"{k}={v}" for k, v in split)


def _query_reencoded(pairs: list[bytes]) -> str:
    # What the SigV4 spec (and so other SDKs) signs: each name and value decoded, then encoded
    # with only unreserved characters left bare. '+' is read as a space, as form encoding (and
    # AWSRequest(params=...)) sends one.
    split = []
    for pair in pairs:
        key, _, value = pair.partition(b"=")
        split.append(
            (
                quote_from_bytes(unquote_to_bytes(key.replace(b"+", b" ")), "-_.~"),
                quote_from_bytes(unquote_to_bytes(value.replace(b"+", b" ")), "-_.~"),
            )
        )
    split.sort()
    return "&".join(f"{k}={v}" for k, v in split)


def _has_param(query: bytes, name: bytes) -> bool:
    # A key, not just the text anywhere: "?q=X-Amz-Signature" is an ordinary query.
    return query.startswith(name + b"=") or (b"&" + name + b"=") in query


def _query_candidates(pairs: list[bytes]) -> Iterator[str]:
    """The canonical query strings a signer may have used, the one boto3 uses first.

    A generator so that the re-encoded form is only computed when the first one did not match.
    """
    if not pairs:
        yield ""
        return
    as_sent = _query_as_sent(pairs)
    yield as_sent
    reencoded = _query_reencoded(pairs)
    if reencoded != as_sent:
        yield reencoded


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def headers_by_name(headers: Sequence[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes],
                                                                       dict[bytes, list[bytes]] | None]:
    """ASGI header pairs by name; a name sent more than once also has all its values, in order."""
    single: dict[bytes, bytes] = {}
    repeated: dict[bytes, list[bytes]] | None = None
    for name, value in headers:
        if name in single:
            if repeated is None:
                repeated = {}
            repeated.setdefault(name, [single[name]]).append(value)
        else:
            single[name] = value
    return single, repeated


def _header_fields(signed_headers: str) -> tuple[tuple[str, bytes], ...]:
    """SignedHeaders' names, each with its header's key as the edge keeps it (bytes)."""
    return tuple((name, name.encode("latin-1")) for name in signed_headers.split(";"))


def _is_presigned(query_string: bytes) -> bool:
    return bool(query_string) and (
        _has_param(query_string, b"X-Amz-Signature")
        or _has_param(query_string, b"X-Amz-Algorithm")
        or _has_param(query_string, b"X-Amz-Credential")
    )


def _auth_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            # AWS's wording; it hashes the header rather than echo something that may be a secret.
            digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
            raise _incomplete(
                "Invalid key=value pair (missing equal-sign) in Authorization header "
                f"(hashed with SHA-256 and encoded with Base64): '{digest}'."
            )
        params[key.strip()] = value.strip()
    return params


class SigV4Verifier:
    """Checks SigV4 header and presigned-URL signatures against the secrets ``secret_for`` knows.

    ``secret_for(access_key_id)`` returns the secret access key, or None for an unknown key. With
    ``region`` the credential scope must name that region, as at AWS, where a signature for
    us-west-2 is refused by us-east-1; each door names the service (its signing name) a request
    must be scoped to, so a signature made for one service cannot be replayed at another.
    """

    def __init__(self, secret_for: Callable[[str], str | None], max_skew_seconds: int = 900,
                 region: str | None = None) -> None:
        self._secret_for = secret_for
        self._max_skew = max_skew_seconds
        self.region = region
        self._signing_keys: dict[tuple[str, str, str, str], bytes] = {}
        self._authorizations: dict[str, tuple[Any, ...]] = {}
        # Requests signed in the same second share X-Amz-Date; remembering the last one parsed
        # skips the datetime construction for most of them.
        self._last_date: tuple[str, float] = ("19700101T000000Z", 0.0)

    def verify(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        now: float | None = None,
        payload_hash: str | None = None,
        *,
        service: str | None = None,
        allow_presigned: bool = True,
        by_name: tuple[dict[bytes, bytes], dict[bytes, list[bytes]] | None] | None = None,
    ) -> Principal:
        """Return who signed the request, or raise AuthError with the code AWS would send.

        ``headers`` are ASGI pairs (lowercase names); ``raw_path`` is the path as sent, still
        percent-encoded; ``query_string`` is the raw query without '?'. ``payload_hash`` stands in
        for the body when the caller streams a body too large to hold: the signature is checked over
        it, and the caller must check that the bytes it keeps hash to it. ``service``: the signing
        name the credential scope must carry (None: the caller checks it). ``allow_presigned=False``
        refuses a signature carried in the query, for APIs where a URL that works for days is a leak.
        ``by_name``: the headers by name (``headers_by_name``), when the caller has them already.
        """
        single, repeated = by_name if by_name is not None else headers_by_name(headers)

        authorization = single.get(b"authorization")
        presigned = _is_presigned(query_string)
        if authorization is None:
            if not presigned:
                raise AuthError("MissingAuthenticationTokenException", MSG_MISSING_TOKEN)
            if not allow_presigned:
                raise AuthError("MissingAuthenticationTokenException", MSG_NO_PRESIGNED)
            return self._verify_presigned(method, raw_path, query_string, single, repeated, body, now, payload_hash,
                                          service=service)
        if presigned:
            raise _incomplete(MSG_BOTH_MECHANISMS)
        return self._verify_header(method, raw_path, query_string, single, repeated, body, now, authorization,
                                   payload_hash, service=service)

    def authorize(self, principal: Principal, action: Action) -> None:
        """Raise if ``principal`` may not do ``action``. Every key this verifier knows may do everything;
        ``api/access.py``'s verifier, which also knows keys with roles, decides otherwise."""

    def verify_s3(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        now: float | None = None,
    ) -> S3Signature:
        """Verify a request S3's way (see the module's docstring) before a byte of its body is read.

        The caller must hold the body to what ``payload`` declares: its SHA-256, or the chain of chunk
        signatures (``ChunkChain``); UNSIGNED-PAYLOAD and STREAMING-UNSIGNED-PAYLOAD-TRAILER leave it
        outside the signature, as S3 allows.
        """
        single, repeated = headers_by_name(headers)
        authorization = single.get(b"authorization")
        presigned = _is_presigned(query_string)
        if authorization is None:
            if not presigned:
                raise AuthError("MissingAuthenticationTokenException", MSG_MISSING_TOKEN)
            declared = single.get(b"x-amz-content-sha256")
            payload = declared.decode("latin-1").strip() if declared is not None else UNSIGNED_PAYLOAD
            signed = self._verify_presigned(method, raw_path, query_string, single, repeated, b"", now,
                                            payload_hash=payload, s3=True, service="s3")
        else:
            if presigned:
                raise _incomplete(MSG_BOTH_MECHANISMS)
            declared = single.get(b"x-amz-content-sha256")
            if declared is None:
                raise AuthError("InvalidRequest", "Missing required header for this request: x-amz-content-sha256",
                                400)
            payload = declared.decode("latin-1").strip()
            if payload not in S3_PAYLOAD_MARKERS and (len(payload) != 64 or not _is_hex(payload)):
                raise AuthError("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                                "STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.", 400)
            signed = self._verify_header(method, raw_path, query_string, single, repeated, b"", now, authorization,
                                         payload_hash=payload.lower() if len(payload) == 64 else payload, s3=True,
                                         service="s3")
        assert isinstance(signed, S3Signature)
        return signed

    # -- the two ways to carry a signature ------------------------------------------------------

    def _verify_header(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        single: dict[bytes, bytes],
        repeated: dict[bytes, list[bytes]] | None,
        body: bytes,
        now: float | None,
        authorization: bytes,
        payload_hash: str | None = None,
        s3: bool = False,
        service: str | None = None,
    ) -> Principal | S3Signature:
        text = authorization.decode("latin-1").strip()
        # A client signs with the same key, scope and headers all day: what the part of the header
        # before its Signature says is parsed and checked once (bounded: _remember_authorization).
        cut = text.rfind(_SIGNATURE_SEPARATOR)
        tail = text[cut + len(_SIGNATURE_SEPARATOR):] if cut > 0 else ""
        known = self._authorizations.get(text[:cut]) if cut > 0 and "," not in tail else None
        if known is not None:
            signature = tail
            credential, signed_headers, access_key, scope, region, signed_for, header_fields, principal = known
            amz_date = self._amz_date(single)
            if amz_date is None or not signature:
                raise _incomplete(self._missing(credential, signature, signed_headers, amz_date)
                                  + f" Authorization={text}")
            self._check_scope(region, signed_for, service)
            epoch = self._parse_date(amz_date)
        else:
            algorithm, _, rest = text.partition(" ")
            if algorithm != ALGORITHM:
                # The header is not echoed here: with another scheme it may carry a bearer secret.
                raise _incomplete(f"Authorization header requires the '{ALGORITHM}' algorithm, not '{algorithm}'.")
            params = _auth_params(rest)
            credential = params.get("Credential")
            signed_headers = params.get("SignedHeaders")
            signature = params.get("Signature")
            amz_date = self._amz_date(single)
            if not credential or not signed_headers or not signature or amz_date is None:
                # AWS lists every missing piece in one message, then echoes the header.
                raise _incomplete(self._missing(credential, signature, signed_headers, amz_date)
                                  + f" Authorization={text}")
            access_key, scope, region, signed_for = self._parse_credential(credential)
            self._check_scope(region, signed_for, service)
            epoch = self._parse_date(amz_date)
            header_fields = _header_fields(signed_headers)
            if not any(name in ("host", ":authority") for name, _ in header_fields):
                raise _incomplete(MSG_HOST_UNSIGNED)
            principal = Principal(access_key, region, signed_for)
            if cut > 0 and signature == tail and "," not in tail:
                self._remember_authorization(text[:cut], (credential, signed_headers, access_key, scope, region,
                                                          signed_for, header_fields, principal))
        signing_key = self._signing_key(access_key, amz_date, scope, region, signed_for)
        self._check_clock(amz_date, epoch, now)

        if s3:
            assert payload_hash is not None
            payload = payload_hash
            canonical_uri = _s3_canonical_uri(raw_path)
        else:
            payload = self._payload_hash(single, body, payload_hash)
            if payload in _UNSIGNED_MARKERS:
                # Only S3 lets a header-signed request leave its body unsigned; moorage's APIs are not S3,
                # and an unsigned body could be replayed with any other body under the same signature.
                raise _invalid(MSG_UNSIGNED_PAYLOAD)
            canonical_uri = _canonical_uri(raw_path)
        canonical_headers = self._canonical_headers(header_fields, single, repeated)
        head = f"{method.upper()}\n{canonical_uri}\n"
        tail = f"\n{canonical_headers}\n{signed_headers}\n{payload}"
        pairs = _query_pairs(query_string, drop_signature=False) if query_string else []
        self._check_signature(signature, signing_key, amz_date, scope,
                              (head + query + tail for query in _query_candidates(pairs)))
        if s3:
            return S3Signature(principal, payload, signing_key, amz_date, scope, signature)
        return principal

    def _verify_presigned(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        single: dict[bytes, bytes],
        repeated: dict[bytes, list[bytes]] | None,
        body: bytes,
        now: float | None,
        payload_hash: str | None = None,
        s3: bool = False,
        service: str | None = None,
    ) -> Principal | S3Signature:
        params: dict[str, str] = {}
        for pair in query_string.split(b"&"):
            key, _, value = pair.partition(b"=")
            if key.startswith(b"X-Amz-"):
                params[key.decode("latin-1")] = unquote(value.decode("latin-1"))
        missing = [name for name in _PRESIGN_PARAMS if not params.get(name)]
        if missing:
            raise _incomplete(
                " ".join(f"AWS query-string parameters must include '{name}'." for name in missing)
                + " Re-examine the query-string parameters."
            )
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise _incomplete(f"X-Amz-Algorithm only supports '{ALGORITHM}', not '{params['X-Amz-Algorithm']}'.")
        try:
            expires = int(params["X-Amz-Expires"])
        except ValueError:
            expires = -1
        if not 0 < expires <= MAX_PRESIGN_EXPIRES:
            raise _incomplete(f"X-Amz-Expires must be a whole number of seconds between 1 and {MAX_PRESIGN_EXPIRES}.")
        amz_date = params["X-Amz-Date"]
        signed_headers = params["X-Amz-SignedHeaders"]
        access_key, scope, region, signed_for = self._parse_credential(params["X-Amz-Credential"])
        self._check_scope(region, signed_for, service)
        epoch = self._parse_date(amz_date)
        header_names = signed_headers.split(";")
        if "host" not in header_names and ":authority" not in header_names:
            raise _incomplete(MSG_HOST_UNSIGNED)
        signing_key = self._signing_key(access_key, amz_date, scope, region, signed_for)

        current = time.time() if now is None else now
        if current > epoch + expires:
            raise _invalid(
                f"Signature expired: {amz_date} is now earlier than {_format_amz_date(current - expires)} "
                f"({_format_amz_date(current)} - {expires} sec.)"
            )
        self._check_clock(amz_date, epoch, now, future_only=True)

        # botocore's SigV4QueryAuth hashes the body it signed (empty for a GET); S3-style signers
        # and other SDKs use UNSIGNED-PAYLOAD, which a presigned URL may choose deliberately.
        if s3:
            assert payload_hash is not None
            payload = payload_hash
            canonical_uri = _s3_canonical_uri(raw_path)
            payloads = [payload] if payload == UNSIGNED_PAYLOAD else [payload, UNSIGNED_PAYLOAD]
        else:
            payload = self._payload_hash(single, body, payload_hash)
            canonical_uri = _canonical_uri(raw_path)
            # Outside S3 a URL presigned over UNSIGNED-PAYLOAD is taken only for a request without a body:
            # with one, the same URL would run any other body for as long as it is valid.
            unsigned = payload in _UNSIGNED_MARKERS
            empty = payload == EMPTY_SHA256 or (unsigned and not body and payload_hash is None)
            if not empty and unsigned:
                raise _invalid(MSG_UNSIGNED_BODY)
            payloads = [UNSIGNED_PAYLOAD] if unsigned else [payload, UNSIGNED_PAYLOAD] if empty else [payload]
        canonical_headers = self._canonical_headers(_header_fields(signed_headers), single, repeated)
        pairs = _query_pairs(query_string, drop_signature=True)
        head = f"{method.upper()}\n{canonical_uri}\n"
        tail = f"\n{canonical_headers}\n{signed_headers}\n"
        self._check_signature(
            params["X-Amz-Signature"],
            signing_key,
            amz_date,
            scope,
            (head + query + tail + p for p in payloads for query in _query_candidates(pairs)),
        )
        if s3:
            return S3Signature(Principal(access_key, region, signed_for), UNSIGNED_PAYLOAD, signing_key, amz_date,
                               scope, params["X-Amz-Signature"])
        return Principal(access_key, region, signed_for)

    # -- pieces -----------------------------------------------------------------------------------

    @staticmethod
    def _from_http_date(value: bytes) -> str:
        # botocore signs with the Date header instead of X-Amz-Date when the caller set one.
        try:
            parsed = parsedate_to_datetime(value.decode("latin-1"))
        except (TypeError, ValueError):
            raise _incomplete(f"Date must be in RFC 1123 format. Got '{value.decode('latin-1')}'.") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).strftime(_AMZ_DATE_FORMAT)

    @staticmethod
    def _parse_credential(credential: str) -> tuple[str, str, str, str]:
        """Split ``AKID/date/region/service/aws4_request``; the scope is everything after AKID."""
        parts = credential.split("/")
        if len(parts) != 5:
            raise _incomplete(
                "Credential should be of the form "
                f"'<access key id>/<YYYYMMDD>/<region>/<service>/aws4_request', not '{credential}'."
            )
        access_key, date, region, service, terminator = parts
        if terminator != "aws4_request":
            raise _incomplete(
                f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )
        if not access_key or not region or not service or len(date) != 8 or not date.isdigit():
            raise _incomplete(f"Credential should be scoped to a valid date, region and service: '{credential}'.")
        return access_key, credential[len(access_key) + 1 :], region, service

    def _check_scope(self, region: str, service: str, expected_service: str | None) -> None:
        # AWS's own wording (botocore surfaces it as the error message).
        expected_region = self.region or region
        if region != expected_region:
            raise ScopeError(f"Credential should be scoped to a valid region, not '{region}'.", region=region,
                             expected_region=expected_region, service=service, expected_service=expected_service)
        if expected_service is not None and service != expected_service:
            raise ScopeError(f"Credential should be scoped to correct service: '{expected_service}'.", region=region,
                             expected_region=expected_region, service=service, expected_service=expected_service)

    def _amz_date(self, single: dict[bytes, bytes]) -> str | None:
        raw = single.get(b"x-amz-date")
        if raw is not None:
            return raw.decode("latin-1").strip()
        if b"date" in single:
            return self._from_http_date(single[b"date"])
        return None

    @staticmethod
    def _missing(credential: str | None, signature: str | None, signed_headers: str | None,
                 amz_date: str | None) -> str:
        missing = [f"Authorization header requires '{n}' parameter."
                   for n, v in (("Credential", credential), ("Signature", signature), ("SignedHeaders", signed_headers))
                   if not v]
        if amz_date is None:
            missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        return " ".join(missing)

    def _remember_authorization(self, prefix: str, parsed: tuple[Any, ...]) -> None:
        if len(self._authorizations) >= _AUTHORIZATIONS_SIZE:
            self._authorizations.clear()  # bounded whatever headers clients make up
        self._authorizations[prefix] = parsed

    def _parse_date(self, amz_date: str) -> float:
        last = self._last_date
        if amz_date == last[0]:
            return last[1]
        epoch = _parse_amz_date(amz_date)
        if epoch is None:
            raise _incomplete(
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
            )
        self._last_date = (amz_date, epoch)
        return epoch

    def _signing_key(self, access_key: str, amz_date: str, scope: str, region: str, service: str) -> bytes:
        secret = self._secret_for(access_key)
        if secret is None:
            raise AuthError("UnrecognizedClientException", MSG_UNKNOWN_KEY)
        date = scope[:8]
        if date != amz_date[:8]:
            raise _invalid(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
                f"HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'."
            )
        cache_key = (secret, date, region, service)
        key = self._signing_keys.get(cache_key)
        if key is None:
            key = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
            for part in (region, service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            # Keys roll over daily, so a bounded dict that is simply emptied when full is enough.
            if len(self._signing_keys) >= _SIGNING_KEY_CACHE_SIZE:
                self._signing_keys.clear()
            self._signing_keys[cache_key] = key
        return key

    def _check_clock(self, amz_date: str, epoch: float, now: float | None, future_only: bool = False) -> None:
        current = time.time() if now is None else now
        skew = self._max_skew
        if not future_only and epoch < current - skew:
            raise _invalid(
                f"Signature expired: {amz_date} is now earlier than {_format_amz_date(current - skew)} "
                f"({_format_amz_date(current)} - {_skew_text(skew)})"
            )
        if epoch > current + skew:
            raise _invalid(
                f"Signature not yet current: {amz_date} is still later than "
                f"{_format_amz_date(current + skew)} ({_format_amz_date(current)} + {_skew_text(skew)})"
            )

    @staticmethod
    def _payload_hash(single: dict[bytes, bytes], body: bytes, known: str | None = None) -> str:
        declared = single.get(b"x-amz-content-sha256")
        if known is None:
            known = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        actual = known
        if declared is None:
            return actual
        text = declared.decode("latin-1").strip()
        # The declared hash is what gets signed, so unless the signer opted out of payload
        # signing it must be checked against the body, or the body could be swapped freely.
        if text not in _UNSIGNED_MARKERS and text != actual:
            raise _invalid(MSG_PAYLOAD_HASH)
        return text

    @staticmethod
    def _canonical_headers(
        fields: tuple[tuple[str, bytes], ...], single: dict[bytes, bytes], repeated: dict[bytes, list[bytes]] | None
    ) -> str:
        lines = []
        for name, key in fields:
            if repeated is not None and key in repeated:
                value = ",".join(_trim(v) for v in repeated[key])
            else:
                raw = single.get(key)
                # A signed header that did not arrive cannot match; signing it as empty lets the
                # comparison below report the usual mismatch.
                value = "" if raw is None else _trim(raw)
            lines.append(f"{name}:{value}\n")
        return "".join(lines)

    @staticmethod
    def _check_signature(
        provided: str, signing_key: bytes, amz_date: str, scope: str, canonical_requests: Iterable[str]
    ) -> None:
        expected = provided.encode("latin-1")
        prefix = f"{ALGORITHM}\n{amz_date}\n{scope}\n"
        for canonical in canonical_requests:
            digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
            calculated = hmac.digest(signing_key, (prefix + digest).encode(), "sha256").hex()
            if hmac.compare_digest(calculated.encode(), expected):
                return
        raise _invalid(MSG_MISMATCH)
