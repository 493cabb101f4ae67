"""A transform job as the batch data plane sees it: every choice the job's records go through.

``TransformSpec`` is built once from a CreateTransformJob request (SageMaker's field names and
defaults), checked there so that a bad combination is a ValidationException rather than a failed
job, and is plain data (JSON round-trip) so the same spec drives the local backend in the server
and the Ray backend in its driver process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moorage.batch.jsonpath import JsonPathError, parse_jsonpath

MIB = 1024 * 1024
DEFAULT_MAX_PAYLOAD_MB = 6  # SageMaker's default MaxPayloadInMB
MAX_PAYLOAD_MB = 100  # SageMaker's upper bound for MaxPayloadInMB
DEFAULT_INVOCATION_TIMEOUT_S = 600.0  # ModelClientConfig.InvocationsTimeoutInSeconds default
DEFAULT_RETRIES = 1  # a failed mini-batch is tried once more, then the job fails

CSV_TYPES = frozenset({"text/csv"})
JSON_TYPES = frozenset({"application/json", "application/jsonlines", "application/x-jsonlines",
                        "application/jsonl"})


class SpecError(ValueError):
    """A request the batch plane cannot run; the message is a ValidationException's."""


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class TransformSpec:
    job_name: str
    data_type: str  # S3Prefix | ManifestFile
    input_uri: str
    output_path: str
    content_type: str | None = None
    compression: str = "None"  # None | Gzip
    split_type: str = "None"  # None | Line | RecordIO | TFRecord
    batch_strategy: str | None = None  # SingleRecord | MultiRecord; None: the container's choice
    max_payload_mb: int | None = None  # None: the container's choice, else 6; 0: no limit
    max_concurrent: int | None = None  # per instance; None: the container's choice, else 1
    accept: str | None = None
    assemble_with: str = "None"  # None | Line
    input_filter: str = "$"
    output_filter: str = "$"
    join_source: str = "None"  # None | Input
    invocation_timeout_s: float = DEFAULT_INVOCATION_TIMEOUT_S
    max_retries: int = DEFAULT_RETRIES
    environment: dict[str, str] = field(default_factory=dict)
    instance_count: int = 1
    instance_type: str = "ml.m5.large"

    # -- derived ---------------------------------------------------------------------------------
    @property
    def record_format(self) -> str | None:
        """``csv`` or ``json`` when records can be filtered and joined, else None."""
        kind = media_type(self.content_type)
        if kind in CSV_TYPES:
            return "csv"
        if kind in JSON_TYPES:
            return "json"
        return None

    @property
    def processes_records(self) -> bool:
        """Whether each record is parsed (filters or join), not just passed through as bytes."""
        return self.input_filter != "$" or self.output_filter != "$" or self.join_source == "Input"

    def with_defaults(self, execution_parameters: dict[str, Any] | None) -> TransformSpec:
        """Fill what the request left open from the container's /execution-parameters, as SageMaker does."""
        params = execution_parameters or {}
        strategy = self.batch_strategy
        if strategy is None:
            strategy = {"MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord"}.get(
                str(params.get("BatchStrategy", "")).upper(), "SingleRecord")
        payload = self.max_payload_mb
        if payload is None:
            payload = _positive_int(params.get("MaxPayloadInMB")) or DEFAULT_MAX_PAYLOAD_MB
        concurrent = self.max_concurrent or _positive_int(params.get("MaxConcurrentTransforms")) or 1
        return dataclasses.replace(self, batch_strategy=strategy, max_payload_mb=min(payload, MAX_PAYLOAD_MB),
                                   max_concurrent=concurrent)

    @property
    def max_payload_bytes(self) -> int:
        """0 means no limit (SageMaker's MaxPayloadInMB=0)."""
        return (self.max_payload_mb if self.max_payload_mb is not None else DEFAULT_MAX_PAYLOAD_MB) * MIB

    def batch_environment(self) -> dict[str, str]:
        """What SageMaker tells a batch container, under the job's own Environment."""
        env = {"SAGEMAKER_BATCH": "true"}
        if self.max_payload_mb is not None:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(self.max_payload_mb)
        if self.batch_strategy is not None:
            env["SAGEMAKER_BATCH_STRATEGY"] = "MULTI_RECORD" if self.batch_strategy == "MultiRecord" \
                else "SINGLE_RECORD"
        if self.max_concurrent is not None:
            env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(self.max_concurrent)
        env.update(self.environment)
        return env

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> TransformSpec:
        """The spec of a CreateTransformJob request (already valid against botocore's shapes)."""
        tin, tout, res = req["TransformInput"], req["TransformOutput"], req["TransformResources"]
        source = tin["DataSource"]["S3DataSource"]
        processing = req.get("DataProcessing") or {}
        client = req.get("ModelClientConfig") or {}
        max_payload = req.get("MaxPayloadInMB")
        spec = cls(
            job_name=req["TransformJobName"],
            data_type=source["S3DataType"],
            input_uri=source["S3Uri"],
            output_path=tout["S3OutputPath"],
            content_type=tin.get("ContentType"),
            compression=tin.get("CompressionType") or "None",
            split_type=tin.get("SplitType") or "None",
            batch_strategy=req.get("BatchStrategy"),
            max_payload_mb=int(max_payload) if max_payload is not None else None,
            max_concurrent=int(req["MaxConcurrentTransforms"]) if req.get("MaxConcurrentTransforms") else None,
            accept=tout.get("Accept"),
            assemble_with=tout.get("AssembleWith") or "None",
            input_filter=processing.get("InputFilter") or "$",
            output_filter=processing.get("OutputFilter") or "$",
            join_source=processing.get("JoinSource") or "None",
            invocation_timeout_s=float(client.get("InvocationsTimeoutInSeconds") or DEFAULT_INVOCATION_TIMEOUT_S),
            max_retries=int(client["InvocationsMaxRetries"]) if client.get("InvocationsMaxRetries") is not None
            else DEFAULT_RETRIES,
            environment={str(k): str(v) for k, v in (req.get("Environment") or {}).items()},
            instance_count=int(res["InstanceCount"]),
            instance_type=res["InstanceType"],
        )
        spec.check()
        return spec

    def check(self) -> None:
        if self.data_type not in ("S3Prefix", "ManifestFile"):
            raise SpecError(f"S3DataType {self.data_type} is not supported for transform jobs; "
                            "use S3Prefix or ManifestFile.")
        if self.max_payload_mb is not None and self.max_payload_mb > MAX_PAYLOAD_MB:
            raise SpecError(f"MaxPayloadInMB must be at most {MAX_PAYLOAD_MB}, not {self.max_payload_mb}.")
        if self.max_payload_mb == 0 and self.batch_strategy == "MultiRecord":
            raise SpecError("MaxPayloadInMB 0 (no limit) cannot be used with BatchStrategy MultiRecord: "
                            "nothing would bound a mini-batch.")
        if self.processes_records:
            if self.record_format is None:
                raise SpecError("DataProcessing (InputFilter, OutputFilter, JoinSource) works on CSV and JSON "
                                f"input only, not ContentType {self.content_type or '(none)'}.")
            if self.split_type not in ("Line", "None"):
                raise SpecError(f"DataProcessing needs SplitType Line (or None), not {self.split_type}.")
            if self.record_format == "csv" and self.split_type != "Line":
                raise SpecError("DataProcessing over CSV input needs SplitType Line: each line is one record.")
        for name, expression in (("InputFilter", self.input_filter), ("OutputFilter", self.output_filter)):
            try:
                parse_jsonpath(expression)
            except JsonPathError as exc:
                raise SpecError(f"{name} {expression!r} is not a supported JSONPath: {exc}") from None


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
