"""The SageMaker inference-toolkit handler contract, as run inside an instance process.

A user's ``inference.py`` may define ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn`` or
``transform_fn``; the framework's defaults fill in the rest. Every handler function may take one extra
trailing ``context`` argument, as the toolkit allows; we have no MMS context to give, so it gets ``None``.

The instance server calls ``invoke`` for one request, or ``decode`` -> ``predict_many`` -> ``encode`` when
it batches requests that arrived together (only when ``batchable``). Every method raises ``HandlerError``
with the HTTP status to answer, never a bare exception from user code.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback as tb
from collections.abc import Callable, Mapping
from itertools import accumulate
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from moorage.runtimes import codecs
from moorage.runtimes.codecs import PayloadError, UnsupportedContentType
from moorage.runtimes.frameworks import Framework, ModelLoadError

__all__ = ["HandlerError", "InferenceHandler", "ModelLoadError"]

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
DEFAULT_PROGRAM = "inference.py"
# The toolkit decodes these bodies to str before calling a user's input_fn/transform_fn (its UTF8_TYPES);
# JSON Lines and NPY stay bytes. We match on the media type without parameters, so that a
# "; charset=utf-8" suffix does not silently change what user code receives.
_TEXT_TYPES = frozenset({codecs.CSV, codecs.JSON})
_NUMERIC_KINDS = frozenset("biuf")
_TEXT_KINDS = frozenset("USO")


class HandlerError(Exception):
    """A failed request, carrying the HTTP status the instance server should answer with."""

    def __init__(self, status: int, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.traceback = traceback


class _HandlerErrors:
    """``with HANDLER_ERRORS:`` turns what user or framework code raises into a HandlerError with its status.

    A class rather than ``@contextlib.contextmanager``: it is entered three times a request, and a
    generator-based one costs about a microsecond each time, a fifth of an ONNX prediction.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, trace: Any) -> bool:
        if exc is None or isinstance(exc, HandlerError) or not isinstance(exc, Exception):
            return False
        raise _handler_error(exc) from exc


HANDLER_ERRORS = _HandlerErrors()


def _handler_error(exc: BaseException) -> HandlerError:
    trace = "".join(tb.format_exception(exc))
    if isinstance(exc, UnsupportedContentType | PayloadError):
        return HandlerError(exc.status, str(exc), traceback=trace)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        # e.g. the toolkit's GenericInferenceToolkitError(status_code, message): user code chose the status.
        message = getattr(exc, "message", None) or str(exc)
        return HandlerError(status, str(message), traceback=trace)
    return HandlerError(500, f"{type(exc).__name__}: {exc}", traceback=trace)


def _with_context(func: Callable[..., Any], nargs: int) -> Callable[..., Any]:
    """``func`` taking ``nargs`` arguments, passing ``context=None`` when it declares a trailing one.

    Decided once at load, not per request: inspect.signature costs more than a small predict.
    """
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return func
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) <= nargs:
        return func
    extra = positional[nargs]
    # A defaulted extra parameter (model_fn(model_dir, file_name=None)) is not a context slot.
    if extra.name != "context" and extra.default is not inspect.Parameter.empty:
        return func
    return lambda *args: func(*args, None)


