"""``sagemaker.model_monitor``-like baselining: ``DefaultModelMonitor``, ``ModelQualityMonitor``, ``DatasetFormat``.

Code written for SageMaker's SDK ports by changing imports::

    from moorage.sdk.monitor import DatasetFormat, DefaultModelMonitor

    monitor = DefaultModelMonitor(role="any", instance_count=1, instance_type="ml.m5.xlarge")
    monitor.suggest_baseline(baseline_dataset="train.csv", dataset_format=DatasetFormat.csv(header=True),
                             output_s3_uri="file:///tmp/baseline", wait=True)
    monitor.baseline_statistics().body_dict["features"]
    monitor.suggested_constraints().body_dict["monitoring_config"]

A baseline over a local path or ``file://`` URI runs here, in this process (it takes seconds for
millions of rows); ``role``, ``instance_count``, ``instance_type`` and the other processing-job
settings are accepted for compatibility and ignored by a local run.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.monitor.common.formats import CONSTRAINTS_FILE, STATISTICS_FILE, Constraints, Statistics, join
from moorage.sdk.session import Session

__all__ = ["BaselineJob", "Constraints", "DatasetFormat", "DefaultModelMonitor", "ModelBiasMonitor",
           "ModelExplainabilityMonitor", "ModelQualityMonitor", "Statistics"]


class DatasetFormat:
    """The ``dataset_format`` dicts SageMaker's SDK builds (``{"csv": {"header": true}}`` ...)."""

    @staticmethod
    def csv(header: bool = True, output_columns_position: str = "START") -> dict[str, Any]:
        return {"csv": {"header": header, "output_columns_position": output_columns_position}}

    @staticmethod
    def json(lines: bool = True) -> dict[str, Any]:
        return {"json": {"lines": lines}}

    @staticmethod
    def parquet() -> dict[str, Any]:
        return {"parquet": {}}

    @staticmethod
    def sagemaker_capture_json() -> dict[str, Any]:
        return {"sagemakerCaptureJson": {}}


def _reader_options(dataset_format: dict[str, Any] | None) -> tuple[str | None, bool | None]:
    """The format and whether a CSV has a header: as ``DatasetFormat.csv(header=...)`` says (SageMaker's
    default is a header); without a ``dataset_format``, from the file's name and contents."""
    if not dataset_format:
        return None, None
    if "csv" in dataset_format:
        return "csv", bool((dataset_format["csv"] or {}).get("header", True))
    if "json" in dataset_format:
        if not (dataset_format["json"] or {}).get("lines", True):
            raise ValueError("only JSON Lines datasets can be baselined: DatasetFormat.json(lines=True)")
        return "jsonl", True
    if "parquet" in dataset_format:
        return "parquet", True
    raise ValueError(f"unsupported dataset_format {dataset_format}: use DatasetFormat.csv/json/parquet")


@dataclass
class BaselineJob:
    """What ``suggest_baseline`` returns (SageMaker returns a processing job; this one has already run)."""

    job_name: str
    outputs: str
    status: str = "Completed"

    def describe(self) -> dict[str, Any]:
        return {"ProcessingJobName": self.job_name, "ProcessingJobStatus": self.status,
                "ProcessingOutputConfig": {"Outputs": [{"OutputName": "monitoring_output",
                                                        "S3Output": {"S3Uri": self.outputs}}]}}

    def wait(self, logs: bool = True) -> None:
        """Already finished: a local baseline runs to the end inside ``suggest_baseline``."""


