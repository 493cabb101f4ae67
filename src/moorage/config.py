"""Where moorage keeps its state, and the admin credentials.

Everything a server needs lives under one home directory (``--home``, ``MOORAGE_HOME`` or
``~/.moorage``): the SQLite metadata database, extracted model artifacts, instance logs and the
credentials file. The credentials file uses the AWS shared-credentials INI format so that any AWS
tool can read it (``AWS_SHARED_CREDENTIALS_FILE=~/.moorage/credentials``).
"""

from __future__ import annotations

import configparser
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT_ID = "000000000000"
CREDENTIALS_FILE = "credentials"
SERVER_FILE = "server.json"


def default_home() -> Path:
    return Path(os.environ.get("MOORAGE_HOME") or Path.home() / ".moorage").expanduser()


def _env_seconds(name: str, default: float) -> float:
    """A duration from the environment: seconds, or a number with s/m/h/d (``15d``)."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return float(default)
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1])
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a duration (seconds, or e.g. 90s, 15m, 2h, 15d)") from None


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass
class Settings:
    home: Path = field(default_factory=default_home)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    region: str = DEFAULT_REGION
    account_id: str = DEFAULT_ACCOUNT_ID
    database_url: str | None = None
    # Metrics: seconds per stored datapoint, seconds they are kept, and whether invocations and
    # instances are recorded at all (MOORAGE_METRICS=off is the overhead benchmark's baseline).
    metrics_period: float = field(default_factory=lambda: _env_seconds("MOORAGE_METRICS_PERIOD", 60))
    metrics_retention: float = field(default_factory=lambda: _env_seconds("MOORAGE_METRICS_RETENTION", 15 * 86400))
    metrics_enabled: bool = field(
        default_factory=lambda: os.environ.get("MOORAGE_METRICS", "on").strip().lower() not in ("off", "0", "false"))
    # Target tracking: consecutive metric periods above the target before a scale-out, below 90% of
    # it before a scale-in (Application Auto Scaling's alarms use 3 and 15 one-minute datapoints).
    autoscale_scale_out_datapoints: int = field(
        default_factory=lambda: int(os.environ.get("MOORAGE_AUTOSCALE_SCALE_OUT_DATAPOINTS", 3)))
    autoscale_scale_in_datapoints: int = field(
        default_factory=lambda: int(os.environ.get("MOORAGE_AUTOSCALE_SCALE_IN_DATAPOINTS", 15)))

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        if self.database_url is None:
            self.database_url = os.environ.get("MOORAGE_DATABASE_URL") or f"sqlite:///{self.home / 'moorage.db'}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def artifacts_dir(self) -> Path:
        """Where uploads through the native API land (``moorage.Session.upload_data``)."""
        return self.home / "artifacts"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_path(self) -> Path:
        return self.home / CREDENTIALS_FILE


def _generate_key() -> Credentials:
    alphabet = string.ascii_uppercase + string.digits
    key_id = "MRG" + "".join(secrets.choice(alphabet) for _ in range(17))
    return Credentials(key_id, secrets.token_urlsafe(30))


def read_credentials(home: Path | None = None) -> Credentials | None:
    """The admin key stored in ``home/credentials`` (profile ``default``), if any."""
    path = Path(home or default_home()) / CREDENTIALS_FILE
    if not path.exists():
        return None
    parser = configparser.ConfigParser()
    parser.read(path)
    if not parser.has_section("default"):
        return None
    section = parser["default"]
    key_id, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    return Credentials(key_id, secret) if key_id and secret else None


def admin_credentials(settings: Settings) -> tuple[Credentials, bool]:
    """The admin key: from the environment, else the home's file, else a new one written there.

    Returns the key and whether it was generated just now (so the server can say where it is).
    """
    key_id, secret = os.environ.get("MOORAGE_ACCESS_KEY_ID"), os.environ.get("MOORAGE_SECRET_ACCESS_KEY")
    if key_id and secret:
        creds = Credentials(key_id, secret)
        _write_credentials(settings, creds)
        return creds, False
    if key_id or secret:
        raise ValueError("set both MOORAGE_ACCESS_KEY_ID and MOORAGE_SECRET_ACCESS_KEY, or neither")
    existing = read_credentials(settings.home)
    if existing:
        return existing, False
    creds = _generate_key()
    _write_credentials(settings, creds)
    return creds, True


def _write_credentials(settings: Settings, creds: Credentials) -> None:
    """Keep the home's credentials file in step with the key the server accepts (mode 0600)."""
    if read_credentials(settings.home) == creds:
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    text = (
        "# moorage admin key; boto3 reads it with AWS_SHARED_CREDENTIALS_FILE pointing here.\n"
        f"[default]\naws_access_key_id = {creds.access_key_id}\n"
        f"aws_secret_access_key = {creds.secret_access_key}\nregion = {settings.region}\n"
    )
    path = settings.credentials_path
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
