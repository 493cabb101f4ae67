"""Transform jobs end to end: a real `moorage serve`, boto3, instances, files, and an S3-compatible server."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from botocore.exceptions import ClientError

from batch_support import (
    WAIT,
    S3Server,
    create_model,
    csv_rows,
    expected_lines,
    job_request,
    run_job,
    slow_model,
)
from e2e_support import ECHO_ENV_SERVER, MoorageServer, new_name, pack_model, train_classifier, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch")


@pytest.fixture(scope="module")
def s3(workdir: Path) -> Iterator[S3Server | None]:
    try:
        server = S3Server(workdir).start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        yield None  # tests over s3:// skip with this reason; the rest run
        pytest.s3_unavailable = str(exc)  # type: ignore[attr-defined]
        return
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bsrv(workdir: Path, s3: S3Server | None) -> Iterator[MoorageServer]:
    """A server of this module's own: it must see the S3 server's endpoint in its environment."""
    server = MoorageServer(workdir / "home", env=s3.environment() if s3 else {})
    server.start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sm(bsrv: MoorageServer) -> Any:
    return bsrv.sm()


@pytest.fixture(scope="module")
def clf() -> tuple[Any, np.ndarray]:
    return train_classifier()


@pytest.fixture(scope="module")
def model(sm: Any, clf: tuple[Any, np.ndarray], workdir: Path) -> str:
    return create_model(sm, new_name("bt-model"), pack_model(workdir / "clf", clf[0]))


@pytest.fixture(scope="module")
def csv_input(workdir: Path, clf: tuple[Any, np.ndarray]) -> tuple[Path, dict[str, np.ndarray]]:
    """Three CSV objects (one in a sub-folder) of different sizes."""
    _, X = clf
    root = workdir / "csv-in"
    parts = {"a.csv": X[:70], "b.csv": X[70:71], "sub/c.csv": X[71:200]}
    for name, rows in parts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(csv_rows(rows)) + "\n")
    return root, parts


def out_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_multi_file_csv_job_matches_local_predict(sm: Any, model: str, clf: Any, csv_input: Any,
                                                  workdir: Path) -> None:
    root, parts = csv_input
    out = workdir / "out-csv"
    name = new_name("bt-csv")
    desc = run_job(sm, name=name, model=model, input_uri=root.as_uri(), output_path=str(out), instances=2,
                   MaxPayloadInMB=1, MaxConcurrentTransforms=2,
                   output={"Accept": "text/csv", "AssembleWith": "Line", "KmsKeyId": "alias/ignored"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert out_files(out) == {f"{n}.out": expected_lines(clf[0], rows) for n, rows in parts.items()}
    assert desc["TransformStartTime"] <= desc["TransformEndTime"]
    assert desc["TransformOutput"]["KmsKeyId"] == "alias/ignored"
    assert desc["TransformResources"]["InstanceCount"] == 2
    listed = sm.list_transform_jobs(NameContains=name, StatusEquals="Completed")["TransformJobSummaries"]
    assert [j["TransformJobName"] for j in listed] == [name]


def test_single_record_jsonlines_gzip_with_default_accept(sm: Any, model: str, clf: Any, workdir: Path) -> None:
    _, X = clf
    root = workdir / "jsonl-in"
    root.mkdir()
    (root / "rows.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps(row) + "\n" for row in X[:25].tolist()).encode()))
    out = workdir / "out-jsonl"
    desc = run_job(sm, name=new_name("bt-jsonl"), model=model, input_uri=str(root), output_path=out.as_uri(),
                   content_type="application/jsonlines", strategy="SingleRecord",
                   input={"CompressionType": "Gzip"}, output={"AssembleWith": "Line"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    lines = (out / "rows.jsonl.gz.out").read_text().splitlines()
    # One response per record, in order; the sklearn container answers a JSON list per request.
    assert [json.loads(line) for line in lines] == [[p] for p in clf[0].predict(X[:25]).tolist()]


def test_csv_input_filter_join_and_output_filter(sm: Any, model: str, clf: Any, workdir: Path) -> None:
    _, X = clf
    root = workdir / "join-in"
    root.mkdir()
    ids = [f"row-{i}" for i in range(40)]
    (root / "with-ids.csv").write_text("".join(f"{i},{r}\n" for i, r in zip(ids, csv_rows(X[:40]), strict=True)))
    out = workdir / "out-join"
    desc = run_job(sm, name=new_name("bt-join"), model=model, input_uri=str(root), output_path=str(out),
                   MaxPayloadInMB=1, output={"Accept": "text/csv", "AssembleWith": "Line"},
                   DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    predictions = clf[0].predict(X[:40]).tolist()
    assert (out / "with-ids.csv.out").read_text() == "".join(f"{i},{p}\n" for i, p in zip(ids, predictions,
                                                                                         strict=True))
    assert desc["DataProcessing"] == {"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"}


def test_json_records_joined_under_sagemaker_output(sm: Any, model: str, clf: Any, workdir: Path) -> None:
    _, X = clf
    root = workdir / "json-join-in"
    root.mkdir()
    records = [{"id": i, "features": row, "note": "x"} for i, row in enumerate(X[:12].tolist())]
    (root / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = workdir / "out-json-join"
    desc = run_job(sm, name=new_name("bt-jjoin"), model=model, input_uri=str(root), output_path=str(out),
                   content_type="application/jsonlines", output={"Accept": "application/jsonlines"},
                   DataProcessing={"InputFilter": "$.features", "JoinSource": "Input",
                                   "OutputFilter": "$['id','SageMakerOutput']"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    got = [json.loads(line) for line in (out / "r.jsonl.out").read_text().splitlines()]
    assert got == [{"id": i, "SageMakerOutput": p} for i, p in enumerate(clf[0].predict(X[:12]).tolist())]


def test_environment_and_sagemaker_batch_reach_the_container(sm: Any, workdir: Path) -> None:
    code = workdir / "echo"
    code.mkdir()
    serve = code / "serve"
    serve.write_text(f"#!{sys.executable}\n{ECHO_ENV_SERVER}")
    serve.chmod(0o755)
    model = new_name("bt-echo")
    sm.create_model(ModelName=model, PrimaryContainer={"Image": "byo", "ModelDataUrl": code.as_uri()},
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/x")
    root = workdir / "echo-in"
    root.mkdir()
    (root / "one.txt").write_text("hello\n")
    out = workdir / "out-echo"
    desc = run_job(sm, name=new_name("bt-env"), model=model, input_uri=str(root), output_path=str(out),
                   content_type="text/plain", split="None", strategy="SingleRecord", MaxPayloadInMB=2,
                   Environment={"MY_SETTING": "42"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    env = json.loads((out / "one.txt.out").read_text())["env"]
    assert env["MY_SETTING"] == "42"
    assert env["SAGEMAKER_BATCH"] == "true"
    assert env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] == "2"
    assert env["SAGEMAKER_BATCH_STRATEGY"] == "SINGLE_RECORD"


def test_missing_input_fails_with_a_reason(sm: Any, model: str, workdir: Path) -> None:
    missing = workdir / "does-not-exist"
    desc = run_job(sm, name=new_name("bt-missing"), model=model, input_uri=str(missing), output_path=str(workdir / "x"))
    assert desc["TransformJobStatus"] == "Failed"
    assert str(missing) in desc["FailureReason"]


def test_failing_records_fail_the_job_naming_file_and_record_with_no_partial_output(
        sm: Any, model: str, clf: Any, workdir: Path) -> None:
    _, X = clf
    root = workdir / "bad-in"
    root.mkdir()
    rows = csv_rows(X[:10])
    rows[6] = "1.0,not-a-number,2.0,3.0"
    (root / "bad.csv").write_text("\n".join(rows) + "\n")
    out = workdir / "out-bad"
    desc = run_job(sm, name=new_name("bt-bad"), model=model, input_uri=str(root), output_path=str(out),
                   strategy="SingleRecord")
    assert desc["TransformJobStatus"] == "Failed"
    reason = desc["FailureReason"]
    assert "bad.csv" in reason and "record 7" in reason and "tried 2 times" in reason, reason
    assert not out.exists() or list(out.iterdir()) == []  # no .out and no temporary file left


def test_api_errors_are_sagemakers(sm: Any, model: str, workdir: Path) -> None:
    with pytest.raises(ClientError) as exc:
        sm.describe_transform_job(TransformJobName="no-such-job")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as exc:
        sm.create_transform_job(**job_request(new_name("bt-nomodel"), "no-such-model", str(workdir), str(workdir)))
    assert "Could not find model" in exc.value.response["Error"]["Message"]
    name = new_name("bt-dup")
    sm.create_transform_job(**job_request(name, model, str(workdir / "nothing"), str(workdir / "o")))
    with pytest.raises(ClientError) as exc:
        sm.create_transform_job(**job_request(name, model, str(workdir / "nothing"), str(workdir / "o")))
    assert "must be unique" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:
        sm.create_transform_job(**job_request(new_name("bt-badjp"), model, str(workdir), str(workdir),
                                              DataProcessing={"InputFilter": "$[1:"}))
    assert exc.value.response["Error"]["Code"] == "ValidationException"


GATED_INFERENCE = """
import os
import time
from pathlib import Path

