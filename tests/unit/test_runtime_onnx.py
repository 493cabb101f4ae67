"""The onnx runtime: onnxruntime sessions, single- and multi-input graphs, through the handler and boto3."""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from botocore.exceptions import ClientError
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from e2e_support import Deployer, file_url, invoke, new_name, tar_dir, variant
from moorage.runtimes.frameworks import ModelLoadError, load_framework
from moorage.runtimes.frameworks.onnx import OnnxFramework
from moorage.runtimes.handler import HandlerError, InferenceHandler

# inference.py modules written by these tests must not leak into other tests.
pytestmark = pytest.mark.usefixtures("isolate_imports")

# SageMaker has no ONNX framework image; any ECR repository named like this maps to the runtime.
ONNX_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-onnx:1.17-cpu"
CSV, JSON, JSONL, NPY = "text/csv", "application/json", "application/jsonlines", "application/x-npy"
FEATURES = 20




# ------------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, FEATURES))
    y = (x[:, 0] - x[:, 3] + 0.5 * x[:, 7] > 0).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def logistic(data: tuple[np.ndarray, np.ndarray]) -> tuple[LogisticRegression, bytes]:
    """A scikit-learn LogisticRegression and its skl2onnx conversion (outputs: label, ZipMap probabilities)."""
    x, y = data
    model = LogisticRegression(max_iter=500).fit(x, y)
    graph = to_onnx(model, initial_types=[("features", FloatTensorType([None, FEATURES]))], target_opset=15)
    return model, graph.SerializeToString()


