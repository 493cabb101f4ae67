"""Data capture end to end: boto3 traffic to a real `moorage serve`, SageMaker capture files on disk.

Every expected line is computed here from the request that was sent and the reply that came back
(only the random eventId and the arrival second are taken from the record, and both are checked).
"""

from __future__ import annotations

import base64
import calendar
import json
import re
import signal
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    Deployer,
    MoorageServer,
    csv_body,
    err_code,
    err_message,
    file_url,
    http_request,
    json_body,
    new_name,
    npy_body,
    pack_model,
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e

SHARED_EXAMPLE = (Path(__file__).parents[1] / "data" / "sagemaker" / "data_capture"
                  / "examples_capture-json-endpoint.jsonl")
FILE_NAME = re.compile(r"^\d{2}-\d{2}-\d{3}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.jsonl$")
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
JSON_TYPES = {"application/json", "application/jsonlines"}


@pytest.fixture(scope="module")
def model_url(classifier: tuple[Any, np.ndarray], artifacts: Path) -> str:
    model, _ = classifier
    return file_url(pack_model(artifacts / "capture-model", model))


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def capture(destination: str, percentage: int = 100, **extra: Any) -> dict[str, Any]:
    return {"EnableCapture": True, "InitialSamplingPercentage": percentage, "DestinationS3Uri": destination,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}], **extra}


def config_with_capture(dep: Deployer, model: str, data_capture: dict[str, Any] | None) -> str:
    name = new_name("capcfg")
    kwargs: dict[str, Any] = {"DataCaptureConfig": data_capture} if data_capture else {}
    dep.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", model)],
                                  **kwargs)
    dep.configs.append(name)
    return name


def deploy(dep: Deployer, model_url: str, data_capture: dict[str, Any] | None, name: str | None = None) -> str:
    name = name or new_name("cap")
    dep.model(name, model_url)
    dep.endpoint(name, config_with_capture(dep, name, data_capture))
    dep.wait_in_service(name)
    return name


class Sent:
    """One invocation as the client saw it."""

    def __init__(self, body: bytes, content_type: str, response: dict[str, Any], before: float, after: float,
                 inference_id: str | None, custom_attributes: str | None):
        self.body, self.content_type = body, content_type
        self.response_body, self.response_type = response["Body"], response["ContentType"]
        self.before, self.after = before, after
        self.inference_id, self.custom_attributes = inference_id, custom_attributes


def send(rt: Any, endpoint: str, body: bytes, content_type: str, accept: str, inference_id: str | None = None,
         custom_attributes: str | None = None) -> Sent:
    kwargs: dict[str, Any] = {}
    if inference_id:
        kwargs["InferenceId"] = inference_id
    if custom_attributes:
        kwargs["CustomAttributes"] = custom_attributes
    before = time.time()
    resp = rt.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=content_type, Accept=accept, **kwargs)
    resp["Body"] = resp["Body"].read()
    return Sent(body, content_type, resp, before, time.time(), inference_id, custom_attributes)


def side(content_type: str, mode: str, body: bytes) -> dict[str, Any]:
    kind = content_type.split(";")[0].strip().lower()
    encoding = "CSV" if kind == "text/csv" else "JSON" if kind in JSON_TYPES else "BASE64"
    data = base64.b64encode(body).decode() if encoding == "BASE64" else body.decode()
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def expected_line(sent: Sent, event_id: str, inference_time: str) -> bytes:
    metadata: dict[str, Any] = {"eventId": event_id}
    if sent.inference_id:
        metadata["inferenceId"] = sent.inference_id
    if sent.custom_attributes:
        metadata["customAttributes"] = [sent.custom_attributes]
    metadata["inferenceTime"] = inference_time
    doc = {"captureData": {"endpointInput": side(sent.content_type, "INPUT", sent.body),
                           "endpointOutput": side(sent.response_type, "OUTPUT", sent.response_body)},
           "eventMetadata": metadata, "eventVersion": "0"}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def read_capture(root: Path) -> list[tuple[Path, bytes]]:
    """Every line of every capture file, each with its newline; no file may end in a partial line."""
    out = []
    for path in sorted(root.rglob("*.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), f"{path} ends with a partial line: {data[-200:]!r}"
        out += [(path, line + b"\n") for line in data.splitlines()]
    return out


def check_records(root: Path, endpoint: str, sent: list[Sent]) -> list[dict[str, Any]]:
    """Each record is the line computed from the request with its inference id, in its hour's folder."""
    by_id = {s.inference_id: s for s in sent}
    docs = []
    for path, line in read_capture(root):
        doc = json.loads(line)
        meta = doc["eventMetadata"]
        request = by_id.pop(meta["inferenceId"])  # each request at most once
        uuid.UUID(meta["eventId"], version=4)
        assert TIME.match(meta["inferenceTime"]), meta
        arrived = calendar.timegm(time.strptime(meta["inferenceTime"], "%Y-%m-%dT%H:%M:%SZ"))
        assert int(request.before) <= arrived <= int(request.after) + 1, (meta, request.before, request.after)
        assert line == expected_line(request, meta["eventId"], meta["inferenceTime"])
        parts = path.relative_to(root).parts
        assert parts[:2] == (endpoint, "AllTraffic"), path
        assert "/".join(parts[2:6]) == time.strftime("%Y/%m/%d/%H", time.gmtime(arrived)), path
        assert FILE_NAME.match(parts[6]), path
        docs.append(doc)
    return docs


def key_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, key_tree(v)) for k, v in value.items()]
    return type(value).__name__


