"""From a model resource to what an instance needs to start: runtime, artifact location (unpacked here), environment."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from moorage.control.context import Context
from moorage.control.models import (
    BYO,
    SERVE_FILE,
    container_hostnames,
    containers_of,
    execution_mode,
    model_data_url,
    serve_command_from_env,
    serve_executable,
    startup_timeout_from_env,
)
from moorage.errors import ValidationException
from moorage.runtimes.registry import UnsupportedImage, resolve_image
from moorage.serving.launch_spec import LaunchSpec
from moorage.store.artifacts import ArtifactError, is_code_archive

# The SageMaker Python SDK writes this for code packed inside model.tar.gz; there it means the
# archive's code/ folder, wherever we extracted it.
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
REQUIREMENTS_FILE = "requirements.txt"


async def launch_specs(ctx: Context, model: dict[str, Any], instance_type: str,
                       startup_timeout: float | None = None) -> list[LaunchSpec]:
    """A LaunchSpec per container of the model, in order (one, or a serial inference pipeline's)."""
    containers = containers_of(model)
    if len(containers) == 1:
        return [await launch_spec(ctx, containers[0], instance_type, startup_timeout)]
    direct = execution_mode(model) == "Direct"
    specs = []
    for container, hostname in zip(containers, container_hostnames(model), strict=True):
        spec = await launch_spec(ctx, container, instance_type, startup_timeout)
        specs.append(dataclasses.replace(spec, container_hostname=hostname, direct=direct))
    return specs


async def launch_spec(ctx: Context, container: dict[str, Any], instance_type: str,
                      startup_timeout: float | None = None) -> LaunchSpec:
    """Fetch and unpack one container's artifacts (off the event loop) and build its LaunchSpec.

    ``startup_timeout`` is the variant's /ping deadline (SageMaker's
    ContainerStartupHealthCheckTimeoutInSeconds); the container's MOORAGE_STARTUP_TIMEOUT wins over it.
    """
    url = model_data_url(container)
    multi_model = container.get("Mode") == "MultiModel"
    if url and not multi_model:
        model_dir = await asyncio.to_thread(ctx.artifacts.materialize, url)
    else:
        model_dir = ctx.settings.models_dir / "empty"
        model_dir.mkdir(parents=True, exist_ok=True)
    env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
    try:
        command = serve_command_from_env(env)
        startup_timeout = startup_timeout_from_env(env) or startup_timeout
    except ValueError as exc:
        raise ValidationException(f"Invalid container Environment: {exc}.") from exc
    if command is not None:
        runtime = BYO
    else:
        try:
            runtime = resolve_image(container["Image"]).name
        except UnsupportedImage:
            runtime = BYO
        if runtime == BYO:
            serve = await asyncio.to_thread(serve_executable, Path(model_dir))
            if serve is None:
                raise ArtifactError(f"The model data at {url or '(none)'} has no executable `{SERVE_FILE}` for image "
                                    f"'{container['Image']}' to run.")
            command = (str(serve),)
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if submit:
        if submit == SAGEMAKER_MODEL_DIR or submit.startswith(SAGEMAKER_MODEL_DIR + "/"):
            env["SAGEMAKER_SUBMIT_DIRECTORY"] = str(model_dir / submit[len(SAGEMAKER_MODEL_DIR):].lstrip("/"))
        elif is_code_archive(submit):
            code_dir = await asyncio.to_thread(ctx.artifacts.materialize, submit)
            env["SAGEMAKER_SUBMIT_DIRECTORY"] = str(code_dir)
    env["SM_MODEL_DIR"] = str(model_dir)
    requirements = await asyncio.to_thread(_requirements_file, Path(model_dir), env)
    caching = (container.get("MultiModelConfig") or {}).get("ModelCacheSetting", "Enabled") != "Disabled"
    return LaunchSpec(runtime=runtime, model_dir=Path(model_dir), environment=env, instance_type=instance_type,
                      command=command or (), requirements=requirements, envs_dir=ctx.settings.home / "envs",
                      startup_timeout=startup_timeout, model_data_url=url or None,
                      instances=ctx.settings.instances, multi_model=multi_model, model_caching=caching)


def _requirements_file(model_dir: Path, env: dict[str, str]) -> Path | None:
    """The requirements.txt beside the user's code, as the handler finds that code (submit dir, else code/)."""
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip()
    code_dir = Path(submit) if submit and "://" not in submit and Path(submit).is_dir() else model_dir / "code"
    path = code_dir / REQUIREMENTS_FILE
    return path if path.is_file() else None
