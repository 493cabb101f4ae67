"""Framework defaults for the built-in runtimes, one module each.

Frameworks are imported by name only when an instance starts, so an instance process loads just
its own framework's packages, and a runtime whose optional extra is missing costs nothing until
it is used (the registry reports the missing extra at CreateModel time).
"""

from __future__ import annotations

import importlib

from moorage.runtimes.frameworks.base import Framework, ModelLoadError

# runtime name -> "module:Class"
FRAMEWORK_CLASSES: dict[str, str] = {
    "sklearn": "moorage.runtimes.frameworks.sklearn:SklearnFramework",
    "pytorch": "moorage.runtimes.frameworks.pytorch:PyTorchFramework",
    "mlflow": "moorage.runtimes.frameworks.mlflow:MlflowFramework",
    "xgboost": "moorage.runtimes.frameworks.xgboost:XGBoostFramework",
    "lightgbm": "moorage.runtimes.frameworks.lightgbm:LightGBMFramework",
    "onnx": "moorage.runtimes.frameworks.onnx:OnnxFramework",
}

__all__ = ["FRAMEWORK_CLASSES", "Framework", "ModelLoadError", "load_framework"]


def load_framework(name: str) -> Framework:
    try:
        module_name, _, class_name = FRAMEWORK_CLASSES[name].partition(":")
    except KeyError as exc:
        raise ModelLoadError(f"unknown runtime {name!r}; known: {', '.join(sorted(FRAMEWORK_CLASSES))}") from exc
    return getattr(importlib.import_module(module_name), class_name)()
