"""The SageMaker-SDK-like layer (moorage.sdk) against a real `moorage serve`, and its (de)serializers."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    MoorageServer,
    err_code,
    error_code_of,
    http_request,
    new_name,
    save_model,
    tar_dir,
    variant,
)
from moorage import Model, Predictor, Session
from moorage.connection import ClientError as MoorageClientError
from moorage.sdk import UnexpectedStatusException
from moorage.sdk.deserializers import (
    BytesDeserializer,
    CSVDeserializer,
    JSONDeserializer,
    JSONLinesDeserializer,
    NumpyDeserializer,
    PandasDeserializer,
    StreamDeserializer,
    StringDeserializer,
)
from moorage.sdk.serializers import (
    CSVSerializer,
    IdentitySerializer,
    JSONLinesSerializer,
    JSONSerializer,
    NumpySerializer,
)

LABELS = {0: "negative", 1: "positive"}
INFERENCE_PY = f"""
import os

import joblib

LABELS = {LABELS!r}


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    return [LABELS[int(c)] for c in model.predict(data)]
"""


def path_of(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(urlsplit(url).path)


def labels_for(model: Any, X: np.ndarray) -> list[str]:
    return [LABELS[int(c)] for c in model.predict(X)]


# --------------------------------------------------------------------------------------------------
# (de)serializers: no server needed
# --------------------------------------------------------------------------------------------------
def test_serializer_content_types() -> None:
    assert CSVSerializer().CONTENT_TYPE == "text/csv"
    assert JSONSerializer().CONTENT_TYPE == "application/json"
    assert JSONLinesSerializer().CONTENT_TYPE == "application/jsonlines"
    assert NumpySerializer().CONTENT_TYPE == "application/x-npy"
    assert IdentitySerializer().CONTENT_TYPE == "application/octet-stream"
    assert IdentitySerializer("image/png").CONTENT_TYPE == "image/png"
    with pytest.raises(ValueError, match="content_type"):
        CSVSerializer(content_type=None)  # type: ignore[arg-type]


def test_csv_serializer() -> None:
    s = CSVSerializer()
    assert s.serialize([1, 2, 3]) == "1,2,3"
    assert s.serialize([[1, 2], [3, 4]]) == "1,2\n3,4"
    assert s.serialize(np.array([[1.5, 2.0], [3.0, 4.0]])) == "1.5,2.0\n3.0,4.0"
    assert s.serialize(np.array([1, 2])) == "1,2"
    assert s.serialize("a,b") == "a,b"
    assert s.serialize(["1,2", "3,4"]) == "1,2\n3,4"  # strings are rows already, as in the SageMaker SDK
    assert s.serialize([["a,b", "c"]]) == '"a,b",c'  # cells are quoted as csv does
    assert s.serialize(io.BytesIO(b"raw")) == b"raw"
    with pytest.raises(ValueError, match="empty"):
        s.serialize([])
    with pytest.raises(ValueError, match="Unable to handle"):
        s.serialize(5)


def test_json_jsonlines_numpy_identity_serializers() -> None:
    assert json.loads(JSONSerializer().serialize({"x": np.array([1, 2]), "y": 3})) == {"x": [1, 2], "y": 3}
    assert json.loads(JSONSerializer().serialize(np.eye(2))) == [[1.0, 0.0], [0.0, 1.0]]
    assert JSONSerializer().serialize(io.StringIO("[1]")) == "[1]"
    assert JSONLinesSerializer().serialize([{"a": 1}, [1, 2]]) == '{"a": 1}\n[1, 2]'
    assert JSONLinesSerializer().serialize(np.array([[1, 2], [3, 4]])) == "[1, 2]\n[3, 4]"
    assert JSONLinesSerializer().serialize('{"a": 1}') == '{"a": 1}'
    with pytest.raises(ValueError, match="JSON Lines"):
        JSONLinesSerializer().serialize(3)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    loaded = np.load(io.BytesIO(NumpySerializer().serialize(array)))
    assert loaded.dtype == np.float32 and np.array_equal(loaded, array)
    assert np.load(io.BytesIO(NumpySerializer(dtype="int16").serialize([[1, 2]]))).dtype == np.int16
    with pytest.raises(ValueError, match="empty"):
        NumpySerializer().serialize(np.array([]))
    with pytest.raises(ValueError, match="empty"):
        NumpySerializer().serialize([])
    assert IdentitySerializer().serialize(b"\x00\xff") == b"\x00\xff"


def _stream(data: bytes) -> io.BytesIO:
    """Stands in for botocore's StreamingBody: read() and close()."""
    return io.BytesIO(data)


