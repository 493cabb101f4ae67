"""The dashboard's browser tests: a headless chromium driven by Playwright, signing in, screenshots.

``browser`` is a module-scoped fixture (import it into a test module) that skips, saying why, where
Playwright or Debian's chromium is missing (``make test`` installs both). Screenshots go to
``test-artifacts/ui/<name>.png`` at the repository root.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from e2e_support import MoorageServer

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium for one test module. Not for the session: while Playwright's sync API is open it
    runs its event loop on this thread, so an ``asyncio.run`` in a later test on the same xdist worker
    would find a loop running (and a second module's Playwright would refuse to start)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (the dev extra has it: pip install -e '.[dev]')")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (Debian's `chromium` package; `make test` installs it)")
    with sync_playwright() as playwright:
        args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def ui_page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page, laptop-sized."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def login(page: Any, server: MoorageServer, key_id: str, secret: str, *, expect_ok: bool = True) -> None:
    """Sign in through the login form; with ``expect_ok``, wait until the browser has left the form."""
    page.goto(f"{server.url}/ui/login")
    page.fill("input[name=access_key_id]", key_id)
    page.fill("input[name=secret_access_key]", secret)
    with page.expect_navigation():
        page.click("form.stack button[type=submit]")
    if expect_ok:
        assert "/ui/login" not in page.url, page.content()[:2000]


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def http_session(server: MoorageServer, key_id: str, secret: str) -> tuple[requests.Session, str]:
    """A signed-in HTTP session without a browser, and the CSRF token of its session (read from a page)."""
    session = requests.Session()
    form = session.get(f"{server.url}/ui/login", timeout=10)
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token, form.text[:2000]
    reply = session.post(f"{server.url}/ui/login", data={"login_token": token.group(1), "access_key_id": key_id,
                                                        "secret_access_key": secret, "next": "/ui/endpoints"},
                         allow_redirects=False, timeout=10)
    assert reply.status_code == 303, reply.text[:2000]
    page = session.get(f"{server.url}/ui/endpoints", timeout=10)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, page.text[:2000]
    return session, csrf.group(1)
