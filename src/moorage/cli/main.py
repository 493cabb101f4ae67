"""The ``moorage`` command line.

Client commands find the server and its key through ``--home`` (server.json, credentials) or
``--url``; exit codes are 0 on success, 1 when the server refused, a resource failed or an input
was wrong (with ``error: ...`` on stderr), 2 on usage errors.
"""

from __future__ import annotations

import mimetypes
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.table import Table

from moorage.cli.alarms import alarms as alarms_command
from moorage.cli.common import (
    describe_client_error,
    fail,
    home_option,
    key_values,
    make_session,
    reports_errors,
    stdout_console,
    url_option,
)
from moorage.cli.edge import edge as edge_commands
from moorage.cli.experiment import experiment as experiment_commands
from moorage.cli.keys import keys as keys_commands
from moorage.cli.metrics import metrics as metrics_command
from moorage.cli.models import models as models_command
from moorage.cli.monitoring import monitor as monitor_commands
from moorage.cli.rollout import rollout as rollout_commands
from moorage.cli.shadow import shadow as shadow_commands
from moorage.cli.transform import transform as transform_commands
from moorage.config import DEFAULT_HOST, DEFAULT_PORT, Settings, SettingsError
from moorage.connection import ClientError, Connection

# Content types guessed from a --body @file's suffix when --content-type is not given.
_SUFFIX_TYPES = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/jsonlines",
                 ".jsonlines": "application/jsonlines", ".npy": "application/x-npy"}


@click.group()
@click.version_option(package_name="moorage")
def cli() -> None:
    """moorage: serve and watch ML models on your own machines, with SageMaker's APIs."""


@cli.command()
# --host/--port default to None so that the settings tree can tell a flag from its default.
@click.option("--host", default=None, show_default=DEFAULT_HOST, help="Address to bind (loopback by default).")
@click.option("--port", default=None, show_default=str(DEFAULT_PORT), type=int)
@home_option
@click.option("--url", default=None, help="Where to listen, as a URL (http://HOST:PORT); overrides --host/--port.")
@click.option("--database-url", default=None, help="SQLAlchemy URL (default: SQLite file in the home; "
              "$MOORAGE_DATABASE_URL).")
@click.option("--tls-cert", default=None, type=click.Path(path_type=Path),
              help="Serve HTTPS with this PEM certificate file (with --tls-key; $MOORAGE_TLS_CERT).")
@click.option("--tls-key", default=None, type=click.Path(path_type=Path),
              help="The certificate's PEM private key ($MOORAGE_TLS_KEY).")
@click.option("--tls-self-signed", is_flag=True, default=None,
              help="Serve HTTPS with a development certificate for 127.0.0.1/localhost, made under the home.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run endpoint instances as actors on this Ray cluster: auto, ray://HOST:PORT or HOST:PORT "
                   "(cluster mode, docs/cluster.md; $MOORAGE_RAY_ADDRESS).")
@click.option("--print-settings", is_flag=True,
              help="Print every setting (variable, value, where it came from) and exit without serving.")
def serve(host: str | None, port: int | None, home: Path | None, url: str | None, database_url: str | None,
          tls_cert: Path | None, tls_key: Path | None, tls_self_signed: bool | None, ray_address: str | None,
          print_settings: bool) -> None:
    """Run the server: SageMaker API, runtime and native API on one port.

    Settings come from these options, then MOORAGE_* variables, then defaults (docs/settings.md); a
    value that cannot be used stops the server before it starts, naming the variable.
    """
    from moorage.credentials import CredentialsError
    from moorage.server import serve as run

    if url is not None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(f"{url!r} is not an http(s)://HOST[:PORT] URL", param_hint="--url")
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    try:
        settings = Settings.load(home=home, host=host, port=port, database_url=database_url, tls_cert=tls_cert,
                                 tls_key=tls_key, tls_self_signed=tls_self_signed or None, ray_address=ray_address)
    except SettingsError as exc:
        fail("moorage serve cannot start with these settings:\n  " + "\n  ".join(exc.problems))
    if print_settings:
        click.echo(settings.report())
        return
    try:
        run(settings)
    except CredentialsError as exc:
        fail(f"no usable admin key: {exc}")


