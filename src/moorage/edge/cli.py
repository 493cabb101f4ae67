"""``moorage-edge``: the edge agent's command line (argparse: the agent installs no click).

    moorage-edge serve PACKAGE --port PORT [--host 127.0.0.1] [--spool DIR] [--server URL]
                       [--fleet F --device D] [--trust-key PEM ...] [--spool-max-bytes N] ...

Serves PACKAGE (verified against the ``--trust-key`` public keys, self-tested) on SageMaker's
container contract. With ``--spool`` (or ``--server``, which implies ``~/.moorage/edge``) every
inference is captured there; with ``--server`` the spool is uploaded, heartbeats sent and the fleet's
deployments pulled, with the device key from ``MOORAGE_ACCESS_KEY_ID``/``MOORAGE_SECRET_ACCESS_KEY``
or ``--credentials FILE`` (default ``~/.moorage/edge-credentials``). SIGTERM or Ctrl-C stops it cleanly;
a ``kill -9`` loses no record already answered.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(text: str) -> int:
    """A byte count: ``1048576``, ``512K``, ``256M``, ``1G`` (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 512K, 256M, 1G)")
    value = int(float(match[1]) * _UNITS[match[2].lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least one byte")
    return value


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="moorage-edge", description="moorage's edge agent.")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a package on the container contract",
                                description="Serve a signed package: GET /ping, POST /invocations.")
    serve.add_argument("package", type=Path, help="the package (.tar.gz) `moorage edge compile` wrote")
    serve.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--trust-key", action="append", default=[], type=Path, metavar="PEM",
                       help="a trusted Ed25519 public key (PEM); repeat for several (`moorage edge key` prints "
                            "the server's)")
    serve.add_argument("--spool", type=Path, metavar="DIR",
                       help="capture every inference here, and keep pulled packages (default with --server: "
                            "~/.moorage/edge)")
    serve.add_argument("--spool-max-bytes", type=size, default="256M", metavar="N",
                       help="cap on the spool; the oldest segments are dropped past it (default 256M)")
    serve.add_argument("--segment-bytes", type=size, default="4M", metavar="N",
                       help="seal a spool segment at this size (default 4M, at most 16M)")
    serve.add_argument("--segment-age", type=positive, default=60.0, metavar="S",
                       help="seal a spool segment this many seconds after its first record (default 60)")
    serve.add_argument("--fsync-interval", type=positive, default=1.0, metavar="S",
                       help="fsync the open segment at most this often; 0: after every record (default 1)")
    serve.add_argument("--server", metavar="URL", help="the moorage server to sync with")
    serve.add_argument("--fleet", help="the device fleet this device is registered in")
    serve.add_argument("--device", help="this device's name")
    serve.add_argument("--credentials", type=Path, metavar="FILE",
                       help="the device key (AWS shared-credentials format; default ~/.moorage/edge-credentials)")
    serve.add_argument("--region", help="the server's region (default: the credentials file's, else us-east-1)")
    serve.add_argument("--heartbeat-interval", type=positive, default=30.0, metavar="S",
                       help="seconds between heartbeats and deployment checks (default 30)")
    serve.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    serve.add_argument("--outputs", default="", help="comma-separated model outputs to answer (default the first)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    # Test hook: pause an upload mid-body (see sync.DeviceClient); not for users.
    serve.add_argument("--upload-pause-file", help=argparse.SUPPRESS)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from moorage.edge.agent import Agent, AgentError
    from moorage.edge.credentials import CredentialsError
    from moorage.edge.server import EdgeServer

    spool = args.spool
    if spool is None and args.server:
        spool = Path.home() / ".moorage" / "edge"
    try:
        agent = Agent(args.package, spool=spool, server=args.server, fleet=args.fleet, device=args.device,
                      trust_keys=args.trust_key, credentials=args.credentials, region=args.region,
                      intra_op_threads=args.threads,
                      outputs=[name.strip() for name in args.outputs.split(",") if name.strip()],
                      heartbeat_interval_s=args.heartbeat_interval, spool_max_bytes=args.spool_max_bytes,
                      segment_bytes=args.segment_bytes, segment_age_s=args.segment_age,
                      fsync_interval_s=args.fsync_interval, upload_pause_file=args.upload_pause_file,
                      start=False)
    except (AgentError, CredentialsError, ValueError, OSError) as exc:
        print(f"moorage-edge: {exc}", file=sys.stderr)
        return 2
    try:
        server = EdgeServer(agent, args.host, args.port)
    except OSError as exc:
        agent.close()
        print(f"moorage-edge: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.start()
    print(f"moorage-edge: serving {agent.model.handle} on http://{args.host}:{server.port}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
