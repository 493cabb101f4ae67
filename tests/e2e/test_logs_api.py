"""CloudWatch Logs over moorage's log files, through boto3's ``logs`` client against a real server.

An endpoint's instance log (its model prints, unstamped, and logs through Python logging) is read as
events of ``/aws/sagemaker/Endpoints/{name}``, page by page with GetLogEvents' tokens forwards and
backwards, and searched with FilterLogEvents' patterns; a transform job's instance log is a stream of
``/aws/sagemaker/TransformJobs`` named as SageMaker names it; unknown groups and streams are
CloudWatch's ResourceNotFoundException, which the SageMaker SDK's log tailing expects.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from batch_support import csv_rows, run_job
from e2e_support import (
    Deployer,
    MoorageServer,
    csv_body,
    err_code,
    err_message,
    file_url,
    invoke,
    new_name,
    pack_model,
    wait_until,
)

pytestmark = pytest.mark.e2e

# The model prints one unstamped line per request (dated by the line before it) and logs one stamped line.
CHATTY_INFERENCE = """
import logging
log = logging.getLogger("chatty")

def predict_fn(data, model):
    print(f"chatty-print rows={len(data)}", flush=True)
    log.warning("chatty-log rows=%d", len(data))
    return model.predict(data)
"""
CODE_ENV = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}


@pytest.fixture(scope="module")
def logs(server: MoorageServer) -> Any:
    return server.client("logs")


@pytest.fixture(scope="module")
def chatty_endpoint(module_deployer: Deployer, classifier: tuple[Any, np.ndarray],
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    model, X = classifier
    tarball = pack_model(tmp_path_factory.mktemp("chatty"), model, inference_py=CHATTY_INFERENCE)
    name = module_deployer.deploy("logs-chatty", file_url(tarball), env=CODE_ENV)
    rt = module_deployer.server.rt()
    for n in range(1, 6):  # five requests of 1..5 rows: ten lines of our own, in a known order
        invoke(rt, name, csv_body(X[:n]))
    return name, X


def _group(endpoint: str) -> str:
    return f"/aws/sagemaker/Endpoints/{endpoint}"


def _our_lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events if "chatty-" in e["message"]]


def _all_events(logs: Any, group: str, stream: str, **kw: Any) -> list[dict[str, Any]]:
    """Every event from the head, a page of ``limit`` at a time, until the forward token stays put."""
    events: list[dict[str, Any]] = []
    token = None
    for _ in range(1000):
        args = {"nextToken": token} if token else {}
        page = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, **args, **kw)
        events.extend(page["events"])
        if page["nextForwardToken"] == token:
            return events
        token = page["nextForwardToken"]
    raise AssertionError("the forward token never settled")


def _stream_of(logs: Any, endpoint: str) -> str:
    streams = logs.describe_log_streams(logGroupName=_group(endpoint), logStreamNamePrefix="AllTraffic/")["logStreams"]
    assert len(streams) == 1, streams
    return streams[0]["logStreamName"]


def _wait_for_lines(logs: Any, endpoint: str, count: int) -> list[dict[str, Any]]:
    """The instance's output reaches its file through the server's pipe: wait (bounded) until all of it has."""
    stream = _stream_of(logs, endpoint)
    return wait_until(lambda: (lambda ev: ev if len(_our_lines(ev)) >= count else None)(
        _all_events(logs, _group(endpoint), stream)), timeout=30, what=f"{count} lines of ours")


def test_instance_log_is_a_stream_of_its_endpoint_group(logs: Any, server: MoorageServer, sm: Any,
                                                       chatty_endpoint: tuple[str, np.ndarray]) -> None:
    name, _ = chatty_endpoint
    groups = logs.describe_log_groups(logGroupNamePrefix=_group(name))["logGroups"]
    assert [g["logGroupName"] for g in groups] == [_group(name)]
    assert groups[0]["arn"].endswith(f":log-group:{_group(name)}:*") and groups[0]["storedBytes"] > 0

    [instance] = server.instances(name)
    stream = _stream_of(logs, name)
    assert stream == f"AllTraffic/{instance['InstanceId']}"

    events = _wait_for_lines(logs, name, 10)
    ours = _our_lines(events)
    assert [line.split("chatty-")[1] for line in ours] == [
        f"{kind} rows={n}" for n in range(1, 6) for kind in ("print", "log")]
    # the server's own first line and the model server's start are there too, in the file's order
    assert events[0]["message"].startswith("--- moorage: starting instance")
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps), "a stream's events are in time order"
    created = sm.describe_endpoint(EndpointName=name)["CreationTime"].timestamp() * 1000
    assert stamps[0] >= created - 2000 and stamps[-1] <= time.time() * 1000 + 1000
    described = logs.describe_log_streams(logGroupName=_group(name))["logStreams"][0]
    # lastEventTimestamp is the file's last write (CloudWatch too updates it only eventually)
    assert described["firstEventTimestamp"] == stamps[0] and described["lastEventTimestamp"] >= stamps[-1] - 1000


def test_tokens_page_forward_and_backward(logs: Any, chatty_endpoint: tuple[str, np.ndarray]) -> None:
    name, _ = chatty_endpoint
    everything = _wait_for_lines(logs, name, 10)
    stream = _stream_of(logs, name)
    group = _group(name)

    # forward, two at a time: the same events in the same order, and the token stays put at the end
    paged = _all_events(logs, group, stream, limit=2)
    assert [e["message"] for e in paged] == [e["message"] for e in everything]
    first = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, limit=3)
    assert [e["message"] for e in first["events"]] == [e["message"] for e in everything[:3]]

    # backward from the end (the default without startFromHead): the latest page, then the one before
    last = logs.get_log_events(logGroupName=group, logStreamName=stream, limit=3)
    assert [e["message"] for e in last["events"]] == [e["message"] for e in everything[-3:]]
    before = logs.get_log_events(logGroupName=group, logStreamName=stream, limit=3,
                                 nextToken=last["nextBackwardToken"])
    assert [e["message"] for e in before["events"]] == [e["message"] for e in everything[-6:-3]]
    # and forward again from the page before: it continues where that page ended
    after = logs.get_log_events(logGroupName=group, logStreamName=stream, limit=3,
                                nextToken=before["nextForwardToken"])
    assert [e["message"] for e in after["events"]] == [e["message"] for e in everything[-3:]]

    # startTime: nothing earlier comes back; the SDK's (timestamp, skip) poll sees each event once
    cut = everything[len(everything) // 2]["timestamp"]
    later = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True, startTime=cut)
    assert later["events"] and all(e["timestamp"] >= cut for e in later["events"])
    assert [e["message"] for e in later["events"]] == [e["message"] for e in everything if e["timestamp"] >= cut]

    with pytest.raises(ClientError) as bad:
        logs.get_log_events(logGroupName=group, logStreamName=stream, nextToken="f/not-a-token")
    assert err_code(bad.value) == "InvalidParameterException"


def test_filter_terms_phrases_and_pages(logs: Any, chatty_endpoint: tuple[str, np.ndarray]) -> None:
    name, _ = chatty_endpoint
    _wait_for_lines(logs, name, 10)
    group = _group(name)
    found = logs.filter_log_events(logGroupName=group, filterPattern="chatty-print")["events"]
    assert [e["message"] for e in found] == [f"chatty-print rows={n}" for n in range(1, 6)]
    assert {e["logStreamName"] for e in found} == {_stream_of(logs, name)}
    assert len({e["eventId"] for e in found}) == 5

    phrase = logs.filter_log_events(logGroupName=group, filterPattern='"chatty-log rows=3"')["events"]
    assert len(phrase) == 1 and phrase[0]["message"].endswith("chatty-log rows=3")
    both = logs.filter_log_events(logGroupName=group, filterPattern="chatty rows=2")["events"]
    assert sorted(e["message"].split("chatty-")[1] for e in both) == ["log rows=2", "print rows=2"]
    either = logs.filter_log_events(logGroupName=group, filterPattern="?rows=1 ?rows=4 -chatty-log")["events"]
    assert [e["message"] for e in either] == ["chatty-print rows=1", "chatty-print rows=4"]

    # a page of two at a time through nextToken: the same five, once each, in order
    pages: list[str] = []
    token = None
    for _ in range(10):
        args = {"nextToken": token} if token else {}
        page = logs.filter_log_events(logGroupName=group, filterPattern="chatty-print", limit=2, **args)
        pages.extend(e["message"] for e in page["events"])
        token = page.get("nextToken")
        if not token:
            break
    assert pages == [f"chatty-print rows={n}" for n in range(1, 6)]

    # the SDK's live-logging permission check
    logs.filter_log_events(logGroupName=group, logStreamNamePrefix="AllTraffic/")
    with pytest.raises(ClientError) as bad:
        logs.filter_log_events(logGroupName=group, filterPattern="{ $.level = \"ERROR\" }")
    assert err_code(bad.value) == "InvalidParameterException" and "JSON" in err_message(bad.value)


def test_unknown_group_and_stream_are_resource_not_found(logs: Any, chatty_endpoint: tuple[str, np.ndarray]) -> None:
    name, _ = chatty_endpoint
    for call in (lambda: logs.describe_log_streams(logGroupName="/aws/sagemaker/Endpoints/no-such-endpoint"),
                 lambda: logs.filter_log_events(logGroupName="/aws/sagemaker/Endpoints/no-such-endpoint"),
                 lambda: logs.get_log_events(logGroupName="/nowhere", logStreamName="AllTraffic/i-0")):
        with pytest.raises(ClientError) as missing:
            call()
        assert err_code(missing.value) == "ResourceNotFoundException"
        assert err_message(missing.value) == "The specified log group does not exist."
    with pytest.raises(ClientError) as missing:
        logs.get_log_events(logGroupName=_group(name), logStreamName="AllTraffic/i-000000000000")
    assert err_code(missing.value) == "ResourceNotFoundException"
    assert err_message(missing.value) == "The specified log stream does not exist."
    assert logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/Endpoints/no-such")["logGroups"] == []


def test_describe_log_groups_pages(logs: Any, chatty_endpoint: tuple[str, np.ndarray]) -> None:
    names: list[str] = []
    token = None
    for _ in range(100):
        args = {"nextToken": token} if token else {}
        page = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/", limit=1, **args)
        names.extend(g["logGroupName"] for g in page["logGroups"])
        token = page.get("nextToken")
        if not token:
            break
    assert _group(chatty_endpoint[0]) in names and names == sorted(set(names))


def test_transform_job_log_is_a_stream_named_as_sagemaker_names_it(logs: Any, sm: Any, server: MoorageServer,
                                                                    classifier: tuple[Any, np.ndarray],
                                                                    tmp_path: Path) -> None:
    model, X = classifier
    name = new_name("logs-bt")
    tarball = pack_model(tmp_path / "model", model, inference_py=CHATTY_INFERENCE)
    sm.create_model(ModelName=name, PrimaryContainer={"Image": "sklearn", "ModelDataUrl": file_url(tarball),
                                                      "Environment": CODE_ENV},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/MoorageE2ERole")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_text("\n".join(csv_rows(X[:7])) + "\n")
    desc = run_job(sm, name=name, model=name, input_uri=file_url(tmp_path / "in"),
                   output_path=file_url(tmp_path / "out"), strategy="SingleRecord")
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    group = "/aws/sagemaker/TransformJobs"
    # what the SDK's log tailing asks for: the job's streams, by name, as many as it has instances
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/", orderBy="LogStreamName",
                                        limit=1)
    assert len(streams["logStreams"]) == 1 and "nextToken" not in streams
    stream = streams["logStreams"][0]["logStreamName"]
    epoch = int(desc["CreationTime"].timestamp())
    assert re.fullmatch(rf"{re.escape(name)}/i-[0-9a-f]+-{epoch}", stream), stream
    events = wait_until(lambda: (lambda ev: ev if len(_our_lines(ev)) >= 14 else None)(
        _all_events(logs, group, stream)), timeout=30, what="the job's 7 records, printed and logged")
    assert sorted(_our_lines(events)).count("chatty-print rows=1") == 7
    found = logs.filter_log_events(logGroupName=group, logStreamNamePrefix=f"{name}/", filterPattern="chatty-log")
    assert len(found["events"]) == 7 and {e["logStreamName"] for e in found["events"]} == {stream}