def test_deserializers() -> None:
    assert BytesDeserializer().ACCEPT == ("*/*",)
    assert StringDeserializer().ACCEPT == ("application/json",)
    assert JSONDeserializer().ACCEPT == ("application/json",)
    assert JSONLinesDeserializer().ACCEPT == ("application/jsonlines",)
    assert CSVDeserializer().ACCEPT == ("text/csv",)
    assert NumpyDeserializer().ACCEPT == ("application/x-npy",)
    assert PandasDeserializer().ACCEPT == ("text/csv", "application/json")
    assert JSONDeserializer(accept=("a/b", "c/d")).ACCEPT == ("a/b", "c/d")

    stream = _stream(b"\x00\x01")
    assert BytesDeserializer().deserialize(stream, "application/octet-stream") == b"\x00\x01"
    assert stream.closed
    assert StringDeserializer().deserialize(_stream("héllo".encode()), "text/plain") == "héllo"
    assert JSONDeserializer().deserialize(_stream(b'{"a": [1, 2]}'), "application/json") == {"a": [1, 2]}
    assert JSONLinesDeserializer().deserialize(_stream(b'{"a": 1}\n[2]\n'), "application/jsonlines") == [{"a": 1}, [2]]
    assert CSVDeserializer().deserialize(_stream(b'1,"a,b"\n2,c\n'), "text/csv") == [["1", "a,b"], ["2", "c"]]
    raw, ctype = StreamDeserializer().deserialize(_stream(b"x"), "text/plain")
    assert raw.read() == b"x" and ctype == "text/plain"

    numpy = NumpyDeserializer()
    assert np.array_equal(numpy.deserialize(_stream(b"1,2\n3,4\n"), "text/csv"), [[1, 2], [3, 4]])
    assert np.array_equal(numpy.deserialize(_stream(b"[[1, 2]]"), "application/json; charset=utf-8"), [[1, 2]])
    buffer = io.BytesIO()
    np.save(buffer, np.array([1.5, 2.5]))
    assert np.array_equal(numpy.deserialize(_stream(buffer.getvalue()), "application/x-npy"), [1.5, 2.5])
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        numpy.deserialize(_stream(buffer.getvalue()), "application/x-npy")
    loaded = NumpyDeserializer(allow_pickle=True).deserialize(_stream(buffer.getvalue()), "application/x-npy")
    assert loaded[0] == {"a": 1}
    with pytest.raises(ValueError, match="cannot read content type image/png"):
        numpy.deserialize(_stream(b""), "image/png")


def test_pandas_deserializer() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="PandasDeserializer needs pandas"):
            PandasDeserializer().deserialize(_stream(b"a,b\n1,2\n"), "text/csv")
        return
    frame = PandasDeserializer().deserialize(_stream(b"a,b\n1,2\n"), "text/csv")
    assert list(frame.columns) == ["a", "b"]


