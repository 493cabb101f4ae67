"""``moorage serve``: start the platform on one port, configured by one settings tree.

``serve`` is given the tree (``moorage.settings.Settings``, built once from flags and environment)
and hands each part its section; nothing below it reads server variables from the environment.
The admin key is found by :mod:`moorage.credentials`, the way the CLI and the SDK find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from moorage.credentials import admin_credentials
from moorage.runtimes.allocator import reuse_large_buffers
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
    tls = _tls_files(settings)
    if settings.server.router_workers and tls is not None:
        print("error: MOORAGE_ROUTER_WORKERS needs plain HTTP (a worker hands connections to the router, which "
              "cannot be done inside TLS); terminate TLS in front of the server", file=sys.stderr, flush=True)
        raise SystemExit(1)
    creds, generated = admin_credentials(settings)
    app = MoorageApp(settings, [creds])
    _private_database(settings)
    found = {"url": settings.url, "pid": os.getpid(), "region": settings.region}
    if settings.server.tls_self_signed and tls is not None:
        found["ca_bundle"] = str(tls[0])  # what a client of this home trusts (moorage's own CA)
    (settings.home / SERVER_FILE).write_bytes(orjson.dumps(found))
    print(f"moorage serving on {settings.url} (home {settings.home})", flush=True)
    if generated:
        print(f"generated an admin key; it is in {settings.credentials_path} "
              f"(AWS_SHARED_CREDENTIALS_FILE={settings.credentials_path})", flush=True)
    else:
        print(f"admin key id {creds.access_key_id}; credentials file {settings.credentials_path}", flush=True)
    if settings.server.tls_self_signed and tls is not None:
        print(f"TLS: development certificate {tls[0]} (for 127.0.0.1 and localhost; clients pass it as "
              f"verify={tls[0]}, or AWS_CA_BUNDLE={tls[0]})", flush=True)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        if tls is None:
            print(f"warning: serving on {settings.host} over plain HTTP: anyone who can reach this port sees "
                  f"requests and answers unencrypted; keep it on a trusted network or give --tls-cert/--tls-key",
                  file=sys.stderr, flush=True)
        elif settings.server.tls_self_signed:
            print(f"warning: serving on {settings.host} with a development certificate that names only 127.0.0.1 "
                  f"and localhost; give a certificate for this host with --tls-cert/--tls-key",
                  file=sys.stderr, flush=True)
        if generated:
            print(f"warning: serving on {settings.host} with the admin key generated just now as the only key; "
                  f"whoever holds {settings.credentials_path} can do anything", file=sys.stderr, flush=True)
    server = settings.server
    reuse_large_buffers()
    fd_soft, fd_hard = raise_fd_limit()
    max_connections = effective_max_connections(server.max_connections, fd_soft)
    logging.getLogger("moorage.server").info(
        "open-files limit %d (hard %d); at most %d connections, %d per client address; headers at most %d bytes "
        "in %d fields, within %gs", fd_soft, fd_hard, max_connections, server.max_connections_per_client,
        server.max_header_bytes, server.max_headers, server.header_timeout)
    protocol = edge_protocol(max_header_bytes=server.max_header_bytes, max_headers=server.max_headers,
                             header_timeout=server.header_timeout, body_timeout=server.body_timeout,
                             max_connections=max_connections,
                             max_connections_per_client=server.max_connections_per_client,
                             invocations=app.runtime_door)
    config = uvicorn.Config(ContentLengthLimits(app), host=settings.host, port=settings.port, loop="uvloop",
                            http=protocol, lifespan="on", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=server.shutdown_grace,
                            timeout_keep_alive=server.keep_alive_timeout,
                            # No proxy in front by default; its middleware would run on every request.
                            proxy_headers=False, server_header=False,
                            ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None)
    workers = None
    if server.router_workers:
        workers = _worker_plan(settings, app, listener, max_connections)
    # With workers, they accept the port's connections beside this process, which also serves what they
    # hand over (measured: a router that accepts too carries 20-40 % more than one that only answers them).
    _uvicorn_server_class(workers)(config).run(sockets=[listener])
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
    # Close-on-exec (Python's default; uvicorn serves it in this process): an instance started while the
    # server runs must not hold the port, or a stopping server would go on accepting into a dead backlog.
    listener.set_inheritable(False)
    return listener


TLS_DIR = "tls"
DEV_CERT, DEV_KEY = "dev-cert.pem", "dev-key.pem"


def _tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """(certificate, key) to serve HTTPS with, checked now (exit 1 with the reason), or None for HTTP."""
    import ssl

    server = settings.server
    if server.tls_self_signed:
        return development_certificate(settings.home)
    if server.tls_cert is None or server.tls_key is None:
        return None
    cert, key = Path(server.tls_cert).resolve(), Path(server.tls_key).resolve()
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        print(f"error: cannot serve TLS with certificate {cert} and key {key}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return cert, key


def development_certificate(home: Path, days: int = 365) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, ::1 and localhost under HOME/tls (the key 0600), made
    once and made again when it has less than a day left. It is its own CA (basic constraints), so a
    client trusts it by naming the file as its CA bundle (boto3's ``verify=``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = home / TLS_DIR
    cert_path, key_path = folder / DEV_CERT, folder / DEV_KEY
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.exists() and key_path.exists():
        with contextlib.suppress(ValueError, OSError):
            existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if existing.not_valid_after_utc - now > datetime.timedelta(days=1):
                return cert_path, key_path
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moorage development certificate")])
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _private_database(settings: Settings) -> None:
    """A SQLite database made by an older version, or by hand, becomes the owner's alone too."""
    url = settings.database_url or ""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.chmod(path + suffix, 0o600)


