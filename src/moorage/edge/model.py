"""A verified package loaded into one onnxruntime session, and its self-test.

What ``predict`` needs about the graph (the input's name, element type and rank, the output names)
is read once at load, so a call is a cast and the session's C++ ``run``: on a small model, tens of
microseconds. A session is shared by every thread that serves (onnxruntime's ``run`` is thread-safe);
``intra_op_threads`` defaults to 1, the fastest for one record and the kindest to a small device.

Outputs: the first one (for a classifier, the label), as the instance servers answer, or the ones
named in ``outputs``; several are a dict name -> array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from moorage.edge.codecs import PayloadError, rows
from moorage.edge.package import Package, compare_outputs

_DTYPES: dict[str, np.dtype[Any]] = {
    f"tensor({onnx_type})": np.dtype(numpy_type)
    for onnx_type, numpy_type in (
        ("float", np.float32), ("double", np.float64), ("float16", np.float16),
        ("int64", np.int64), ("int32", np.int32), ("int16", np.int16), ("int8", np.int8),
        ("uint64", np.uint64), ("uint32", np.uint32), ("uint16", np.uint16), ("uint8", np.uint8),
        ("bool", np.bool_), ("string", np.object_),
    )
}  # fmt: skip


class SelfTestError(Exception):
    """A package's model does not reproduce its validation sample's outputs within the tolerance."""


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    dtype: np.dtype[Any] | None
    rank: int | None
    column: bool  # rank 2 with one column: a flat list is a column


class EdgeModel:
    """One package's ONNX graph in an InferenceSession; immutable once loaded (switching packages
    makes a new one, and requests in flight finish on the one they started with)."""

    def __init__(self, package: Package, *, intra_op_threads: int = 1, outputs: Sequence[str] = ()) -> None:
        self.package = package
        self.name = package.name
        self.version = package.version
        self.handle = package.model_handle
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, intra_op_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(package.model_bytes, sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise SelfTestError(f"onnxruntime cannot load {package.model_handle}: {type(exc).__name__}: {exc}") from exc
        self.inputs: dict[str, _Input] = {}
        for arg in self.session.get_inputs():
            shape = arg.shape if isinstance(arg.shape, list) else None
            rank = len(shape) if shape is not None else None
            self.inputs[arg.name] = _Input(arg.name, _DTYPES.get(arg.type), rank,
                                           rank == 2 and shape is not None and shape[1] == 1)
        self.single = next(iter(self.inputs.values())) if len(self.inputs) == 1 else None
        self.all_outputs = [out.name for out in self.session.get_outputs()]
        unknown = [name for name in outputs if name not in self.all_outputs]
        if unknown:
            raise ValueError(f"the model has no output {', '.join(unknown)}; "
                             f"its outputs: {', '.join(self.all_outputs)}")
        self.output_names = list(outputs) or self.all_outputs[:1]
        # InferenceSession.run re-checks the feed's names in Python on every call; the feed is built
        # from the graph's own names here, so call the C++ session directly.
        inner = getattr(self.session, "_sess", None)
        self._run = inner.run if inner is not None and hasattr(inner, "run") else self.session.run

    def feed(self, data: Any) -> dict[str, Any]:
        single = self.single
        if single is not None and type(data) is np.ndarray:
            return {single.name: self._fit(data, single)}
        if isinstance(data, dict):
            unknown = [name for name in data if name not in self.inputs]
            if unknown:
                raise PayloadError(f"the model has no input named {', '.join(unknown)}; its inputs: "
                                   f"{', '.join(self.inputs)}")
            missing = [name for name in self.inputs if name not in data]
            if missing:
                raise PayloadError(f"the request lacks the model input(s) {', '.join(missing)}")
            return {name: self._fit(rows(value, f"input {name!r}"), self.inputs[name]) for name, value in data.items()}
        if single is not None:
            return {single.name: self._fit(rows(data), single)}
        raise PayloadError(f"this model takes {len(self.inputs)} inputs ({', '.join(self.inputs)}); send a JSON "
                           "object with one entry per input")

    @staticmethod
    def _fit(array: np.ndarray, spec: _Input) -> np.ndarray:
        if spec.dtype is not None and array.dtype != spec.dtype:
            if spec.dtype.kind == "O":
                array = array if array.dtype.kind == "O" else array.astype(str).astype(object)
            else:
                try:
                    array = array.astype(spec.dtype)
                except (TypeError, ValueError) as exc:
                    raise PayloadError(f"input {spec.name!r} does not convert to {spec.dtype.name}: {exc}") from None
        if array.ndim == 1 and spec.rank == 2:
            array = array.reshape(-1, 1) if spec.column else array.reshape(1, -1)
        return array

    def run(self, feed: dict[str, Any], names: Sequence[str] | None = None) -> list[Any]:
        try:
            return self._run(list(names or self.output_names), feed, None)
        except Exception as exc:  # a shape or type the graph refuses: the request does not fit it
            raise PayloadError(str(exc).strip()) from None

    def predict(self, data: Any) -> Any:
        """The model's answer to ``data`` (rows, or a dict of named inputs): one array, or a dict of them."""
        outputs = self.run(self.feed(data))
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(self.output_names, outputs, strict=True))

    def self_test(self) -> str:
        """Run the package's validation sample and compare with its expected outputs; the verdict's text,
        or ``SelfTestError``. A package without a sample passes when the graph runs on one zero row."""
        try:
            sample = self.package.self_test_sample()
        except Exception as exc:
            raise SelfTestError(f"the self-test sample cannot be read: {exc}") from exc
        if sample is None:
            if self.single is None or self.single.dtype is None or self.single.dtype.kind == "O":
                return "no self-test sample in the package"
            width = self._width()
            self.run({self.single.name: np.zeros((1, width), dtype=self.single.dtype)})
            return "no self-test sample in the package; the graph runs"
        inputs, expected = sample
        names = [name for name in expected if name in self.all_outputs]
        missing = [name for name in expected if name not in self.all_outputs]
        if missing:
            raise SelfTestError(f"self-test failed: the model has no output {', '.join(missing)}")
        if self.single is None:
            raise SelfTestError("self-test failed: the sample feeds one input, the model has several")
        try:
            got = self.run({self.single.name: self._fit(inputs, self.single)}, names)
        except PayloadError as exc:
            raise SelfTestError(f"self-test failed: the model does not run on its sample: {exc}") from None
        rtol, atol, agreement = self.package.self_test_bounds()
        result = compare_outputs(expected, dict(zip(names, got, strict=True)), rtol=rtol, atol=atol,
                                 min_agreement=agreement)
        if not result.passed:
            raise SelfTestError(f"self-test failed: {result.detail}")
        return f"self-test passed on {len(inputs)} records: {result.detail}"

    def _width(self) -> int:
        arg = self.session.get_inputs()[0]
        shape = arg.shape if isinstance(arg.shape, list) else []
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else 1
