"""From a model resource to what an instance needs to start: runtime, local model dir, environment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from moorage.control.common import Context
from moorage.control.models import model_data_url, primary_container
from moorage.runtimes.registry import resolve_image
from moorage.serving.instance import LaunchSpec

# The SageMaker Python SDK writes this for code packed inside model.tar.gz; there it means the
# archive's code/ folder, wherever we extracted it.
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


def _is_archive_url(value: str) -> bool:
    return "://" in value or value.endswith((".tar.gz", ".tgz", ".tar"))


async def launch_spec(ctx: Context, model: dict[str, Any], instance_type: str) -> LaunchSpec:
    """Fetch and unpack the model's artifacts (off the event loop) and build its LaunchSpec."""
    container = primary_container(model)
    runtime = resolve_image(container["Image"]).name
    url = model_data_url(container)
    if url:
        model_dir = await asyncio.to_thread(ctx.artifacts.materialize, url)
    else:
        model_dir = ctx.settings.models_dir / "empty"
        model_dir.mkdir(parents=True, exist_ok=True)
    env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
    submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if submit:
        if submit == SAGEMAKER_MODEL_DIR or submit.startswith(SAGEMAKER_MODEL_DIR + "/"):
            env["SAGEMAKER_SUBMIT_DIRECTORY"] = str(model_dir / submit[len(SAGEMAKER_MODEL_DIR):].lstrip("/"))
        elif _is_archive_url(submit) and not Path(submit).is_dir():
            code_dir = await asyncio.to_thread(ctx.artifacts.materialize, submit)
            env["SAGEMAKER_SUBMIT_DIRECTORY"] = str(code_dir)
    env["SM_MODEL_DIR"] = str(model_dir)
    return LaunchSpec(runtime=runtime, model_dir=Path(model_dir), environment=env, instance_type=instance_type)