def _worker_plan(settings: Settings, app: Any, listener: socket.socket, max_connections: int) -> Any:
    """The workers and their router link, started once the app is up."""
    from moorage.api.router_link import RouterLink
    from moorage.api.router_worker import WorkerConfig
    from moorage.api.router_workers import RouterWorkers

    server = settings.server
    folder = app.routes.socket_dir
    link = RouterLink(str(folder / "router.link"), app.invocation_answers, dict(app.verifier.admin_secrets),
                      app.access_keys)
    config = WorkerConfig(
        listener_fd=listener.fileno(), link_path=link.path, handoff_path=str(folder / "router.handoff"),
        account_id=settings.account_id, region=settings.region,
        invocation_timeout=settings.instances.invocation_timeout, max_header_bytes=server.max_header_bytes,
        max_headers=server.max_headers, header_timeout=server.header_timeout, body_timeout=server.body_timeout,
        keep_alive_timeout=server.keep_alive_timeout, max_connections=max_connections,
        max_connections_per_client=server.max_connections_per_client,
        max_pending_body_bytes=server.max_pending_body_bytes, shutdown_grace=server.shutdown_grace,
        log_level=server.log_level)
    return RouterWorkers(server.router_workers, listener, config, link)


def _uvicorn_server_class(workers: Any = None) -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT is a normal stop (exit 0), not a re-raised signal.

        uvicorn re-raises the signal after its graceful shutdown, so the process dies "killed by
        SIGTERM"; for a service manager or a script a requested, completed stop is a success.
        """

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if workers is None or self.should_exit:
                return
            config, state, app_state = self.config, self.server_state, self.lifespan.state
            await workers.start(lambda: config.http_protocol_class(config=config, server_state=state,
                                                                   app_state=app_state))
            logging.getLogger("moorage.server").info(
                "%d router worker(s) accept the port's connections beside this process", workers.count)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """uvicorn's graceful shutdown, saying what it does: new connections refused (the listener
            closed), idle ones closed, requests in flight given the grace period, then counted as
            drained or cut. Written out rather than wrapped, since uvicorn's only reports a timeout."""
            log = logging.getLogger("moorage.server")
            state = self.server_state
            grace = self.config.timeout_graceful_shutdown or 0.0
            in_flight = {task for task in state.tasks if not task.done()}
            # With workers, their invocations in flight are the router link's until answered.
            linked = workers.invocations() if workers is not None else set()
            log.info("stopping: new connections refused; %d request(s) in flight have up to %gs to finish",
                     len(in_flight) + len(linked), grace)
            stopping_workers = None
            if workers is not None:
                # Their requests are answered over the link meanwhile; the grace period runs for both at once.
                stopping_workers = asyncio.ensure_future(workers.stop(grace))
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            for connection in list(state.connections):
                connection.shutdown()  # closes idle ones; one answering now closes after its reply
            await asyncio.sleep(0.1)
            cut: set[asyncio.Task[Any]] = set()
            try:
                async with asyncio.timeout(grace):
                    await self._wait_tasks_to_complete()
            except TimeoutError:
                cut = set(state.tasks)
                for task in cut:
                    task.cancel(msg=f"cut at the end of the {grace:g}s shutdown grace period")
            if stopping_workers is not None:
                await stopping_workers
            cut_linked = {task for task in linked if task.cancelled()}
            drained = len(in_flight - cut) + len(linked - cut_linked)
            if cut or cut_linked:
                log.warning("%d request(s) drained, %d cut after the %gs grace period (MOORAGE_SHUTDOWN_GRACE_SECONDS)",
                            drained, len(cut) + len(cut_linked), grace)
            else:
                log.info("%d request(s) drained, 0 cut", drained)
            if not self.force_exit:
                await self.lifespan.shutdown()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server