@cli.command()
@home_option
@url_option
def endpoints(home: Path | None, url: str | None) -> None:
    """List endpoints with their variants, weights, instance counts and status."""
    console = stdout_console()
    try:
        data = Connection.discover(home, url).native("GET", "/moorage/v1/endpoints")
    except ClientError as exc:
        fail(str(exc))
    if not data["Endpoints"]:
        console.print("no endpoints")
        return
    table = Table(title="endpoints")
    for column in ("endpoint", "status", "variant", "weight", "instances", "runtime", "restarts", "config"):
        table.add_column(column)
    for endpoint in data["Endpoints"]:
        first = True
        for variant in endpoint["Variants"] or [{}]:
            instances = (f"{variant.get('CurrentInstanceCount', 0)}/{variant.get('DesiredInstanceCount', 0)}"
                         if variant else "")
            table.add_row(
                endpoint["EndpointName"] if first else "",
                _status(endpoint["EndpointStatus"]) if first else "",
                variant.get("VariantName", ""),
                f"{variant['CurrentWeight']:g}" if "CurrentWeight" in variant else "",
                instances, variant.get("Runtime", ""), str(variant.get("Restarts", "")),
                endpoint.get("EndpointConfigName") or "" if first else "",
            )
            first = False
        if endpoint.get("FailureReason"):
            table.add_row("", f"[red]{endpoint['FailureReason'][:200]}[/red]", "", "", "", "", "", "")
    console.print(table)


def _status(status: str) -> str:
    color = {"InService": "green", "Failed": "red"}.get(status, "yellow")
    return f"[{color}]{status}[/{color}]"


# -- deploy -----------------------------------------------------------------------------------------
@cli.command()
@click.argument("model_data", metavar="MODEL_DIR_OR_TARBALL")
@click.option("--image", default="sklearn", show_default=True,
              help="Runtime name or SageMaker framework image URI.")
@click.option("--instances", "instance_count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Initial instance count.")
@click.option("--instance-type", default="ml.m5.large", show_default=True)
@click.option("--name", default=None, help="Name of the model, endpoint config and endpoint "
              "(default: generated from the image).")