class InferenceHandler:
    """One loaded model plus the handler functions that serve it."""

    def __init__(
        self,
        model_dir: Path,
        framework: Framework,
        env: Mapping[str, str],
        program: Path | None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.framework = framework
        self.env = env
        self.program = program
        self.default_accept = env.get(codecs.DEFAULT_ACCEPT_ENV, "").strip() or framework.default_accept
        self.model: Any = None
        self.user_module: ModuleType | None = None
        self.batchable = False
        self._input_fn: Callable[..., Any] | None = None
        self._predict_fn: Callable[..., Any] | None = None
        self._output_fn: Callable[..., Any] | None = None
        self._transform_fn: Callable[..., Any] | None = None

    # ------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_model_dir(cls, model_dir: Path, framework: Framework, env: Mapping[str, str]) -> InferenceHandler:
        """A handler for the extracted model.tar.gz at ``model_dir``; call ``load`` before serving."""
        model_dir = Path(model_dir)
        return cls(model_dir, framework, env, _find_program(model_dir, env))

    def load(self) -> None:
        """Import the user module (if any), bind the handler functions and run ``model_fn``."""
        module = _import_program(self.program) if self.program else None
        self.user_module = module
        hooks = {name: getattr(module, name, None) for name in _HOOKS} if module else dict.fromkeys(_HOOKS)
        if hooks["transform_fn"] and (hooks["input_fn"] or hooks["predict_fn"] or hooks["output_fn"]):
            raise ModelLoadError(
                f"{self.program}: transform_fn cannot be combined with input_fn, predict_fn or output_fn "
                "(the SageMaker inference toolkit refuses this too)"
            )
        self._bind(hooks)
        self.batchable = self._decide_batchable(hooks)
        self.model = self._run_model_fn(hooks["model_fn"])

    def _bind(self, hooks: dict[str, Any]) -> None:
        for name, nargs in _HOOKS.items():
            if name != "model_fn" and hooks[name] is not None:
                setattr(self, f"_{name}", _with_context(hooks[name], nargs))

    def _decide_batchable(self, hooks: dict[str, Any]) -> bool:
        if hooks["transform_fn"]:
            return False  # one opaque call per request: there is no predict step to share
        setting = self.env.get("MOORAGE_BATCHING", "").strip().lower()
        if setting in ("off", "false", "0"):
            return False
        if setting in ("on", "true", "1"):
            return True
        # The default predict_fn is model.predict, which is row-wise; a user predict_fn may not be.
        return hooks["predict_fn"] is None

    def _run_model_fn(self, model_fn: Callable[..., Any] | None) -> Any:
        if model_fn is None:
            return self.framework.load_model(self.model_dir, self.env)
        try:
            # SageMaker hands model_fn a str path; some user code does string concatenation on it.
            return _with_context(model_fn, 1)(str(self.model_dir))
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"model_fn failed: {type(exc).__name__}: {exc}", traceback=tb.format_exc()) from exc

    # ------------------------------------------------------------------------------------------ requests

    def decode(self, body: bytes, content_type: str | None) -> Any:
        """``input_fn``: the request body as the data ``predict`` takes."""
        # A request without Content-Type means what the framework's SageMaker container assumes
        # (JSON for most, as sagemaker-containers does; CSV for XGBoost).
        content_type = content_type or self.framework.default_content_type
        with HANDLER_ERRORS:
            if self._input_fn is None:
                data = self.framework.decode(body, content_type)
                if self._predict_fn is not None:
                    return self.framework.user_predict_input(data, content_type)
                return data
            return self._input_fn(_toolkit_body(body, content_type), content_type)

    def predict(self, data: Any) -> Any:
        """``predict_fn``: the model applied to decoded data."""
        with HANDLER_ERRORS:
            if self._predict_fn is None:
                return self.framework.predict(self.model, data)
            return self._predict_fn(data, self.model)

    def encode(self, prediction: Any, accept: str | None) -> tuple[bytes, str]:
        """``output_fn``: the response body and its content type."""
        with HANDLER_ERRORS:
            if self._output_fn is None:
                return self.framework.encode(prediction, codecs.choose_accept(accept, self.default_accept))
            chosen = self._user_accept(accept)
            return _response(self._output_fn(prediction, chosen), chosen)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[bytes, str]:
        """One request through the whole chain, or through ``transform_fn`` when the module has one."""
        if self._transform_fn is None:
            return self.encode(self.predict(self.decode(body, content_type)), accept)
        content_type = content_type or self.framework.default_content_type
        with HANDLER_ERRORS:
            chosen = self._user_accept(accept)
            result = self._transform_fn(self.model, _toolkit_body(body, content_type), content_type, chosen)
            return _response(result, chosen)

    def _user_accept(self, accept: str | None) -> str:
        """The accept value user code sees: the header as sent, as SageMaker passes it.

        Missing or ``*/*`` means the default accept, as in the toolkit. A list of types is resolved to
        one, since user code compares against a single type and the answer needs a single content type.
        """
        if not accept or accept == codecs.ANY:
            return self.default_accept
        if "," not in accept:
            return accept
        try:
            return codecs.choose_accept(accept, self.default_accept)
        except UnsupportedContentType:
            return accept.split(",", 1)[0].split(";", 1)[0].strip()

    # ------------------------------------------------------------------------------------------ batching

    def predict_many(self, inputs: list[Any]) -> list[Any]:
        """Predictions for several requests' decoded inputs, stacking compatible arrays into one call.

        Returns a list aligned with ``inputs``: each item a prediction or the ``HandlerError`` for that
        input. Arrays with the same trailing shape and dtype family share one ``predict``; when that call
        fails, or its result cannot be split by rows, each input is predicted alone so only a bad one fails.
        """
        results: list[Any] = [None] * len(inputs)
        for indices in _stack_groups(inputs).values():
            if len(indices) == 1 or not self._predict_stacked(inputs, indices, results):
                for i in indices:
                    results[i] = self._predict_one(inputs[i])
        return results

    def _predict_stacked(self, inputs: list[Any], indices: list[int], results: list[Any]) -> bool:
        arrays = [inputs[i] for i in indices]
        try:
            prediction = self.predict(np.concatenate(arrays))
        except HandlerError:
            return False
        # Plain ints, not np.cumsum: numpy scalars make 32 small slices measurably slower.
        bounds = [0, *accumulate(len(a) for a in arrays)]
        rows = bounds[-1]
        if isinstance(prediction, dict):
            # Several named outputs (e.g. ONNX label + probabilities): split each one alike.
            if not prediction or not all(_splittable(v, rows) for v in prediction.values()):
                return False
            for i, start, stop in zip(indices, bounds, bounds[1:], strict=False):
                results[i] = {name: value[start:stop] for name, value in prediction.items()}
            return True
        if not _splittable(prediction, rows):
            return False
        for i, start, stop in zip(indices, bounds, bounds[1:], strict=False):
            results[i] = prediction[start:stop]
        return True

    def _predict_one(self, data: Any) -> Any:
        try:
            return self.predict(data)
        except HandlerError as exc:
            return exc


