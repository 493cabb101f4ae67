"""Models: a container (image + model data + environment) that endpoint configs refer to by name."""

from __future__ import annotations

import asyncio
import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.control.context import MODEL, Context
from moorage.control.paging import list_query, page
from moorage.control.resources import put_tags
from moorage.control.times import timestamp
from moorage.errors import ValidationException
from moorage.runtimes.frameworks import FRAMEWORK_CLASSES
from moorage.runtimes.registry import UnsupportedImage, missing_packages, resolve_image, supported_images
from moorage.serving.model_cache import budget_for
from moorage.store.artifacts import ArtifactError, describe
from moorage.store.locations import StorageError, check_location
from moorage.store.metadata import AlreadyExists

BYO = "byo"
SERVE_FILE = "serve"
SERVE_COMMAND_ENV = "MOORAGE_SERVE_COMMAND"
STARTUP_TIMEOUT_ENV = "MOORAGE_STARTUP_TIMEOUT"
BYO_HELP = (f"To bring your own model server, put an executable `{SERVE_FILE}` file at the root of the model "
            f"data, or set {SERVE_COMMAND_ENV} in the container's Environment (image '{BYO}').")


def serve_command_from_env(env: Mapping[str, Any]) -> tuple[str, ...] | None:
    """MOORAGE_SERVE_COMMAND split as a POSIX shell would; None when unset; ValueError when unusable."""
    line = env.get(SERVE_COMMAND_ENV)
    if line is None:
        return None
    try:
        argv = tuple(shlex.split(str(line)))
    except ValueError as exc:
        raise ValueError(f"{SERVE_COMMAND_ENV} is not a valid command line ({exc})") from exc
    if not argv:
        raise ValueError(f"{SERVE_COMMAND_ENV} is empty")
    return argv


def serve_executable(model_dir: Path) -> Path | None:
    """The model directory's `serve` program, when it is an executable file."""
    path = model_dir / SERVE_FILE
    return path if path.is_file() and os.access(path, os.X_OK) else None


def startup_timeout_from_env(env: Mapping[str, Any]) -> float | None:
    """MOORAGE_STARTUP_TIMEOUT in seconds; None when unset; ValueError when not a positive number."""
    value = env.get(STARTUP_TIMEOUT_ENV)
    if value is None or not str(value).strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{STARTUP_TIMEOUT_ENV} must be a positive number of seconds, not {value!r}")
    return seconds


MAX_PIPELINE = 15  # containers in a serial inference pipeline, as SageMaker allows
EXECUTION_MODES = ("Serial", "Direct")


def containers_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's containers in order: its PrimaryContainer, or its Containers (a pipeline)."""
    if body.get("PrimaryContainer"):
        return [body["PrimaryContainer"]]
    containers = list(body.get("Containers") or [])
    if not containers:
        raise ValidationException("A model needs a PrimaryContainer or Containers.")
    return containers


def primary_container(body: dict[str, Any]) -> dict[str, Any]:
    """The first container: the model's face (its image in DescribeEndpoint)."""
    return containers_of(body)[0]


def container_hostnames(body: dict[str, Any]) -> list[str]:
    """Each container's ContainerHostname; where none is given, SageMaker's default by position."""
    return [c.get("ContainerHostname") or f"container-{n}" for n, c in enumerate(containers_of(body), 1)]


def execution_mode(body: dict[str, Any]) -> str:
    return (body.get("InferenceExecutionConfig") or {}).get("Mode") or "Serial"


def model_data_url(container: dict[str, Any]) -> str | None:
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"]
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    return source.get("S3Uri") if source else None


