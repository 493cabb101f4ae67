"""Where moorage keeps its state, and the admin credentials: the names older code imports from here.

Everything a server needs lives under one home directory (``--home``, ``MOORAGE_HOME`` or
``~/.moorage``): the SQLite metadata database, extracted model artifacts, instance logs and the
credentials file (AWS shared-credentials INI, so any AWS tool reads it:
``AWS_SHARED_CREDENTIALS_FILE=~/.moorage/credentials``).

The settings tree and its one parser are in :mod:`moorage.settings`; the admin key and a client's
region are found by :mod:`moorage.credentials`. This module only re-exports them, so
``from moorage.config import Settings, read_credentials`` keeps working.
"""

from __future__ import annotations

from moorage.credentials import Credentials, admin_credentials, find_admin_key, read_credentials
from moorage.settings import (
    CREDENTIALS_FILE,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_REGION,
    SERVER_FILE,
    Settings,
    SettingsError,
    default_home,
)

__all__ = [
    "CREDENTIALS_FILE", "DEFAULT_ACCOUNT_ID", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_REGION", "SERVER_FILE",
    "Credentials", "Settings", "SettingsError", "admin_credentials", "default_home", "find_admin_key",
    "read_credentials",
]