def multi_input_graph() -> bytes:
    """Inputs x: float[n, 3] and offset: int64[n, 1]; outputs y = x + offset and norm = sum(y^2) per row."""
    nodes = [
        helper.make_node("Cast", ["offset"], ["offset_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "offset_f"], ["y"]),
        helper.make_node("ReduceSumSquare", ["y"], ["norm"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("offset", TensorProto.INT64, ["n", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["n"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def multi_expected(x: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = x.astype(np.float32) + np.asarray(offset, dtype=np.float32).reshape(-1, 1)
    return y, (y * y).sum(axis=1)


def session(graph: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def reference(graph: bytes, x: np.ndarray, output: str = "output_label") -> Any:
    """What onnxruntime itself answers for float32 features."""
    return session(graph).run([output], {"features": np.asarray(x, dtype=np.float32)})[0]


def model_dir(path: Path, graph: bytes, name: str = "model.onnx") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(graph)
    return path


def handler_for(path: Path, env: dict[str, str] | None = None) -> InferenceHandler:
    handler = InferenceHandler.from_model_dir(path, load_framework("onnx"), env or {})
    handler.load()
    return handler


@pytest.fixture
def lr_handler(tmp_path: Path, logistic: Any) -> InferenceHandler:
    return handler_for(model_dir(tmp_path, logistic[1]))


@pytest.fixture
def multi_handler(tmp_path: Path) -> InferenceHandler:
    return handler_for(model_dir(tmp_path, multi_input_graph()), {"MOORAGE_ONNX_OUTPUTS": "y, norm"})


# ------------------------------------------------------------------------------------------------- bodies


def csv_body(x: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in np.atleast_2d(x)).encode()


def npy_body(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(x), allow_pickle=False)
    return buffer.getvalue()


BODIES: dict[str, tuple[str, Callable[[np.ndarray], bytes]]] = {
    "csv": (CSV, csv_body),
    "json": (JSON, lambda x: json.dumps(x.tolist()).encode()),
    "json-instances": (JSON, lambda x: json.dumps({"instances": x.tolist()}).encode()),
    "json-named": (JSON, lambda x: json.dumps({"features": x.tolist()}).encode()),
    "jsonlines": (JSONL, lambda x: b"".join(json.dumps(row).encode() + b"\n" for row in x.tolist())),
    "npy": (NPY, npy_body),
    "npy-float32": (NPY, lambda x: npy_body(x.astype(np.float32))),
}


def parse(body: bytes, content_type: str) -> Any:
    if content_type == CSV:
        rows = [[float(c) for c in line.split(",")] for line in body.decode().splitlines() if line]
        return np.asarray(rows).squeeze(axis=1) if rows and len(rows[0]) == 1 else np.asarray(rows)
    if content_type == JSON:
        return json.loads(body)
    if content_type == JSONL:
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    if content_type == NPY:
        return np.load(io.BytesIO(body), allow_pickle=False)
    raise AssertionError(content_type)


# ------------------------------------------------------------------------------------------- model files


def test_logistic_regression_labels_by_default(lr_handler: InferenceHandler, logistic: Any, data: Any) -> None:
    model, graph = logistic
    x, _ = data
    labels = lr_handler.predict(x)
    np.testing.assert_array_equal(labels, reference(graph, x))
    np.testing.assert_array_equal(labels, model.predict(x))  # float32 does not flip a label here


def test_model_file_names(tmp_path: Path, logistic: Any) -> None:
    graph = logistic[1]
    handler = handler_for(model_dir(tmp_path / "one", graph, "classifier.onnx"))
    assert handler.model.get_inputs()[0].name == "features"
    model_dir(tmp_path / "two", graph, "a.onnx")
    model_dir(tmp_path / "two", graph, "b.onnx")
    with pytest.raises(ModelLoadError, match=r"several model files \(a\.onnx, b\.onnx\)"):
        handler_for(tmp_path / "two")
    model_dir(tmp_path / "two", graph, "model.onnx")  # model.onnx settles it
    assert handler_for(tmp_path / "two").model is not None
    (tmp_path / "none").mkdir()
    with pytest.raises(ModelLoadError, match=r"no model file.*model\.onnx.*\*\.onnx"):
        handler_for(tmp_path / "none")
    model_dir(tmp_path / "bad", b"not a graph")
    with pytest.raises(ModelLoadError, match=r"Could not load model\.onnx"):
        handler_for(tmp_path / "bad")


def test_session_threads_and_outputs_from_env(tmp_path: Path, logistic: Any) -> None:
    path = model_dir(tmp_path, logistic[1])
    framework = OnnxFramework()
    framework.load_model(path, {"MOORAGE_CPU_THREADS": "3"})
    assert framework.threads == 3
    with pytest.raises(ModelLoadError, match=r"MOORAGE_ONNX_OUTPUTS names nope.*output_label, output_probability"):
        handler_for(path, {"MOORAGE_ONNX_OUTPUTS": "output_label,nope"})


# --------------------------------------------------------------------------------------------- requests


@pytest.mark.parametrize("kind", list(BODIES))
def test_request_content_types(lr_handler: InferenceHandler, logistic: Any, data: Any, kind: str) -> None:
    x, _ = data
    content_type, make = BODIES[kind]
    body, out_type = lr_handler.invoke(make(x[:30]), content_type, JSON)
    assert out_type == JSON
    assert json.loads(body) == reference(logistic[1], x[:30]).tolist()


def test_single_row_requests(lr_handler: InferenceHandler, logistic: Any, data: Any) -> None:
    x, _ = data
    expected = reference(logistic[1], x[:1]).tolist()
    for body, content_type in [
        (csv_body(x[0]), CSV),
        (json.dumps(x[0].tolist()).encode(), JSON),
        (npy_body(x[0]), NPY),
    ]:
        assert json.loads(lr_handler.invoke(body, content_type, JSON)[0]) == expected, content_type


@pytest.mark.parametrize("accept", [CSV, JSON, JSONL, NPY])
def test_response_content_types(lr_handler: InferenceHandler, logistic: Any, data: Any, accept: str) -> None:
    x, _ = data
    body, content_type = lr_handler.invoke(csv_body(x[:9]), CSV, accept)
    assert content_type == accept
    np.testing.assert_array_equal(np.asarray(parse(body, accept)), reference(logistic[1], x[:9]))


@pytest.mark.parametrize("accept", [CSV, JSON, JSONL, NPY])
def test_zipmap_probabilities_encode_cleanly(tmp_path: Path, logistic: Any, data: Any, accept: str) -> None:
    model, graph = logistic
    x, _ = data
    handler = handler_for(model_dir(tmp_path, graph), {"MOORAGE_ONNX_OUTPUTS": "output_probability"})
    records = session(graph).run(["output_probability"], {"features": x[:5].astype(np.float32)})[0]
    assert isinstance(records, list) and isinstance(records[0], dict)  # ZipMap: a list of {class: probability}
    body, content_type = handler.invoke(csv_body(x[:5]), CSV, accept)
    assert content_type == accept
    got = parse(body, accept)
    if accept in (JSON, JSONL):
        assert got == [{str(k): v for k, v in record.items()} for record in records]  # class labels as keys
    else:
        expected = [[record[k] for k in sorted(record)] for record in records]
        np.testing.assert_array_equal(got, expected)  # one row of probabilities per input, in class order
        np.testing.assert_allclose(got, model.predict_proba(x[:5]), atol=1e-6)


def test_several_outputs_are_a_json_object(tmp_path: Path, logistic: Any, data: Any) -> None:
    graph = logistic[1]
    x, _ = data
    env = {"MOORAGE_ONNX_OUTPUTS": "output_label,output_probability"}
    handler = handler_for(model_dir(tmp_path, graph), env)
    labels = reference(graph, x[:3]).tolist()
    for accept in (JSON, CSV, NPY):  # CSV and NPY hold one array: several outputs are always JSON
        body, content_type = handler.invoke(csv_body(x[:3]), CSV, accept)
        doc = json.loads(body)
        assert content_type == JSON and doc["output_label"] == labels
        assert [set(record) for record in doc["output_probability"]] == [{"0", "1"}] * 3
    body, content_type = handler.invoke(csv_body(x[:3]), CSV, JSONL)
    lines = parse(body, JSONL)
    assert content_type == JSONL and [line["output_label"] for line in lines] == labels  # one record per row


def test_multi_input_json_object(multi_handler: InferenceHandler) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    offset = [[1], [2], [3], [-4]]
    y, norm = multi_expected(x, np.asarray(offset))
    for body in [
        json.dumps({"x": x.tolist(), "offset": offset}).encode(),
        json.dumps({"inputs": {"x": x.tolist(), "offset": offset}}).encode(),
        json.dumps({"x": x.tolist(), "offset": [1, 2, 3, -4]}).encode(),  # a flat list for an (n, 1) input
    ]:
        doc = json.loads(multi_handler.invoke(body, JSON, JSON)[0])
        assert set(doc) == {"y", "norm"}
        np.testing.assert_array_equal(np.asarray(doc["y"], dtype=np.float32), y)
        np.testing.assert_array_equal(np.asarray(doc["norm"], dtype=np.float32), norm)


def test_multi_input_jsonlines_records(multi_handler: InferenceHandler) -> None:
    x = np.array([[0.5, 1.0, -1.0], [2.0, 0.0, 0.25]])
    body = b"".join(json.dumps({"x": row, "offset": [i]}).encode() + b"\n" for i, row in enumerate(x.tolist()))
    out, content_type = multi_handler.invoke(body, JSONL, JSONL)
    y, norm = multi_expected(x, np.array([0, 1]))
    records = parse(out, JSONL)
    assert content_type == JSONL and len(records) == 2
    np.testing.assert_array_equal(np.asarray([r["y"] for r in records], dtype=np.float32), y)
    np.testing.assert_array_equal(np.asarray([r["norm"] for r in records], dtype=np.float32), norm)


def test_multi_input_first_output_by_default(tmp_path: Path) -> None:
    handler = handler_for(model_dir(tmp_path, multi_input_graph()))
    x = np.ones((2, 3))
    for accept in (CSV, JSON, NPY):
        body, content_type = handler.invoke(json.dumps({"x": x.tolist(), "offset": [[1], [2]]}).encode(), JSON, accept)
        assert content_type == accept
        np.testing.assert_array_equal(np.asarray(parse(body, accept), dtype=np.float32), multi_expected(x, [1, 2])[0])


def test_client_errors_are_4xx(lr_handler: InferenceHandler, multi_handler: InferenceHandler) -> None:
    cases = [
        (lr_handler, b"1,2,3", CSV, "invalid dimensions"),
        (lr_handler, b"1,2,x", CSV, "does not convert to float32"),
        (multi_handler, csv_body(np.ones((1, 3))), CSV, "takes 2 inputs (x, offset)"),
        (multi_handler, b'{"x": [[1, 2, 3]], "z": [[1]]}', JSON, "no input named z"),
        (multi_handler, b'{"x": [[1, 2, 3]]}', JSON, "offset"),
    ]
    for handler, body, content_type, message in cases:
        with pytest.raises(HandlerError) as info:
            handler.invoke(body, content_type, JSON)
        assert info.value.status == 400 and message in info.value.message, (body, info.value.message)


def test_user_output_fn_overrides_only_output(tmp_path: Path, logistic: Any, data: Any) -> None:
    graph = logistic[1]
    x, _ = data
    model_dir(tmp_path, graph)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(
        textwrap.dedent("""
        import json

        def output_fn(prediction, accept):
            return json.dumps({"labels": prediction.tolist(), "accept": accept}), "application/json"
    """)
    )
    handler = handler_for(tmp_path)
    assert handler.batchable
    body, content_type = handler.invoke(csv_body(x[:4]), CSV, CSV)
    assert content_type == JSON
    assert json.loads(body) == {"labels": reference(graph, x[:4]).tolist(), "accept": CSV}


def test_batching_equals_one_by_one(lr_handler: InferenceHandler, data: Any) -> None:
    x, _ = data
    bodies = [
        (csv_body(x[0:1]), CSV),
        (csv_body(x[1:6]), CSV),
        (json.dumps(x[6:8].tolist()).encode(), JSON),
        (npy_body(x[8]), NPY),
        (npy_body(x[9:12].astype(np.float32)), NPY),
        (b"1,2,3", CSV),  # the wrong width
        (json.dumps({"features": x[12:14].tolist()}).encode(), JSON),  # named input: predicted alone
    ]
    inputs = [lr_handler.decode(body, content_type) for body, content_type in bodies]
    batched = lr_handler.predict_many(inputs)
    for item, (body, content_type) in zip(batched, bodies, strict=True):
        if body == b"1,2,3":
            assert isinstance(item, HandlerError) and item.status == 400  # only the bad request fails
            continue
        np.testing.assert_array_equal(item, lr_handler.predict(lr_handler.decode(body, content_type)))


# -------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def endpoint(module_deployer: Deployer, artifacts: Path, logistic: Any) -> dict[str, str]:
    """One endpoint, two variants: the skl2onnx classifier by image URI, the multi-input graph by short name."""
    root = artifacts / "onnx-runtime"
    lr_tar = tar_dir(model_dir(root / "lr", logistic[1]), root / "lr.tar.gz")
    multi_tar = tar_dir(model_dir(root / "multi", multi_input_graph()), root / "multi.tar.gz")
    d = module_deployer
    lr_model = d.model(new_name("onnx-lr"), file_url(lr_tar), image=ONNX_IMAGE)
    multi_model = d.model(
        new_name("onnx-multi"), file_url(multi_tar), image="onnx", env={"MOORAGE_ONNX_OUTPUTS": "y,norm"}
    )
    name = new_name("onnx")
    d.config(name, [variant("lr", lr_model), variant("multi", multi_model)])
    d.endpoint(name, name)
    d.wait_in_service(name)
    return {"name": name}


@pytest.mark.e2e
def test_e2e_classifier_every_content_type(rt: Any, endpoint: dict[str, str], logistic: Any, data: Any) -> None:
    x, _ = data
    rows = x[100:112]
    expected = reference(logistic[1], rows)
    for kind, (content_type, make) in BODIES.items():
        for accept in (CSV, JSON, JSONL, NPY):
            resp = invoke(rt, endpoint["name"], make(rows), content_type, Accept=accept, TargetVariant="lr")
            assert resp["ContentType"] == accept and resp["InvokedProductionVariant"] == "lr"
            np.testing.assert_array_equal(np.asarray(parse(resp["Body"], accept)), expected, f"{kind} -> {accept}")


@pytest.mark.e2e
def test_e2e_multi_input_short_name(rt: Any, endpoint: dict[str, str]) -> None:
    x = np.array([[0.5, 1.5, -2.0], [1.0, 2.0, 3.0]])
    body = json.dumps({"x": x.tolist(), "offset": [[3], [-1]]}).encode()
    resp = invoke(rt, endpoint["name"], body, JSON, Accept=JSON, TargetVariant="multi")
    y, norm = multi_expected(x, np.array([3, -1]))
    doc = json.loads(resp["Body"])
    np.testing.assert_array_equal(np.asarray(doc["y"], dtype=np.float32), y)
    np.testing.assert_array_equal(np.asarray(doc["norm"], dtype=np.float32), norm)
    with pytest.raises(ClientError) as info:
        invoke(rt, endpoint["name"], csv_body(x), CSV, TargetVariant="multi")
    assert info.value.response["Error"]["Code"] == "ModelError"
    assert "takes 2 inputs" in info.value.response["Error"]["Message"]
