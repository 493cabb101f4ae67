"""ONNX: one ``.onnx`` graph run by onnxruntime on the CPU.

An ONNX call on a small model costs microseconds, so ``predict`` does no more than cast the request to
the input's element type and call the session: what it needs about the graph (input name, element type,
rank, output names) is read once per session and kept.

* Inputs: a single-input graph takes any decoded array (CSV, JSON, JSON Lines, NPY), cast to the input's
  type (``tensor(float)`` -> float32, ``tensor(int64)`` -> int64, ``tensor(string)`` -> str, ...). A
  multi-input graph takes a JSON object ``{"input_name": [...], ...}`` (also under ``"inputs"`` or
  ``"instances"``), or JSON Lines records with one key per input.
* Outputs: the first output (for skl2onnx classifiers, the label), or those named in
  ``MOORAGE_ONNX_OUTPUTS`` (comma-separated). One output is the prediction itself; several are a dict
  name -> value, always written as JSON (JSON Lines: one record per row), since CSV and NPY hold one array.
  skl2onnx's ZipMap output (a list of {class: probability}) is written as JSON objects with string keys,
  or, as CSV/NPY, as one row of probabilities per input in class order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from moorage.runtimes import codecs
from moorage.runtimes.codecs import PayloadError
from moorage.runtimes.frameworks.base import Framework, ModelLoadError, cpu_threads, format_traceback

OUTPUTS_ENV = "MOORAGE_ONNX_OUTPUTS"
MODEL_FILE = "model.onnx"

# ONNX element types -> the numpy dtype onnxruntime expects for them (dtype objects: comparing a dtype
# with a scalar type converts it on every call).
_DTYPES: dict[str, np.dtype[Any]] = {
    f"tensor({onnx_type})": np.dtype(numpy_type)
    for onnx_type, numpy_type in (
        ("float", np.float32), ("double", np.float64), ("float16", np.float16),
        ("int64", np.int64), ("int32", np.int32), ("int16", np.int16), ("int8", np.int8),
        ("uint64", np.uint64), ("uint32", np.uint32), ("uint16", np.uint16), ("uint8", np.uint8),
        ("bool", np.bool_), ("string", np.object_),
    )
}  # fmt: skip
_ROW_KEYS = ("inputs", "instances")  # KServe v1 and TF-Serving wrap the payload under these


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    dtype: np.dtype[Any] | None  # None for element types we do not cast to (sequences, maps, ...)
    rank: int | None
    column: bool  # a rank-2 input whose last dimension is 1: a flat list is a column, not a row
    required: bool


@dataclass(frozen=True, slots=True)
class _Signature:
    """What predict needs to know about one session, read once."""

    session: Any
    inputs: dict[str, _Input]
    single: _Input | None  # the only input, when there is one
    output_names: list[str]
    run: Any  # session.run, bound once

    @classmethod
    def of(cls, session: Any, wanted: list[str]) -> _Signature:
        inputs = {}
        for arg in session.get_inputs():
            shape = arg.shape if isinstance(arg.shape, list) else None
            rank = len(shape) if shape is not None else None
            column = rank == 2 and shape is not None and shape[1] == 1
            required = not arg.type.startswith("optional")
            inputs[arg.name] = _Input(arg.name, _DTYPES.get(arg.type), rank, column, required)
        available = [out.name for out in session.get_outputs()]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise ModelLoadError(
                f"{OUTPUTS_ENV} names {', '.join(unknown)}, which the model does not have; "
                f"its outputs are: {', '.join(available)}"
            )
        single = next(iter(inputs.values())) if len(inputs) == 1 else None
        return cls(session, inputs, single, wanted or available[:1], _runner(session))


class OnnxFramework(Framework):
    """An ONNX graph in an onnxruntime InferenceSession on the CPU."""

    name = "onnx"
    model_files = (MODEL_FILE,)
    model_suffixes = (".onnx",)

    def __init__(self) -> None:
        # A user model_fn bypasses load_model, so start from the process environment (the instance's own).
        self._configure(os.environ)
        self._signature: _Signature | None = None

    def _configure(self, env: Mapping[str, str]) -> None:
        self.threads = cpu_threads(env)
        self.outputs = [name.strip() for name in env.get(OUTPUTS_ENV, "").split(",") if name.strip()]

    # ------------------------------------------------------------------------------------------- loading

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        self._configure(os.environ if env is None else env)
        path = self.find_model_file(Path(model_dir))
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load {path.name}: {type(exc).__name__}: {exc}", traceback=format_traceback()
            ) from exc
        self._signature = _Signature.of(session, self.outputs)  # also checks MOORAGE_ONNX_OUTPUTS now, not later
        return session

    # ------------------------------------------------------------------------------------------ requests

    def decode(self, body: bytes | str, content_type: str) -> Any:
        if codecs.normalize(content_type) == codecs.JSON and body[:1] in (b"{", "{"):
            named = _named_inputs(body)
            if named is not None:
                return named
        data = codecs.decode(body, content_type)  # type: ignore[arg-type]
        signature = self._signature
        if isinstance(data, np.ndarray) and data.ndim == 1 and signature is not None and signature.single:
            # Reshaped here rather than in predict so that the batcher stacks it with other requests' rows.
            return _fit_rank(data, signature.single)
        return data

    def predict(self, model: Any, data: Any) -> Any:
        signature = self._signature
        if signature is None or signature.session is not model:
            if not hasattr(model, "get_inputs"):
                return model.predict(data)  # a user model_fn returned something other than a session
            signature = self._signature = _Signature.of(model, self.outputs)
        single = signature.single
        if single is not None and type(data) is np.ndarray:
            if data.dtype != single.dtype and single.dtype is not None:
                data = _cast(data, single)
            if data.ndim == 1:
                data = _fit_rank(data, single)
            feed = {single.name: data}
        else:
            feed = _feed(signature, data)
        try:
            outputs = signature.run(signature.output_names, feed, None)
        except (InvalidArgument, ValueError) as exc:
            # Wrong shape or type, or a missing input: the request does not fit the graph.
            raise PayloadError(str(exc)) from None
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(signature.output_names, outputs, strict=True))

    def encode(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        if isinstance(prediction, dict):
            return _encode_outputs(prediction, accept)
        if _is_zipmap(prediction):
            if accept in (codecs.JSON, codecs.JSONLINES):
                return codecs.encode(_string_keys(prediction), accept)
            return codecs.encode(_zipmap_rows(prediction), accept)
        return codecs.encode(prediction, accept)


def _runner(session: Any) -> Any:
    """The session's run function.

    InferenceSession.run checks the feed's names in Python before calling the C++ session; that check
    is 10-15% of a small model's call. A single-input feed is complete by construction and _feed checks
    the others, so we call the C++ session directly where it exists.
    """
    inner = getattr(session, "_sess", None)
    return inner.run if inner is not None and hasattr(inner, "run") else session.run


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Parallelism inside an operator only: an instance serves one (batched) call at a time, so a second
    # pool for running independent branches would only compete for the instance's cores.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


# --------------------------------------------------------------------------------------------- requests


def _named_inputs(body: bytes | str) -> Any:
    """A JSON object of named inputs (maybe under "inputs"/"instances"), or None for rows the codecs read.

    Read here rather than by the codecs because they take an "inputs" or "instances" key for the rows
    even when it is one of several named inputs.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"JSON body does not parse: {exc}") from None
    if not isinstance(value, dict):
        return None
    if len(value) == 1:
        key, inner = next(iter(value.items()))
        if key in _ROW_KEYS:
            if isinstance(inner, dict) or (isinstance(inner, list) and inner and isinstance(inner[0], dict)):
                return inner  # named inputs, or records with one key per input
            return None
    return value


