"""Export a loaded model to one ONNX graph, and say how the original answers, for the validation.

- scikit-learn (skl2onnx): any estimator or ``Pipeline`` skl2onnx converts, its preprocessing in the same
  graph as the model, so a device transforms features exactly as training did. Classifiers are converted
  without ZipMap: ``label`` and ``probabilities`` are plain tensors, which the agent answers as rows. A
  pipeline ending in an XGBoost or LightGBM estimator converts too (onnxmltools' converters registered
  with skl2onnx).
- XGBoost and LightGBM (onnxmltools): Boosters and their scikit-learn API models; classifiers answer
  ``label`` and ``probabilities``, regressors ``variable``.
- PyTorch (``torch.onnx.export``): TorchScript (what SageMaker's container serves) and ``nn.Module`` s a
  ``model_fn`` builds, with a dynamic batch axis; the per-record input shape comes from the validation
  sample or ``input_shape``. The TorchScript-based exporter is used: the newer ``torch.export`` one cannot
  take a ``ScriptModule`` (and needs onnxscript), and TorchScript is what model archives hold.
- ONNX: the graph as it is (it is still optimised, maybe quantised, validated and packaged).

Every graph has one float32 input, ``input``, of shape ``[batch, *record shape]``; ``Exported.reference``
gives the original model's outputs under the graph's output names, so the two compare name by name.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moorage.compiler.source import CompileError, Source

INPUT = "input"
OPSET = 17  # ONNX opset 17 runs on onnxruntime 1.14 and later, older than the agent's minimum (1.17)
ML_OPSET = 3
# onnxmltools' converters (XGBoost, LightGBM) go up to opset 15 (onnxruntime 1.10 and later).
BOOSTING_OPSET = 15
CLASSIFICATION, REGRESSION = "classification", "regression"

Outputs = dict[str, np.ndarray]


@dataclass
class Exported:
    onnx: bytes
    task: str
    record_shape: list[int]  # one record's shape: [n_features] for tabular models
    reference: Callable[[np.ndarray], Outputs]  # the original model's outputs, keyed by output name
    label_output: str | None = None  # the output whose values (or argmax) are the predicted labels
    label_by_argmax: bool = False
    classes: list[Any] | None = None
    description: str = ""
    converters: dict[str, str] = field(default_factory=dict)

    def labels(self, outputs: Outputs) -> np.ndarray | None:
        if self.label_output is None or self.label_output not in outputs:
            return None
        values = np.asarray(outputs[self.label_output])
        if self.label_by_argmax:
            values = values.reshape(len(values), -1)
            picked = values.argmax(axis=1)
            return np.asarray(self.classes, dtype=object)[picked] if self.classes else picked
        return values.reshape(len(values))


def export(source: Source, *, features: int | None, record_shape: list[int] | None, task: str | None) -> Exported:
    """The ONNX graph of ``source.model``. ``features``: the validation sample's width, when there is one."""
    model, name = source.model, source.framework
    if name == "onnx":
        return _export_onnx(model, task)
    if name == "pytorch":
        return _export_torch(model, record_shape or ([features] if features else None), task)
    try:
        import xgboost as xgb
    except ImportError:
        xgb = None  # type: ignore[assignment]
    try:
        import lightgbm as lgb
    except ImportError:
        lgb = None  # type: ignore[assignment]
    if xgb is not None and isinstance(model, xgb.Booster | xgb.XGBModel):
        return _export_xgboost(model, features, task)
    if lgb is not None and isinstance(model, lgb.Booster | lgb.LGBMModel):
        return _export_lightgbm(model, features, task)
    if type(model).__module__.startswith("sklearn.") or hasattr(model, "_get_param_names"):
        return _export_sklearn(model, features, task)
    raise CompileError(f"The {name} model is a {type(model).__module__}.{type(model).__name__}, which moorage cannot "
                       "export to ONNX (scikit-learn estimators and pipelines, XGBoost, LightGBM, PyTorch and ONNX "
                       "models are supported).")


def _width(declared: int | None, features: int | None, what: str) -> int:
    if declared and features and declared != features:
        raise CompileError(f"The model takes {declared} features; the validation sample has {features} "
                           "feature columns.")
    width = declared or features
    if not width:
        raise CompileError(f"The number of input features of the {what} is unknown: pass a validation sample.")
    return int(width)


def _as_float32(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch, dtype=np.float32)


# ------------------------------------------------------------------------------------------ scikit-learn


