"""``moorage edge``: compile a model into a signed edge package, and the key packages are signed with.

``moorage edge compile MODEL_OR_ARCHIVE --output pkg.tar.gz`` runs here, without a server: the model (a
``model.tar.gz`` as endpoints take it, or one model file) is exported to ONNX, optimised, optionally
quantised to int8, checked against the original on ``--validate`` data, and signed with the home's key
(``HOME/edge/signing-key.pem``, made with mode 0600 on first use; the server signs with the same file, so
its fleets take what this command makes). ``moorage edge key`` prints that key's public half, which
devices trust (``moorage-edge serve --trust-key``).

The group's device and fleet commands live in ``cli/edge_devices.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from moorage.cli.common import fail, home_option, stdout_console
from moorage.cli.edge_devices import devices_command, publish_command, register_command


@click.group()
def edge() -> None:
    """Edge devices: compile and sign packages, manage fleets and devices."""


def _home(home: Path | None) -> Path:
    from moorage.settings import default_home

    return (home or default_home()).expanduser()


def _signing_key_path(home: Path | None) -> Path:
    from moorage.control.edge_deployments import signing_key_path

    return signing_key_path(_home(home))


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


@edge.command("compile")
@click.argument("model", metavar="MODEL_OR_ARCHIVE")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the package (.tar.gz).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Dynamic int8 quantisation (MatMul/Gemm weights: MLPs, torch models; trees keep their size).")
@click.option("--validate", "validate", default=None, metavar="DATA.csv",
              help="A sample to compare the compiled model with the original on (numeric CSV; a header is "
                   "detected). Compiling fails when the drop exceeds --tolerance.")
@click.option("--label-column", default=None, metavar="N|NAME",
              help="The sample's label column (0-based index, negative from the end, or header name): accuracy "
                   "is compared instead of agreement.")
@click.option("--tolerance", type=float, default=None, show_default="0.01",
              help="The largest drop allowed: accuracy (or label agreement) for classifiers, relative error for "
                   "regressors.")
@click.option("--name", default=None, help="Model name in the package (default: the file's name).")
@click.option("--version", "model_version", default=None, help="Model version in the package (default: 1).")
@click.option("--framework", default=None,
              help="sklearn, xgboost, lightgbm, pytorch or onnx (SageMaker's SKLEARN, ... too); default: detected "
                   "from the model's files as endpoints do.")
@click.option("--input-shape", default=None, metavar="D1,D2,...",
              help="One record's input shape for a PyTorch model (e.g. 3,224,224); default: the sample's width.")
@click.option("--task", type=click.Choice(["classification", "regression"]), default=None,
              help="How to compare outputs (default: from the model; PyTorch/ONNX models with several output "
                   "columns are classifiers).")
@click.option("--signing-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ed25519 private key (PEM) to sign with (default: the home's edge/signing-key.pem).")
@home_option
def compile_command(model: str, output: Path, quantize: str | None, validate: str | None, label_column: str | None,
                    tolerance: float | None, name: str | None, model_version: str | None, framework: str | None,
                    input_shape: str | None, task: str | None, signing_key: Path | None, home: Path | None) -> None:
    """Compile MODEL_OR_ARCHIVE (a model.tar.gz or a model file) into a signed edge package."""
    from moorage.compiler import (
        DEFAULT_TOLERANCE,
        CompileError,
        ValidationFailed,
        compile_model,
        parse_input_shape,
    )
    from moorage.edge.package import PackageError, load_or_create_private_key, load_private_key

    try:
        key = load_private_key(signing_key) if signing_key else load_or_create_private_key(_signing_key_path(home))
        result = compile_model(model, output, quantize=quantize, validate=validate, label_column=label_column,
                               tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, signing_key=key,
                               name=name, version=model_version, framework=framework,
                               input_shape=parse_input_shape(input_shape), task=task)
    except ValidationFailed as exc:
        fail(f"{exc} No package was written.")
    except (CompileError, PackageError, OSError) as exc:
        fail(str(exc))
    _show(result)


def _show(result: Any) -> None:
    from rich.table import Table

    from moorage.compiler import describe_drop

    manifest = result.manifest
    sizes = manifest["sizes"]
    optimisation = manifest["optimization"]
    table = Table(show_header=False, box=None)
    table.add_row("package", f"{result.path} ({_size(result.package_bytes)})")
    table.add_row("model", f"{manifest['name']} version {manifest['version']}: {manifest['model']} "
                           f"({manifest['framework']}, {manifest['task']})")
    before = sizes.get("original_model_bytes") or sizes.get("source_bytes")
    ratio = f" ({sizes['ratio']:.2f}x)" if sizes.get("ratio") else ""
    table.add_row("size", f"{_size(before)} original -> {_size(sizes['exported_onnx_bytes'])} ONNX -> "
                          f"{_size(sizes['model_bytes'])} compiled{ratio}")
    table.add_row("optimisation", optimisation["level"] + (f", {optimisation['quantization']}"
                                                           if optimisation["quantization"] else ""))
    if optimisation.get("note"):
        table.add_row("quantisation", optimisation["note"])
    validation = manifest.get("validation")
    table.add_row("validation", describe_drop(validation) if validation else "none (no --validate sample)")
    if manifest.get("self_test"):
        table.add_row("self-test", f"{manifest['self_test']['records']} records "
                                   f"({manifest['self_test']['origin']})")
    table.add_row("signed by", f"key {manifest['signing_key_id']}")
    for note in result.notes:
        if note != optimisation.get("note"):
            table.add_row("note", note)
    stdout_console().print(table)


@edge.command("key")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the public key (PEM) to this file instead of printing it.")
@home_option
def key_command(output: Path | None, home: Path | None) -> None:
    """Print the public key (PEM) edge packages are signed with; devices trust it (--trust-key)."""
    from moorage.edge.package import PackageError, key_id, load_or_create_private_key, public_key_pem

    try:
        key = load_or_create_private_key(_signing_key_path(home))
    except (PackageError, OSError) as exc:
        fail(str(exc))
    pem = public_key_pem(key)
    if output is None:
        click.echo(pem.decode(), nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(pem)
    click.echo(f"wrote the public key {key_id(key)} to {output}", err=True)


# The fleets' device commands (cli/edge_devices.py): devices, register, publish.
edge.add_command(devices_command)
edge.add_command(register_command)
edge.add_command(publish_command)
