"""Who is signed in to the dashboard, and the one place every request's session and CSRF token are checked.

A login (``ui/login.py``) trades an access key id and secret for a session cookie: signed with a key
kept in the home (``ui-session.key``, 0600, made once), HttpOnly, SameSite=Strict, Secure when served
over TLS, valid for ``SESSION_SECONDS``. It carries the key id, a session id and the session's CSRF
token; the key's role is looked up on every request, so a revoked key's sessions stop at once.

``SessionGuard`` wraps the whole dashboard: a page without a session is redirected to the login; an
unsafe method (anything but GET/HEAD/OPTIONS) without a session, or without the session's CSRF token
(the ``csrf_token`` form field or the ``X-CSRF-Token`` header), is refused with 403 before any page
sees it. Pages then ask ``can(request, role)`` / ``require(request, role)``: viewers and invokers
read, deployers and admins may press buttons, and a key limited to endpoints acts only on those.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.exceptions import HTTPException
from starlette.requests import Request

from moorage.ui.context import ADMIN, DEPLOYER, INVOKER, VIEWER, Principal, UiContext

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/ui"
LOGIN_PATH = f"{PREFIX}/login"
STATIC_PREFIX = f"{PREFIX}/static/"
COOKIE = "moorage_ui"
SESSION_SECONDS = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = b"x-csrf-token"
KEY_FILE = "ui-session.key"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A dashboard form is a few fields; anything bigger is not one of ours.
MAX_FORM_BYTES = 64 * 1024
SCOPE_KEY = "moorage.ui.session"
# What a role may do in the dashboard: viewers and invokers read; deployers and admins act.
RANK = {VIEWER: 0, INVOKER: 0, DEPLOYER: 1, ADMIN: 2}
# Every response: no framing (clickjacking), scripts and styles from this server only, forms post here.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                 b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


@dataclass(frozen=True)
class Session:
    principal: Principal
    session_id: str
    csrf_token: str


def signing_key(home: Path) -> bytes:
    """The home's session-signing key, made once (0600); a restart keeps sessions valid."""
    path = Path(home) / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    # Written whole under another name, then renamed: a crash never leaves a short key behind.
    key = secrets.token_bytes(32)
    partial = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.replace(partial, path)
    return key


class Sessions:
    """Issues and reads session cookies; remembers the sessions signed out until they would expire."""

    def __init__(self, ui: UiContext, key: bytes, max_age: int = SESSION_SECONDS) -> None:
        self.ui = ui
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(key, salt="moorage-ui-session")
        self._login_serializer = URLSafeTimedSerializer(key, salt="moorage-ui-login")
        self._ended: dict[str, float] = {}  # session id -> when it would have expired
        self._lock = threading.Lock()

    def issue(self, principal: Principal) -> tuple[Session, str]:
        session = Session(principal, secrets.token_urlsafe(16), secrets.token_urlsafe(32))
        cookie = self._serializer.dumps({"k": principal.key_id, "s": session.session_id, "c": session.csrf_token})
        return session, cookie

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or data.get("s") in self._ended:
            return None
        principal = self.ui.lookup(str(data.get("k", "")))  # revoked keys lose their sessions
        if principal is None:
            return None
        return Session(principal, str(data["s"]), str(data["c"]))

    def end(self, session: Session) -> None:
        now = time.time()
        with self._lock:
            self._ended = {s: t for s, t in self._ended.items() if t > now}
            self._ended[session.session_id] = now + self.max_age

    # The login form's own CSRF token (no session yet): a signed cookie the form must repeat.
    def login_token(self) -> tuple[str, str]:
        token = secrets.token_urlsafe(24)
        return token, self._login_serializer.dumps(token)

    def login_token_ok(self, cookie: str | None, given: str | None) -> bool:
        if not cookie or not given:
            return False
        try:
            expected = self._login_serializer.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return isinstance(expected, str) and hmac.compare_digest(expected, given)


def cookie_header(name: str, value: str, *, secure: bool, max_age: int) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, scoped to the dashboard, Secure over TLS."""
    parts = [f"{name}={value}", f"Path={PREFIX}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def is_tls(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def cookies_of(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is no session
                continue
    return {k: m.value for k, m in jar.items()}


# -- for pages -------------------------------------------------------------------------------------------
def session_of(request: Request) -> Session | None:
    return request.scope.get(SCOPE_KEY)


def can(request: Request, role: str, endpoint: str | None = None) -> bool:
    """Whether the signed-in key may do what ``role`` may (on ``endpoint``, where it names one)."""
    session = session_of(request)
    if session is None:
        return False
    principal = session.principal
    if RANK.get(principal.role, -1) < RANK[role]:
        return False
    return endpoint is None or principal.sees(endpoint)


def require(request: Request, role: str, endpoint: str | None = None) -> Principal:
    """The signed-in key, or a 403 when it may not do what ``role`` may (on ``endpoint``)."""
    session = session_of(request)
    if session is None or not can(request, role, endpoint):
        who = f"{session.principal.key_id} ({session.principal.role})" if session else "nobody"
        raise HTTPException(403, f"Access key {who} may not do this: it needs the {role} role"
                                 + (f" on endpoint {endpoint}" if endpoint else "") + ".")
    return session.principal


async def form_of(request: Request) -> dict[str, str]:
    """A dashboard form's fields (urlencoded; the first value of each): parsed here rather than by
    Starlette's ``request.form()``, which needs python-multipart, not a dependency of moorage."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def sees(request: Request, endpoint: str) -> bool:
    session = session_of(request)
    return session is not None and session.principal.sees(endpoint)


# -- the guard -------------------------------------------------------------------------------------------
async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class SessionGuard:
    """ASGI middleware over the dashboard: sessions for every page, CSRF for every unsafe method."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], sessions: Sessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        path, method = scope["path"], scope["method"]
        if path.startswith(STATIC_PREFIX) or path == LOGIN_PATH:  # the login checks its own form token
            if method not in SAFE_METHODS:
                body = await _read_body(receive)
                if body is None:
                    await _plain(send_secured, 413, "A dashboard form is at most 64 KiB.")
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_secured)
            return
        session = self.sessions.read(cookies_of(scope).get(COOKIE))
        if session is None:
            if method in SAFE_METHODS:
                query = scope.get("query_string", b"").decode("latin-1")
                wanted = path + (f"?{query}" if query else "")
                await _plain(send_secured, 303, "Sign in first.",
                             [(b"location", f"{LOGIN_PATH}?next={quote(wanted, safe='')}".encode())])
            else:
                await _plain(send_secured, 403, "No session: sign in at /ui/login first.")
            return
        scope[SCOPE_KEY] = session
        if method not in SAFE_METHODS:
            body = await _read_body(receive)
            if body is None:
                await _plain(send_secured, 413, "A dashboard form is at most 64 KiB.")
                return
            if not hmac.compare_digest(_csrf_token_of(scope, body).encode(), session.csrf_token.encode()):
                await _plain(send_secured, 403, "Missing or wrong CSRF token: reload the page and try again.")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_secured)


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _csrf_token_of(scope: Scope, body: bytes) -> str:
    for name, value in scope.get("headers", ()):
        if name == CSRF_HEADER:
            return value.decode("latin-1")
    content_type = next((v for n, v in scope.get("headers", ()) if n == b"content-type"), b"")
    if content_type.split(b";")[0].strip() == b"application/x-www-form-urlencoded":
        values = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD)
        if values:
            return values[0]
    return ""


def _replay(body: bytes, then: Receive) -> Receive:
    """The body the guard read, once, then the connection's own messages (its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive
