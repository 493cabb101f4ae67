"""Signing in and out of the dashboard: an access key id and secret for a session cookie (``ui/session.py``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.ui.render import render
from moorage.ui.session import COOKIE, LOGIN_PATH, PREFIX, Sessions, cookie_header, form_of, is_tls, session_of

LOGIN_COOKIE = "moorage_ui_login"


def _next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (no open redirect)."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


def login_routes(sessions: Sessions) -> list[BaseRoute]:
    async def login_form(request: Request) -> Response:
        return _form(request, sessions, None, 200)

    async def login(request: Request) -> Response:
        form = await form_of(request)
        if not sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), str(form.get("login_token") or "")):
            return _form(request, sessions, "The sign-in form expired: try again.", 403)
        key_id, secret = str(form.get("access_key_id") or "").strip(), str(form.get("secret_access_key") or "")
        principal = sessions.ui.authenticate(key_id, secret) if key_id and secret else None
        if principal is None:
            return _form(request, sessions, "Wrong access key id or secret.", 401)
        _, cookie = sessions.issue(principal)
        response = RedirectResponse(_next(str(form.get("next") or "")), status_code=303)
        response.headers.append("set-cookie", cookie_header(COOKIE, cookie, secure=is_tls(request.scope),
                                                            max_age=sessions.max_age))
        response.headers.append("set-cookie", cookie_header(LOGIN_COOKIE, "", secure=is_tls(request.scope),
                                                            max_age=0))
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request)
        if session is not None:
            sessions.end(session)
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        response.headers.append("set-cookie", cookie_header(COOKIE, "", secure=is_tls(request.scope), max_age=0))
        return response

    return [Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


def _form(request: Request, sessions: Sessions, error: str | None, status: int) -> Response:
    token, cookie = sessions.login_token()
    target = request.query_params.get("next") or ""
    response = render(request, "login.html", status, error=error, login_token=token, next=_next(target))
    response.headers.append("set-cookie", cookie_header(LOGIN_COOKIE, cookie, secure=is_tls(request.scope),
                                                        max_age=3600))
    return response