def test_import_moorage_stays_cheap() -> None:
    code = ("import sys, moorage; heavy = [m for m in ('moorage.sdk', 'boto3', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy; assert moorage.Session.__module__ == 'moorage.sdk.session'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------------
# against the server
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session(server: MoorageServer) -> Session:
    return Session(home=server.home)


@pytest.fixture(scope="module")
def project(artifacts: Path, classifier: tuple[Any, Any]) -> Path:
    """A user's project: model.joblib and src/inference.py (mapping class ids to labels)."""
    root = artifacts / "sdk-project"
    (root / "src").mkdir(parents=True, exist_ok=True)
    save_model(classifier[0], root / "model.joblib")
    (root / "src" / "inference.py").write_text(INFERENCE_PY)
    (root / "src" / "helper.txt").write_text("shipped with the code\n")
    return root


@pytest.fixture(scope="module")
def labelled(session: Session, project: Path) -> Any:
    """A Model with entry_point + source_dir, deployed once for the module."""
    model = Model(model_data=project / "model.joblib", image_uri="sklearn", entry_point="inference.py",
                  source_dir=project / "src", env={"MY_SETTING": "1"}, name=new_name("sdk-labels"),
                  sagemaker_session=session)
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large",
                             serializer=CSVSerializer(), deserializer=JSONDeserializer())
    try:
        yield model, predictor
    finally:
        predictor.delete_endpoint(wait=True, timeout=60)
        predictor.delete_model()


@pytest.mark.e2e
def test_session_discovers_server(server: MoorageServer, session: Session) -> None:
    assert session.url == server.url
    assert session.connection.access_key_id == server.access_key_id
    assert session.sagemaker_client.meta.endpoint_url == server.url
    assert session.sagemaker_runtime_client.meta.endpoint_url == server.url
    explicit = Session(url=server.url, access_key_id=server.access_key_id,
                       secret_access_key=server.secret_access_key, region="us-east-1", home=server.home / "nowhere")
    assert explicit.sagemaker_client.list_models()["Models"] is not None
    with pytest.raises(MoorageClientError, match="no credentials"):
        Session(home=server.home / "nowhere")


@pytest.mark.e2e
def test_repacked_model(server: MoorageServer, session: Session, labelled: Any) -> None:
    model, predictor = labelled
    assert predictor.endpoint_status() == "InService"
    desc = session.sagemaker_client.describe_model(ModelName=model.name)
    container = desc["PrimaryContainer"]
    assert container["Image"] == "sklearn"
    assert container["Environment"] == {"MY_SETTING": "1", "SAGEMAKER_PROGRAM": "inference.py",
                                        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}
    # Uploaded into the server's artifact store (its home), model files at the root, code under code/.
    archive = path_of(container["ModelDataUrl"])
    assert archive.is_relative_to((server.home / "artifacts").resolve()), archive
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"model.joblib", "code", "code/inference.py", "code/helper.txt"} <= names, names


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("serializer", "deserializer"),
    [
        (CSVSerializer(), JSONDeserializer()),
        (JSONSerializer(), JSONDeserializer()),
        (JSONLinesSerializer(), JSONLinesDeserializer()),
        (NumpySerializer(), NumpyDeserializer()),
        (CSVSerializer(), CSVDeserializer()),
        (JSONSerializer(), StringDeserializer()),
    ],
    ids=lambda value: type(value).__name__,
)
def test_predict_each_format(labelled: Any, classifier: tuple[Any, Any], serializer: Any, deserializer: Any) -> None:
    _, predictor = labelled
    clf, X = classifier
    expected = labels_for(clf, X[:5])
    p = Predictor(predictor.endpoint_name, predictor.sagemaker_session, serializer=serializer,
                  deserializer=deserializer)
    got = p.predict(X[:5])
    if isinstance(deserializer, NumpyDeserializer):
        assert isinstance(got, np.ndarray) and got.tolist() == expected
    elif isinstance(deserializer, CSVDeserializer):
        assert got == [[label] for label in expected]
    elif isinstance(deserializer, StringDeserializer):
        assert json.loads(got) == expected
    else:
        assert got == expected
    assert p.last_invoked_variant == "AllTraffic"


@pytest.mark.e2e
def test_predict_request_arguments(labelled: Any, classifier: tuple[Any, Any]) -> None:
    _, predictor = labelled
    clf, X = classifier
    assert predictor.content_type == "text/csv" and predictor.accept == ("application/json",)
    got = predictor.predict(X[:2], target_variant="AllTraffic", inference_id="req-1", custom_attributes="trace=1")
    assert got == labels_for(clf, X[:2])
    assert predictor.last_invoked_variant == "AllTraffic"


