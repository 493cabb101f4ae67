"""LightGBM: Booster text files (``model.txt``) and pickled scikit-learn API models.

SageMaker has no LightGBM framework container (its LightGBM is a built-in algorithm with its own
script), so requests and responses follow moorage's codecs: CSV, JSON, JSON Lines and NPY in and out,
one CSV row per input row. A Booster's ``predict`` is kept as is: probabilities for ``binary``, an
(n, classes) probability array for ``multiclass``, values for regression; a pickled ``LGBMClassifier``
answers labels, as its own ``predict`` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from moorage.runtimes.codecs import PayloadError
from moorage.runtimes.frameworks.base import Framework, ModelLoadError, cpu_threads, format_traceback

_NUMERIC_KINDS = frozenset("biuf")
# Every LightGBM text model starts with this line; it tells a model from a requirements.txt or notes.
_TEXT_MODEL_HEADER = b"tree"


class LightGBMFramework(Framework):
    """LightGBM Boosters (text files) and pickled LGBMClassifier/LGBMRegressor models."""

    name = "lightgbm"
    # model.txt, else the one LightGBM *.txt, else model.joblib/.pkl/.pickle, else the one pickle.
    model_files = ("model.txt",)
    model_suffixes = (".txt",)
    fallback_suffixes = (".joblib", ".pkl", ".pickle")
    missing_hint = "; a *.txt counts only if it is a LightGBM text model (its first line is 'tree')"

    def __init__(self) -> None:
        # A user model_fn bypasses load_model, so start from the process environment (the instance's own).
        self.threads = cpu_threads(os.environ)

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        self.threads = cpu_threads(os.environ if env is None else env)
        path = self.find_model_file(Path(model_dir))
        try:
            if path.suffix == ".txt":
                return lgb.Booster(model_file=str(path))
            model = _unpickle(path)
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load {path.name}: {type(exc).__name__}: {exc}", traceback=format_traceback()
            ) from exc
        if isinstance(model, lgb.LGBMModel):
            # Its predict turns n_jobs into LightGBM's num_threads; None would mean every physical core.
            model.set_params(n_jobs=self.threads)
        elif not hasattr(model, "predict"):
            raise ModelLoadError(f"{path.name} holds a {type(model).__name__}, which has no predict method")
        return model

    def is_model_file(self, path: Path) -> bool:
        return path.suffix != ".txt" or _is_text_model(path)

    # ------------------------------------------------------------------------------------------ requests

    def decode(self, body: bytes | str, content_type: str) -> Any:
        data = super().decode(body, content_type)
        if isinstance(data, np.ndarray) and data.ndim == 1:
            # A flat list is one instance's features; 2-D also lets the batcher stack it with other requests.
            return data.reshape(1, -1)
        return data

    def predict(self, model: Any, data: Any) -> Any:
        if isinstance(model, lgb.Booster):
            try:
                # A Booster keeps no thread setting for prediction: without num_threads OpenMP takes every core.
                return model.predict(_numeric(data), num_threads=self.threads)
            except lgb.basic.LightGBMError as exc:
                raise _shape_error(exc) from None
        if isinstance(model, lgb.LGBMModel):
            try:
                return model.predict(_numeric(data))
            except (lgb.basic.LightGBMError, ValueError) as exc:
                raise _shape_error(exc) from None
        return model.predict(data)  # e.g. a scikit-learn Pipeline that ends in a LightGBM estimator


def _unpickle(path: Path) -> Any:
    import joblib

    return joblib.load(path)  # reads plain pickles too, and joblib's compressed files


def _is_text_model(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.readline().strip() == _TEXT_MODEL_HEADER


def _numeric(data: Any) -> Any:
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in _NUMERIC_KINDS:
            raise PayloadError("LightGBM needs numeric features; the request has non-numeric values")
        return data
    if isinstance(data, dict) or (isinstance(data, list) and data and isinstance(data[0], dict)):
        raise PayloadError(
            "LightGBM predicts from rows of numbers (CSV, a JSON list of lists, NPY); "
            f"the request decoded to {type(data).__name__}"
        )
    return data


def _shape_error(exc: Exception) -> Exception:
    """The feature-count mismatch is the client's mistake (400); anything else stays a model error."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = message.lower()
    # LightGBM's own check ("The number of features in data (3) is not the same...") and scikit-learn's
    # ("X has 3 features, but LGBMClassifier is expecting 4 features as input").
    if "number of features" in lowered or ("features" in lowered and "expecting" in lowered):
        return PayloadError(message)
    return exc
