"""Which runtime serves a container image.

SageMaker users name framework images by their ECR URI; moorage maps each to the built-in runtime
that serves the same model files with the same handler contract. Short names work too. A runtime's
framework packages are optional extras, checked when a model is created, so a missing one is a
clear ``ValidationException`` then rather than a crashed instance later.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    extra: str  # pip install moorage[extra]
    modules: tuple[str, ...]  # import names that must be importable
    short_names: tuple[str, ...]
    image_pattern: re.Pattern[str]


def _image(*repositories: str) -> re.Pattern[str]:
    """Matches an image whose repository (the last path part before ``:tag``/``@digest``) is one of these."""
    names = "|".join(repositories)
    return re.compile(rf"(^|/)({names})(:|@|$)")


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec(
            name="sklearn", extra="sklearn", modules=("sklearn", "joblib"),
            short_names=("sklearn", "scikit-learn"),
            # 683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3
            image_pattern=_image("sagemaker-scikit-learn"),
        ),
        RuntimeSpec(
            name="xgboost", extra="xgboost", modules=("xgboost",),
            short_names=("xgboost",),
            # the framework image (sagemaker-xgboost:1.7-1) and the built-in algorithm (xgboost:1)
            image_pattern=_image("sagemaker-xgboost", "xgboost"),
        ),
        RuntimeSpec(
            name="lightgbm", extra="lightgbm", modules=("lightgbm",),
            short_names=("lightgbm",),
            image_pattern=_image("lightgbm", "sagemaker-lightgbm"),
        ),
        RuntimeSpec(
            name="onnx", extra="onnx", modules=("onnxruntime",),
            short_names=("onnx", "onnxruntime"),
            image_pattern=_image("onnx", "onnxruntime", "sagemaker-onnx", "onnx-inference"),
        ),
        RuntimeSpec(
            name="pytorch", extra="pytorch", modules=("torch",),
            short_names=("pytorch", "torch"),
            # 763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.1.0-cpu-py310
            image_pattern=_image("pytorch-inference", "sagemaker-pytorch", "pytorch-serving", "pytorch"),
        ),
        RuntimeSpec(
            name="mlflow", extra="mlflow", modules=("mlflow",),
            short_names=("mlflow",),
            # what `mlflow sagemaker build-and-push-container` names its image
            image_pattern=_image("mlflow-pyfunc", "mlflow"),
        ),
        RuntimeSpec(
            # Bring your own server: the model data's executable `serve` (or the container's
            # MOORAGE_SERVE_COMMAND) is the instance; it needs nothing installed beside moorage.
            name="byo", extra="", modules=(),
            short_names=("byo",),
            image_pattern=_image("moorage-byo"),
        ),
    )
}


class UnsupportedImage(ValueError):
    pass


def supported_images() -> str:
    names = ", ".join(n for spec in RUNTIMES.values() for n in spec.short_names)
    return f"{names} (or a SageMaker framework image URI for one of them)"


def resolve_image(image: str) -> RuntimeSpec:
    ref = image.strip()
    lowered = ref.lower()
    for spec in RUNTIMES.values():
        if lowered in spec.short_names or spec.image_pattern.search(lowered):
            return spec
    raise UnsupportedImage(f"moorage cannot serve image '{ref}' yet. Supported images: {supported_images()}.")


def missing_packages(spec: RuntimeSpec) -> str | None:
    """A message naming the extra to install when the runtime's packages are not importable."""
    missing = [m for m in spec.modules if not _importable(m)]
    if not missing:
        return None
    return (
        f"The {spec.name} runtime needs the Python packages {', '.join(missing)}, which are not installed "
        f"where moorage runs. Install them with: pip install 'moorage[{spec.extra}]'"
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False