@pytest.mark.e2e
def test_initial_args_override_and_model_error(labelled: Any, classifier: tuple[Any, Any]) -> None:
    _, predictor = labelled
    clf, X = classifier
    p = Predictor(predictor.endpoint_name, predictor.sagemaker_session, serializer=IdentitySerializer("text/csv"),
                  deserializer=BytesDeserializer())
    body = CSVSerializer().serialize(X[:3])
    got = p.predict(body, initial_args={"Accept": "text/csv"})  # initial_args win over the deserializer's ACCEPT
    assert got.decode().split() == labels_for(clf, X[:3])
    with pytest.raises(ClientError) as exc_info:
        p.predict(b"not,numbers")
    assert err_code(exc_info.value) == "ModelError"


@pytest.mark.e2e
def test_deploy_directory_and_tarball(session: Session, tmp_path: Path, classifier: tuple[Any, Any]) -> None:
    """No code: a folder is packed, a tarball is uploaded as it is; both serve the built-in handler."""
    clf, X = classifier
    folder = tmp_path / "model"
    folder.mkdir()
    save_model(clf, folder / "model.joblib")
    tarball = tar_dir(folder, tmp_path / "model.tar.gz")
    for data in (folder, tarball):
        model = Model(model_data=data, sagemaker_session=session)
        predictor = model.deploy(serializer=NumpySerializer(), deserializer=JSONDeserializer())
        try:
            assert model.name is not None and model.name.startswith("sklearn-")
            assert predictor.endpoint_name == model.name
            assert predictor.predict(X[:4]) == clf.predict(X[:4]).tolist()
            url = model.model_data_url
            assert url is not None and path_of(url).is_file()
            if data == tarball:
                assert path_of(url).read_bytes() == tarball.read_bytes()
        finally:
            predictor.delete_endpoint(wait=True, timeout=60)
            predictor.delete_model()


def test_repack_layout_with_dependencies(tmp_path: Path, classifier: tuple[Any, Any]) -> None:
    """A tarball repacked with an entry point (no source_dir) and dependencies, as the SageMaker SDK lays it out."""

    class Recorder:
        uploads: list[tuple[bytes, str]] = []

        def upload_file(self, path: Path, key: str) -> str:
            self.uploads.append((Path(path).read_bytes(), key))
            return f"file:///store/{key}"

    folder = tmp_path / "model"
    folder.mkdir()
    save_model(classifier[0], folder / "model.joblib")
    (folder / "code").mkdir()
    (folder / "code" / "old.py").write_text("# replaced? no: kept beside the new code\n")
    tarball = tar_dir(folder, tmp_path / "model.tar.gz")
    entry = tmp_path / "serve.py"
    entry.write_text(INFERENCE_PY)
    lib = tmp_path / "mylib"
    lib.mkdir()
    (lib / "__init__.py").write_text("X = 1\n")
    single = tmp_path / "util.py"
    single.write_text("Y = 2\n")
    recorder = Recorder()
    model = Model(model_data=tarball, entry_point=entry, dependencies=[lib, single], name="dep-test",
                  sagemaker_session=recorder)  # type: ignore[arg-type]
    container = model.prepare_container_def()
    assert container["Environment"] == {"SAGEMAKER_PROGRAM": "serve.py",
                                        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}
    (data, key), = recorder.uploads
    assert key.startswith("models/dep-test/") and key.endswith("/model.tar.gz")
    assert container["ModelDataUrl"] == f"file:///store/{key}"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
    assert {"model.joblib", "code/serve.py", "code/old.py", "code/lib/mylib/__init__.py",
            "code/lib/util.py"} <= names, names
    with pytest.raises(FileNotFoundError, match="entry_point"):
        Model(model_data=tarball, entry_point="missing.py", source_dir=lib,
              sagemaker_session=recorder).prepare_container_def()  # type: ignore[arg-type]