class DefaultModelMonitor:
    def __init__(self, role: str | None = None, instance_count: int = 1, instance_type: str = "ml.m5.xlarge",
                 volume_size_in_gb: int = 30, volume_kms_key: str | None = None, output_kms_key: str | None = None,
                 max_runtime_in_seconds: int | None = None, base_job_name: str | None = None,
                 sagemaker_session: Any = None, env: dict[str, str] | None = None, tags: Any = None,
                 network_config: Any = None):
        self.role = role
        self.instance_count = instance_count
        self.instance_type = instance_type
        self.base_job_name = base_job_name or "baseline-suggestion-job"
        self.sagemaker_session = sagemaker_session
        self.env = env or {}
        self.latest_baselining_job: BaselineJob | None = None
        self.latest_baselining_job_name: str | None = None
        self._statistics: Statistics | None = None
        self._constraints: Constraints | None = None

    def suggest_baseline(self, baseline_dataset: str | Path, dataset_format: dict[str, Any] | None = None,
                         record_preprocessor_script: str | None = None,
                         post_analytics_processor_script: str | None = None, output_s3_uri: str | None = None,
                         wait: bool = True, logs: bool = True, job_name: str | None = None,
                         monitoring_config_override: Any = None) -> BaselineJob:
        """Profile ``baseline_dataset`` and write ``statistics.json`` and ``constraints.json`` to ``output_s3_uri``."""
        from moorage.monitor.data_quality.suggest import suggest_baseline

        if record_preprocessor_script or post_analytics_processor_script:
            raise NotImplementedError("preprocessor/postprocessor scripts are not supported for local baselines")
        dataset, name, output = self._local_job(baseline_dataset, job_name, output_s3_uri)
        fmt, header = _reader_options(dataset_format)
        result = suggest_baseline(dataset, output, fmt, header)
        self._statistics, self._constraints = result.statistics, result.constraints
        return self._ran(name, output)

    def _local_job(self, baseline_dataset: str | Path, job_name: str | None,
                   output_s3_uri: str | None) -> tuple[str, str, str]:
        """(dataset, job name, output) of a baseline run here; only local datasets can be."""
        dataset = str(baseline_dataset)
        if "://" in dataset and not dataset.startswith("file://"):
            raise NotImplementedError(f"only local datasets (paths or file:// URIs) can be baselined here: {dataset}")
        name = job_name or f"{self.base_job_name}-{time.strftime('%Y-%m-%d-%H-%M-%S', time.gmtime())}"
        return dataset, name, output_s3_uri or tempfile.mkdtemp(prefix=f"{name}-")

    def _ran(self, name: str, output: str) -> BaselineJob:
        self.latest_baselining_job = BaselineJob(name, output)
        self.latest_baselining_job_name = name
        return self.latest_baselining_job

    def baseline_statistics(self) -> Statistics:
        """The latest baseline's ``statistics.json`` (``.body_dict``)."""
        if self._statistics is None:
            raise ValueError("no baselining job has run yet: call suggest_baseline first")
        return self._statistics

    def suggested_constraints(self) -> Constraints:
        """The latest baseline's ``constraints.json`` (``.body_dict``)."""
        if self._constraints is None:
            raise ValueError("no baselining job has run yet: call suggest_baseline first")
        return self._constraints

    @staticmethod
    def load_baseline(location: str | Path) -> tuple[Statistics, Constraints]:
        """The statistics and constraints a baseline (ours or SageMaker's) left in ``location``."""
        return (Statistics.from_file_path(join(location, STATISTICS_FILE)),
                Constraints.from_file_path(join(location, CONSTRAINTS_FILE)))


@dataclass
class ModelQualityDocument:
    """A model-quality statistics or constraints file (``.body_dict``), as the SDK's objects hold them."""

    body_dict: dict[str, Any]
    file_s3_uri: str | None = None


class ModelQualityMonitor(DefaultModelMonitor):
    """``sagemaker.model_monitor.ModelQualityMonitor``: a baseline of a validation set's predictions and labels."""

    def suggest_baseline(self, baseline_dataset: str | Path, dataset_format: dict[str, Any] | None = None,
                         problem_type: str | None = None, inference_attribute: str | None = None,
                         probability_attribute: str | None = None, ground_truth_attribute: str | None = None,
                         probability_threshold_attribute: float | None = None,
                         post_analytics_processor_script: str | None = None, output_s3_uri: str | None = None,
                         wait: bool = False, logs: bool = False, job_name: str | None = None,
                         **ignored: Any) -> BaselineJob:
        """Write ``statistics.json`` and ``constraints.json`` (and ``cbpe.json`` for a binary classifier
        with probabilities) to ``output_s3_uri``; attributes name the dataset's columns."""
        from moorage.monitor.model_quality.suggest import suggest_baseline

        if post_analytics_processor_script:
            raise NotImplementedError("postprocessor scripts are not supported for local baselines")
        if not problem_type or not ground_truth_attribute:
            raise ValueError("problem_type and ground_truth_attribute are required")
        dataset, name, output = self._local_job(baseline_dataset, job_name, output_s3_uri)
        fmt, header = _reader_options(dataset_format)
        result = suggest_baseline(dataset.removeprefix("file://"), output, problem_type,
                                  ground_truth_attribute=ground_truth_attribute,
                                  inference_attribute=inference_attribute, probability_attribute=probability_attribute,
                                  probability_threshold=probability_threshold_attribute, fmt=fmt, header=header)
        self._statistics = ModelQualityDocument(result.statistics, result.statistics_uri)  # type: ignore[assignment]
        self._constraints = ModelQualityDocument(result.constraints, result.constraints_uri)  # type: ignore[assignment]
        return self._ran(name, output)


