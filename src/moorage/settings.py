"""The settings tree of ``moorage serve``: every server variable, read once at start-up by one parser.

The server's variables used to be read where they were used, by several small parsers that
disagreed (one failed on a bad value, another fell back silently; ``yes`` was true in one place
only). Here each setting is declared once, on the frozen dataclass of its section, with its
variable, its type, its bounds and its meaning. ``Settings.load`` reads them all by the same rules,
and the server hands each part its section. docs/settings.md is the table of them (a unit test keeps
it equal to the declarations), and ``moorage serve --print-settings`` shows the values in force and
where each came from.

The rules, the same for every setting:

* a ``moorage serve`` flag beats the variable, which beats the default; a blank variable is unset;
* booleans: 1/0, true/false, yes/no, on/off, in any case;
* durations: seconds (``90``, ``0.5``) or a number with s/m/h/d (``90s``, ``15m``, ``2h``, ``15d``);
* sizes: bytes, or a number with K/M/G, powers of 1024 (``64M``, ``64MiB`` and ``64MB`` are equal);
* whole numbers and numbers within the bounds the setting states; choices from its list;
* anything else is a SettingsError that names the variable and its value (every bad one at once),
  and the server does not start.

Not here: a model's container ``Environment`` (MOORAGE_SERVE_COMMAND, MOORAGE_BATCHING, ...). That is
SageMaker's contract between a model and its container, read per model where the instance starts;
docs/settings.md lists those variables in a section of their own. Three instance settings
(MOORAGE_LOG_MAX_BYTES, MOORAGE_LOG_BACKUPS, MOORAGE_REQUIREMENTS_TIMEOUT) are both: the server's
value here is the default a model's Environment may override.

The parser is written here (about a hundred lines) rather than taken from pydantic-settings:
moorage does not depend on pydantic, and durations, sizes, reporting every bad value at once and
recording each value's source would all be custom validators there anyway.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "000000000000"
CREDENTIALS_FILE = "credentials"
SERVER_FILE = "server.json"
DEFAULT_HOME = "~/.moorage"
SECRET_SHOWN_AS = "********"

# Where a value came from.
DEFAULT, ENVIRONMENT, FLAG = "default", "environment", "flag"


class SettingsError(ValueError):
    """Settings whose values cannot be used; the message names each variable (or flag) and value."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# -- kinds: how text becomes a value --------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str  # as docs/settings.md writes the type
    parse: Callable[[str], Any]  # raises ValueError("is not ...") for text it cannot read
    show: Callable[[Any], str] = str


_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmg])(?:i?b)?|b)?")
_POWERS = {None: 0, "k": 1, "m": 2, "g": 3}


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ValueError("is not a boolean (1/0, true/false, yes/no, on/off)")


def _finite(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"is not {what}") from None
    if not math.isfinite(value):
        raise ValueError(f"is not {what}")
    return value


def _duration(text: str) -> float:
    lowered = text.lower()
    scale = _SECONDS.get(lowered[-1:], 1)
    number = lowered[:-1] if lowered[-1:] in _SECONDS else lowered
    return _finite(number, "a duration (seconds, or a number with s/m/h/d: 90s, 15m, 2h, 15d)") * scale


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.lower())
    if match is None:
        raise ValueError("is not a size (bytes, or a number with K/M/G: 512K, 64M, 1G)")
    value = float(match[1]) * 1024 ** _POWERS[match[2]]
    if value != int(value):
        raise ValueError("is not a whole number of bytes")
    return int(value)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _show_duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g}d"
    return f"{seconds:g}s"


def _show_size(size: int) -> str:
    for suffix, power in (("G", 3), ("M", 2), ("K", 1)):
        if size >= 1024**power and size % 1024**power == 0:
            return f"{size // 1024**power}{suffix}"
    return str(size)