@click.option("--entry-point", default=None, help="Inference script (relative to --source-dir when given).")
@click.option("--source-dir", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder of inference code packed under code/ in model.tar.gz.")
@click.option("--env", "env", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Container environment variable (repeatable).")
@click.option("--variant-name", default="AllTraffic", show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the endpoint is InService.")
@click.option("--timeout", default=600.0, show_default=True, type=float, help="Seconds to wait for InService.")
@home_option
@url_option
@reports_errors
def deploy(model_data: str, image: str, instance_count: int, instance_type: str, name: str | None,
           entry_point: str | None, source_dir: Path | None, env: dict[str, str], variant_name: str, wait: bool,
           timeout: float, home: Path | None, url: str | None) -> None:
    """Deploy a model folder, file or tarball (local, or a URL the server reads) as an endpoint."""
    from moorage.sdk.exceptions import UnexpectedStatusException
    from moorage.sdk.model import Model

    if "://" not in model_data and not Path(model_data).exists():
        fail(f"model data {model_data} does not exist")
    session = make_session(home, url)
    if name is not None and _model_exists(session, name):
        # The SDK would reuse it silently (as SageMaker's does), serving the old artifacts, not these.
        fail(f"a model named {name} already exists: delete it first (`moorage delete {name}`) or choose another --name")
    model = Model(model_data=model_data, image_uri=image, entry_point=entry_point, source_dir=source_dir,
                  env=env, name=name, sagemaker_session=session)
    if sys.stderr.isatty():  # progress for people; scripts get only results and errors
        click.echo(f"packing and uploading {model_data} ..." if "://" not in model_data else "creating model ...",
                   err=True)
    try:
        model.deploy(initial_instance_count=instance_count, instance_type=instance_type, endpoint_name=name,
                     variant_name=variant_name, wait=wait, timeout=timeout)
    except UnexpectedStatusException as exc:
        click.echo(f"endpoint {model.endpoint_name}: {exc.actual_status}")
        fail(f"endpoint {model.endpoint_name} {exc.actual_status}: {exc.failure_reason or exc}")
    desc = session.describe_endpoint(str(model.endpoint_name))
    click.echo(f"model {model.name}: {model.model_data_url}")
    _print_endpoint(desc)


def _model_exists(session: Any, name: str) -> bool:
    from botocore.exceptions import ClientError as BotoClientError

    try:
        session.sagemaker_client.describe_model(ModelName=name)
    except BotoClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationException":
            return False
        raise
    return True


def _print_endpoint(desc: dict[str, Any]) -> None:
    click.echo(f"endpoint {desc['EndpointName']}: {desc['EndpointStatus']}")
    for variant in desc.get("ProductionVariants", []):
        click.echo(f"  variant {variant['VariantName']}: {variant.get('CurrentInstanceCount', '?')} instance(s), "
                   f"weight {variant.get('CurrentWeight', '?')}")


# -- invoke -----------------------------------------------------------------------------------------
def _read_body(body: str) -> tuple[bytes, str | None]:
    """The request body and the file it came from (to guess a content type), if any."""
    if body == "@-":
        return sys.stdin.buffer.read(), None
    if body.startswith("@"):
        path = Path(body[1:]).expanduser()
        try:
            return path.read_bytes(), path.name
        except OSError as exc:
            fail(f"cannot read body file {path}: {exc.strerror or exc}")
    return body.encode("utf-8"), None


@cli.command()
@click.argument("endpoint")
@click.option("--body", required=True, help="@FILE (or @- for stdin) to send a file's bytes, else the literal text.")
@click.option("--content-type", default=None,
              help="Request Content-Type (default: from the @FILE suffix, else application/json).")
@click.option("--accept", default=None, help="Response type to ask for (Accept header).")
@click.option("--target-variant", default=None, help="Send to this production variant.")
@click.option("--custom-attributes", default=None, help="X-Amzn-SageMaker-Custom-Attributes value.")
@click.option("--inference-id", default=None)
@click.option("--verbose", "-v", is_flag=True, help="Print the invoked variant and content type on stderr.")
@home_option
@url_option
@reports_errors
def invoke(endpoint: str, body: str, content_type: str | None, accept: str | None, target_variant: str | None,
           custom_attributes: str | None, inference_id: str | None, verbose: bool, home: Path | None,
           url: str | None) -> None:
    """Invoke an endpoint; the response body goes to stdout as it came (binary safe)."""
    from botocore.exceptions import ClientError as BotoClientError

    payload, filename = _read_body(body)
    if content_type is None:
        suffix = Path(filename).suffix.lower() if filename else ""
        content_type = _SUFFIX_TYPES.get(suffix) or (mimetypes.guess_type(filename)[0] if filename else None) \
            or "application/json"
    args: dict[str, Any] = {"EndpointName": endpoint, "Body": payload, "ContentType": content_type}
    for key, value in (("Accept", accept), ("TargetVariant", target_variant),
                       ("CustomAttributes", custom_attributes), ("InferenceId", inference_id)):
        if value:
            args[key] = value
    runtime = make_session(home, url).sagemaker_runtime_client
    try:
        response = runtime.invoke_endpoint(**args)
    except BotoClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ModelError":
            original = exc.response.get("OriginalStatusCode")
            status = f" (model answered HTTP {original})" if original else ""
            fail(f"ModelError{status}: {error.get('Message', '')}")
        fail(describe_client_error(exc))
    data = response["Body"].read()
    if verbose:
        click.echo(f"variant: {response.get('InvokedProductionVariant', '?')}; "
                   f"content type: {response.get('ContentType', '?')}; {len(data)} bytes", err=True)
        if response.get("CustomAttributes"):
            click.echo(f"custom attributes: {response['CustomAttributes']}", err=True)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# -- logs -------------------------------------------------------------------------------------------
def _parse_lines(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of lines or 'all'", ctx=ctx, param=param) from None
    if count < 0:
        raise click.BadParameter("must be 0 or more", ctx=ctx, param=param)
    return count


@cli.command()
@click.argument("endpoint")
@click.option("--variant", default=None, help="Only this production variant's instances.")
@click.option("--instance", default=None, metavar="N|ID",
              help="The N-th instance (from 1, in the order `GET /moorage/v1/endpoints/NAME` lists them, "
                   "within --variant if given), or an instance id.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they are written, until Ctrl-C.")
@click.option("--lines", "-n", default="100", show_default=True, callback=_parse_lines, metavar="N|all",
              help="Lines to show from the end of each instance's log (rotated parts included); 'all' for all.")
@home_option
@url_option
def logs(endpoint: str, variant: str | None, instance: str | None, follow: bool, lines: int | None,
         home: Path | None, url: str | None) -> None:
    """Print instance logs. Without --instance: every instance's, prefixed [variant/instance] and
    interleaved by their timestamps, each file's own line order kept."""
    from moorage.cli.logs import LogsError, select_sources, show

    try:
        selection = select_sources(endpoint, home, url, variant, instance)
    except LogsError as exc:
        fail(str(exc))
    try:
        show(selection, lines, follow)
    except BrokenPipeError:
        # `moorage logs ... | head`: the reader left; that is not an error.
        sys.stderr.close()


# -- delete -----------------------------------------------------------------------------------------
@cli.command()
@click.argument("endpoint")
@click.option("--keep-config", is_flag=True, help="Keep the endpoint config.")
@click.option("--keep-model", is_flag=True, help="Keep the model(s) the endpoint config names.")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Seconds to wait for the deletion.")
@home_option
@url_option
@reports_errors
def delete(endpoint: str, keep_config: bool, keep_model: bool, timeout: float, home: Path | None,
           url: str | None) -> None:
    """Delete an endpoint and wait until it is gone; then its endpoint config and models, unless kept."""
    from moorage.sdk.predictor import Predictor

    predictor = Predictor(endpoint, sagemaker_session=make_session(home, url))
    config_name = predictor.describe_endpoint()["EndpointConfigName"]
    if not keep_model:
        predictor.model_names()  # read before the endpoint goes; the config is still there after
    predictor.delete_endpoint(delete_endpoint_config=False, wait=True, timeout=timeout)
    click.echo(f"deleted endpoint {endpoint}")
    if not keep_model:
        try:
            for model_name in predictor.model_names():
                predictor.sagemaker_session.delete_model(model_name)
                click.echo(f"deleted model {model_name}")
        except Exception as exc:
            fail(f"endpoint deleted, but not its model(s): {describe_client_error(exc)}")
    if not keep_config:
        predictor.sagemaker_session.delete_endpoint_config(config_name)
        click.echo(f"deleted endpoint config {config_name}")


cli.add_command(monitor_commands)
cli.add_command(metrics_command)
cli.add_command(alarms_command)
cli.add_command(transform_commands)
cli.add_command(rollout_commands)
cli.add_command(experiment_commands)
cli.add_command(models_command)
cli.add_command(shadow_commands)
cli.add_command(edge_commands)
cli.add_command(keys_commands)


def main() -> None:
    try:
        cli(prog_name="moorage")
    except ClientError as exc:
        # No server or no key found (Connection.discover): a user's error, said in one line, in any command.
        fail(str(exc))