_answered = []


def predict_fn(data, model):
    # The first request is answered at once; the next waits for the test to open the gate (bounded),
    # so the job is certainly running while the test reads how far it is.
    if _answered:
        gate, deadline = Path(os.environ["GATE_FILE"]), time.monotonic() + 120
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    _answered.append(1)
    return model.predict(data)
"""


def test_native_route_reports_a_running_jobs_progress_then_its_counts(bsrv: MoorageServer, sm: Any, clf: Any,
                                                                       workdir: Path) -> None:
    gate = workdir / "progress-gate"
    tarball = pack_model(workdir / "gated", clf[0], inference_py=GATED_INFERENCE)
    model = create_model(sm, new_name("bt-gated"), tarball, {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "GATE_FILE": str(gate)})
    root = workdir / "progress-in"
    root.mkdir()
    (root / "rows.csv").write_text("\n".join(csv_rows(clf[1][:5])) + "\n")
    name = new_name("bt-progress")

    def state() -> dict[str, Any]:
        status, _, body = bsrv.signed_request("GET", f"/moorage/v1/transform-jobs/{name}")
        assert status == 200, body
        return json.loads(body)

    sm.create_transform_job(**job_request(name, model, str(root), str(workdir / "out-progress"),
                                          strategy="SingleRecord", MaxConcurrentTransforms=1))
    try:
        running = wait_until(lambda: (doc := state())["Progress"].get("RecordsDone") and doc, timeout=60,
                             what="the first record")
        # The gate holds the second record: the job runs, and the route says how far it is.
        assert running["TransformJobStatus"] == "InProgress"
        progress = running["Progress"]
        assert (progress["RecordsDone"], progress["FilesDone"], progress["FilesTotal"]) == (1, 0, 1), progress
        assert progress["BytesTotal"] == (root / "rows.csv").stat().st_size and progress["Instances"], progress
    finally:
        gate.touch()
    sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName=name, WaiterConfig=WAIT)
    done = state()
    assert done["TransformJobStatus"] == "Completed", done
    assert (done["Progress"]["RecordsDone"], done["Progress"]["FilesDone"], done["Progress"]["FilesTotal"]) == (
        5, 1, 1), done


def test_stopped_job_stops_its_instances_and_leaves_no_output(bsrv: MoorageServer, sm: Any, clf: Any,
                                                              workdir: Path) -> None:
    tarball, env = slow_model(workdir / "slow", clf[0])
    model = create_model(sm, new_name("bt-slow"), tarball, env)
    root = workdir / "slow-in"
    root.mkdir()
    (root / "many.csv").write_text("\n".join(csv_rows(clf[1][:200])) + "\n")
    out = workdir / "out-slow"
    name = new_name("bt-stop")
    sm.create_transform_job(**job_request(name, model, str(root), str(out), strategy="SingleRecord", instances=2))

    def running_pids() -> list[int]:
        _, _, body = bsrv.signed_request("GET", f"/moorage/v1/transform-jobs/{name}")
        progress = json.loads(body)["Progress"]
        return [p for i in progress.get("Instances", []) for p in i["Pids"]] if progress.get("RecordsDone") else []

    pids = wait_until(running_pids, timeout=60, what="the job's first records")
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    sm.stop_transform_job(TransformJobName=name)
    sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName=name, WaiterConfig=WAIT)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "Stopped"
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in pids), timeout=15, what="the instances to exit")
    assert not out.exists() or list(out.iterdir()) == []


def test_a_job_cut_off_by_a_server_crash_is_failed_after_restart(clf: Any, workdir: Path) -> None:
    server = MoorageServer(workdir / "crash-home").start(timeout=90)
    try:
        sm = server.sm()
        tarball, env = slow_model(workdir / "slow2", clf[0])
        model = create_model(sm, "crash-model", tarball, env)
        root = workdir / "crash-in"
        root.mkdir()
        (root / "rows.csv").write_text("\n".join(csv_rows(clf[1][:100])) + "\n")
        sm.create_transform_job(**job_request("crash-job", model, str(root), str(workdir / "crash-out"),
                                              strategy="SingleRecord"))
        wait_until(lambda: json.loads(server.signed_request("GET", "/moorage/v1/transform-jobs/crash-job")[2])
                   ["Progress"].get("RecordsDone"), timeout=60, what="records done")
        assert server.proc is not None
        server.proc.kill()  # no shutdown hooks: the store still says InProgress
        server.proc.wait(10)
        server.stop()
        server.start(timeout=90)
        desc = server.sm().describe_transform_job(TransformJobName="crash-job")
        assert desc["TransformJobStatus"] == "Failed"
        assert "server stopped while the job was running" in desc["FailureReason"]
        assert "TransformEndTime" in desc
    finally:
        server.stop()


def test_s3_prefix_and_manifest_inputs_to_s3_output(s3: S3Server | None, sm: Any, model: str, clf: Any) -> None:
    if s3 is None:
        pytest.skip(f"no S3-compatible server: {getattr(pytest, 's3_unavailable', 'moto_server unavailable')}")
    _, X = clf
    client = s3.client()
    client.create_bucket(Bucket="batch")
    parts = {"in/p1.csv": X[:30], "in/deeper/p2.csv": X[30:45]}
    for key, rows in parts.items():
        client.put_object(Bucket="batch", Key=key, Body="\n".join(csv_rows(rows)).encode() + b"\n")
    client.put_object(Bucket="batch", Key="manifest.json",
                      Body=json.dumps([{"prefix": "s3://batch/in/"}, "deeper/p2.csv"]).encode())
    desc = run_job(sm, name=new_name("bt-s3"), model=model, input_uri="s3://batch/in/", output_path="s3://batch/out",
                   output={"Accept": "text/csv"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    desc = run_job(sm, name=new_name("bt-s3m"), model=model, input_uri="s3://batch/manifest.json",
                   data_type="ManifestFile", output_path="s3://batch/out-manifest", output={"Accept": "text/csv"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")

    def read(key: str) -> str:
        return client.get_object(Bucket="batch", Key=key)["Body"].read().decode()

    assert read("out/p1.csv.out") == expected_lines(clf[0], parts["in/p1.csv"])
    assert read("out/deeper/p2.csv.out") == expected_lines(clf[0], parts["in/deeper/p2.csv"])
    assert read("out-manifest/deeper/p2.csv.out") == expected_lines(clf[0], parts["in/deeper/p2.csv"])
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="batch", Prefix="out")["Contents"])
    assert keys == ["out-manifest/deeper/p2.csv.out", "out/deeper/p2.csv.out", "out/p1.csv.out"]


def test_sdk_transformer_and_cli(bsrv: MoorageServer, clf: Any, csv_input: Any, workdir: Path) -> None:
    from moorage.sdk.model import Model
    from moorage.sdk.session import Session

    root, parts = csv_input
    session = Session(url=bsrv.url, access_key_id=bsrv.access_key_id, secret_access_key=bsrv.secret_access_key,
                      home=workdir / "client-home")
    model = Model(model_data=pack_model(workdir / "sdk", clf[0]), image_uri="sklearn", name=new_name("bt-sdk"),
                  sagemaker_session=session)
    out = workdir / "out-sdk"
    transformer = model.transformer(instance_count=2, output_path=str(out), strategy="MultiRecord",
                                    assemble_with="Line", accept="text/csv", max_payload=1)
    transformer.transform(str(root), content_type="text/csv", split_type="Line")
    assert out_files(out) == {f"{n}.out": expected_lines(clf[0], rows) for n, rows in parts.items()}
    assert transformer.describe()["TransformJobStatus"] == "Completed"
    assert transformer.progress()["Progress"]["RecordsDone"] == 200

    cli_out = workdir / "out-cli"
    result = subprocess.run(
        [sys.executable, "-m", "moorage", "transform", "start", model.name, str(root), str(cli_out),
         "--content-type", "text/csv", "--split-type", "Line", "--accept", "text/csv", "--assemble-with", "Line",
         "--url", bsrv.url, "--home", str(bsrv.home)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Completed, 3/3 objects, 200 records" in result.stdout
    assert out_files(cli_out) == out_files(out)
