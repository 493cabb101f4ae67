"""Shared fixtures. The end-to-end ones start a real `moorage serve` (lazily: only e2e tests ask)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import (
    Deployer,
    MoorageServer,
    new_name,
    train_classifier,
    train_regressor,
    train_text_pipeline,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests against a real `moorage serve` process over HTTP (boto3)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """When an e2e test fails, attach the tail of each server log it used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    servers: list[MoorageServer] = []
    if isinstance(funcargs.get("server"), MoorageServer):
        servers.append(funcargs["server"])
    factory = funcargs.get("fresh_server")
    servers.extend(getattr(factory, "servers", []))
    for srv in servers:
        report.sections.append((f"moorage server log ({srv.home})", srv.log_tail(80)))


@pytest.fixture(autouse=True)
def _object_store_environment() -> Iterator[None]:
    """A MoorageApp built inside a test exports where its s3:// store is (store.locations); put back what
    the next test would otherwise inherit."""
    keys = ("MOORAGE_OBJECT_STORE", "MOORAGE_OBJECT_STORE_ROOT")
    saved = {key: os.environ.get(key) for key in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --------------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """One server for the whole session (fast); tests name their resources uniquely."""
    srv = MoorageServer(tmp_path_factory.mktemp("moorage-home"))
    srv.start(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


class _ServerFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[MoorageServer] = []

    def __call__(self, home: Path | None = None, port: int | None = None,
                 env: dict[str, str] | None = None) -> MoorageServer:
        home = home or self.root / f"home{len(self.servers)}"
        srv = MoorageServer(home, port=port, env=env)
        self.servers.append(srv)
        return srv.start(timeout=90)

    def stop_all(self) -> None:
        for srv in self.servers:
            srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Callable[..., MoorageServer]]:
    """Factory: fresh_server(env={...}) starts a server with its own home; all are stopped at teardown."""
    factory = _ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


# --------------------------------------------------------------------------------------------------
# clients, names, resources
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sm(server: MoorageServer) -> Any:
    return server.sm()


@pytest.fixture(scope="session")
def rt(server: MoorageServer) -> Any:
    return server.rt()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """unique_name("prefix") -> a SageMaker-valid name unique on the (shared) server."""
    return new_name


@pytest.fixture
def deployer(server: MoorageServer, sm: Any) -> Iterator[Deployer]:
    """Resources created through it are deleted after the test."""
    dep = Deployer(server, sm)
    try:
        yield dep
    finally:
        dep.cleanup()


@pytest.fixture(scope="module")
def module_deployer(server: MoorageServer, sm: Any) -> Iterator[Deployer]:
    """Resources shared by a module's tests, deleted after the module."""
    dep = Deployer(server, sm)
    try:
        yield dep
    finally:
        dep.cleanup()


# --------------------------------------------------------------------------------------------------
# models (trained once, fixed seeds)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def classifier() -> tuple[Any, Any]:
    """(LogisticRegression on 4 features, X)."""
    return train_classifier()


@pytest.fixture(scope="session")
def regressor() -> tuple[Any, Any]:
    """(Ridge on 4 features, X)."""
    return train_regressor()


@pytest.fixture(scope="session")
def text_model() -> Any:
    """TF-IDF + LogisticRegression pipeline over short review texts."""
    return train_text_pipeline()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for model archives shared by the session."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture
def isolate_imports() -> Iterator[None]:
    """Restore sys.path and sys.modules after a test that imported a user's inference.py."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]