def _register_boosting_converters() -> dict[str, str]:
    """Teach skl2onnx the XGBoost and LightGBM estimators (for pipelines that end in one)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    versions = {}
    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost as xgb
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(xgb.XGBClassifier, "XGBoostXGBClassifier",
                                    calculate_linear_classifier_output_shapes, convert_xgboost, options=options)
        update_registered_converter(xgb.XGBRegressor, "XGBoostXGBRegressor",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
        versions["xgboost"] = xgb.__version__
    except ImportError:
        pass
    try:
        import lightgbm as lgb
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
        from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes as classifier_shapes

        update_registered_converter(lgb.LGBMClassifier, "LightGbmLGBMClassifier", classifier_shapes,
                                    convert_lightgbm, options=options)
        update_registered_converter(lgb.LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm)
        versions["lightgbm"] = lgb.__version__
    except ImportError:
        pass
    return versions


def _describe_sklearn(model: Any) -> str:
    steps = getattr(model, "steps", None)
    if steps:
        return f"Pipeline({', '.join(type(step).__name__ for _, step in steps)})"
    return type(model).__name__


def _export_sklearn(model: Any, features: int | None, task: str | None) -> Exported:
    import skl2onnx
    import sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier, is_regressor

    if not hasattr(model, "predict"):
        raise CompileError(f"The scikit-learn model ({_describe_sklearn(model)}) has no predict: a transformer "
                           "alone is not a model to serve.")
    width = _width(getattr(model, "n_features_in_", None), features, "scikit-learn model")
    converters = {"skl2onnx": skl2onnx.__version__, "scikit-learn": sklearn.__version__,
                  **_register_boosting_converters()}
    classifier = is_classifier(model) and hasattr(model, "predict_proba")
    try:
        from onnxmltools import __version__ as onnxmltools_version

        converters["onnxmltools"] = onnxmltools_version
    except ImportError:
        pass
    options = {id(model): {"zipmap": False}} if classifier else None
    try:
        graph = skl2onnx.convert_sklearn(model, initial_types=[(INPUT, FloatTensorType([None, width]))],
                                         options=options, target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    except Exception as exc:
        raise CompileError(f"skl2onnx cannot convert {_describe_sklearn(model)}: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    if classifier:
        def reference(batch: np.ndarray) -> Outputs:
            return _classifier_outputs(model, batch)

        return Exported(graph.SerializeToString(), CLASSIFICATION, [width], reference, label_output="label",
                        classes=[_plain(c) for c in model.classes_], description=_describe_sklearn(model),
                        converters=converters)
    if task == CLASSIFICATION or (not is_regressor(model) and is_classifier(model)):
        # a classifier without predict_proba (e.g. an SVC without probability=True): labels only
        output = graph.graph.output[0].name

        def labels_only(batch: np.ndarray) -> Outputs:
            return {output: np.asarray(model.predict(batch))}

        return Exported(graph.SerializeToString(), CLASSIFICATION, [width], labels_only, label_output=output,
                        description=_describe_sklearn(model), converters=converters)
    output = graph.graph.output[0].name

    def values(batch: np.ndarray) -> Outputs:
        return {output: np.asarray(model.predict(batch))}

    return Exported(graph.SerializeToString(), REGRESSION, [width], values, description=_describe_sklearn(model),
                    converters=converters)


def _classifier_outputs(model: Any, batch: np.ndarray) -> Outputs:
    return {"label": np.asarray(model.predict(batch)), "probabilities": np.asarray(model.predict_proba(batch))}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ------------------------------------------------------------------------------------------ XGBoost


def _xgb_objective(booster: Any) -> str:
    return str(json.loads(booster.save_config())["learner"]["objective"]["name"])


def _export_xgboost(model: Any, features: int | None, task: str | None) -> Exported:
    import onnxmltools
    import xgboost as xgb
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = model if isinstance(model, xgb.Booster) else model.get_booster()
    objective = _xgb_objective(booster)
    width = _width(booster.num_features() or None, features, "XGBoost model")
    try:
        graph = convert_xgboost(model, initial_types=[(INPUT, FloatTensorType([None, width]))],
                                target_opset=BOOSTING_OPSET)
    except Exception as exc:
        raise CompileError(f"onnxmltools cannot convert the XGBoost model (objective {objective}): "
                           f"{type(exc).__name__}: {exc}") from exc
    converters = {"onnxmltools": onnxmltools.__version__, "xgboost": xgb.__version__}
    described = f"XGBoost {type(model).__name__} ({objective})"
    if objective.startswith(("binary:", "multi:")):
        def reference(batch: np.ndarray) -> Outputs:
            if isinstance(model, xgb.XGBModel):
                return _classifier_outputs(model, batch)
            raw = np.asarray(booster.inplace_predict(batch, validate_features=False))
            if objective == "multi:softmax":
                return {"label": raw.astype(np.int64)}
            # binary: the positive class's probability, as the container answers
            probabilities = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
            return {"label": probabilities.argmax(axis=1), "probabilities": probabilities}

        classes = [_plain(c) for c in model.classes_] if isinstance(model, xgb.XGBModel) else None
        return Exported(graph.SerializeToString(), CLASSIFICATION, [width], reference, label_output="label",
                        classes=classes, description=described, converters=converters)

    def values(batch: np.ndarray) -> Outputs:
        if isinstance(model, xgb.XGBModel):
            return {"variable": np.asarray(model.predict(batch))}
        return {"variable": np.asarray(booster.inplace_predict(batch, validate_features=False))}

    return Exported(graph.SerializeToString(), task or REGRESSION, [width], values, description=described,
                    converters=converters)


# ------------------------------------------------------------------------------------------ LightGBM

# LightGBM's classification objectives and their aliases (its docs' "objective" parameter).
_LGB_CLASSIFICATION = frozenset({"binary", "multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"})


def _export_lightgbm(model: Any, features: int | None, task: str | None) -> Exported:
    import lightgbm as lgb
    import onnxmltools
    from onnxmltools.convert import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = model if isinstance(model, lgb.Booster) else model.booster_
    objective = str(booster.params.get("objective") or booster.dump_model().get("objective", "")).split()[0]
    width = _width(booster.num_feature() or None, features, "LightGBM model")
    try:
        graph = convert_lightgbm(model, initial_types=[(INPUT, FloatTensorType([None, width]))],
                                 target_opset=BOOSTING_OPSET, zipmap=False)
    except Exception as exc:
        raise CompileError(f"onnxmltools cannot convert the LightGBM model (objective {objective}): "
                           f"{type(exc).__name__}: {exc}") from exc
    converters = {"onnxmltools": onnxmltools.__version__, "lightgbm": lgb.__version__}
    described = f"LightGBM {type(model).__name__} ({objective})"
    if objective in _LGB_CLASSIFICATION:
        def reference(batch: np.ndarray) -> Outputs:
            if isinstance(model, lgb.LGBMModel):
                return _classifier_outputs(model, batch)
            raw = np.asarray(booster.predict(batch))
            probabilities = np.column_stack([1 - raw, raw]) if raw.ndim == 1 else raw
            return {"label": probabilities.argmax(axis=1), "probabilities": probabilities}

        classes = [_plain(c) for c in model.classes_] if isinstance(model, lgb.LGBMModel) else None
        return Exported(graph.SerializeToString(), CLASSIFICATION, [width], reference, label_output="label",
                        classes=classes, description=described, converters=converters)

    def values(batch: np.ndarray) -> Outputs:
        return {"variable": np.asarray(model.predict(batch))}

    return Exported(graph.SerializeToString(), task or REGRESSION, [width], values, description=described,
                    converters=converters)


# ------------------------------------------------------------------------------------------ PyTorch


def _export_torch(model: Any, record_shape: list[int] | None, task: str | None) -> Exported:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise CompileError(f"The PyTorch model is a {type(model).__name__}, not a torch.nn.Module.")
    if not record_shape:
        raise CompileError("The input shape of a PyTorch model is unknown: pass a validation sample or the "
                           "input shape of one record (--input-shape, e.g. 3,224,224).")
    model = model.eval()
    example = torch.zeros([2, *record_shape], dtype=torch.float32)
    with torch.inference_mode():
        try:
            probe = model(example)
        except Exception as exc:
            raise CompileError(f"The PyTorch model does not take input of shape [batch, "
                               f"{', '.join(map(str, record_shape))}]: {type(exc).__name__}: {exc}") from exc
    outputs = list(probe) if isinstance(probe, tuple | list) else [probe]
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated upstream; see the module docstring for why it is used.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), buffer, input_names=[INPUT], output_names=names,
                              dynamic_axes={INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                              opset_version=OPSET, dynamo=False)
        except Exception as exc:
            raise CompileError(f"torch.onnx cannot export the model: {type(exc).__name__}: {exc}") from exc
    first = outputs[0]
    columns = int(np.prod(first.shape[1:])) if first.dim() > 1 else 1
    kind = task or (CLASSIFICATION if first.dim() == 2 and columns > 1 else REGRESSION)

    def reference(batch: np.ndarray) -> Outputs:
        with torch.inference_mode():
            result = model(torch.from_numpy(_as_float32(batch)))
        results = list(result) if isinstance(result, tuple | list) else [result]
        return {n: r.detach().cpu().numpy() for n, r in zip(names, results, strict=True)}

    return Exported(buffer.getvalue(), kind, list(record_shape), reference,
                    label_output=names[0] if kind == CLASSIFICATION else None, label_by_argmax=kind == CLASSIFICATION,
                    description=f"PyTorch {type(model).__name__}", converters={"torch": torch.__version__})


# ------------------------------------------------------------------------------------------ ONNX


def _export_onnx(graph: bytes, task: str | None) -> Exported:
    import onnxruntime as ort

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise CompileError(f"The ONNX model has {len(inputs)} inputs; the edge package serves single-input graphs.")
    shape = inputs[0].shape
    record = [d if isinstance(d, int) and d > 0 else 0 for d in shape[1:]]
    names = [o.name for o in session.get_outputs()]
    input_name = inputs[0].name

    def reference(batch: np.ndarray) -> Outputs:
        return dict(zip(names, session.run(None, {input_name: _as_float32(batch)}), strict=True))

    if "label" in names and task != REGRESSION:
        return Exported(graph, CLASSIFICATION, record, reference, label_output="label", description="ONNX graph",
                        converters={})
    return Exported(graph, task or REGRESSION, record, reference,
                    label_output=names[0] if task == CLASSIFICATION else None, label_by_argmax=task == CLASSIFICATION,
                    description="ONNX graph", converters={})