_HOOKS = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4}


def _stack_groups(inputs: list[Any]) -> dict[Any, list[int]]:
    """Input positions grouped by what can be concatenated; unstackable inputs get a group of their own."""
    groups: dict[Any, list[int]] = {}
    for i, data in enumerate(inputs):
        key: Any = ("alone", i)
        if isinstance(data, np.ndarray) and data.ndim >= 1:
            kind = data.dtype.kind
            family = "num" if kind in _NUMERIC_KINDS else "text" if kind in _TEXT_KINDS else None
            if family is not None:
                key = (data.shape[1:], family)
        groups.setdefault(key, []).append(i)
    return groups


def _splittable(prediction: Any, rows: int) -> bool:
    if isinstance(prediction, np.ndarray):
        return prediction.ndim >= 1 and prediction.shape[0] == rows
    return isinstance(prediction, list) and len(prediction) == rows


def _toolkit_body(body: bytes, content_type: str) -> bytes | str:
    """What the toolkit hands user input_fn/transform_fn: str for CSV and JSON, bytes otherwise."""
    if codecs.normalize(content_type) not in _TEXT_TYPES or isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{content_type} body is not valid UTF-8: {exc}") from None


def _response(result: Any, accept: str) -> tuple[bytes, str]:
    """A user output_fn/transform_fn result as (body, content type), following the toolkit's conventions."""
    content_type = accept
    if isinstance(result, tuple) and len(result) == 2:
        result, content_type = result
    if isinstance(result, str):
        return result.encode("utf-8"), content_type
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result), content_type
    # Not serialised by the user: do it for them rather than fail, as JSON unless the type is one we speak.
    fallback = content_type if codecs.normalize(content_type) in codecs.SUPPORTED_CONTENT_TYPES else codecs.JSON
    return codecs.encode(result, fallback)


# ---------------------------------------------------------------------------------------- user module


def _find_program(model_dir: Path, env: Mapping[str, str]) -> Path | None:
    """Where the user's entry point is, as SageMaker resolves SAGEMAKER_PROGRAM/SUBMIT_DIRECTORY."""
    program = env.get("SAGEMAKER_PROGRAM", "").strip()
    code_dir = _code_dir(model_dir, env.get("SAGEMAKER_SUBMIT_DIRECTORY", "").strip())
    if not program:
        default = code_dir / DEFAULT_PROGRAM
        return default if default.is_file() else None
    if not program.endswith(".py"):
        program += ".py"  # the SDK sometimes passes a module name
    path = code_dir / program
    if not path.is_file():
        raise ModelLoadError(f"SAGEMAKER_PROGRAM is {program!r} but {path} does not exist")
    return path


def _code_dir(model_dir: Path, submit_dir: str) -> Path:
    """The local directory holding user code.

    The server resolves file:// and s3:// source tarballs before we run; a URL left here means the code
    was repacked into model.tar.gz (the SDK does this), i.e. ``model_dir/code``. The SDK's in-container
    path /opt/ml/model[/...] refers to the model directory wherever we extracted it.
    """
    if not submit_dir or "://" in submit_dir:
        return model_dir / "code"
    if submit_dir == SAGEMAKER_MODEL_DIR or submit_dir.startswith(SAGEMAKER_MODEL_DIR + "/"):
        return model_dir / Path(submit_dir).relative_to(SAGEMAKER_MODEL_DIR)
    return Path(submit_dir)


def _import_program(path: Path) -> ModuleType:
    """Import the entry point under its own name, its directory first on sys.path for sibling imports.

    ``lib/`` beside it is where the SageMaker Python SDK packs a model's ``dependencies``; it goes on
    the path too, so they import by name as they do in SageMaker's containers.
    """
    for directory in (path.parent / "lib", path.parent):
        entry = str(directory)
        if entry in sys.path:
            sys.path.remove(entry)
        if directory.is_dir():
            sys.path.insert(0, entry)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"Cannot import {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so that pickle, dataclasses and relative lookups find the module by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a script that calls sys.exit() at import is a broken module
        sys.modules.pop(name, None)
        raise ModelLoadError(
            f"Failed to import {path}: {type(exc).__name__}: {exc}", traceback=tb.format_exc()
        ) from exc
    return module
