"""The device's key, found as moorage finds its admin key, without botocore.

The server side (``moorage.credentials``) looks in the environment first
(``MOORAGE_ACCESS_KEY_ID``/``MOORAGE_SECRET_ACCESS_KEY``, set whole or not at all, blank meaning
unset), then in a credentials file in the AWS shared-credentials format (profile ``default``), and
only a client goes on to botocore's chain. The agent keeps the same first two steps in the same order:

1. ``MOORAGE_ACCESS_KEY_ID`` / ``MOORAGE_SECRET_ACCESS_KEY``;
2. the file given with ``--credentials FILE``, else ``~/.moorage/edge-credentials``: an INI file with
   ``aws_access_key_id``/``aws_secret_access_key`` under ``[default]`` (or the profile asked for), and
   optionally ``region``, as ``moorage edge register`` writes it.

It does not take botocore's chain: a device holds its own key, never someone's AWS key; and the
agent does not import botocore (see ``signing.py``). The file is read with ``configparser``, which is
what botocore's own shared-credentials reader uses, so a file any AWS tool reads reads the same here.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moorage.edge.signing import Key

ACCESS_KEY_ENV, SECRET_KEY_ENV = "MOORAGE_ACCESS_KEY_ID", "MOORAGE_SECRET_ACCESS_KEY"
PROFILE = "default"


def default_credentials_file() -> Path:
    return Path.home() / ".moorage" / "edge-credentials"


class CredentialsError(ValueError):
    """A place that should hold a key holds half of one, or cannot be read; the message says which."""


@dataclass(frozen=True)
class FoundKey:
    key: Key
    source: str  # where it was found, as a user would look for it
    region: str | None  # the file's ``region``, when it names one


def find_key(path: Path | str | None = None, environ: Mapping[str, str] | None = None,
             profile: str = PROFILE) -> FoundKey | None:
    """The device key from the environment, else the credentials file; None when neither has one."""
    env = os.environ if environ is None else environ
    ours = {name: env[name].strip() for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if env.get(name, "").strip()}
    if len(ours) == 1:
        raise CredentialsError(f"set both {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}, or neither")
    file = Path(path).expanduser() if path is not None else default_credentials_file()
    region = _file_region(file, profile)
    if ours:
        return FoundKey(Key(ours[ACCESS_KEY_ENV], ours[SECRET_KEY_ENV]), f"{ACCESS_KEY_ENV}/{SECRET_KEY_ENV}", region)
    if not file.exists():
        if path is not None:
            raise CredentialsError(f"{file}: no such credentials file")
        return None
    section = _section(file, profile)
    if section is None:
        return None
    key_id = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    if bool(key_id) != bool(secret):
        raise CredentialsError(f"{file}: [{profile}] has one of aws_access_key_id and aws_secret_access_key; "
                               "it needs both")
    if not key_id:
        return None
    return FoundKey(Key(key_id, secret), str(file), region)


def _section(file: Path, profile: str) -> configparser.SectionProxy | None:
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(file.read_text(encoding="utf-8"), source=str(file))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise CredentialsError(f"{file}: {exc}") from None
    return parser[profile] if parser.has_section(profile) else None


def _file_region(file: Path, profile: str) -> str | None:
    try:
        section = _section(file, profile) if file.exists() else None
    except CredentialsError:
        return None
    if section is None:
        return None
    return section.get("region", "").strip() or None
