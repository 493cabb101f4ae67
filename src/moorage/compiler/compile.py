"""``compile_model``: source -> ONNX -> optimised (maybe int8) -> validated -> a signed edge package.

Both doors run this: ``moorage edge compile`` in the CLI's process, and CreateCompilationJob /
CreateEdgePackagingJob in a child process of the server (``compiler/jobs.py``), so the heavy imports
(onnx, skl2onnx, torch) never enter the server. Nothing is written to ``output`` unless every step
succeeded: a validation drop beyond the tolerance raises :class:`ValidationFailed` with the measures.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from moorage.compiler.export import CLASSIFICATION, REGRESSION, Exported, Outputs, export
from moorage.compiler.optimize import level_for as optimisation_level
from moorage.compiler.optimize import optimise
from moorage.compiler.source import CompileError, Source, open_source
from moorage.compiler.validate import Sample, ValidationFailed, compare, describe_drop, read_sample
from moorage.edge import package as edge_package

DEFAULT_TOLERANCE = 0.01
SELF_TEST_RECORDS = 32
GENERATED_SELF_TEST_RECORDS = 16
# The self-test of an int8 graph on another CPU: integer kernels differ more between instruction sets
# (VNNI or not) than float ones, so its bounds are wider.
INT8_SELF_TEST = {"rtol": 1e-2, "atol": 1e-2, "min_agreement": 0.95}

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
           "tensor(int32)": "int32", "tensor(string)": "str", "tensor(bool)": "bool", "tensor(float16)": "float16",
           "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


@dataclass
class CompileResult:
    path: Path
    manifest: dict[str, Any]
    package_bytes: int
    validation: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.manifest["sizes"])


def record_shape_from(data_input_config: str | None) -> list[int] | None:
    """One record's shape from SageMaker's ``DataInputConfig`` (``{"input": [1, 3, 224, 224]}`` or
    ``[1, 20]``): the shape without its batch dimension."""
    if not data_input_config:
        return None
    try:
        parsed = json.loads(data_input_config)
    except ValueError as exc:
        raise CompileError(f"DataInputConfig is not JSON: {exc}") from exc
    if isinstance(parsed, dict):
        if len(parsed) != 1:
            raise CompileError("DataInputConfig names several inputs; the edge package serves single-input models.")
        parsed = next(iter(parsed.values()))
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], list):
        parsed = parsed[0]
    if not (isinstance(parsed, list) and len(parsed) >= 2 and all(isinstance(d, int) and d > 0 for d in parsed)):
        raise CompileError(f"DataInputConfig {data_input_config!r}: give the input's shape with its batch dimension, "
                           'e.g. {"input": [1, 20]}.')
    return list(parsed[1:])


def parse_input_shape(text: str | None) -> list[int] | None:
    """``--input-shape 3,224,224`` (one record, no batch dimension)."""
    if not text:
        return None
    try:
        shape = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError as exc:
        raise CompileError(f"input shape {text!r}: comma-separated positive integers, e.g. 3,224,224") from exc
    if not shape or any(d <= 0 for d in shape):
        raise CompileError(f"input shape {text!r}: comma-separated positive integers, e.g. 3,224,224")
    return shape


def _versions(exported: Exported) -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    try:
        versions["moorage"] = metadata.version("moorage")
    except metadata.PackageNotFoundError:
        pass
    versions.update(exported.converters)
    return versions


def _signature(session: Any) -> dict[str, Any]:
    def spec(arg: Any) -> dict[str, Any]:
        dims = arg.shape if isinstance(arg.shape, list) else None
        shape = [d if isinstance(d, int) and d > 0 else None for d in dims] if dims is not None else None
        return {"name": arg.name, "dtype": _DTYPES.get(arg.type, arg.type), "shape": shape}

    return {"inputs": [spec(a) for a in session.get_inputs()], "outputs": [spec(a) for a in session.get_outputs()],
            "content_types": list(edge_package.CONTENT_TYPES), "accept": list(edge_package.ACCEPT)}


def _shaped(batch: np.ndarray, record_shape: list[int]) -> np.ndarray:
    """A sample's flat rows in the model's record shape (e.g. 784 columns -> [1, 28, 28])."""
    if record_shape and all(d > 0 for d in record_shape) and int(np.prod(record_shape)) == batch.shape[1] and \
            list(batch.shape[1:]) != record_shape:
        return batch.reshape([len(batch), *record_shape])
    return batch


def default_name(location: str) -> str:
    """The package's model name when none is given: the source's file name without its suffix, made a name a
    device can report (letters, digits and hyphens, at least 4 characters)."""
    last = str(location).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar", ".onnx", ".joblib", ".pkl", ".pickle", ".skops", ".json", ".ubj",
                   ".txt", ".pt", ".pth", ".pt2"):
        if last.endswith(suffix):
            last = last[: -len(suffix)]
            break
    name = re.sub(r"[^a-zA-Z0-9]+", "-", last).strip("-")[:57] or "model"
    return name if len(name) >= 4 else f"{name}-model"


def compile_model(source: str | Path, output: str | Path, *, quantize: str | None = None,
                  validate: str | Path | None = None, label_column: str | int | None = None,
                  tolerance: float = DEFAULT_TOLERANCE, signing_key: Any, name: str | None = None,
                  version: str | None = None, framework: str | None = None, input_shape: list[int] | None = None,
                  task: str | None = None, target_device: str | None = None,
                  target_platform: Mapping[str, str] | None = None, data_input_config: str | None = None,
                  framework_version: str | None = None, work_dir: str | Path | None = None) -> CompileResult:
    """Compile ``source`` (a model.tar.gz, folder or model file at a path or URL) into a signed package at
    ``output``. ``signing_key``: an Ed25519 private key, or a PEM file holding one."""
    if task not in (None, CLASSIFICATION, REGRESSION):
        raise CompileError(f"task {task!r}: classification or regression")
    if not tolerance >= 0:
        raise CompileError(f"tolerance {tolerance}: a drop of at least 0")
    name = name or default_name(str(source))
    version = version or "1"
    try:
        edge_package.check_name_version(name, version)
    except edge_package.PackageError as exc:
        raise CompileError(str(exc)) from exc
    key = signing_key if hasattr(signing_key, "sign") else edge_package.load_private_key(signing_key)
    accelerator = (target_platform or {}).get("Accelerator")
    with tempfile.TemporaryDirectory(prefix="moorage-compile-", dir=work_dir) as temp:
        folder = Path(temp)
        sample = read_sample(str(validate), label_column) if validate else None
        src = open_source(source, folder, framework)
        shape = input_shape or record_shape_from(data_input_config)
        exported = export(src, features=sample.features.shape[1] if sample is not None else None,
                          record_shape=shape, task=task)
        if task:
            exported.task = task  # as the user asked: e.g. a classifier's probabilities compared as values
        level, reason = optimisation_level(target_device, accelerator)
        optimised = optimise(exported.onnx, level=level, level_reason=reason, quantize=quantize, work_dir=folder)
        return _package(src, exported, optimised, sample, output, key=key, tolerance=tolerance, quantize=quantize,
                        name=name, version=version,
                        target={"TargetDevice": target_device, "TargetPlatform": dict(target_platform or {}) or None,
                                "DataInputConfig": data_input_config, "FrameworkVersion": framework_version})


def _package(src: Source, exported: Exported, optimised: Any, sample: Sample | None, output: str | Path, *,
             key: Any, tolerance: float, quantize: str | None, name: str, version: str,
             target: dict[str, Any]) -> CompileResult:
    import onnxruntime as ort

    session = ort.InferenceSession(optimised.model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    def run(batch: np.ndarray) -> Outputs:
        return dict(zip(output_names, session.run(None, {input_name: np.ascontiguousarray(batch, np.float32)}),
                        strict=True))

    notes = [optimised.note] if optimised.note else []
    validation = None
    if sample is not None:
        batch = _shaped(sample.features, exported.record_shape)
        try:
            original = exported.reference(batch)
        except Exception as exc:
            raise CompileError(f"The original model cannot predict on the validation sample: {type(exc).__name__}: "
                               f"{exc}") from exc
        validation = compare(exported, original, run(batch), sample.labels, tolerance)
        validation["sample"] = sample.location
        if not validation["passed"]:
            raise ValidationFailed(f"The compiled model is refused: {describe_drop(validation)}.", validation)
        self_test_batch, origin = batch[:SELF_TEST_RECORDS], "validation sample"
    elif exported.record_shape and all(d > 0 for d in exported.record_shape):
        # No sample: a fixed pseudo-random one still lets the device check that it computes what this
        # machine computed (the self-test compares the compiled model with itself, not with the original).
        generator = np.random.default_rng(0)
        generated = generator.standard_normal([GENERATED_SELF_TEST_RECORDS, *exported.record_shape])
        self_test_batch = generated.astype(np.float32)
        origin = "generated (no validation sample)"
        notes.append("not validated against the original: no validation sample given")
    else:
        self_test_batch, origin = None, None
        notes.append("not validated and no self-test: no validation sample and the input shape is not fixed")

    files = {edge_package.MODEL: optimised.model}
    self_test = None
    if self_test_batch is not None:
        files[edge_package.VALIDATION] = edge_package.sample_csv(self_test_batch)
        files[edge_package.EXPECTED] = edge_package.expected_json(run(self_test_batch))
        bounds = INT8_SELF_TEST if optimised.quantization else {
            "rtol": edge_package.SELF_TEST_RTOL, "atol": edge_package.SELF_TEST_ATOL,
            "min_agreement": edge_package.SELF_TEST_MIN_AGREEMENT}
        self_test = {"records": len(self_test_batch), "origin": origin, **bounds}
    model_file_bytes = src.model_file.stat().st_size if src.model_file.is_file() else None
    sizes = {"source_bytes": src.size, "original_model_bytes": model_file_bytes,
             "exported_onnx_bytes": len(exported.onnx), "model_bytes": len(optimised.model)}
    before = model_file_bytes or src.size
    sizes["ratio"] = round(len(optimised.model) / before, 4) if before else None
    manifest: dict[str, Any] = {
        "name": name, "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "framework": src.framework, "model": exported.description, "task": exported.task,
        "classes": exported.classes, "label_output": exported.label_output,
        "label_by_argmax": exported.label_by_argmax,
        "signature": _signature(session),
        "source": {"location": src.location, "sha256": src.sha256, "bytes": src.size,
                   "model_file": src.model_file.name},
        "sizes": sizes,
        "optimization": {"level": optimised.level, "reason": optimised.level_reason,
                         "quantization": optimised.quantization, "quantization_requested": quantize,
                         "quantized_nodes": optimised.quantized_nodes, "note": optimised.note or None},
        "validation": validation, "tolerance": tolerance, "self_test": self_test,
        "compiler": _versions(exported),
        "target": {k: v for k, v in target.items() if v},
    }
    path = edge_package.write_package(output, manifest, files, key)
    return CompileResult(path=path, manifest=edge_package.verify(path, [key]).manifest,
                         package_bytes=path.stat().st_size, validation=validation, notes=notes)