def _feed(signature: _Signature, data: Any) -> dict[str, Any]:
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = _columns(data)  # JSON Lines records, one key per input
    if not isinstance(data, dict):
        if signature.single is not None:  # e.g. a list the codecs left alone
            return {signature.single.name: _to_input(data, signature.single)}
        names = ", ".join(signature.inputs)
        raise PayloadError(
            f"This model takes {len(signature.inputs)} inputs ({names}); send a JSON object with one entry per "
            f'input, e.g. {{"{next(iter(signature.inputs))}": [[...]], ...}}'
        )
    unknown = [name for name in data if name not in signature.inputs]
    if unknown:
        raise PayloadError(
            f"The model has no input named {', '.join(unknown)}; its inputs are: {', '.join(signature.inputs)}"
        )
    # Checked here because the session's C++ run (see _runner) would only fail inside the graph.
    missing = [spec.name for spec in signature.inputs.values() if spec.required and spec.name not in data]
    if missing:
        raise PayloadError(f"The request lacks the model input(s) {', '.join(missing)}")
    return {name: _to_input(value, signature.inputs[name]) for name, value in data.items()}


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    names = list(records[0])
    try:
        return {name: [record[name] for record in records] for name in names}
    except (KeyError, TypeError):
        raise PayloadError(f"every JSON Lines record must have the same keys: {', '.join(names)}") from None


