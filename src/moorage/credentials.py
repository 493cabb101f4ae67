"""The admin key, found the same way by the server, the CLI and the SDK; and a client's region.

The admin key is looked for in the same places, in the same order, by everyone:

1. ``MOORAGE_ACCESS_KEY_ID`` / ``MOORAGE_SECRET_ACCESS_KEY`` in the environment;
2. the home's credentials file (``<home>/credentials``, profile ``default``; the AWS
   shared-credentials format, so any AWS tool reads it too);

and by a client, when neither has one, 3. botocore's own chain (``AWS_ACCESS_KEY_ID``...,
``AWS_PROFILE``, the shared credentials and config files, ``credential_process``), for a key kept
where AWS tools keep theirs. The server never takes step 3, which would make someone's AWS key its
admin key and write it into the home; it generates a key when steps 1 and 2 find none.

Each step is a botocore provider (``EnvProvider`` with moorage's variable names,
``SharedCredentialProvider`` on the home's file, then the session's own resolver), not a reader of
our own, so the file format, profiles and ``credential_process`` behave as in every AWS tool. Step 3
leaves out the providers that fetch temporary credentials from AWS itself (role assumption, SSO,
container and EC2 metadata): a moorage server never accepts such a key, and asking EC2's metadata
service off EC2 costs a second before the real error.

A client's region: the one given, else the one the server recorded in its home (``server.json``),
else botocore's (``AWS_DEFAULT_REGION``, the profile's ``region``), else moorage's default.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.credentials import EnvProvider, SharedCredentialProvider
from botocore.exceptions import BotoCoreError

from moorage.settings import CREDENTIALS_FILE, DEFAULT_REGION, Settings, default_home

ACCESS_KEY_ENV, SECRET_KEY_ENV = "MOORAGE_ACCESS_KEY_ID", "MOORAGE_SECRET_ACCESS_KEY"
PROFILE = "default"
# botocore providers that obtain temporary credentials from AWS endpoints (see the module docstring).
_FROM_AWS = frozenset({"assume-role", "assume-role-with-web-identity", "sso", "login", "container-role", "iam-role"})


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True)
class FoundKey:
    credentials: Credentials
    source: str  # where it was found, as a user would look for it


class CredentialsError(ValueError):
    """A place that should hold a key holds half of one, or cannot be read; the message says which."""


def find_admin_key(home: Path, environ: Mapping[str, str] | None = None, *, aws_chain: bool = False) -> FoundKey | None:
    """The admin key from the environment, else ``home/credentials``, else (``aws_chain``) botocore's chain."""
    env = os.environ if environ is None else environ
    # Blank is unset, as for every setting; botocore would take a blank key id as a key.
    ours = {name: env[name].strip() for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if env.get(name, "").strip()}
    if len(ours) == 1:
        raise CredentialsError(f"set both {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}, or neither")
    path = Path(home) / CREDENTIALS_FILE
    steps: list[tuple[Any, str]] = [
        # No session token or expiry: the admin key is a static key.
        (EnvProvider(ours, mapping={"access_key": ACCESS_KEY_ENV, "secret_key": SECRET_KEY_ENV, "token": [],
                                    "expiry_time": "", "account_id": ""}), f"{ACCESS_KEY_ENV}/{SECRET_KEY_ENV}"),
        (SharedCredentialProvider(str(path), PROFILE), str(path)),
    ]
    if aws_chain:
        steps += [(provider, f"botocore's {provider.METHOD} credentials") for provider in _aws_providers()]
    for provider, source in steps:
        try:
            loaded = provider.load()
        except BotoCoreError as exc:
            raise CredentialsError(f"{source}: {exc}") from exc
        if loaded is not None:
            frozen = loaded.get_frozen_credentials()
            return FoundKey(Credentials(frozen.access_key, frozen.secret_key), source)
    return None


def _aws_providers() -> list[Any]:
    import botocore.session

    try:
        resolver = botocore.session.Session().get_component("credential_provider")
    except BotoCoreError as exc:  # AWS_PROFILE names a profile that does not exist, say
        raise CredentialsError(str(exc)) from exc
    return [provider for provider in resolver.providers if provider.METHOD not in _FROM_AWS]


def no_key_message(home: Path) -> str:
    return (f"no credentials for moorage: {ACCESS_KEY_ENV}/{SECRET_KEY_ENV} are not set, {home / CREDENTIALS_FILE} "
            "has none, and botocore found no AWS credentials. Set those variables as the server has them, or pass "
            f"the home the server uses (--home), or start `moorage serve --home {home}` once.")


def aws_region() -> str | None:
    """The region botocore's config chain names (``AWS_DEFAULT_REGION``, the profile's ``region``), if any."""
    import botocore.session

    try:
        return botocore.session.Session().get_config_variable("region") or None
    except BotoCoreError:
        return None


def client_region(recorded: str | None = None) -> str:
    """A client's region when none is given: the server's recorded one, else botocore's, else the default."""
    return recorded or aws_region() or DEFAULT_REGION


def read_credentials(home: Path | str | None = None) -> Credentials | None:
    """The admin key stored in ``home/credentials`` (profile ``default``), if a whole one is there."""
    path = Path(home or default_home()) / CREDENTIALS_FILE
    try:
        loaded = SharedCredentialProvider(str(path), PROFILE).load()
    except BotoCoreError:
        return None
    if loaded is None:
        return None
    frozen = loaded.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key)


def admin_credentials(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[Credentials, bool]:
    """The server's admin key: from the environment, else the home's file, else a new one written there.

    Returns the key and whether it was generated just now (so the server can say where it is).
    """
    found = find_admin_key(settings.home, environ)
    if found is not None:
        # A key from the environment is written to the home too, so clients that only know the
        # home find the key the server accepts.
        _write_credentials(settings, found.credentials)
        return found.credentials, False
    creds = _generate_key()
    _write_credentials(settings, creds)
    return creds, True


def _generate_key() -> Credentials:
    alphabet = string.ascii_uppercase + string.digits
    key_id = "MRG" + "".join(secrets.choice(alphabet) for _ in range(17))
    return Credentials(key_id, secrets.token_urlsafe(30))


def write_credentials_file(path: Path, creds: Credentials, region: str, comment: str = "") -> None:
    """``creds`` as an AWS shared-credentials file (profile ``default``), written aside as 0600 and
    renamed into place: never readable by others, never half written. The server's admin key, the keys
    ``moorage keys`` makes and edge devices' keys are all written this way."""
    text = "".join(f"# {line}\n" for line in comment.splitlines()) + (
        f"[{PROFILE}]\naws_access_key_id = {creds.access_key_id}\n"
        f"aws_secret_access_key = {creds.secret_access_key}\nregion = {region}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(temporary, 0o600)  # O_CREAT's mode does not apply to a file that was already there
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_credentials(settings: Settings, creds: Credentials) -> None:
    """Keep the home's credentials file in step with the key the server accepts (mode 0600)."""
    if read_credentials(settings.home) == creds:
        return
    write_credentials_file(settings.credentials_path, creds, settings.region,
                           "moorage admin key; boto3 reads it with AWS_SHARED_CREDENTIALS_FILE pointing here.")
