"""moorage: self-hosted model serving and monitoring that speaks SageMaker's wire protocols."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Model", "Predictor", "Session", "__version__"]

if TYPE_CHECKING:
    from moorage.sdk import Model, Predictor, Session

_SDK_NAMES = frozenset({"Model", "Predictor", "Session"})


def __getattr__(name: str) -> Any:
    # The SDK pulls in numpy and botocore; `import moorage` (the CLI, instance processes) should not.
    if name in _SDK_NAMES:
        from moorage import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'moorage' has no attribute {name!r}")
