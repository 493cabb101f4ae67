"""The vocabulary of metrics: SageMaker's namespaces, metric names, units and dimensions, statistics.

Names are CloudWatch's and SageMaker's so that a dashboard, alarm or scaling policy written for
SageMaker reads the same here: invocation metrics live in ``AWS/SageMaker`` and instance
utilisation in ``/aws/sagemaker/Endpoints``, both with the dimensions ``EndpointName`` and
``VariantName``. Per-instance series add moorage's own ``InstanceId`` dimension; because CloudWatch
matches dimensions exactly, a query for {EndpointName, VariantName} sees the variant's series only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import orjson

INVOCATION_NAMESPACE = "AWS/SageMaker"
UTILIZATION_NAMESPACE = "/aws/sagemaker/Endpoints"
# moorage's own health (samples dropped because the recorder's buffer was full).
SELF_NAMESPACE = "Moorage/Metrics"
# Data capture's records per endpoint variant: captured (taken for writing), written, and those lost
# because the queue was full (dropped) or the destination failed (failed); alarm on the last two.
CAPTURE_NAMESPACE = "Moorage/DataCapture"
CAPTURE_OUTCOMES = {"captured": "CapturedRecords", "written": "WrittenRecords", "dropped": "DroppedRecords",
                    "failed": "FailedRecords"}

ENDPOINT_NAME = "EndpointName"
VARIANT_NAME = "VariantName"
INSTANCE_ID = "InstanceId"

INVOCATIONS = "Invocations"
INVOCATIONS_PER_INSTANCE = "InvocationsPerInstance"
MODEL_LATENCY = "ModelLatency"
CONTAINER_LATENCY = "ContainerLatency"  # each container of a serial inference pipeline, microseconds
CONTAINER_NAME = "ContainerName"
TARGET_MODEL = "TargetModel"  # moorage's: a multi-model endpoint's invocations and latency per model
OVERHEAD_LATENCY = "OverheadLatency"
INVOCATION_4XX = "Invocation4XXErrors"
INVOCATION_5XX = "Invocation5XXErrors"
MODEL_SETUP_TIME = "ModelSetupTime"
CPU_UTILIZATION = "CPUUtilization"
MEMORY_UTILIZATION = "MemoryUtilization"
DISK_UTILIZATION = "DiskUtilization"
DROPPED_SAMPLES = "DroppedSamples"

MICROSECONDS = "Microseconds"
PERCENT = "Percent"
COUNT = "Count"
NONE = "None"

# CloudWatch's units (PutMetricData rejects others).
UNITS = frozenset({
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
})

# Alarms: states, CloudWatch's comparison operators (with the words reasons use), missing-data treatments.
ALARM_STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")
COMPARISON_WORDS = {
    "GreaterThanOrEqualToThreshold": "greater than or equal to",
    "GreaterThanThreshold": "greater than",
    "LessThanThreshold": "less than",
    "LessThanOrEqualToThreshold": "less than or equal to",
}
MISSING_DATA_TREATMENTS = ("missing", "notBreaching", "breaching", "ignore")

SIMPLE_STATISTICS = ("Average", "Sum", "Minimum", "Maximum", "SampleCount")
_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d{1,10})?|100(?:\.0+)?)$")


def dimension_key(dimensions: Mapping[str, str]) -> str:
    """The canonical text of a dimension set: equal sets give equal keys (series match exactly)."""
    return orjson.dumps(sorted((str(k), str(v)) for k, v in dimensions.items())).decode()


def dimensions_of(key: str) -> dict[str, str]:
    return {name: value for name, value in orjson.loads(key)}


def variant_dimensions(endpoint: str, variant: str) -> dict[str, str]:
    return {ENDPOINT_NAME: endpoint, VARIANT_NAME: variant}


def target_model_dimensions(endpoint: str, variant: str, target: str) -> dict[str, str]:
    return {ENDPOINT_NAME: endpoint, VARIANT_NAME: variant, TARGET_MODEL: target}


def container_dimensions(endpoint: str, variant: str, container: str) -> dict[str, str]:
    return {ENDPOINT_NAME: endpoint, VARIANT_NAME: variant, CONTAINER_NAME: container}


def instance_dimensions(endpoint: str, variant: str, instance_id: str) -> dict[str, str]:
    return {ENDPOINT_NAME: endpoint, VARIANT_NAME: variant, INSTANCE_ID: instance_id}


def percentile_of(statistic: str) -> float | None:
    """The quantile (0..1) a ``pNN``/``pNN.N`` statistic names, None for the simple ones.

    Raises ValueError for anything that is neither.
    """
    if statistic in SIMPLE_STATISTICS:
        return None
    match = _PERCENTILE.match(statistic)
    if not match:
        raise ValueError(f"statistic {statistic!r} is not one of {', '.join(SIMPLE_STATISTICS)} "
                         "or a percentile pNN / pNN.N (p0..p100)")
    return float(match.group(1)) / 100.0


def check_statistic(statistic: str) -> str:
    percentile_of(statistic)
    return statistic


def check_unit(unit: str | None) -> str:
    unit = unit or NONE
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not a CloudWatch unit ({', '.join(sorted(UNITS))})")
    return unit


def dimensions_from_pairs(pairs: Iterable[Mapping[str, str]] | Mapping[str, str] | None) -> dict[str, str]:
    """Dimensions given either as CloudWatch's ``[{"Name": .., "Value": ..}]`` or as a plain mapping."""
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        return {str(k): str(v) for k, v in pairs.items()}
    out: dict[str, str] = {}
    for pair in pairs:
        if not isinstance(pair, Mapping) or "Name" not in pair or "Value" not in pair:
            raise ValueError(f"a dimension must be {{'Name': ..., 'Value': ...}}, not {pair!r}")
        out[str(pair["Name"])] = str(pair["Value"])
    return out


def dimension_pairs(dimensions: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Name": k, "Value": v} for k, v in sorted(dimensions.items())]


_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hours?|d|days?|w|weeks?)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"15d"``, ``"1w"``."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90, 90s, 15m, 2h, 15d")
    unit = (match.group(2) or "s")[0].lower()
    return float(match.group(1)) * _SECONDS[unit]