def _database_url(text: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(text)
    except ArgumentError:
        raise ValueError("is not a database URL (dialect+driver://user:password@host/database)") from None
    return text


def _choice(*choices: str) -> Kind:
    by_lowered = {c.lower(): c for c in choices}

    def parse(text: str) -> str:
        try:
            return by_lowered[text.lower()]
        except KeyError:
            raise ValueError(f"is not one of {', '.join(choices)}") from None

    return Kind(" / ".join(choices), parse)


BOOLEAN = Kind("boolean", _boolean, lambda v: "on" if v else "off")
DURATION = Kind("duration", _duration, _show_duration)
SIZE = Kind("size", _size, _show_size)
WHOLE = Kind("whole number", _whole)
TEXT = Kind("text", str)
PATH = Kind("path", lambda text: Path(text).expanduser())
DATABASE_URL = Kind("database URL", _database_url)


# -- declaring settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One setting: where it is read from, what it holds, what it means."""

    variable: str | None
    kind: Kind
    meaning: str
    flag: str | None = None  # a `moorage serve` option that sets it
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # more than 0
    secret: bool = False  # never shown, nor echoed in an error
    default_text: str | None = None  # the default as the docs write it, where it is derived

    def read(self, raw: str, name: str) -> Any:
        shown = "(hidden)" if self.secret else repr(raw)
        try:
            value = self.kind.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{name}={shown} {exc}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.positive and value <= 0:
                raise ValueError(f"{name}={shown} must be more than 0")
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{name}={shown} must be at least {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{name}={shown} must be at most {self.maximum:g}")
        return value

    def show(self, value: Any) -> str:
        if value is None:
            return "(unset)"
        if self.secret:
            return _mask_url(value) if self.kind is DATABASE_URL else SECRET_SHOWN_AS
        return self.kind.show(value)

    def bounds(self) -> str:
        parts = ["> 0"] if self.positive else []
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        return ", ".join(parts)


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def setting(default: Any, variable: str | None, kind: Kind, meaning: str, **options: Any) -> Any:
    """A field of a section: its default, and the Spec the parser and the docs read."""
    return field(default=default, metadata={"setting": Spec(variable, kind, meaning, **options)})


S = TypeVar("S", bound="Section")


class Section:
    """A group of settings (a frozen dataclass whose fields are declared with ``setting``)."""

    section: ClassVar[str]

    @classmethod
    def specs(cls) -> Iterator[tuple[str, Spec]]:
        for f in fields(cls):  # type: ignore[arg-type]
            yield f.name, f.metadata["setting"]

    @classmethod
    def from_env(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
        """This section alone, read from ``environ`` (default: the process's) by the tree's rules."""
        values, _, problems = _read(cls, os.environ if environ is None else environ, {})
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    def to_plain(self) -> dict[str, Any]:
        """JSON-able values (paths as text), for a section that travels to another process or node."""
        return {name: str(value) if isinstance(value, Path) else value
                for name, value in ((name, getattr(self, name)) for name, _ in self.specs())}

    @classmethod
    def from_plain(cls: type[S], data: Mapping[str, Any]) -> S:
        """The section ``to_plain`` wrote; names it lacks keep their defaults."""
        return cls(**{name: Path(data[name]) if spec.kind is PATH and data[name] is not None else data[name]
                      for name, spec in cls.specs() if name in data})


def _read(section: type[Section], environ: Mapping[str, str],
          flags: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Values (only those set), the source of every setting, and the problems found."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for name, spec in section.specs():
        path = f"{section.section}.{name}"
        if spec.flag and flags.get(path) is not None:
            raw, source, said = str(flags[path]), f"{FLAG} {spec.flag}", spec.flag
        elif spec.variable and (environ.get(spec.variable) or "").strip():
            raw, source, said = environ[spec.variable].strip(), ENVIRONMENT, spec.variable
        else:
            sources[path] = DEFAULT
            continue
        sources[path] = source
        try:
            values[name] = spec.read(raw, said)
        except ValueError as exc:
            problems.append(str(exc))
    return values, sources, problems


def read_setting(section: type[Section], name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting from the environment by the tree's rules (a client finding the home, say)."""
    spec = dict(section.specs())[name]
    raw = (os.environ if environ is None else environ).get(spec.variable or "", "").strip()
    if not raw:
        return next(f.default for f in fields(section) if f.name == name)  # type: ignore[arg-type]
    try:
        return spec.read(raw, spec.variable or name)
    except ValueError as exc:
        raise SettingsError([str(exc)]) from None


# -- the sections ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSettings(Section):
    section: ClassVar[str] = "server"

    # RUF009: setting() returns a dataclasses.field; its default (an immutable Path) is never mutated.
    home: Path = setting(Path(DEFAULT_HOME), "MOORAGE_HOME", PATH,  # noqa: RUF009
                         "Where the server keeps its state: database, models, logs, the credentials file.",
                         flag="--home")
    host: str = setting(DEFAULT_HOST, None, TEXT, "Address to listen on (loopback by default).", flag="--host")
    port: int = setting(DEFAULT_PORT, None, WHOLE, "Port to listen on.", flag="--port", minimum=0, maximum=65535)
    database_url: str | None = setting(None, "MOORAGE_DATABASE_URL", DATABASE_URL,
                                       "SQLAlchemy URL of the metadata database.", flag="--database-url",
                                       secret=True, default_text="sqlite:///HOME/moorage.db")
    access_key_id: str | None = setting(None, "MOORAGE_ACCESS_KEY_ID", TEXT,
                                        "Admin access key id (with the secret; else the home's credentials "
                                        "file, else a generated key).")
    secret_access_key: str | None = setting(None, "MOORAGE_SECRET_ACCESS_KEY", TEXT,
                                            "Admin secret access key (set both or neither).", secret=True)
    log_level: str = setting("INFO", "MOORAGE_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                             "Level of the server's own log on stderr.")
    # The HTTP edge (api/http_limits.py): what one connection may cost before anyone is authenticated.
    max_header_bytes: int = setting(64 * 1024, "MOORAGE_HTTP_MAX_HEADER_BYTES", SIZE,
                                    "A request line and header block larger than this is refused (431).",
                                    minimum=4096)
    max_headers: int = setting(100, "MOORAGE_HTTP_MAX_HEADERS", WHOLE,
                               "A request with more header fields than this is refused (431).", minimum=16)
    header_timeout: float = setting(30.0, "MOORAGE_HTTP_HEADER_TIMEOUT", DURATION,
                                    "A connection that has not sent a whole header block this long after "
                                    "connecting (or after its request began) is closed (408).", positive=True)
    body_timeout: float = setting(60.0, "MOORAGE_HTTP_BODY_TIMEOUT", DURATION,
                                  "A request whose body stops arriving for this long is cut (408); a slow "
                                  "body that keeps arriving is not.", positive=True)
    keep_alive_timeout: float = setting(75.0, "MOORAGE_HTTP_KEEP_ALIVE_TIMEOUT", DURATION,
                                        "An idle keep-alive connection is closed after this long.", positive=True)
    max_connections: int = setting(4096, "MOORAGE_HTTP_MAX_CONNECTIONS", WHOLE,
                                   "Open client connections, at most (beyond: refused with 503 and closed); "
                                   "lowered to fit the file-descriptor limit.", minimum=1)
    max_pending_body_bytes: int = setting(256 * 1024 * 1024, "MOORAGE_HTTP_MAX_PENDING_BODY_BYTES", SIZE,
                                          "Request bodies held in memory before their signature is checked, all "
                                          "requests together (a chunked body declares no length to refuse it "
                                          "early); beyond it a request is answered 503 and its body dropped.",
                                          minimum=65536)
    max_connections_per_client: int = setting(512, "MOORAGE_HTTP_MAX_CONNECTIONS_PER_CLIENT", WHOLE,
                                              "Open connections from one client address, at most (beyond: "
                                              "refused with 503 and closed).", minimum=1)
    tls_cert: Path | None = setting(None, "MOORAGE_TLS_CERT", PATH,  # noqa: RUF009 - a field, default None
                                    "Serve HTTPS with this PEM certificate (chain) file; needs the key.",
                                    flag="--tls-cert")
    tls_key: Path | None = setting(None, "MOORAGE_TLS_KEY", PATH,  # noqa: RUF009 - a field, default None
                                   "The PEM private key of the TLS certificate.", flag="--tls-key")
    tls_self_signed: bool = setting(False, "MOORAGE_TLS_SELF_SIGNED", BOOLEAN,
                                    "Serve HTTPS with a development certificate for 127.0.0.1/localhost, made "
                                    "once under HOME/tls (clients pass it as verify=).", flag="--tls-self-signed")
    router_workers: int = setting(0, "MOORAGE_ROUTER_WORKERS", WHOLE,
                                  "Worker processes that accept the port's connections beside the router and "
                                  "do InvokeEndpoint's HTTP and SigV4 on cores of their own, asking it for the "
                                  "answers (docs/architecture.md, Router workers); the connection limits then "
                                  "hold per process. 0: the router does everything. Plain HTTP only (terminate "
                                  "TLS in front of the server).", minimum=0)
    shutdown_grace: float = setting(30.0, "MOORAGE_SHUTDOWN_GRACE_SECONDS", DURATION,
                                    "On SIGTERM, how long requests in flight may take to finish (new connections "
                                    "are refused meanwhile), endpoints' instances draining included.",
                                    positive=True)

    def __post_init__(self) -> None:
        # A home is always absolute (instances run with other working directories), and the
        # default database lives in it.
        home = Path(self.home).expanduser().resolve()
        object.__setattr__(self, "home", home)
        if self.database_url is None:
            object.__setattr__(self, "database_url", f"sqlite:///{home / 'moorage.db'}")


@dataclass(frozen=True)
class MetricsSettings(Section):
    section: ClassVar[str] = "metrics"

    enabled: bool = setting(True, "MOORAGE_METRICS", BOOLEAN,
                            "Record invocation and instance metrics (off: the overhead benchmark's baseline).")
    period: float = setting(60.0, "MOORAGE_METRICS_PERIOD", DURATION, "Time per stored datapoint.", positive=True)
    retention: float = setting(15 * 86400.0, "MOORAGE_METRICS_RETENTION", DURATION, "How long datapoints are kept.",
                               positive=True)


@dataclass(frozen=True)
class AutoscaleSettings(Section):
    """Target tracking's alarms (Application Auto Scaling's use 3 and 15 one-minute datapoints)."""

    section: ClassVar[str] = "autoscale"

    scale_out_datapoints: int = setting(3, "MOORAGE_AUTOSCALE_SCALE_OUT_DATAPOINTS", WHOLE,
                                        "Consecutive metric periods above the target before a scale-out.", minimum=1)
    scale_in_datapoints: int = setting(15, "MOORAGE_AUTOSCALE_SCALE_IN_DATAPOINTS", WHOLE,
                                       "Consecutive metric periods below 90% of the target before a scale-in.",
                                       minimum=1)


@dataclass(frozen=True)
class CaptureSettings(Section):
    """How the capture writer batches and rotates (``moorage.capture.WriterSettings`` is this class).

    A record is on disk at most ``flush_seconds`` (plus the time to write one batch) after its
    invocation was answered: that is all a ``kill -9`` of the server can lose. A clean stop writes
    everything still queued.
    """

    section: ClassVar[str] = "capture"

    flush_seconds: float = setting(1.0, "MOORAGE_CAPTURE_FLUSH_SECONDS", DURATION,
                                   "A captured record is written at most this long after its invocation.",
                                   positive=True)
    queue_records: int = setting(10_000, "MOORAGE_CAPTURE_QUEUE_RECORDS", WHOLE,
                                 "Records waiting to be written, at most (more are dropped, and counted).", minimum=1)
    queue_bytes: int = setting(64 * 1024 * 1024, "MOORAGE_CAPTURE_QUEUE_BYTES", SIZE,
                               "Bytes of bodies the waiting records hold, at most.", minimum=1)
    # The writer wakes once this many records wait (sooner than flush_seconds under load), and
    # encodes and writes them in runs of at most this many.
    batch_records: int = setting(256, "MOORAGE_CAPTURE_BATCH_RECORDS", WHOLE,
                                 "The writer wakes once this many records wait, and writes runs of this many.",
                                 minimum=1)
    file_bytes: int = setting(16 * 1024 * 1024, "MOORAGE_CAPTURE_FILE_BYTES", SIZE,
                              "A local capture file rotates past this size.", minimum=1)
    file_seconds: float = setting(300.0, "MOORAGE_CAPTURE_FILE_SECONDS", DURATION,
                                  "A local capture file rotates past this age.", positive=True)
    # A remote object (s3://) is rewritten whole on every flush that adds to it, so it rotates sooner.
    object_bytes: int = setting(4 * 1024 * 1024, "MOORAGE_CAPTURE_OBJECT_BYTES", SIZE,
                                "A remote (s3://) capture object rotates past this size.", minimum=1)


@dataclass(frozen=True)
class MonitorSettings(Section):
    section: ClassVar[str] = "monitor"

    concurrency: int = setting(2, "MOORAGE_MONITOR_CONCURRENCY", WHOLE,
                               "Monitoring executions running at once, at most; processing jobs (Model Monitor "
                               "baselines) have as many slots of their own.", minimum=1)
    tick_seconds: float = setting(1.0, "MOORAGE_MONITOR_TICK_SECONDS", DURATION,
                                  "How often the scheduler looks for due schedules (API calls wake it at once).",
                                  positive=True)
    explainer_start_timeout: float = setting(120.0, "MOORAGE_MONITOR_EXPLAINER_START_TIMEOUT", DURATION,
                                             "How long the model instance an explainability execution starts may take "
                                             "to answer /ping.", positive=True)


@dataclass(frozen=True)
class InstanceSettings(Section):
    """How the server runs instance processes: memory limits, code environments, their logs."""

    section: ClassVar[str] = "instances"

    cgroup_root: Path | None = setting(None, "MOORAGE_CGROUP_ROOT", PATH,  # noqa: RUF009 - a field, default None
                                       "A delegated cgroup v2 directory: each instance gets a child cgroup whose "
                                       "memory.max is its type's memory.")
    enforce_memory_limit: bool = setting(False, "MOORAGE_ENFORCE_MEMORY_LIMIT", BOOLEAN,
                                         "Limit each instance's address space to its type's memory (prlimit --as).")
    allow_requirements: bool = setting(True, "MOORAGE_ALLOW_REQUIREMENTS", BOOLEAN,
                                       "Install a model's requirements.txt into a per-model environment (off: "
                                       "such a model fails to deploy).")
    requirements_timeout: float = setting(900.0, "MOORAGE_REQUIREMENTS_TIMEOUT", DURATION,
                                          "Time one requirements install may take (a model's Environment may "
                                          "set its own).", minimum=1)
    log_max_bytes: int = setting(10 * 1024 * 1024, "MOORAGE_LOG_MAX_BYTES", SIZE,
                                 "An instance log rotates past this size (a model's Environment may set its own).",
                                 minimum=1)
    log_backups: int = setting(3, "MOORAGE_LOG_BACKUPS", WHOLE,
                               "Rotated instance logs kept (a model's Environment may set its own).", minimum=0)
    max_per_variant: int = setting(64, "MOORAGE_MAX_INSTANCES_PER_VARIANT", WHOLE,
                                   "Instances one variant may be given (InitialInstanceCount, DesiredInstanceCount, "
                                   "an autoscaling MaxCapacity), at most.", minimum=1)
    health_check_interval: float = setting(5.0, "MOORAGE_HEALTH_CHECK_INTERVAL", DURATION,
                                           "Time between two health checks of an instance in service.", positive=True)
    health_check_failures: int = setting(3, "MOORAGE_HEALTH_CHECK_FAILURES", WHOLE,
                                         "Health checks failed in a row after which an instance is replaced.",
                                         minimum=1)
    link: str = setting("frames", "MOORAGE_INSTANCE_LINK", _choice("frames", "http"),
                        "How the router talks to a built-in runtime's instances: frames (length-prefixed, "
                        "pipelined, on a Unix socket) or http (the container contract as bring-your-own "
                        "servers speak it).")
    invocation_timeout: float = setting(60.0, "MOORAGE_INVOCATION_TIMEOUT", DURATION,
                                        "Time an instance has to answer InvokeEndpoint (SageMaker's is 60 s).",
                                        positive=True)
    recycle_on_timeout: bool = setting(True, "MOORAGE_RECYCLE_ON_TIMEOUT", BOOLEAN,
                                       "Replace an instance whose request timed out (its work cannot be cancelled "
                                       "and would hold the requests queued behind it).")
    rss_limit_percent: int = setting(100, "MOORAGE_INSTANCE_RSS_PERCENT", WHOLE,
                                     "An instance whose resident memory (its processes together) passes this "
                                     "percentage of its type's memory is replaced (0: never).", minimum=0)
    max_rss: int | None = setting(None, "MOORAGE_INSTANCE_MAX_RSS", SIZE,
                                  "Replace an instance past this resident memory, whatever its type (unset: the "
                                  "type's memory times MOORAGE_INSTANCE_RSS_PERCENT).", minimum=1)
    max_archive_expansion: int = setting(20, "MOORAGE_MAX_ARCHIVE_EXPANSION", WHOLE,
                                         "A model archive may expand to this many times its size (at least "
                                         "256 MiB), at most; past it the archive is refused.", minimum=1)
    max_archive_bytes: int = setting(64 * 1024**3, "MOORAGE_MAX_ARCHIVE_BYTES", SIZE,
                                     "What one model archive may expand to, at most, whatever its ratio.",
                                     minimum=1)


@dataclass(frozen=True)
class BatchSettings(Section):
    """Where transform jobs run; a job's ``moorage:backend`` / ``moorage:ray-address`` tags win. The ray
    backend's cluster is the cluster section's (MOORAGE_RAY_ADDRESS; unset: a local one)."""

    section: ClassVar[str] = "batch"

    backend: str = setting("local", "MOORAGE_BATCH_BACKEND", _choice("local", "ray"),
                           "Where transform jobs run unless a job's moorage:backend tag says.")


@dataclass(frozen=True)
class ClusterSettings(Section):
    """Cluster mode (docs/cluster.md): endpoint instances as Ray actors, several routers over one database."""

    section: ClassVar[str] = "cluster"

    ray_address: str | None = setting(None, "MOORAGE_RAY_ADDRESS", TEXT,
                                      "The Ray cluster (auto, ray://HOST:PORT or HOST:PORT): endpoint instances run "
                                      "on it as actors, and so do transform jobs of the ray backend. Unset: "
                                      "instances are processes beside the server (transform jobs on Ray start a "
                                      "local cluster).", flag="--ray")
    ray_namespace: str = setting("moorage", "MOORAGE_RAY_NAMESPACE", TEXT,
                                 "The Ray namespace of the instances' actors: routers sharing a database share it; "
                                 "two moorage deployments on one Ray cluster each need their own.")
    sync_interval: float = setting(1.0, "MOORAGE_CLUSTER_SYNC_SECONDS", DURATION,
                                   "How often a router reads the store for changes made through other routers "
                                   "(the bound on how late it learns of them).", positive=True)
    leader_check_interval: float = setting(1.0, "MOORAGE_LEADER_CHECK_SECONDS", DURATION,
                                           "How often a router that does not run the controllers tries to take "
                                           "over (PostgreSQL only; with SQLite the one server runs them).",
                                           positive=True)


@dataclass(frozen=True)
class ShadowSettings(Section):
    """How copies of production requests reach shadow variants (ShadowProductionVariants)."""

    section: ClassVar[str] = "shadow"

    queue_records: int = setting(1000, "MOORAGE_SHADOW_QUEUE_RECORDS", WHOLE,
                                 "Copies waiting for one shadow variant, at most (more are dropped, and counted).",
                                 minimum=1)
    concurrency: int = setting(4, "MOORAGE_SHADOW_CONCURRENCY", WHOLE,
                               "Copies in flight to one shadow variant at once, at most.", minimum=1)


@dataclass(frozen=True)
class ExperimentSettings(Section):
    """Routing experiments: A/B tests and bandits (endpoint-config tags moorage:routing, ...)."""

    section: ClassVar[str] = "experiments"

    assignment_window: float = setting(7 * 86400.0, "MOORAGE_EXPERIMENTS_ASSIGNMENT_WINDOW", DURATION,
                                       "How long the variant that served an InferenceId is kept for its reward.",
                                       positive=True)
    update_interval: float = setting(1.0, "MOORAGE_EXPERIMENTS_UPDATE_INTERVAL", DURATION,
                                     "How often rewards become bandit weights and p-values.", positive=True)
    queue_records: int = setting(100_000, "MOORAGE_EXPERIMENTS_QUEUE_RECORDS", WHOLE,
                                 "Assignments waiting to be stored, at most (more are dropped, and counted).",
                                 minimum=1)


@dataclass(frozen=True)
class ObjectStoreSettings(Section):
    """Where ``s3://`` locations and the S3 API on the server's port keep objects (``store/objects.py``).

    The server exports both variables to every process it starts (instances, transform drivers, Ray,
    monitoring executions), so ``s3://`` means the same store in all of them.
    """

    section: ClassVar[str] = "objects"

    backend: str = setting("local", "MOORAGE_OBJECT_STORE", _choice("local", "external"),
                           "Where s3:// objects live: local (files under the object store root, also served by the "
                           "S3 API on the server's port) or external (a real S3 or S3-compatible server, reached "
                           "through the AWS chain and AWS_ENDPOINT_URL_S3).")
    root: Path | None = setting(None, "MOORAGE_OBJECT_STORE_ROOT", PATH,  # noqa: RUF009 - a field, default None
                                "The local object store's folder: s3://BUCKET/KEY is the file ROOT/BUCKET/KEY.",
                                default_text="HOME/objects")


@dataclass(frozen=True)
class AsyncInferenceSettings(Section):
    """Asynchronous inference (InvokeEndpointAsync): the queue of each endpoint with AsyncInferenceConfig."""

    section: ClassVar[str] = "async_inference"

    max_backlog: int = setting(10_000, "MOORAGE_ASYNC_MAX_BACKLOG", WHOLE,
                               "Requests queued or running for one asynchronous endpoint, at most (more are "
                               "refused with ServiceUnavailable).", minimum=1)
    retention: float = setting(86400.0, "MOORAGE_ASYNC_RETENTION", DURATION,
                               "How long a finished asynchronous request's record is kept in the store.",
                               positive=True)


@dataclass(frozen=True)
class ServerlessSettings(Section):
    """Serverless endpoints (ServerlessConfig): instances started by requests, stopped when idle."""

    section: ClassVar[str] = "serverless"

    idle_timeout: float = setting(300.0, "MOORAGE_SERVERLESS_IDLE_TIMEOUT", DURATION,
                                  "How long a serverless variant's instance may sit idle before it is stopped "
                                  "(ProvisionedConcurrency keeps one).", positive=True)


SECTIONS: tuple[type[Section], ...] = (ServerSettings, MetricsSettings, AutoscaleSettings, CaptureSettings,
                                       MonitorSettings, InstanceSettings, BatchSettings, ClusterSettings,
                                       ShadowSettings,
                                       ExperimentSettings, ObjectStoreSettings, AsyncInferenceSettings,
                                       ServerlessSettings)


# -- the tree -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One line of ``moorage serve --print-settings``."""

    setting: str
    variable: str
    value: str
    source: str


@dataclass(frozen=True)
class Settings:
    """Everything ``moorage serve`` is configured with; built once (``Settings.load``) and passed down."""

    server: ServerSettings = field(default_factory=ServerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    instances: InstanceSettings = field(default_factory=InstanceSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    experiments: ExperimentSettings = field(default_factory=ExperimentSettings)
    objects: ObjectStoreSettings = field(default_factory=ObjectStoreSettings)
    async_inference: AsyncInferenceSettings = field(default_factory=AsyncInferenceSettings)
    serverless: ServerlessSettings = field(default_factory=ServerlessSettings)
    # "section.name" -> "default", "environment" or "flag --name"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    # Fixed: every server answers as this region and account.
    region: ClassVar[str] = DEFAULT_REGION
    account_id: ClassVar[str] = DEFAULT_ACCOUNT_ID

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, *, home: Path | str | None = None,
             host: str | None = None, port: int | None = None, database_url: str | None = None,
             tls_cert: Path | str | None = None, tls_key: Path | str | None = None,
             tls_self_signed: bool | None = None, ray_address: str | None = None) -> Settings:
        """The tree from the environment and ``moorage serve``'s flags; SettingsError lists every bad value."""
        env = os.environ if environ is None else environ
        flags = {f"server.{name}": str(value) for name, value in
                 (("home", home), ("host", host), ("port", port), ("database_url", database_url),
                  ("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_self_signed", tls_self_signed))
                 if value is not None}
        if ray_address is not None:
            flags["cluster.ray_address"] = ray_address
        built: dict[str, Any] = {}
        sources: dict[str, str] = {}
        problems: list[str] = []
        for section in SECTIONS:
            values, found, bad = _read(section, env, flags)
            sources.update(found)
            problems += bad
            if not bad:
                built[section.section] = section(**values)
        key, secret = (env.get(name, "").strip() for name in ("MOORAGE_ACCESS_KEY_ID", "MOORAGE_SECRET_ACCESS_KEY"))
        if bool(key) != bool(secret):
            problems.append("set both MOORAGE_ACCESS_KEY_ID and MOORAGE_SECRET_ACCESS_KEY, or neither")
        if (server := built.get("server")) is not None:
            if (server.tls_cert is None) != (server.tls_key is None):
                problems.append("set both --tls-cert and --tls-key (MOORAGE_TLS_CERT, MOORAGE_TLS_KEY), or neither")
            elif server.tls_cert is not None and server.tls_self_signed:
                problems.append("--tls-self-signed makes its own certificate: give it or --tls-cert/--tls-key")
        if problems:
            raise SettingsError(problems)
        return cls(**built, sources=sources)

    def sections(self) -> Iterator[Section]:
        for section in SECTIONS:
            yield getattr(self, section.section)

    def rows(self) -> list[Row]:
        """Every setting: name, variable (or flag), value (secrets masked), source."""
        out = []
        for section in self.sections():
            for name, spec in section.specs():
                path = f"{section.section}.{name}"
                out.append(Row(path, spec.variable or spec.flag or "", spec.show(getattr(section, name)),
                               self.sources.get(path, DEFAULT)))
        return out

    def report(self) -> str:
        """``rows()`` as an aligned text table."""
        rows = [Row("SETTING", "VARIABLE", "VALUE", "SOURCE"), *self.rows()]
        widths = [max(len(getattr(r, column)) for r in rows) for column in ("setting", "variable", "value")]
        return "\n".join(f"{r.setting:<{widths[0]}}  {r.variable:<{widths[1]}}  {r.value:<{widths[2]}}  {r.source}"
                         for r in rows)

    # Where things are, and how the server is reached: the paths every part uses.
    @property
    def home(self) -> Path:
        return self.server.home

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.server.host}:{self.server.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.server.tls_self_signed or self.server.tls_cert is not None else "http"

    @property
    def database_url(self) -> str:
        assert self.server.database_url is not None  # ServerSettings fills in the default
        return self.server.database_url

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def artifacts_dir(self) -> Path:
        """Where uploads through the native API land (``moorage.Session.upload_data``)."""
        return self.home / "artifacts"

    @property
    def objects_dir(self) -> Path:
        """The local object store's root (``s3://BUCKET/KEY`` is ``objects_dir/BUCKET/KEY``)."""
        return Path(self.objects.root).expanduser().resolve() if self.objects.root else self.home / "objects"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_path(self) -> Path:
        return self.home / CREDENTIALS_FILE


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """The home a client uses when not told: MOORAGE_HOME, else ~/.moorage (the server's own rule)."""
    return Path(read_setting(ServerSettings, "home", environ)).expanduser()


def documented_rows() -> list[tuple[str, str, str, str, str, str]]:
    """docs/settings.md's table as the declarations say it: variable, flag, setting, type, default, meaning."""
    out = []
    for section in SECTIONS:
        defaults = {f.name: f.default for f in fields(section)}  # type: ignore[arg-type]
        for name, spec in section.specs():
            kind = spec.kind.name + (f" ({spec.bounds()})" if spec.bounds() else "")
            default = spec.default_text or (spec.kind.show(defaults[name]) if defaults[name] is not None else "unset")
            out.append((spec.variable or "", spec.flag or "", f"{section.section}.{name}", kind, default, spec.meaning))
    return out