@pytest.mark.e2e
def test_failed_deploy_raises_with_reason(session: Session, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"this is not a joblib file")
    model = Model(model_data=folder, name=new_name("sdk-bad"), sagemaker_session=session)
    try:
        with pytest.raises(UnexpectedStatusException) as exc_info:
            model.deploy(timeout=60)
        exc = exc_info.value
        assert exc.actual_status == "Failed"
        assert exc.failure_reason, str(exc)
        assert exc.failure_reason in str(exc) and "Failed" in str(exc)
        assert Predictor(model.name, session).endpoint_status() == "Failed"  # type: ignore[arg-type]
    finally:
        predictor = Predictor(str(model.name), session)
        predictor.delete_endpoint(wait=True, timeout=60)
        predictor.delete_model()


@pytest.mark.e2e
def test_two_variants_update_weights_and_endpoint(session: Session, project: Path,
                                                  classifier: tuple[Any, Any]) -> None:
    sm = session.sagemaker_client
    model = Model(model_data=project / "model.joblib", name=new_name("sdk-ab"), sagemaker_session=session)
    model_name = model.create()
    name = new_name("sdk-ab")
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        variant("A", model_name, weight=1.0), variant("B", model_name, weight=1.0)])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    session.wait_for_endpoint(name, timeout=60)
    predictor = Predictor(name, session, serializer=CSVSerializer(), deserializer=JSONDeserializer())
    configs = [name]
    try:
        desc = predictor.update_weights({"A": 0.25, "B": 0.75})
        weights = {v["VariantName"]: (v["CurrentWeight"], v["DesiredWeight"]) for v in desc["ProductionVariants"]}
        assert weights == {"A": (0.25, 0.25), "B": (0.75, 0.75)}
        assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
        clf, X = classifier
        assert predictor.predict(X[:2], target_variant="B") == clf.predict(X[:2]).tolist()
        assert predictor.last_invoked_variant == "B"
        with pytest.raises(ClientError) as exc_info:
            predictor.update_weights({"C": 1.0})
        assert err_code(exc_info.value) == "ValidationException"

        desc = predictor.update_endpoint(initial_instance_count=2, variant_name="A", timeout=60)
        configs.append(desc["EndpointConfigName"])
        assert desc["EndpointConfigName"] != name
        counts = {v["VariantName"]: v["CurrentInstanceCount"] for v in desc["ProductionVariants"]}
        assert counts == {"A": 2, "B": 1}
        with pytest.raises(ValueError, match="several variants"):
            predictor.update_endpoint(initial_instance_count=1)

        predictor.delete_endpoint(wait=True, timeout=60)  # deletes the current config too
        with pytest.raises(ClientError):
            sm.describe_endpoint(EndpointName=name)
        with pytest.raises(ClientError):
            sm.describe_endpoint_config(EndpointConfigName=configs[-1])
        predictor.delete_model()  # still knows the model, though the config is gone
        with pytest.raises(ClientError):
            sm.describe_model(ModelName=model_name)
    finally:
        for config in configs:
            try:
                sm.delete_endpoint_config(EndpointConfigName=config)
            except ClientError:
                pass


# --------------------------------------------------------------------------------------------------
# artifact uploads
# --------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_upload_data(server: MoorageServer, session: Session, tmp_path: Path) -> None:
    payload = tmp_path / "train.csv"
    payload.write_bytes(b"1,2,3\n" * 1000)
    prefix = new_name("up")
    url = session.upload_data(payload, key_prefix=prefix)
    stored = path_of(url)
    assert stored == (server.home / "artifacts" / prefix / "train.csv").resolve()
    assert stored.read_bytes() == payload.read_bytes()

    folder = tmp_path / "dataset"
    (folder / "part").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "part" / "b.txt").write_text("b")
    url = session.upload_data(folder, key_prefix=f"{prefix}/set")
    root = path_of(url)
    assert root == (server.home / "artifacts" / prefix / "set").resolve()
    assert (root / "a.txt").read_text() == "a" and (root / "part" / "b.txt").read_text() == "b"
    assert not list(root.rglob(".upload-*")), "temporary files left behind"