def line_count(root: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in root.rglob("*.jsonl"))


def settled_count(root: Path, quiet: float = 3.0, timeout: float = 30.0) -> int:
    """The number of captured lines once it has not changed for ``quiet`` seconds (bounded wait)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = line_count(root)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
        time.sleep(0.2)
    raise AssertionError(f"capture under {root} still changing after {timeout}s ({last} lines)")


def parallel(fn: Callable[[int], Sent], n: int, workers: int = 4) -> list[Sent]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(n)))


# --------------------------------------------------------------------------------------------------
# format, sampling, layout
# --------------------------------------------------------------------------------------------------
def test_csv_and_binary_traffic_at_100_percent_is_captured_byte_for_byte(
        deployer: Deployer, rt: Any, model_url: str, classifier: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    _, X = classifier
    dest = tmp_path / "capture"
    name = deploy(deployer, model_url, capture(dest.as_uri()))
    desc = deployer.sm.describe_endpoint(EndpointName=name)
    assert desc["DataCaptureConfig"] == {"EnableCapture": True, "CaptureStatus": "Started",
                                         "CurrentSamplingPercentage": 100, "DestinationS3Uri": dest.as_uri()}
    sent = []
    for i in range(12):
        accept = "text/csv" if i % 2 else "application/json"
        attrs = f"trace={i},tenant=acme" if i % 3 == 0 else None
        sent.append(send(rt, name, csv_body(X[i]), "text/csv", accept, inference_id=f"csv-{i}",
                         custom_attributes=attrs))
    for i in range(2):  # a type outside the CSV/JSON lists is captured as base64
        sent.append(send(rt, name, npy_body(X[20 + i]), "application/x-npy", "application/json",
                         inference_id=f"npy-{i}"))
    wait_until(lambda: line_count(dest) >= len(sent), 20, what="every invocation in the capture files")
    docs = check_records(dest, name, sent)
    assert len(docs) == len(sent)
    encodings = {(d["captureData"]["endpointInput"]["encoding"], d["captureData"]["endpointOutput"]["encoding"])
                 for d in docs}
    assert encodings == {("CSV", "CSV"), ("CSV", "JSON"), ("BASE64", "JSON")}
    # The same shape, key for key and in the same order, as a record SageMaker wrote.
    example = json.loads(SHARED_EXAMPLE.read_bytes().splitlines()[0])
    plain = next(d for d in docs if set(d["eventMetadata"]) == {"eventId", "inferenceId", "inferenceTime"})
    del plain["eventMetadata"]["inferenceId"]
    assert key_tree(plain) == key_tree(example)


def test_json_traffic_at_30_percent_is_a_binomial_share(
        deployer: Deployer, rt: Any, model_url: str, classifier: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    _, X = classifier
    dest = tmp_path / "capture"
    name = deploy(deployer, model_url, capture(str(dest), 30))  # a plain path works as a destination
    n = 400
    sent = parallel(lambda i: send(rt, name, json_body(X[i % len(X)]), "application/json", "application/json",
                                   inference_id=f"json-{i}"), n)
    captured = settled_count(dest)
    sigma = (n * 0.3 * 0.7) ** 0.5
    assert abs(captured - n * 0.3) <= 4 * sigma, f"{captured} of {n} captured at 30%"
    docs = check_records(dest, name, sent)
    assert len(docs) == captured
    assert {d["captureData"]["endpointInput"]["encoding"] for d in docs} == {"JSON"}


# --------------------------------------------------------------------------------------------------
# UpdateEndpoint, validation
# --------------------------------------------------------------------------------------------------
def test_update_endpoint_turns_capture_on_and_off(
        deployer: Deployer, rt: Any, model_url: str, classifier: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    _, X = classifier
    dest = tmp_path / "capture"
    name = deploy(deployer, model_url, None)
    assert "DataCaptureConfig" not in deployer.sm.describe_endpoint(EndpointName=name)
    for i in range(3):
        send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"off-{i}")

    def update(data_capture: dict[str, Any] | None) -> dict[str, Any]:
        deployer.sm.update_endpoint(EndpointName=name, EndpointConfigName=config_with_capture(deployer, name,
                                                                                              data_capture))
        deployer.wait_status(name, {"Updating"}, timeout=10)
        return deployer.wait_in_service(name)

    desc = update(capture(dest.as_uri(), KmsKeyId="alias/capture-key"))
    assert desc["DataCaptureConfig"] == {"EnableCapture": True, "CaptureStatus": "Started",
                                         "CurrentSamplingPercentage": 100, "DestinationS3Uri": dest.as_uri(),
                                         "KmsKeyId": "alias/capture-key"}
    sent = [send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"on-{i}") for i in range(5)]
    wait_until(lambda: line_count(dest) >= 5, 20, what="the records after capture was turned on")
    assert len(check_records(dest, name, sent)) == 5  # and none of the requests sent before

    desc = update({**capture(dest.as_uri()), "EnableCapture": False})
    assert desc["DataCaptureConfig"]["CaptureStatus"] == "Stopped"
    assert desc["DataCaptureConfig"]["EnableCapture"] is False
    for i in range(5):
        send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"stopped-{i}")
    assert settled_count(dest) == 5

    desc = update(None)
    assert "DataCaptureConfig" not in desc


@pytest.mark.parametrize(("change", "message"), [
    ({"InitialSamplingPercentage": 101}, "dataCaptureConfig.initialSamplingPercentage"),
    ({"InitialSamplingPercentage": -1}, "dataCaptureConfig.initialSamplingPercentage"),
    ({"CaptureOptions": []}, "dataCaptureConfig.captureOptions"),
    ({"CaptureOptions": [{"CaptureMode": "Both"}]}, "Both"),
    ({"DestinationS3Uri": "https://example.com/capture"}, "cannot write capture files over HTTP(S)"),
    ({"CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["text/csv"]}},
     "lists text/csv as both CSV and JSON"),
])
def test_invalid_data_capture_configs_are_refused(server: MoorageServer, deployer: Deployer, model_url: str,
                                                  tmp_path: Path, change: dict[str, Any], message: str) -> None:
    model = deployer.model(new_name("capbad"), model_url)
    sm = server.sm(validate=False)  # let the server, not botocore, judge each value
    name = new_name("capbad")
    with pytest.raises(ClientError) as info:
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", model)],
                                  DataCaptureConfig={**capture(str(tmp_path)), **change})
    assert err_code(info.value) == "ValidationException"
    assert message in err_message(info.value)
    with pytest.raises(ClientError):
        sm.describe_endpoint_config(EndpointConfigName=name)  # nothing was stored


def test_a_file_as_destination_is_refused(deployer: Deployer, model_url: str, tmp_path: Path) -> None:
    model = deployer.model(new_name("capfile"), model_url)
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises(ClientError) as info:
        config_with_capture(deployer, model, capture(str(tmp_path / "not-a-folder")))
    assert err_code(info.value) == "ValidationException"
    assert "must name a folder" in err_message(info.value)


# --------------------------------------------------------------------------------------------------
# durability: clean stop, kill -9, a full queue
# --------------------------------------------------------------------------------------------------
def test_a_clean_stop_and_restart_lose_nothing(fresh_server: Callable[..., MoorageServer], model_url: str,
                                               classifier: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    _, X = classifier
    # A flush interval longer than the test: every record is still queued when SIGTERM arrives.
    srv = fresh_server(env={"MOORAGE_CAPTURE_FLUSH_SECONDS": "120"})
    dest = tmp_path / "capture"
    name = deploy(Deployer(srv), model_url, capture(dest.as_uri()))
    rt = srv.rt()
    sent = parallel(lambda i: send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"a-{i}"), 25)
    assert line_count(dest) == 0  # still queued
    assert srv.stop() == 0
    assert len(check_records(dest, name, sent)) == 25

    srv.start(timeout=90)  # the endpoint comes back from the store, with its capture
    Deployer(srv).wait_in_service(name)
    rt = srv.rt()
    sent += parallel(lambda i: send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"b-{i}"), 15)
    assert srv.stop() == 0
    assert len(check_records(dest, name, sent)) == 40


def test_kill_9_loses_at_most_the_last_flush_interval(fresh_server: Callable[..., MoorageServer], model_url: str,
                                                      classifier: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    _, X = classifier
    flush = 0.5
    srv = fresh_server(env={"MOORAGE_CAPTURE_FLUSH_SECONDS": str(flush)})
    dest = tmp_path / "capture"
    name = deploy(Deployer(srv), model_url, capture(dest.as_uri()))
    rt = srv.rt()
    first = parallel(lambda i: send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"first-{i}"), 30)
    time.sleep(5 * flush)  # well past one flush interval: the first batch is on disk
    second = parallel(lambda i: send(rt, name, csv_body(X[i]), "text/csv", "text/csv",
                                     inference_id=f"second-{i}"), 30)
    assert srv.proc is not None
    descendants = psutil.Process(srv.proc.pid).children(recursive=True)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    try:
        docs = check_records(dest, name, first + second)  # every line whole and exactly as sent
        ids = {d["eventMetadata"]["inferenceId"] for d in docs}
        assert {s.inference_id for s in first} <= ids, "records older than a flush interval were lost"
    finally:
        srv.stop()
        for p in descendants:  # its instances follow it (parent-death signal); make sure
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_full_queue_drops_and_counts_and_never_blocks(fresh_server: Callable[..., MoorageServer], model_url: str,
                                                        classifier: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    _, X = classifier
    srv = fresh_server(env={"MOORAGE_CAPTURE_QUEUE_RECORDS": "4", "MOORAGE_CAPTURE_FLUSH_SECONDS": "0.2",
                            "MOORAGE_METRICS_PERIOD": "1"})
    dest = tmp_path / "capture"
    name = new_name("capfull")
    dest.mkdir()
    blocker = dest / name  # a file where the endpoint's folder must go: every write fails
    blocker.write_text("in the way")
    deploy(Deployer(srv), model_url, capture(str(dest)), name=name)
    rt = srv.rt()
    n = 40
    sent = [send(rt, name, csv_body(X[i]), "text/csv", "text/csv", inference_id=f"full-{i}") for i in range(n)]
    assert all(s.response_body for s in sent)  # every invocation was answered
    blocker.unlink()
    wait_until(lambda: line_count(dest) > 0, 20, what="the records kept for a retry to be written")
    # The drops are a metric: on GET /metrics (live) and in the store (per period, for alarms).
    status, _, scraped = http_request("GET", srv.url + "/metrics", timeout=10)
    assert status == 200
    counter = re.search(rf'moorage_data_capture_records_total{{endpoint="{name}",outcome="dropped",'
                        rf'variant="AllTraffic"}} (\S+)', scraped.decode())
    assert counter, scraped.decode()[-2000:]
    dropped_live = float(counter.group(1))
    wait_until(lambda: _capture_metric_sum(srv, name, "DroppedRecords") == dropped_live, 20,
               what="DroppedRecords in the metrics store")
    assert srv.stop() == 0
    written = len(check_records(dest, name, sent))
    match = re.search(rf"data capture of {name}/AllTraffic: captured (\d+), dropped (\d+), written (\d+), "
                      rf"failed (\d+)", srv.log_path.read_text())
    assert match, srv.log_tail()
    captured, dropped, written_count, failed = (int(g) for g in match.groups())
    assert captured + dropped == n  # every invocation was sampled in (100%): queued or dropped
    assert written_count == written and failed == 0 and written == captured
    assert written <= 4 and dropped >= n - 4  # records kept for a retry count against the queue's bound of 4
    assert dropped_live == dropped
    assert "data capture lost" in srv.log_path.read_text()


def _capture_metric_sum(srv: MoorageServer, endpoint: str, metric: str) -> float:
    query = urllib.parse.urlencode([("Namespace", "Moorage/DataCapture"), ("MetricName", metric),
                                    ("Statistic", "Sum"), ("Period", "3600"),
                                    ("StartTime", str(int(time.time()) // 3600 * 3600 - 3600)),
                                    ("Dimension", f"EndpointName={endpoint}"), ("Dimension", "VariantName=AllTraffic")])
    status, _, body = srv.signed_request("GET", f"/moorage/v1/metrics?{query}")
    assert status == 200, body
    return sum(p["Value"] for p in json.loads(body)["Datapoints"])
