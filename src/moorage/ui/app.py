"""The dashboard's ASGI app, mounted by ``api/app.py`` at ``/ui``: the pages found, static files, the guard.

A page is a module ``ui/pages/<name>.py`` with ``NAV`` (its menu label and path, or None) and
``routes(ui) -> list[BaseRoute]`` (paths relative to ``/ui``). ``PAGES`` names them in menu order; a
module not there yet is skipped, so a page plugs in by dropping its file. Every request passes
``SessionGuard`` (``ui/session.py``) first.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from moorage.ui.context import UiContext
from moorage.ui.login import login_routes
from moorage.ui.render import STATIC, render, set_nav
from moorage.ui.session import PREFIX, SessionGuard, Sessions, signing_key

log = logging.getLogger("moorage.ui")

PAGES = ("endpoints", "rollouts", "experiments", "monitoring", "jobs")


def load_pages(names: tuple[str, ...] = PAGES) -> list[Any]:
    """The page modules present, in order (a name without a module yet is skipped)."""
    found = []
    for name in names:
        module_name = f"moorage.ui.pages.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # the page exists but something it imports does not: say so
                raise
            continue
        found.append(module)
    return found


def build_ui(ui: UiContext) -> Callable[..., Any]:
    """The dashboard as one ASGI app whose routes live under ``/ui``."""
    sessions = Sessions(ui, signing_key(ui.ctx.settings.home))
    pages = load_pages()
    set_nav([m.NAV for m in pages if getattr(m, "NAV", None)])
    home = pages[0].NAV[1] if pages and getattr(pages[0], "NAV", None) else f"{PREFIX}/login"

    async def landing(request: Request) -> Response:
        return RedirectResponse(home, status_code=303)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return render(request, "error.html", exc.status_code, code=exc.status_code, message=exc.detail)

    routes: list[BaseRoute] = [Route("/", landing), *login_routes(sessions),
                               Mount("/static", StaticFiles(directory=STATIC), name="static")]
    for module in pages:
        routes.extend(module.routes(ui))
    app = Starlette(routes=[Route(PREFIX, landing), Mount(PREFIX, routes=routes)],
                    exception_handlers={HTTPException: refused})
    return SessionGuard(app, sessions)