@pytest.mark.e2e
def test_large_upload_streams(server: MoorageServer, session: Session, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    rng = np.random.default_rng(0)
    with open(big, "wb") as fh:
        for _ in range(48):
            fh.write(rng.bytes(1024 * 1024))
    reply = session.connection.put_artifact(f"{new_name('big')}/big.bin", big)
    stored = path_of(reply["Url"])
    assert reply["Size"] == big.stat().st_size == stored.stat().st_size
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert reply["Sha256"] == digest == hashlib.sha256(stored.read_bytes()).hexdigest()


def _put(server: MoorageServer, path: str, body: bytes, declared: bytes | None = None,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    if declared is not None or "X-Amz-Content-SHA256" not in headers:
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(body if declared is None else declared).hexdigest()
    return server.signed_request("PUT", path, body=body, headers=headers)


@pytest.mark.e2e
def test_upload_tampered_body_rejected(server: MoorageServer) -> None:
    key = f"{new_name('tamper')}/x.bin"
    status, headers, body = _put(server, f"/moorage/v1/artifacts/{key}", b"B" * 100_000, declared=b"A" * 100_000)
    assert status == 403, body
    assert error_code_of(headers, body) == "InvalidSignatureException"
    target_dir = server.home / "artifacts" / key.split("/")[0]
    assert not (target_dir / "x.bin").exists()
    assert not list(target_dir.glob(".upload-*")) if target_dir.exists() else True
    # the same request untampered is stored
    status, _, body = _put(server, f"/moorage/v1/artifacts/{key}", b"A" * 100_000)
    assert status == 200, body
    assert (target_dir / "x.bin").read_bytes() == b"A" * 100_000


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path",
    [
        "/moorage/v1/artifacts/../escaped.bin",
        "/moorage/v1/artifacts/a/../../escaped.bin",
        "/moorage/v1/artifacts/%2E%2E/escaped.bin",
        "/moorage/v1/artifacts//etc/escaped.bin",
        "/moorage/v1/artifacts/a/./b.bin",
        "/moorage/v1/artifacts/.hidden/b.bin",
        "/moorage/v1/artifacts/a%00b",
    ],
)
def test_upload_bad_keys_rejected(server: MoorageServer, path: str) -> None:
    status, headers, body = _put(server, path, b"payload")
    assert status == 400, (status, body)
    assert error_code_of(headers, body) == "ValidationException", body
    assert not (server.home / "escaped.bin").exists()
    assert not (server.home.parent / "escaped.bin").exists()
    assert not (server.home / "artifacts" / "a" / "b.bin").exists()


@pytest.mark.e2e
def test_upload_auth(server: MoorageServer) -> None:
    key = f"/moorage/v1/artifacts/{new_name('auth')}/x.bin"
    status, headers, body = http_request("PUT", server.url + key, body=b"x", headers={})
    assert status == 403 and error_code_of(headers, body) == "MissingAuthenticationTokenException", body
    status, headers, body = server.signed_request("PUT", key, body=b"x")  # no declared hash
    assert status == 400 and b"X-Amz-Content-SHA256" in body
    status, headers, body = _put(server, key, b"x", **{"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert status == 400
    wrong = MoorageServer(server.home, port=server.port, secret_access_key="not-the-secret")
    status, headers, body = _put(wrong, key, b"x")
    assert status == 403 and error_code_of(headers, body) == "InvalidSignatureException"
    assert not list((server.home / "artifacts").glob(f"{key.split('/')[-2]}/*"))


@pytest.mark.e2e
def test_client_refuses_bad_keys(session: Session, tmp_path: Path) -> None:
    file = tmp_path / "f.bin"
    file.write_bytes(b"x")
    for key in ("../x", "/abs/x", "a//b", "a/./b", "sp ace", ""):
        with pytest.raises(MoorageClientError, match="artifact key"):
            session.upload_file(file, key)