class Models:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def create_model(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ModelName"]
        containers = req.get("Containers") or []
        if req.get("PrimaryContainer") and containers:
            raise ValidationException("Specify either PrimaryContainer or Containers, not both.")
        if len(containers) > MAX_PIPELINE:
            raise ValidationException(f"Containers: an inference pipeline has at most {MAX_PIPELINE} containers "
                                      f"({len(containers)} given).")
        mode = execution_mode(req)
        if mode not in EXECUTION_MODES:
            raise ValidationException(f"InferenceExecutionConfig.Mode: {mode!r} is not Serial or Direct.")
        given = [c.get("ContainerHostname") for c in containers]
        if len(containers) > 1 and any(given) and not all(given):
            raise ValidationException("ContainerHostname: give it for every container of the pipeline, or for none.")
        hostnames = container_hostnames(req)
        if len(set(hostnames)) != len(hostnames):
            raise ValidationException(f"ContainerHostname: each container needs its own ({', '.join(hostnames)}).")
        for position, container in enumerate(containers_of(req)):
            where = f"Containers[{position}]: " if len(containers) > 1 else ""
            if len(containers) > 1 and container.get("Mode") == "MultiModel":
                raise ValidationException(f"{where}a container of a pipeline cannot be MultiModel.")
            await self._check_container(container, where)
        arn = self.ctx.arn(MODEL, name)
        body = {k: v for k, v in req.items() if k != "Tags"}
        try:
            self.ctx.store.create(MODEL, name, arn, body)
        except AlreadyExists as exc:
            raise ValidationException(f'Cannot create already existing model "{arn}".') from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        return {"ModelArn": arn}

    async def _check_container(self, container: dict[str, Any], where: str) -> None:
        """ValidationException (prefixed with ``where``) unless the container can run here."""
        try:
            await self._check_one(container)
        except ValidationException as exc:
            raise ValidationException(where + exc.message) from exc

    async def _check_one(self, container: dict[str, Any]) -> None:
        url = model_data_url(container)
        if url:
            try:
                check_location(url, "ModelDataUrl")
            except StorageError as exc:
                raise ValidationException(str(exc)) from exc
        multi_model = container.get("Mode") == "MultiModel"
        if multi_model:
            self._check_multi_model(container)
        if not container.get("Image"):
            raise ValidationException("The container needs an Image (for example 'sklearn' or a SageMaker "
                                      "framework image URI).")
        env = container.get("Environment") or {}
        try:
            command = serve_command_from_env(env)
            startup_timeout_from_env(env)
        except ValueError as exc:
            raise ValidationException(f"Invalid container Environment: {exc}.") from exc
        if command is None:
            try:
                spec = resolve_image(container["Image"])
            except UnsupportedImage as exc:
                # An image we do not know may still be a server of the user's own, in the model data.
                await self._require_serve(container, f"{exc} {BYO_HELP}")
            else:
                if spec.name == BYO:
                    await self._require_serve(container, f"Image '{container['Image']}' runs your own model server. "
                                                         f"{BYO_HELP}")
                elif spec.name not in FRAMEWORK_CLASSES:
                    raise ValidationException(f"The {spec.name} runtime is not available in this moorage version. "
                                              f"Supported images: {supported_images()}.")
                missing = missing_packages(spec)
                if missing:
                    raise ValidationException(missing)
        if url and not multi_model:
            try:
                describe(url)
            except ArtifactError as exc:
                raise ValidationException(str(exc)) from exc

    @staticmethod
    def _check_multi_model(container: dict[str, Any]) -> None:
        """A MultiModel container: a prefix of archives, one of moorage's runtimes, a usable cache setting."""
        url = model_data_url(container)
        if not url:
            raise ValidationException("A MultiModel container needs a ModelDataUrl: the prefix its archives are under.")
        local = url.removeprefix("file://") if url.startswith("file://") or "://" not in url else None
        if local is not None and not Path(local).is_dir():
            raise ValidationException(f"ModelDataUrl {url}: a MultiModel container's ModelDataUrl is a folder "
                                      f"(prefix) of model archives, and this is not one.")
        env = container.get("Environment") or {}
        if serve_command_from_env(env) is not None:
            raise ValidationException("A MultiModel container runs one of moorage's runtimes, not a server of its own.")
        try:
            budget_for("ml.m5.large", env)
        except ValueError as exc:
            raise ValidationException(f"Invalid container Environment: {exc}.") from exc
        setting = (container.get("MultiModelConfig") or {}).get("ModelCacheSetting", "Enabled")
        if setting not in ("Enabled", "Disabled"):
            raise ValidationException(f"MultiModelConfig.ModelCacheSetting: {setting!r} is not Enabled or Disabled.")

    async def _require_serve(self, container: dict[str, Any], reason: str) -> None:
        """Raise ValidationException(reason + what is missing) unless the model data has an executable `serve`."""
        url = model_data_url(container)
        if not url:
            raise ValidationException(f"{reason} The container has no ModelDataUrl to look for `{SERVE_FILE}` in.")
        try:
            # Fetching and unpacking can take a while for a big model: off the event loop. The
            # extraction is cached, so the endpoint's instances reuse it.
            model_dir = await asyncio.to_thread(self.ctx.artifacts.materialize, url)
        except ArtifactError as exc:
            raise ValidationException(str(exc)) from exc
        if await asyncio.to_thread(serve_executable, model_dir) is None:
            found = await asyncio.to_thread((model_dir / SERVE_FILE).exists)
            detail = (f"The `{SERVE_FILE}` file in the model data at {url} is not executable (chmod +x it)."
                      if found else f"The model data at {url} has no `{SERVE_FILE}` file at its root.")
            raise ValidationException(f"{reason} {detail}")

    def get(self, name: str) -> dict[str, Any]:
        row = self.ctx.store.get(MODEL, name)
        if row is None:
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, name)}".')
        return row.body

    async def describe_model(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ModelName"]
        row = self.ctx.store.get(MODEL, name)
        if row is None:
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, name)}".')
        return {**row.body, "ModelArn": row.arn, "CreationTime": timestamp(row.created_at),
                "DeploymentRecommendation": {"RecommendationStatus": "NOT_APPLICABLE"}}

    async def list_models(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        rows, token = page(self.ctx.store.list(MODEL, query), query)
        out: dict[str, Any] = {"Models": [
            {"ModelName": r.name, "ModelArn": r.arn, "CreationTime": timestamp(r.created_at)} for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def delete_model(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ModelName"]
        if not self.ctx.store.delete(MODEL, name):
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, name)}".')
        return {}
