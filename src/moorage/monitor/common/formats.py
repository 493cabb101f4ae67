"""SageMaker's monitoring files: ``statistics.json``, ``constraints.json``, ``constraint_violations.json``.

Loading and saving (local paths, ``file://`` and, through fsspec, ``s3://``), the
``sagemaker.model_monitor``-like wrappers (:class:`Statistics`, :class:`Constraints`,
:class:`ConstraintViolations`, each with ``body_dict``), and :func:`shape_errors`, the shape both
SageMaker's files and ours must have (what SageMaker's docs and real files show; keys beyond
these are allowed, as SageMaker's own files carry extra ones).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moorage.store import locations
from moorage.store.locations import filesystem, open_url

STATISTICS_FILE = "statistics.json"
CONSTRAINTS_FILE = "constraints.json"
VIOLATIONS_FILE = "constraint_violations.json"


def load_json(location: str | Path) -> dict[str, Any]:
    with open_url(str(location)) as handle:
        return json.loads(handle.read())


def save_json(body: dict[str, Any], location: str | Path) -> str:
    location = str(location)
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(json.dumps(body, indent=2, allow_nan=False).encode() + b"\n")
    return location


def join(base: str | Path, name: str) -> str:
    return locations.join(str(base), name)


class _Document:
    kind = ""

    def __init__(self, body_dict: dict[str, Any], file_s3_uri: str | None = None):
        errors = shape_errors(body_dict, self.kind)
        if errors:
            raise ValueError(f"not a {self.kind} document: {'; '.join(errors[:5])}")
        self.body_dict = body_dict
        self.file_s3_uri = file_s3_uri

    @classmethod
    def from_file_path(cls, path: str | Path) -> Any:
        return cls(load_json(path), str(path))

    from_s3_uri = from_file_path

    def save(self, location: str | Path) -> str:
        self.file_s3_uri = save_json(self.body_dict, location)
        return self.file_s3_uri

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.file_s3_uri or '<in memory>'})"


class Statistics(_Document):
    kind = "statistics"

    def feature(self, name: str) -> dict[str, Any] | None:
        return next((f for f in self.body_dict.get("features", []) if f.get("name") == name), None)


class Constraints(_Document):
    kind = "constraints"


class ConstraintViolations(_Document):
    kind = "constraint_violations"


# -- shapes ------------------------------------------------------------------------------------------
_NUMBER = (int, float)
_TYPES = ("Integral", "Fractional", "String", "Unknown")
_CHECK_TYPES = ("data_type_check", "completeness_check", "baseline_drift_check", "missing_column_check",
                "extra_column_check", "categorical_values_check")


def shape_errors(body: Any, kind: str) -> list[str]:
    """What keeps ``body`` from having the shape of a SageMaker ``kind`` document (empty when it has it).

    ``kind`` is ``statistics``, ``constraints`` or ``constraint_violations``.
    """
    errors: list[str] = []
    if not isinstance(body, dict):
        return [f"the document is a {type(body).__name__}, not an object"]
    if kind == "statistics":
        _statistics(body, errors)
    elif kind == "constraints":
        _constraints(body, errors)
    elif kind == "constraint_violations":
        _violations(body, errors)
    else:
        raise ValueError(f"unknown document kind {kind!r}")
    return errors


def _expect(errors: list[str], where: str, value: Any, types: Any, required: bool = True) -> bool:
    if value is None:
        if required:
            errors.append(f"{where} is missing")
        return False
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        errors.append(f"{where} should be {_names(types)}, not a boolean")
        return False
    if not isinstance(value, types):
        errors.append(f"{where} should be {_names(types)}, not {type(value).__name__}")
        return False
    return True


def _names(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "a number", float: "a number", str: "a string", dict: "an object", list: "a list",
                        bool: "a boolean"}[t] for t in dict.fromkeys(types))


def _statistics(body: dict[str, Any], errors: list[str]) -> None:
    _expect(errors, "version", body.get("version"), _NUMBER)
    if _expect(errors, "dataset", body.get("dataset"), dict):
        _expect(errors, "dataset.item_count", body["dataset"].get("item_count"), _NUMBER)
    if not _expect(errors, "features", body.get("features"), list):
        return
    for i, feature in enumerate(body["features"]):
        where = f"features[{i}]"
        if not _expect(errors, where, feature, dict):
            continue
        _expect(errors, f"{where}.name", feature.get("name"), str)
        if feature.get("inferred_type") not in _TYPES:
            errors.append(f"{where}.inferred_type should be one of {', '.join(_TYPES)}")
        numeric, text = feature.get("numerical_statistics"), feature.get("string_statistics")
        if numeric is None and text is None:
            errors.append(f"{where} has neither numerical_statistics nor string_statistics")
        if numeric is not None and _expect(errors, f"{where}.numerical_statistics", numeric, dict):
            _numeric(numeric, f"{where}.numerical_statistics", errors)
        if text is not None and _expect(errors, f"{where}.string_statistics", text, dict):
            _text(text, f"{where}.string_statistics", errors)


def _common(stats: dict[str, Any], where: str, errors: list[str]) -> None:
    if _expect(errors, f"{where}.common", stats.get("common"), dict):
        for key in ("num_present", "num_missing"):
            _expect(errors, f"{where}.common.{key}", stats["common"].get(key), _NUMBER)


def _numeric(stats: dict[str, Any], where: str, errors: list[str]) -> None:
    _common(stats, where, errors)
    if float(stats.get("common", {}).get("num_present", 0) or 0) == 0:
        return
    for key in ("mean", "sum", "std_dev", "min", "max"):
        _expect(errors, f"{where}.{key}", stats.get(key), _NUMBER)
    distribution = stats.get("distribution")
    if distribution is None:
        return
    if not _expect(errors, f"{where}.distribution", distribution, dict):
        return
    kll = distribution.get("kll")
    if not _expect(errors, f"{where}.distribution.kll", kll, dict):
        return
    if _expect(errors, f"{where}.distribution.kll.buckets", kll.get("buckets"), list):
        for j, bucket in enumerate(kll["buckets"]):
            for key in ("lower_bound", "upper_bound", "count"):
                _expect(errors, f"{where}.distribution.kll.buckets[{j}].{key}", (bucket or {}).get(key), _NUMBER)
    sketch = kll.get("sketch")
    if sketch is not None and _expect(errors, f"{where}.distribution.kll.sketch", sketch, dict):
        parameters = sketch.get("parameters")
        if _expect(errors, f"{where}.distribution.kll.sketch.parameters", parameters, dict):
            for key in ("c", "k"):
                _expect(errors, f"{where}.distribution.kll.sketch.parameters.{key}", parameters.get(key), _NUMBER)
        if _expect(errors, f"{where}.distribution.kll.sketch.data", sketch.get("data"), list):
            for j, level in enumerate(sketch["data"]):
                if _expect(errors, f"{where}.distribution.kll.sketch.data[{j}]", level, list) and any(
                        not isinstance(v, _NUMBER) or isinstance(v, bool) for v in level):
                    errors.append(f"{where}.distribution.kll.sketch.data[{j}] should hold only numbers")


def _text(stats: dict[str, Any], where: str, errors: list[str]) -> None:
    _common(stats, where, errors)
    _expect(errors, f"{where}.distinct_count", stats.get("distinct_count"), _NUMBER,
            required=float(stats.get("common", {}).get("num_present", 0) or 0) > 0)
    distribution = stats.get("distribution")
    if distribution is None:
        return
    if _expect(errors, f"{where}.distribution", distribution, dict):
        categorical = distribution.get("categorical")
        if _expect(errors, f"{where}.distribution.categorical", categorical, dict) and _expect(
                errors, f"{where}.distribution.categorical.buckets", categorical.get("buckets"), list):
            for j, bucket in enumerate(categorical["buckets"]):
                if _expect(errors, f"{where}.distribution.categorical.buckets[{j}]", bucket, dict):
                    _expect(errors, f"{where}.distribution.categorical.buckets[{j}].value", bucket.get("value"),
                            (str, int, float, bool))
                    _expect(errors, f"{where}.distribution.categorical.buckets[{j}].count", bucket.get("count"),
                            _NUMBER)


def _constraints(body: dict[str, Any], errors: list[str]) -> None:
    _expect(errors, "version", body.get("version"), _NUMBER)
    if _expect(errors, "features", body.get("features"), list):
        for i, feature in enumerate(body["features"]):
            where = f"features[{i}]"
            if not _expect(errors, where, feature, dict):
                continue
            _expect(errors, f"{where}.name", feature.get("name"), str)
            if feature.get("inferred_type") not in _TYPES:
                errors.append(f"{where}.inferred_type should be one of {', '.join(_TYPES)}")
            _expect(errors, f"{where}.completeness", feature.get("completeness"), _NUMBER, required=False)
            numeric = feature.get("num_constraints")
            if numeric is not None and _expect(errors, f"{where}.num_constraints", numeric, dict):
                _expect(errors, f"{where}.num_constraints.is_non_negative", numeric.get("is_non_negative"), bool,
                        required=False)
            text = feature.get("string_constraints")
            if text is not None and _expect(errors, f"{where}.string_constraints", text, dict):
                domains = text.get("domains")
                if _expect(errors, f"{where}.string_constraints.domains", domains, list, required=False) and any(
                        not isinstance(v, str) for v in domains):
                    errors.append(f"{where}.string_constraints.domains should hold only strings")
    config = body.get("monitoring_config")
    if config is None:
        return
    if not _expect(errors, "monitoring_config", config, dict):
        return
    for key in ("evaluate_constraints", "emit_metrics"):
        if key in config and config[key] not in ("Enabled", "Disabled"):
            errors.append(f"monitoring_config.{key} should be Enabled or Disabled")
    for key in ("datatype_check_threshold", "domain_content_threshold"):
        _expect(errors, f"monitoring_config.{key}", config.get(key), _NUMBER, required=False)
    distribution = config.get("distribution_constraints")
    if distribution is not None and _expect(errors, "monitoring_config.distribution_constraints", distribution, dict):
        if "perform_comparison" in distribution and distribution["perform_comparison"] not in ("Enabled", "Disabled"):
            errors.append("monitoring_config.distribution_constraints.perform_comparison should be Enabled or Disabled")
        for key in ("comparison_threshold", "categorical_comparison_threshold"):
            _expect(errors, f"monitoring_config.distribution_constraints.{key}", distribution.get(key), _NUMBER,
                    required=False)
        if distribution.get("comparison_method", "Robust") not in ("Simple", "Robust", "linf_simple", "linf_robust"):
            errors.append("monitoring_config.distribution_constraints.comparison_method should be Simple or Robust")
        if distribution.get("categorical_drift_method", "LInfinity") not in ("LInfinity", "ChiSquared"):
            errors.append("monitoring_config.distribution_constraints.categorical_drift_method should be LInfinity "
                          "or ChiSquared")


def _violations(body: dict[str, Any], errors: list[str]) -> None:
    if not _expect(errors, "violations", body.get("violations"), list):
        return
    for i, violation in enumerate(body["violations"]):
        where = f"violations[{i}]"
        if not _expect(errors, where, violation, dict):
            continue
        _expect(errors, f"{where}.feature_name", violation.get("feature_name"), str)
        _expect(errors, f"{where}.description", violation.get("description"), str)
        if violation.get("constraint_check_type") not in _CHECK_TYPES:
            errors.append(f"{where}.constraint_check_type should be one of {', '.join(_CHECK_TYPES)}")
