"""Framework defaults: how a built-in runtime loads a model and predicts when ``inference.py`` does not say.

Each framework is one small class; ``FRAMEWORKS`` maps the runtime names that SageMaker image URIs resolve
to (``sklearn`` now; ``xgboost``, ``lightgbm``, ``onnx``, ``pytorch`` later) onto an instance. A framework
may also override ``decode``/``encode`` when its models want other inputs than numpy arrays (a DMatrix,
a tensor), which is why those defaults live here and not only in the handler.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.runtimes import codecs


class ModelLoadError(Exception):
    """The model (or the user's inference module) could not be loaded; the instance never becomes ready."""

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


class Framework:
    """The defaults behind SageMaker's ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``."""

    name: str = "generic"

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        """The default ``model_fn``: find and load the model artifact under ``model_dir``."""
        raise ModelLoadError(f"The {self.name} runtime has no default model loader; define model_fn in inference.py")

    def predict(self, model: Any, data: Any) -> Any:
        """The default ``predict_fn``: estimators in every supported framework are row-wise."""
        return model.predict(data)

    def decode(self, body: bytes | str, content_type: str) -> Any:
        """The default ``input_fn``."""
        return codecs.decode(body, content_type)  # type: ignore[arg-type]

    def encode(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        """The default ``output_fn``; ``accept`` is already negotiated to a supported type."""
        return codecs.encode(prediction, accept)


SKOPS_TRUSTED_ENV = "MOORAGE_SKOPS_TRUSTED_TYPES"

# skops refuses to build any type it was not told to trust. These packages are what a scikit-learn model
# is made of, and the user already chose to run them; anything else (their own classes, other libraries)
# must be named explicitly, because trusting it means running its code at load time.
_SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


class SklearnFramework(Framework):
    """scikit-learn estimators saved with joblib, pickle or skops."""

    name = "sklearn"
    _PREFERRED = ("model.joblib", "model.pkl", "model.pickle", "model.skops")
    _SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        path = self.find_model_file(Path(model_dir))
        env = os.environ if env is None else env
        try:
            if path.suffix == ".skops":
                return _load_skops(path, env)
            return _load_pickled(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load {path.name}: {type(exc).__name__}: {exc}", traceback=_format_traceback()
            ) from exc

    def find_model_file(self, model_dir: Path) -> Path:
        """model.joblib, else model.pkl/.pickle, else model.skops, else the only model-like file."""
        for name in self._PREFERRED:
            if (model_dir / name).is_file():
                return model_dir / name
        candidates = sorted(p for p in model_dir.glob("*") if p.is_file() and p.suffix in self._SUFFIXES)
        if len(candidates) == 1:
            return candidates[0]
        seen = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
        problem = "several model files" if candidates else "no model file"
        raise ModelLoadError(
            f"Found {problem} in {model_dir} (looked for model.joblib, model.pkl, model.pickle, "
            f"model.skops, or exactly one *.joblib/*.pkl/*.pickle/*.skops); files seen: {seen or 'none'}"
        )


def _load_pickled(path: Path) -> Any:
    # joblib.load reads plain pickles too, and users often joblib.dump() into a file named model.pkl:
    # pickle.load would then return joblib's array placeholders instead of failing, so prefer joblib.
    try:
        import joblib
    except ImportError:
        with path.open("rb") as handle:
            return pickle.load(handle)
    return joblib.load(path)


def _load_skops(path: Path, env: Mapping[str, str]) -> Any:
    import skops.io

    extra = {name.strip() for name in env.get(SKOPS_TRUSTED_ENV, "").split(",") if name.strip()}
    untrusted = skops.io.get_untrusted_types(file=path)
    refused = [name for name in untrusted if not name.startswith(_SKOPS_TRUSTED_PREFIXES) and name not in extra]
    if refused:
        raise ModelLoadError(
            f"{path.name} contains types that are not trusted: {', '.join(refused)}. If you trust them, "
            f"list them (comma-separated) in the {SKOPS_TRUSTED_ENV} environment variable"
        )
    return skops.io.load(path, trusted=untrusted)


def _format_traceback() -> str:
    import traceback

    return traceback.format_exc()


FRAMEWORKS: dict[str, Framework] = {
    SklearnFramework.name: SklearnFramework(),
}
