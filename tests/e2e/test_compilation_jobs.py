"""Compilation jobs and edge packaging jobs through boto3 against a real server: a model uploaded to the
server's object store with boto3's s3 client, compiled (CreateCompilationJob) and packaged
(CreateEdgePackagingJob), the packages read back through the S3 API, verified with the server's key and run
against the original; a validation drop fails the job with the measured drop; bad requests are refused in
SageMaker's shapes; Stop, and a restart that keeps finished jobs and fails the one it cut off."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import ROLE_ARN, MoorageServer, err_code, err_message, new_name, wait_until
from moorage.edge import package as P

pytestmark = pytest.mark.e2e
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")

STOPPING = {"MaxRuntimeInSeconds": 900}
DONE = ("COMPLETED", "FAILED", "STOPPED")


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(300, 6, n_informative=4, random_state=seed)
    return x.astype(np.float32), y


def _archive(model: Any, name: str = "model.joblib") -> bytes:
    import joblib

    raw = io.BytesIO()
    joblib.dump(model, raw)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(raw.getvalue())
        archive.addfile(info, io.BytesIO(raw.getvalue()))
    return out.getvalue()


def _csv(x: np.ndarray, y: np.ndarray) -> bytes:
    out = io.StringIO()
    np.savetxt(out, np.column_stack([x, y]), delimiter=",", fmt="%.9g")
    return out.getvalue().encode()


def _compile_request(name: str, source: str, output: str, framework: str = "SKLEARN",
                     **options: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "CompilationJobName": name, "RoleArn": ROLE_ARN,
        "InputConfig": {"S3Uri": source, "Framework": framework},
        "OutputConfig": {"S3OutputLocation": output, "TargetDevice": "rasp4b"},
        "StoppingCondition": STOPPING}
    if options:
        request["OutputConfig"]["CompilerOptions"] = json.dumps(options)
    return request


def wait_compiled(sm: Any, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_until(lambda: (lambda d: d if d["CompilationJobStatus"] in DONE else None)(
        sm.describe_compilation_job(CompilationJobName=name)), timeout, interval=0.3, what=f"compilation job {name}")


def wait_packaged(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    return wait_until(lambda: (lambda d: d if d["EdgePackagingJobStatus"] in DONE else None)(
        sm.describe_edge_packaging_job(EdgePackagingJobName=name)), timeout, interval=0.3,
        what=f"edge packaging job {name}")


def _server_key(server: MoorageServer) -> bytes:
    return P.public_key_pem(P.load_private_key(Path(server.home) / "edge" / "signing-key.pem"))


def test_compile_and_package_through_the_servers_object_store(server: MoorageServer) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sm, s3 = server.sm(), server.client("s3")
    bucket = new_name("edge-bucket")
    s3.create_bucket(Bucket=bucket)
    x, y = _data()
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    s3.put_object(Bucket=bucket, Key="models/churn/model.tar.gz", Body=_archive(model))
    s3.put_object(Bucket=bucket, Key="data/validation.csv", Body=_csv(x, y))

    name = new_name("compile")
    arn = sm.create_compilation_job(**_compile_request(
        name, f"s3://{bucket}/models/churn/model.tar.gz", f"s3://{bucket}/compiled",
        validation_data=f"s3://{bucket}/data/validation.csv", label_column=-1))["CompilationJobArn"]
    assert arn.endswith(f":compilation-job/{name.lower()}")
    desc = wait_compiled(sm, name)
    assert desc["CompilationJobStatus"] == "COMPLETED", desc["FailureReason"]
    artifact = desc["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{bucket}/compiled/model-rasp4b.tar.gz"
    assert desc["InputConfig"]["Framework"] == "SKLEARN" and desc["OutputConfig"]["TargetDevice"] == "rasp4b"
    assert desc["CompilationStartTime"] <= desc["CompilationEndTime"]
    compiled = s3.get_object(Bucket=bucket, Key="compiled/model-rasp4b.tar.gz")["Body"].read()
    assert desc["ModelDigests"]["ArtifactDigest"] == hashlib.blake2b(compiled).hexdigest()
    package = P.verify(compiled, [_server_key(server)])
    assert package.manifest["validation"]["drop"] == 0.0
    assert package.manifest["target"]["TargetDevice"] == "rasp4b"
    session = ort.InferenceSession(package.model_bytes, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": x})
    assert np.array_equal(label, model.predict(x))
    assert np.abs(probabilities - model.predict_proba(x)).max() < 1e-5
    listed = sm.list_compilation_jobs(NameContains=name)["CompilationJobSummaries"]
    assert [(s["CompilationJobName"], s["CompilationJobStatus"], s["CompilationTargetDevice"]) for s in listed] == \
        [(name, "COMPLETED", "rasp4b")]
    assert sm.list_compilation_jobs(NameContains=name, StatusEquals="FAILED")["CompilationJobSummaries"] == []

    packaging = new_name("package")
    sm.create_edge_packaging_job(EdgePackagingJobName=packaging, CompilationJobName=name, ModelName="churn-model",
                                 ModelVersion="1.0", RoleArn=ROLE_ARN,
                                 OutputConfig={"S3OutputLocation": f"s3://{bucket}/packages"})
    packaged = wait_packaged(sm, packaging)
    assert packaged["EdgePackagingJobStatus"] == "COMPLETED", packaged.get("EdgePackagingJobStatusMessage")
    assert packaged["ModelArtifact"] == f"s3://{bucket}/packages/churn-model-1.0.tar.gz"
    body = s3.get_object(Bucket=bucket, Key="packages/churn-model-1.0.tar.gz")["Body"].read()
    signed = P.verify(body, [_server_key(server)])
    assert signed.model_handle == "churn-model-1.0" and signed.model_bytes == package.model_bytes
    assert packaged["ModelSignature"] == base64.b64encode(signed.signature).decode()
    assert signed.manifest["packaging"]["compilation_job"] == name
    summaries = sm.list_edge_packaging_jobs(NameContains=packaging)["EdgePackagingJobSummaries"]
    assert [(s["EdgePackagingJobName"], s["ModelName"], s["EdgePackagingJobStatus"]) for s in summaries] == \
        [(packaging, "churn-model", "COMPLETED")]


def test_lightgbm_is_compiled_and_a_drop_fails_the_job_with_its_measure(server: MoorageServer,
                                                                        tmp_path: Path) -> None:
    lgb = pytest.importorskip("lightgbm")
    from sklearn.neural_network import MLPClassifier

    sm = server.sm()
    x, y = _data(seed=1)
    booster = lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y).booster_
    booster.save_model(str(tmp_path / "model.txt"))
    with tarfile.open(tmp_path / "lgb.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "model.txt", arcname="model.txt")
    (tmp_path / "val.csv").write_bytes(_csv(x, y))
    name = new_name("lgb")
    # LIGHTGBM is moorage's extension of SageMaker's Framework enum
    sm.create_compilation_job(**_compile_request(name, (tmp_path / "lgb.tar.gz").as_uri(),
                                                 (tmp_path / "out").as_uri(), framework="LIGHTGBM",
                                                 validation_data=str(tmp_path / "val.csv"), label_column=-1))
    desc = wait_compiled(sm, name)
    assert desc["CompilationJobStatus"] == "COMPLETED", desc["FailureReason"]
    assert (tmp_path / "out" / "lgb-rasp4b.tar.gz").is_file()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((64, 64), max_iter=40, random_state=0).fit(x, y)
    (tmp_path / "mlp.tar.gz").write_bytes(_archive(mlp))
    refused = new_name("refused")
    # int8 moves every probability a little: compared as values, that is over a tolerance of 0
    sm.create_compilation_job(**_compile_request(refused, (tmp_path / "mlp.tar.gz").as_uri(),
                                                 (tmp_path / "refused").as_uri(), quantize="int8", task="regression",
                                                 tolerance=0, validation_data=str(tmp_path / "val.csv"),
                                                 label_column=-1))
    failed = wait_compiled(sm, refused)
    assert failed["CompilationJobStatus"] == "FAILED"
    assert "refused: relative error" in failed["FailureReason"] and "tolerance 0" in failed["FailureReason"]
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ClientError) as error:
        sm.create_edge_packaging_job(EdgePackagingJobName=new_name("nopkg"), CompilationJobName=refused,
                                     ModelName="churn-model", ModelVersion="1", RoleArn=ROLE_ARN,
                                     OutputConfig={"S3OutputLocation": (tmp_path / "p").as_uri()})
    assert err_code(error.value) == "ValidationException" and "FAILED" in err_message(error.value)


def test_bad_requests_are_refused_in_sagemakers_shapes(server: MoorageServer, tmp_path: Path) -> None:
    sm = server.sm()
    source, output = (tmp_path / "m.tar.gz").as_uri(), (tmp_path / "o").as_uri()

    def refused(call: Any, **request: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as error:
            call(**request)
        return err_code(error.value), err_message(error.value)

    code, message = refused(sm.create_compilation_job, **_compile_request(new_name("tf"), source, output,
                                                                          framework="TENSORFLOW"))
    assert code == "ValidationException" and "TENSORFLOW" in message
    code, message = refused(sm.create_compilation_job, **_compile_request(new_name("x"), source, output,
                                                                          framework="CAFFE"))
    assert code == "ValidationException" and "enum" in message
    both = _compile_request(new_name("both"), source, output)
    both["OutputConfig"]["TargetPlatform"] = {"Os": "LINUX", "Arch": "ARM64"}
    code, message = refused(sm.create_compilation_job, **both)
    assert code == "ValidationException" and "exactly one" in message
    code, message = refused(sm.create_compilation_job, **_compile_request(new_name("q"), source, output,
                                                                          quantize="int4"))
    assert code == "ValidationException" and "int8" in message
    code, _ = refused(sm.describe_compilation_job, CompilationJobName=new_name("missing"))
    assert code == "ResourceNotFound"
    code, _ = refused(sm.stop_edge_packaging_job, EdgePackagingJobName=new_name("missing"))
    assert code == "ResourceNotFound"
    code, message = refused(sm.create_edge_packaging_job, EdgePackagingJobName=new_name("p"),
                            CompilationJobName=new_name("missing"), ModelName="churn-model", ModelVersion="1",
                            RoleArn=ROLE_ARN, OutputConfig={"S3OutputLocation": output})
    assert code == "ValidationException" and "does not exist" in message

    # a job whose model is missing fails with the reason; its name is taken from then on
    name = new_name("nomodel")
    sm.create_compilation_job(**_compile_request(name, source, output))
    failed = wait_compiled(sm, name)
    assert failed["CompilationJobStatus"] == "FAILED" and "Could not find the model" in failed["FailureReason"]
    code, _ = refused(sm.create_compilation_job, **_compile_request(name, source, output))
    assert code == "ResourceInUse"
    code, message = refused(sm.stop_compilation_job, CompilationJobName=name)
    assert code == "ValidationException" and "only an InProgress job" in message


def test_stop_and_a_restart(fresh_server: Any, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    home = tmp_path / "home"
    srv = fresh_server(home=home)
    sm = srv.sm()
    x, y = _data(seed=2)
    (tmp_path / "model.tar.gz").write_bytes(_archive(LogisticRegression().fit(x, y)))
    done = new_name("kept")
    sm.create_compilation_job(**_compile_request(done, (tmp_path / "model.tar.gz").as_uri(),
                                                 (tmp_path / "kept").as_uri()))
    before = wait_compiled(sm, done)
    assert before["CompilationJobStatus"] == "COMPLETED", before["FailureReason"]
    packaged = new_name("kept-pkg")
    sm.create_edge_packaging_job(EdgePackagingJobName=packaged, CompilationJobName=done, ModelName="kept-model",
                                 ModelVersion="2", RoleArn=ROLE_ARN,
                                 OutputConfig={"S3OutputLocation": (tmp_path / "pkgs").as_uri()})
    assert wait_packaged(sm, packaged)["EdgePackagingJobStatus"] == "COMPLETED"

    # a model nobody finishes writing: the job's read waits until it is stopped or the server goes
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    os.mkfifo(blocked / "model.tar.gz")
    stopped = new_name("stopme")
    sm.create_compilation_job(**_compile_request(stopped, (blocked / "model.tar.gz").as_uri(),
                                                 (tmp_path / "s").as_uri()))
    assert sm.describe_compilation_job(CompilationJobName=stopped)["CompilationJobStatus"] == "INPROGRESS"
    sm.stop_compilation_job(CompilationJobName=stopped)
    assert wait_compiled(sm, stopped)["CompilationJobStatus"] == "STOPPED"
    sm.stop_compilation_job(CompilationJobName=stopped)  # stopping a stopped job is a no-op
    cut = new_name("cut")
    sm.create_compilation_job(**_compile_request(cut, (blocked / "model.tar.gz").as_uri(), (tmp_path / "c").as_uri()))
    srv.stop()

    srv = fresh_server(home=home)
    sm = srv.sm()
    after = sm.describe_compilation_job(CompilationJobName=done)
    keys = ("CompilationJobStatus", "ModelArtifacts", "ModelDigests", "CreationTime", "CompilationEndTime")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
    assert sm.describe_edge_packaging_job(EdgePackagingJobName=packaged)["EdgePackagingJobStatus"] == "COMPLETED"
    assert sm.describe_compilation_job(CompilationJobName=stopped)["CompilationJobStatus"] == "STOPPED"
    failed = sm.describe_compilation_job(CompilationJobName=cut)
    assert failed["CompilationJobStatus"] == "FAILED" and "server stopped" in failed["FailureReason"]
    assert not (tmp_path / "c").exists()
    # the key survived too: what was packaged before the restart verifies with the key the server has now
    P.verify(tmp_path / "pkgs" / "kept-model-2.tar.gz", [_server_key(srv)])
