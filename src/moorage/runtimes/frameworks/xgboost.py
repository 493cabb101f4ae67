"""XGBoost: the SageMaker XGBoost container's model files, request types and response shapes.

What the container (``sagemaker-xgboost``, framework and built-in algorithm modes) does, and what we do:

* Model file: training writes ``xgboost-model``. Containers before 1.3 pickled the ``Booster``; later ones
  write XGBoost's own format (JSON or UBJSON). We sniff the bytes rather than trust a name: both XGBoost
  formats open with a ``{`` object marker, everything else is tried as a (joblib) pickle. Without
  ``xgboost-model`` we take ``*.json``/``*.ubj``/``*.bst``/``*.model``, then a pickled ``XGBClassifier`` /
  ``XGBRegressor`` (``*.joblib``/``*.pkl``/``*.pickle``).
* Prediction: a native ``Booster`` predicts over all trees with ``validate_features=False``, so
  ``binary:logistic`` answers probabilities and ``multi:softprob`` an (n, classes) array, as the container
  does. Models from the scikit-learn API answer ``model.predict`` (labels for classifiers).
* Requests: CSV (empty cells are missing values), ``text/libsvm`` / ``text/x-libsvm`` (absent entries are
  missing, indices taken as written, as XGBoost's own reader does), plus JSON, JSON Lines and NPY.
* Responses: for ``text/csv`` a 1-D prediction is one comma-separated line, as the container answers a
  real-time request, and one value a line when ``SAGEMAKER_BATCH`` is set (SageMaker sets it in batch
  transform, whose output must line up with its input). A 2-D prediction is one CSV row per input row
  (the container would print Python lists there). JSON is the bare list, as the container's encoder writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

from moorage.runtimes import codecs
from moorage.runtimes.codecs import PayloadError, UnsupportedContentType
from moorage.runtimes.frameworks.base import Framework, ModelLoadError, cpu_threads, format_traceback

BATCH_ENV = "SAGEMAKER_BATCH"
LIBSVM = "text/libsvm"
_LIBSVM_TYPES = frozenset({LIBSVM, "text/x-libsvm"})
_SUPPORTED = ", ".join((codecs.CSV, LIBSVM, "text/x-libsvm", codecs.JSON, codecs.JSONLINES, codecs.NPY))
_NUMERIC_KINDS = frozenset("biuf")
_FALSE = frozenset({"", "0", "false", "no", "off"})


class XGBoostFramework(Framework):
    """XGBoost Boosters and scikit-learn API models, served as SageMaker's XGBoost container serves them."""

    name = "xgboost"
    # SageMaker's XGBoost container reads a request without Content-Type as CSV and answers CSV.
    default_content_type = codecs.CSV
    default_accept = codecs.CSV
    # xgboost-model, else one XGBoost-format file, else one pickle; model.* or xgboost-model.* wins a tie.
    model_files = ("xgboost-model",)
    model_suffixes = (".json", ".ubj", ".bst", ".model")
    fallback_suffixes = (".joblib", ".pkl", ".pickle")

    def __init__(self) -> None:
        # A user model_fn bypasses load_model, so start from the process environment (the instance's own).
        self._configure(os.environ)
        self._sized: Any = None
        self._features = 0

    def _configure(self, env: Mapping[str, str]) -> None:
        self.threads = cpu_threads(env)
        # The container tests the variable for truthiness; we also read "false"/"0" as off, which is meant.
        self.batch_csv = env.get(BATCH_ENV, "").strip().lower() not in _FALSE

    # ------------------------------------------------------------------------------------------- loading

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        self._configure(os.environ if env is None else env)
        path = self.find_model_file(Path(model_dir))
        try:
            model = _load(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load {path.name}: {type(exc).__name__}: {_first_line(exc)}", traceback=format_traceback()
            ) from exc
        _set_threads(model, self.threads)
        return model

    # ------------------------------------------------------------------------------------------ requests

    def decode(self, body: bytes | str, content_type: str) -> Any:
        media_type = codecs.normalize(content_type)
        if media_type in _LIBSVM_TYPES:
            return parse_libsvm(body)
        try:
            data = codecs.decode(body, content_type)  # type: ignore[arg-type]
        except UnsupportedContentType as exc:
            exc.args = (f"Content type {content_type!r} is not supported; supported: {_SUPPORTED}",)
            raise
        if isinstance(data, np.ndarray) and data.ndim == 1:
            # A flat list is one instance's features (how SageMaker XGBoost examples send JSON), and a 2-D
            # array here lets the batcher stack it with other requests.
            return data.reshape(1, -1)
        return data

    def predict(self, model: Any, data: Any) -> Any:
        if isinstance(model, xgb.Booster):
            if isinstance(data, np.ndarray):
                data = _numeric(data)
                self._check_width(model, data)
                # inplace_predict skips building a DMatrix (the dominant cost for a few rows) and gives
                # the same numbers as Booster.predict(DMatrix(data)).
                with _short_errors():
                    return model.inplace_predict(data, validate_features=False)
            if sp.issparse(data):
                data = xgb.DMatrix(_widen(data, self._width(model)))
            if isinstance(data, xgb.DMatrix):
                self._check_width(model, data)
                with _short_errors():
                    return model.predict(data, validate_features=False)
            raise PayloadError(
                f"XGBoost predicts from rows of numbers (CSV, libsvm, a JSON list of lists, NPY); "
                f"the request decoded to {type(data).__name__}"
            )
        if isinstance(model, xgb.XGBModel):
            if isinstance(data, np.ndarray):
                data = _numeric(data)
                if data.shape[-1] != model.n_features_in_:
                    raise PayloadError(
                        f"Feature shape mismatch, expected: {model.n_features_in_}, got {data.shape[-1]}"
                    )
            elif sp.issparse(data):
                data = _widen(data, model.n_features_in_)
            with _short_errors():
                return model.predict(data)
        return model.predict(data)  # e.g. a scikit-learn Pipeline that ends in an XGBoost estimator

    def _width(self, model: xgb.Booster) -> int:
        # Asked once per model, not per request: it is a call into the library.
        if model is not self._sized:
            self._sized, self._features = model, model.num_features()
        return self._features

    def _check_width(self, model: xgb.Booster, data: Any) -> None:
        """A request with the wrong number of features is the client's mistake (400), said plainly.

        Without validate_features (off, as in the container, so that unnamed data fits a model trained
        on named columns) XGBoost reports it only as a failed C++ check with a stack trace.
        """
        width = data.num_col() if isinstance(data, xgb.DMatrix) else data.shape[-1]
        expected = self._width(model)
        if width > expected or (width < expected and not isinstance(data, xgb.DMatrix)):
            raise PayloadError(f"Feature shape mismatch, expected: {expected}, got {width}")

    def encode(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        if accept == codecs.CSV and isinstance(prediction, np.ndarray) and prediction.ndim == 1:
            values = map(str, prediction.tolist())
            if self.batch_csv:
                return ("\n".join(values) + "\n").encode("utf-8"), codecs.CSV
            return ",".join(values).encode("utf-8"), codecs.CSV
        return codecs.encode(prediction, accept)


# ---------------------------------------------------------------------------------------------- loading


def _load(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:1] == b"{":  # JSON ('{"learner"...') and UBJSON ('{L...') alike
        return _booster(raw)
    try:
        model = _unpickle(path)
    except Exception as pickle_exc:
        try:
            return _booster(raw)
        except Exception as xgb_exc:
            raise ModelLoadError(
                f"{path.name} is neither a pickle/joblib file ({type(pickle_exc).__name__}: {_first_line(pickle_exc)}) "
                f"nor a model XGBoost {xgb.__version__} can read ({_first_line(xgb_exc)}). XGBoost 3.1 and later no "
                "longer read the legacy binary format: load it with an older XGBoost and save_model() it as "
                "model.json or model.ubj"
            ) from xgb_exc
    if not hasattr(model, "predict"):
        raise ModelLoadError(f"{path.name} holds a {type(model).__name__}, which has no predict method")
    return model


def _booster(raw: bytes) -> xgb.Booster:
    # From a buffer, XGBoost reads the format from the header; from a path it guesses by the file extension,
    # which xgboost-model does not have.
    return xgb.Booster(model_file=bytearray(raw))


def _unpickle(path: Path) -> Any:
    import joblib

    return joblib.load(path)  # reads plain pickles too, and joblib's compressed files


def _set_threads(model: Any, threads: int) -> None:
    if isinstance(model, xgb.Booster):
        model.set_param("nthread", threads)
    elif isinstance(model, xgb.XGBModel):
        model.set_params(n_jobs=threads)  # also passed on to its Booster


# --------------------------------------------------------------------------------------------- requests


def parse_libsvm(body: bytes | str) -> sp.csr_matrix:
    """``[label] [qid:n] index:value ...`` lines as a CSR matrix; absent entries are missing, not zero."""
    if isinstance(body, str):
        text = body
    else:
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"libsvm body is not valid UTF-8: {exc}") from None
    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0]
        tokens = line.split()
        if not tokens:
            continue
        for token in tokens:
            index, sep, value = token.partition(":")
            if not sep or index == "qid":
                continue  # the label (ignored at inference, as the container does) or a ranking group id
            try:
                indices.append(int(index))
                values.append(float(value))
            except ValueError:
                raise PayloadError(f"libsvm line {number}: {token!r} is not index:value") from None
            if indices[-1] < 0:
                raise PayloadError(f"libsvm line {number}: feature index {index} is negative")
        indptr.append(len(indices))
    if len(indptr) == 1:
        raise PayloadError("libsvm body has no rows")
    width = max(indices) + 1 if indices else 0
    matrix = sp.csr_matrix(
        (np.asarray(values, dtype=np.float64), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
        shape=(len(indptr) - 1, width),
    )
    matrix.sum_duplicates()  # a repeated index would otherwise reach XGBoost as two entries
    return matrix


def _widen(matrix: Any, features: int) -> Any:
    """A sparse request names only the features it has; give it the model's width (the rest are missing)."""
    if matrix.shape[1] < features:
        matrix = sp.csr_matrix(matrix)  # a copy: resize() works in place
        matrix.resize((matrix.shape[0], features))
    return matrix


def _numeric(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind not in _NUMERIC_KINDS:
        raise PayloadError("XGBoost needs numeric features; the request has non-numeric values")
    return data


@contextmanager
def _short_errors() -> Iterator[None]:
    """XGBoost's errors without the C++ stack trace that follows their first line."""
    try:
        yield
    except xgb.core.XGBoostError as exc:
        raise xgb.core.XGBoostError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    # XGBoost's errors carry a C++ stack trace after the first line.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
