"""Rendering the dashboard's Jinja2 templates: one environment, autoescaped, with the session in every page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse

from moorage.ui.session import CSRF_FIELD, PREFIX, can, session_of

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True)
environment.globals.update(prefix=PREFIX, csrf_name=CSRF_FIELD, nav=[])


def set_nav(nav: list[tuple[str, str]]) -> None:
    """The pages' (label, path) links, in the order the app loaded them."""
    environment.globals["nav"] = list(nav)


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page: ``template`` with ``values``, the session (``session``, ``csrf_token``) and ``can(role, endpoint)``."""
    session = session_of(request)
    html = environment.get_template(template).render(
        request=request, session=session, csrf_token=session.csrf_token if session else "",
        can=lambda role, endpoint=None: can(request, role, endpoint), path=request.url.path, **values)
    return HTMLResponse(html, status, headers={"cache-control": "no-store"})
