"""``moorage serve``: start the platform on one port, configured by one settings tree.

``serve`` is given the tree (``moorage.settings.Settings``, built once from flags and environment)
and hands each part its section; nothing below it reads server variables from the environment.
The admin key is found by :mod:`moorage.credentials`, the way the CLI and the SDK find it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator

import orjson

from moorage.credentials import admin_credentials
from moorage.settings import SERVER_FILE, Settings


def serve(settings: Settings) -> None:
    import uvicorn

    from moorage.api.app import MoorageApp
    from moorage.api.http_limits import ContentLengthLimits, edge_protocol, effective_max_connections, raise_fd_limit

    logging.basicConfig(level=settings.server.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The home holds every container Environment (the database) and fragments of payloads (logs,
    # captures): only its owner reads it. New files are the owner's alone; old ones are made so.
    os.umask(0o077)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.home, 0o700)
    _lock_home(settings)  # held (the descriptor stays open) until the process exits
    # Bound before anything says "serving": a busy port is the first and only thing reported.
    listener = _bind(settings)
    creds, generated = admin_credentials(settings)
    app = MoorageApp(settings, [creds])
    _private_database(settings)
    (settings.home / SERVER_FILE).write_bytes(
        orjson.dumps({"url": settings.url, "pid": os.getpid(), "region": settings.region}))
    print(f"moorage serving on {settings.url} (home {settings.home})", flush=True)
    if generated:
        print(f"generated an admin key; it is in {settings.credentials_path} "
              f"(AWS_SHARED_CREDENTIALS_FILE={settings.credentials_path})", flush=True)
    else:
        print(f"admin key id {creds.access_key_id}; credentials file {settings.credentials_path}", flush=True)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {settings.host} over plain HTTP: anyone who can reach this port sees requests "
              f"and answers unencrypted; keep it on a trusted network", file=sys.stderr, flush=True)
    server = settings.server
    fd_soft, fd_hard = raise_fd_limit()
    max_connections = effective_max_connections(server.max_connections, fd_soft)
    logging.getLogger("moorage.server").info(
        "open-files limit %d (hard %d); at most %d connections, %d per client address; headers at most %d bytes "
        "in %d fields, within %gs", fd_soft, fd_hard, max_connections, server.max_connections_per_client,
        server.max_header_bytes, server.max_headers, server.header_timeout)
    protocol = edge_protocol(max_header_bytes=server.max_header_bytes, max_headers=server.max_headers,
                             header_timeout=server.header_timeout, max_connections=max_connections,
                             max_connections_per_client=server.max_connections_per_client)
    config = uvicorn.Config(ContentLengthLimits(app), host=settings.host, port=settings.port, loop="uvloop",
                            http=protocol, lifespan="on", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=15, timeout_keep_alive=server.keep_alive_timeout,
                            # No proxy in front by default; its middleware would run on every request.
                            proxy_headers=False, server_header=False)
    _uvicorn_server_class()(config).run(sockets=[listener])
    logging.getLogger("moorage.server").info("stopped")


LOCK_FILE = "server.lock"


def _lock_home(settings: Settings) -> int:
    """One server per home: a second would bring back the same endpoints and fight over the same files.
    An advisory lock on a file of the home; the OS drops it when the process ends, even by kill -9."""
    import fcntl

    path = settings.home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        print(f"error: another moorage server (pid {holder}) is serving home {settings.home}; stop it first or "
              f"give this one another home (--home or MOORAGE_HOME).", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _bind(settings: Settings) -> socket.socket:
    """The listening socket on the server's host and port; a clear error (exit 1) when it cannot be had."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
    except OSError as exc:
        listener.close()
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; another process "
              f"may be using the port (--port to choose another)", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    listener.set_inheritable(True)
    return listener


def _private_database(settings: Settings) -> None:
    """A SQLite database made by an older version, or by hand, becomes the owner's alone too."""
    url = settings.database_url or ""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(path + suffix, 0o600)


def _uvicorn_server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT is a normal stop (exit 0), not a re-raised signal.

        uvicorn re-raises the signal after its graceful shutdown, so the process dies "killed by
        SIGTERM"; for a service manager or a script a requested, completed stop is a success.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server

