"""What every client command shares: --home/--url, the session they make, and how errors are reported.

Exit codes: 0 success; 1 a failure the user caused or a failed resource (printed on stderr as
``error: ...``); 2 usage errors (click's own).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

home_option = click.option("--home", type=click.Path(path_type=Path), default=None,
                           help="moorage home directory (default: $MOORAGE_HOME or ~/.moorage).")
url_option = click.option("--url", default=None, help="Server URL (default: the one recorded in the home).")


def stdout_console() -> Console:
    # Off a terminal rich would squeeze tables to 80 columns and truncate names.
    return Console() if sys.stdout.isatty() else Console(width=200)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def describe_client_error(exc: BaseException) -> str:
    """A one-line account of an SDK/boto3/connection error, as the user should read it."""
    from botocore.exceptions import ClientError as BotoClientError
    from botocore.exceptions import EndpointConnectionError

    if isinstance(exc, BotoClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '') or exc}"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach moorage at {exc.kwargs.get('endpoint_url', '?')}. Is `moorage serve` running?"
    return str(exc)


def reports_errors(func: F) -> F:
    """Turn the errors a client command expects (server said no, server away, bad input) into exit 1."""
    from botocore.exceptions import BotoCoreError
    from botocore.exceptions import ClientError as BotoClientError

    from moorage.connection import ClientError
    from moorage.sdk.exceptions import UnexpectedStatusException

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ClientError, BotoClientError, BotoCoreError, UnexpectedStatusException, OSError,
                ValueError) as exc:
            fail(describe_client_error(exc))

    return wrapper  # type: ignore[return-value]


def make_session(home: Path | None, url: str | None) -> Any:
    """An SDK session whose boto3 clients fail fast when the server is away (CLI, not batch jobs)."""
    import botocore.config

    from moorage.sdk.session import Session

    config = botocore.config.Config(connect_timeout=5, read_timeout=70,
                                    retries={"mode": "standard", "total_max_attempts": 2})
    return Session(home=home, url=url, boto_config=config)


def key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """A click callback: repeated ``NAME=VALUE`` options (``--env``, ``--dimension``) as a dict."""
    out = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{item!r} is not {param.metavar or 'NAME=VALUE'}", ctx=ctx, param=param)
        out[key] = value
    return out