class _ClarifyMonitor(DefaultModelMonitor):
    """A Clarify baseline run here: Clarify's analysis configuration (a dict or a path to
    analysis_config.json) and a local data set; the model's predictions from a column of it or from
    an endpoint (``endpoint_name``, called through this session's server)."""

    kind = ""

    def _config(self, analysis_config: dict[str, Any] | str | Path) -> dict[str, Any]:
        if isinstance(analysis_config, dict):
            return analysis_config
        return dict(json.loads(Path(analysis_config).read_text()))

    def _predict(self, endpoint_name: str, attribute: str | None = None) -> Any:
        from moorage.monitor.common.model_client import ModelClient

        runtime = (self.sagemaker_session or Session()).sagemaker_runtime_client
        return ModelClient.for_endpoint(runtime, endpoint_name, attribute).predict

    def latest_analysis(self) -> dict[str, Any]:
        """The latest baseline's ``analysis.json``."""
        if self.latest_baselining_job is None:
            raise ValueError("no baselining job has run yet: call suggest_baseline first")
        return dict(json.loads(Path(join(self.latest_baselining_job.outputs, "analysis.json")).read_text()))


class ModelBiasMonitor(_ClarifyMonitor):
    """``sagemaker.model_monitor.ModelBiasMonitor``'s baseline: Clarify's pre- and post-training bias metrics."""

    def suggest_baseline(self, baseline_dataset: str | Path, analysis_config: dict[str, Any] | str | Path,
                         output_s3_uri: str | None = None, *, predicted_column: str | None = None,
                         endpoint_name: str | None = None, probability_attribute: str | None = None,
                         dataset_format: dict[str, Any] | None = None, job_name: str | None = None,
                         **ignored: Any) -> BaselineJob:
        from moorage.monitor.model_bias.suggest import suggest_baseline

        dataset, name, output = self._local_job(baseline_dataset, job_name, output_s3_uri)
        if predicted_column is None and endpoint_name is None:
            raise ValueError("the model's predictions are needed: predicted_column or endpoint_name")
        fmt, header = _reader_options(dataset_format)
        suggest_baseline(dataset.removeprefix("file://"), self._config(analysis_config), output,
                         predicted_column=predicted_column,
                         predict=self._predict(endpoint_name, probability_attribute) if endpoint_name else None,
                         fmt=fmt, header=header)
        return self._ran(name, output)


class ModelExplainabilityMonitor(_ClarifyMonitor):
    """``sagemaker.model_monitor.ModelExplainabilityMonitor``'s baseline: global SHAP values (Clarify's)."""

    def suggest_baseline(self, baseline_dataset: str | Path, analysis_config: dict[str, Any] | str | Path,
                         endpoint_name: str, output_s3_uri: str | None = None, *,
                         probability_attribute: str | None = None, dataset_format: dict[str, Any] | None = None,
                         job_name: str | None = None, **ignored: Any) -> BaselineJob:
        from moorage.monitor.model_explainability.suggest import suggest_baseline

        dataset, name, output = self._local_job(baseline_dataset, job_name, output_s3_uri)
        fmt, header = _reader_options(dataset_format)
        suggest_baseline(dataset.removeprefix("file://"), self._config(analysis_config), output,
                         self._predict(endpoint_name, probability_attribute), fmt=fmt, header=header)
        return self._ran(name, output)
