"""``Session``: which server, which key, and the boto3 clients and artifact uploads that go with them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from moorage.connection import Connection
from moorage.sdk.exceptions import UnexpectedStatusException

__all__ = ["Session"]

# Endpoint statuses from which no waiting leads to InService.
_TERMINAL = frozenset({"Failed", "OutOfService", "Deleting"})
# Where Session.put_metric puts business metrics unless told otherwise.
DEFAULT_METRIC_NAMESPACE = "Moorage/Business"


class Session:
    """A connection to one moorage server, in the role of ``sagemaker.Session``.

    By default the URL comes from ``home/server.json``, and the key is found as the server and the
    CLI find it: ``MOORAGE_ACCESS_KEY_ID``/``MOORAGE_SECRET_ACCESS_KEY``, else ``home/credentials``,
    else botocore's own chain (``home`` defaults to ``$MOORAGE_HOME`` or ``~/.moorage``). Any argument
    given wins.
    """

    def __init__(self, home: str | Path | None = None, url: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, region: str | None = None,
                 boto_config: Any = None) -> None:
        self.connection = Connection.discover(Path(home) if home is not None else None, url, access_key_id,
                                              secret_access_key, region)
        self.boto_config = boto_config
        self._sagemaker_client: Any = None
        self._runtime_client: Any = None

    @property
    def url(self) -> str:
        return self.connection.url

    @property
    def region(self) -> str:
        return self.connection.region

    @property
    def sagemaker_client(self) -> Any:
        """A boto3 ``sagemaker`` client pointed at the server (created on first use)."""
        if self._sagemaker_client is None:
            self._sagemaker_client = self.connection.boto3_client("sagemaker", self.boto_config)
        return self._sagemaker_client

    @property
    def sagemaker_runtime_client(self) -> Any:
        """A boto3 ``sagemaker-runtime`` client pointed at the server (created on first use)."""
        if self._runtime_client is None:
            self._runtime_client = self.connection.boto3_client("sagemaker-runtime", self.boto_config)
        return self._runtime_client

    # -- artifacts -----------------------------------------------------------------------------------
    def upload_file(self, path: str | Path, key: str) -> str:
        """Upload one local file to the server's artifact store under ``key``; returns its URL there."""
        return str(self.connection.put_artifact(key, Path(path))["Url"])

    def upload_data(self, path: str | Path, key_prefix: str = "data") -> str:
        """Upload a file or a folder (recursively) under ``key_prefix``, as ``sagemaker.Session`` does.

        Returns the URL of the uploaded file, or of the prefix for a folder, in the server's store
        (``file://`` on the server's machine), ready to use as ``ModelDataUrl``.
        """
        path = Path(path)
        prefix = key_prefix.strip("/")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            url = None
            for file in files:
                rel = file.relative_to(path).as_posix()
                uploaded = self.upload_file(file, f"{prefix}/{rel}")
                url = uploaded[: -len(rel) - 1]  # the prefix's URL, as the server spells it
            if url is None:
                raise ValueError(f"{path} is an empty folder: nothing to upload")
            return url
        if not path.is_file():
            raise FileNotFoundError(f"no such file or folder: {path}")
        return self.upload_file(path, f"{prefix}/{path.name}")

    # -- resources -----------------------------------------------------------------------------------
    def describe_endpoint(self, endpoint_name: str) -> dict[str, Any]:
        return self.sagemaker_client.describe_endpoint(EndpointName=endpoint_name)

    def wait_for_endpoint(self, endpoint_name: str, poll: float = 1.0, timeout: float = 600.0) -> dict[str, Any]:
        """Wait until the endpoint is InService; returns its description.

        Raises UnexpectedStatusException (with the FailureReason) when it fails or the time runs out.
        Uses boto3's ``endpoint_in_service`` waiter, which stops at once on Failed.
        """
        from botocore.exceptions import WaiterError

        attempts = max(1, int(timeout / poll))
        try:
            self.sagemaker_client.get_waiter("endpoint_in_service").wait(
                EndpointName=endpoint_name, WaiterConfig={"Delay": poll, "MaxAttempts": attempts})
        except WaiterError as exc:
            desc = getattr(exc, "last_response", None) or {}
            if "EndpointStatus" not in desc:
                desc = self.describe_endpoint(endpoint_name)
            raise _unexpected(endpoint_name, desc, timeout) from exc
        return self.describe_endpoint(endpoint_name)

    def wait_for_endpoint_deleted(self, endpoint_name: str, poll: float = 1.0, timeout: float = 300.0) -> None:
        """Wait until DescribeEndpoint no longer finds the endpoint."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout
        status = "unknown"
        while True:
            try:
                status = self.describe_endpoint(endpoint_name)["EndpointStatus"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
                    return
                raise
            if time.monotonic() >= deadline:
                raise UnexpectedStatusException(
                    f"Endpoint {endpoint_name} still exists after {timeout:g}s (status {status}).",
                    allowed_statuses=["Deleted"], actual_status=status)
            time.sleep(poll)

    def delete_endpoint(self, endpoint_name: str) -> None:
        self.sagemaker_client.delete_endpoint(EndpointName=endpoint_name)

    def delete_endpoint_config(self, endpoint_config_name: str) -> None:
        self.sagemaker_client.delete_endpoint_config(EndpointConfigName=endpoint_config_name)

    def delete_model(self, model_name: str) -> None:
        self.sagemaker_client.delete_model(ModelName=model_name)

    # -- metrics and alarms --------------------------------------------------------------------------
    def put_metric(self, name: str, value: float | Sequence[float], dimensions: Mapping[str, str] | None = None,
                   unit: str = "None", namespace: str = DEFAULT_METRIC_NAMESPACE,
                   timestamp: float | dt.datetime | None = None) -> None:
        """Record a business metric (one value or several), e.g. coupons redeemed per prediction.

        It lives beside the endpoint metrics: queries, alarms and ``/metrics`` (pass
        ``{"EndpointName": ..., "VariantName": ...}`` as dimensions to put it next to an endpoint's).
        """
        datum: dict[str, Any] = {"MetricName": name, "Unit": unit,
                                 "Dimensions": [{"Name": k, "Value": str(v)} for k, v in (dimensions or {}).items()]}
        if isinstance(value, int | float):
            datum["Value"] = float(value)
        else:
            datum["Values"] = [float(v) for v in value]
        if timestamp is not None:
            datum["Timestamp"] = timestamp.timestamp() if isinstance(timestamp, dt.datetime) else float(timestamp)
        self.connection.native("POST", "/moorage/v1/metrics",
                               orjson.dumps({"Namespace": namespace, "MetricData": [datum]}))

    def get_metric_statistics(self, metric_name: str, dimensions: Mapping[str, str] | None = None,
                              statistic: str = "Average", start: float | None = None, end: float | None = None,
                              period: int = 60, namespace: str = "AWS/SageMaker") -> list[dict[str, Any]]:
        """Datapoints (``Timestamp``, ``Value``, ``SampleCount``, ``Unit``) of one statistic per period."""
        end = time.time() if end is None else end
        start = end - 3600 if start is None else start
        params = [("Namespace", namespace), ("MetricName", metric_name), ("Statistic", statistic),
                  ("StartTime", repr(float(start))), ("EndTime", repr(float(end))), ("Period", str(int(period)))]
        params += [("Dimension", f"{k}={v}") for k, v in (dimensions or {}).items()]
        return list(self.connection.native("GET", f"/moorage/v1/metrics?{urlencode(params)}")["Datapoints"])

    def put_alarm(self, name: str, **definition: Any) -> dict[str, Any]:
        """Create or replace an alarm; keyword arguments are CloudWatch's PutMetricAlarm fields."""
        return dict(self.connection.native("PUT", f"/moorage/v1/alarms/{quote(name, safe='')}",
                                           orjson.dumps(definition)))

    def describe_alarm(self, name: str) -> dict[str, Any]:
        """The alarm's definition, state and history (``AlarmHistoryItems``)."""
        return dict(self.connection.native("GET", f"/moorage/v1/alarms/{quote(name, safe='')}"))

    def delete_alarm(self, name: str) -> None:
        self.connection.native("DELETE", f"/moorage/v1/alarms/{quote(name, safe='')}")

    # -- ground truth ---------------------------------------------------------------------------------
    def send_ground_truth(self, endpoint_name: str, labels: Sequence[tuple[str, Any]],
                          s3_uri: str | None = None) -> dict[str, Any]:
        """Labels for earlier invocations, as (InferenceId, label) pairs (up to 10,000 a call), written as
        SageMaker's ground-truth records under ``s3_uri`` (default: where the endpoint's model-quality
        job definition reads them). Answers ``{"Written": n, "Location": file}``."""
        document: dict[str, Any] = {"GroundTruth": [{"InferenceId": str(i), "Label": label} for i, label in labels]}
        if s3_uri:
            document["S3Uri"] = s3_uri
        return dict(self.connection.native(
            "POST", f"/moorage/v1/endpoints/{quote(endpoint_name, safe='')}/ground-truth", orjson.dumps(document)))

    # -- experiments ---------------------------------------------------------------------------------
    def send_feedback(self, endpoint_name: str, feedback: Sequence[tuple[str, float]]) -> dict[str, Any]:
        """Rewards for earlier invocations, as (InferenceId, reward) pairs, up to 1,000 a call (a routing
        experiment's rewards: its bandit learns from them, its report compares variants by them).
        Answers ``{"Accepted": n, "Unknown": [ids], "Duplicate": [ids]}``."""
        items = [{"InferenceId": str(i), "Reward": float(r)} for i, r in feedback]
        return dict(self.connection.native("POST", f"/moorage/v1/endpoints/{quote(endpoint_name, safe='')}/feedback",
                                           orjson.dumps({"Feedback": items})))

    def experiment_report(self, endpoint_name: str) -> dict[str, Any]:
        """The endpoint's routing experiment: per variant rewards and weights, each treatment against the
        control with an always-valid p-value and a verdict."""
        return dict(self.connection.native("GET",
                                           f"/moorage/v1/endpoints/{quote(endpoint_name, safe='')}/experiment"))

    def __repr__(self) -> str:
        return f"Session(url={self.url!r}, region={self.region!r}, access_key_id={self.connection.access_key_id!r})"


def _unexpected(endpoint_name: str, desc: dict[str, Any], timeout: float) -> UnexpectedStatusException:
    status = desc.get("EndpointStatus", "unknown")
    reason = desc.get("FailureReason")
    if status in _TERMINAL or reason:
        message = f"Error hosting endpoint {endpoint_name}: {status}. Reason: {reason or 'not given'}."
    else:
        message = f"Endpoint {endpoint_name} is not InService after {timeout:g}s (status {status})."
    return UnexpectedStatusException(message, allowed_statuses=["InService"], actual_status=status,
                                     failure_reason=reason)