def _to_input(value: Any, spec: _Input) -> Any:
    try:
        array = np.asarray(value)
    except ValueError:
        raise PayloadError(f"input {spec.name!r} has rows of different lengths") from None
    if spec.dtype is not None and array.dtype != spec.dtype:
        array = _cast(array, spec)
    return _fit_rank(array, spec) if array.ndim == 1 else array


def _cast(data: np.ndarray, spec: _Input) -> np.ndarray:
    assert spec.dtype is not None
    if spec.dtype.kind == "O":
        # onnxruntime reads string tensors from object arrays of str; numbers from a numeric CSV become text.
        return data if data.dtype.kind == "O" else data.astype(str).astype(object)
    try:
        return data.astype(spec.dtype)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"input {spec.name!r} does not convert to {spec.dtype.name}: {exc}") from None


def _fit_rank(data: np.ndarray, spec: _Input) -> np.ndarray:
    """A flat list for a rank-2 input: one row of features, or a column when the input is (n, 1)."""
    if spec.rank == 2:
        return data.reshape(-1, 1) if spec.column else data.reshape(1, -1)
    return data


# -------------------------------------------------------------------------------------------- responses


def _is_zipmap(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _string_keys(records: list[dict[Any, Any]]) -> list[dict[str, Any]]:
    # ZipMap keys are int64 class labels when the classes are numbers; JSON object keys must be strings.
    return [{str(key): value for key, value in record.items()} for record in records]


def _zipmap_rows(records: list[dict[Any, Any]]) -> np.ndarray:
    return np.asarray([list(record.values()) for record in records], dtype=np.float64)


def _jsonable(value: Any) -> Any:
    return _string_keys(value) if _is_zipmap(value) else value


def _encode_outputs(outputs: dict[str, Any], accept: str) -> tuple[bytes, str]:
    values = {name: _jsonable(value) for name, value in outputs.items()}
    if accept == codecs.JSONLINES:
        lengths = {_rows(value) for value in values.values()}
        if len(lengths) == 1 and None not in lengths:
            # One record per input row, e.g. {"label": 1, "probabilities": {"0": 0.2, "1": 0.8}}
            (rows,) = lengths
            records = [{name: value[i] for name, value in values.items()} for i in range(rows)]
            return codecs.encode(records, codecs.JSONLINES)
        return codecs.encode(values, codecs.JSONLINES)
    return codecs.encode(values, codecs.JSON)


def _rows(value: Any) -> int | None:
    if isinstance(value, np.ndarray):
        return value.shape[0] if value.ndim else None
    return len(value) if isinstance(value, list) else None
