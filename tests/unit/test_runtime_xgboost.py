"""The xgboost runtime: SageMaker XGBoost container conventions, through the handler and through boto3."""

from __future__ import annotations

import io
import json
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError

from e2e_support import Deployer, file_url, invoke, new_name, tar_dir, variant
from moorage.runtimes.frameworks import ModelLoadError, load_framework
from moorage.runtimes.frameworks.xgboost import XGBoostFramework, parse_libsvm
from moorage.runtimes.handler import HandlerError, InferenceHandler

# inference.py modules written by these tests must not leak into other tests.
pytestmark = pytest.mark.usefixtures("isolate_imports")

SM_XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
CSV, JSON, JSONL, NPY = "text/csv", "application/json", "application/jsonlines", "application/x-npy"
LIBSVM = "text/libsvm"


# ------------------------------------------------------------------------------------------------- models




@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(240, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)
    return x, y


@pytest.fixture(scope="module")
def booster(data: tuple[np.ndarray, np.ndarray]) -> xgb.Booster:
    x, y = data
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 0}
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=8)


@pytest.fixture(scope="module")
def softprob(data: tuple[np.ndarray, np.ndarray]) -> xgb.Booster:
    x, _ = data
    y = np.digitize(x[:, 0], [-0.5, 0.5])
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "nthread": 1, "seed": 0}
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=5)


@pytest.fixture(scope="module")
def classifier(data: tuple[np.ndarray, np.ndarray]) -> xgb.XGBClassifier:
    x, y = data
    return xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1, random_state=0).fit(x, y)


def native(model: xgb.Booster, x: Any) -> np.ndarray:
    """What XGBoost itself predicts (what the SageMaker container returns)."""
    return model.predict(xgb.DMatrix(x), validate_features=False)


def save(model: Any, path: Path, fmt: str) -> Path:
    """Write a model as SageMaker training (or a user) would: XGBoost's own formats, pickle or joblib."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("json", "ubj"):
        path.write_bytes(bytes(model.save_raw(raw_format=fmt)))
    elif fmt == "pickle":
        path.write_bytes(pickle.dumps(model))
    elif fmt == "joblib":
        joblib.dump(model, path)
    else:
        raise ValueError(fmt)
    return path


def handler_for(model_dir: Path, env: dict[str, str] | None = None) -> InferenceHandler:
    handler = InferenceHandler.from_model_dir(model_dir, load_framework("xgboost"), env or {})
    handler.load()
    return handler


@pytest.fixture
def booster_handler(tmp_path: Path, booster: xgb.Booster) -> InferenceHandler:
    save(booster, tmp_path / "xgboost-model", "ubj")
    return handler_for(tmp_path)


# ------------------------------------------------------------------------------------------------- bodies


def csv_body(x: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in np.atleast_2d(x)).encode()


def libsvm_body(x: np.ndarray, *, base: int = 0) -> bytes:
    """One line a row, a dummy label first (the container ignores it); NaN cells are left out."""
    lines = []
    for row in np.atleast_2d(x):
        cells = " ".join(f"{j + base}:{v!r}" for j, v in enumerate(row.tolist()) if not np.isnan(v))
        lines.append(f"0 {cells}")
    return "\n".join(lines).encode()


def npy_body(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(x), allow_pickle=False)
    return buffer.getvalue()


BODIES: dict[str, tuple[str, Callable[[np.ndarray], bytes]]] = {
    "csv": (CSV, csv_body),
    "json": (JSON, lambda x: json.dumps(x.tolist()).encode()),
    "json-instances": (JSON, lambda x: json.dumps({"instances": x.tolist()}).encode()),
    "jsonlines": (JSONL, lambda x: b"".join(json.dumps(row).encode() + b"\n" for row in x.tolist())),
    "npy": (NPY, npy_body),
    "libsvm": (LIBSVM, libsvm_body),
    "x-libsvm": ("text/x-libsvm", libsvm_body),
}


def parse(body: bytes, content_type: str) -> np.ndarray:
    """A response as an array: CSV by commas and lines, as SageMaker XGBoost clients do."""
    if content_type == CSV:
        rows = [[float(c) for c in line.split(",")] for line in body.decode().splitlines() if line.strip()]
        return np.asarray(rows)
    if content_type == JSON:
        return np.asarray(json.loads(body))
    if content_type == JSONL:
        return np.asarray([json.loads(line) for line in body.decode().splitlines() if line.strip()])
    if content_type == NPY:
        return np.load(io.BytesIO(body), allow_pickle=False)
    raise AssertionError(content_type)


def assert_same(got: Any, expected: np.ndarray, what: str = "") -> None:
    """Equal as float32 (XGBoost's precision): JSON writes float32 values in their shortest form."""
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(expected))
    np.testing.assert_array_equal(got.astype(np.float32), np.asarray(expected).astype(np.float32), err_msg=what)


# ------------------------------------------------------------------------------------------- model files


@pytest.mark.parametrize("fmt", ["json", "ubj", "pickle", "joblib"])
def test_xgboost_model_in_each_format(tmp_path: Path, booster: xgb.Booster, data: Any, fmt: str) -> None:
    x, _ = data
    save(booster, tmp_path / "xgboost-model", fmt)
    handler = handler_for(tmp_path)
    assert isinstance(handler.model, xgb.Booster)
    prediction = handler.predict(x)
    assert prediction.dtype == np.float32 and prediction.shape == (len(x),)  # probabilities, not labels
    np.testing.assert_array_equal(prediction, native(booster, x))


@pytest.mark.parametrize(("name", "fmt"), [("model.json", "json"), ("model.ubj", "ubj"), ("model.bst", "ubj"),
                                           ("trained.model", "json"), ("booster.bst", "pickle")])  # fmt: skip
def test_model_file_by_suffix(tmp_path: Path, booster: xgb.Booster, data: Any, name: str, fmt: str) -> None:
    x, _ = data
    save(booster, tmp_path / name, fmt)
    (tmp_path / "notes.md").write_text("not a model")
    np.testing.assert_array_equal(handler_for(tmp_path).predict(x), native(booster, x))


@pytest.mark.parametrize("name", ["model.joblib", "model.pkl"])
def test_sklearn_api_classifier(tmp_path: Path, classifier: xgb.XGBClassifier, data: Any, name: str) -> None:
    x, _ = data
    save(classifier, tmp_path / name, "joblib" if name.endswith("joblib") else "pickle")
    handler = handler_for(tmp_path, {"MOORAGE_CPU_THREADS": "1"})
    assert isinstance(handler.model, xgb.XGBClassifier) and handler.model.n_jobs == 1
    labels = handler.predict(x)
    np.testing.assert_array_equal(labels, classifier.predict(x))
    body, content_type = handler.encode(labels[:3], CSV)
    assert (body, content_type) == (",".join(str(v) for v in labels[:3].tolist()).encode(), CSV)


def test_xgboost_model_wins_and_model_stem_breaks_ties(tmp_path: Path, booster: xgb.Booster, data: Any) -> None:
    x, _ = data
    save(booster, tmp_path / "model.json", "json")
    (tmp_path / "features.json").write_text('["a", "b", "c", "d"]')
    np.testing.assert_array_equal(handler_for(tmp_path).predict(x), native(booster, x))
    (tmp_path / "xgboost-model").write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="xgboost-model is neither a pickle"):
        handler_for(tmp_path)


def test_dotfiles_are_not_model_files(tmp_path: Path, booster: xgb.Booster, data: Any) -> None:
    x, _ = data
    save(booster, tmp_path / "trained.ubj", "ubj")
    (tmp_path / "._trained.ubj").write_bytes(b"\x00\x05\x16\x07")  # macOS tar's AppleDouble companion
    np.testing.assert_array_equal(handler_for(tmp_path).predict(x), native(booster, x))


def test_missing_and_ambiguous_model_files(tmp_path: Path, booster: xgb.Booster) -> None:
    (tmp_path / "README.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"no model file.*xgboost-model.*\*\.json.*\*\.joblib.*README\.txt"):
        handler_for(tmp_path)
    save(booster, tmp_path / "a.ubj", "ubj")
    save(booster, tmp_path / "b.ubj", "ubj")
    with pytest.raises(ModelLoadError, match=r"several model files.*a\.ubj, b\.ubj.*xgboost-model or model\.ubj"):
        handler_for(tmp_path)


def test_threads_from_env(tmp_path: Path, booster: xgb.Booster) -> None:
    save(booster, tmp_path / "xgboost-model", "json")
    model = handler_for(tmp_path, {"MOORAGE_CPU_THREADS": "3"}).model
    assert json.loads(model.save_config())["learner"]["generic_param"]["nthread"] == "3"
    framework = XGBoostFramework()
    framework.load_model(tmp_path, {})
    assert framework.threads >= 1


# --------------------------------------------------------------------------------------------- requests


@pytest.mark.parametrize("kind", list(BODIES))
def test_request_content_types(booster_handler: InferenceHandler, booster: xgb.Booster, data: Any, kind: str) -> None:
    x, _ = data
    rows = x[:25]
    content_type, make = BODIES[kind]
    body, out_type = booster_handler.invoke(make(rows), content_type, JSON)
    assert out_type == JSON
    assert_same(json.loads(body), native(booster, rows))


def test_single_row_requests(booster_handler: InferenceHandler, booster: xgb.Booster, data: Any) -> None:
    x, _ = data
    expected = native(booster, x[:1])
    for body, content_type in [(csv_body(x[0]), CSV), (json.dumps(x[0].tolist()).encode(), JSON),
                               (npy_body(x[0]), NPY), (libsvm_body(x[0]), LIBSVM)]:  # fmt: skip
        got, _ = booster_handler.invoke(body, content_type, JSON)
        assert_same(json.loads(got), expected)


@pytest.mark.parametrize("accept", [CSV, JSON, JSONL, NPY])
def test_response_content_types(
    booster_handler: InferenceHandler, booster: xgb.Booster, data: Any, accept: str
) -> None:
    x, _ = data
    body, content_type = booster_handler.invoke(csv_body(x[:7]), CSV, accept)
    assert content_type == accept
    assert_same(parse(body, content_type), native(booster, x[:7]))


def test_csv_response_is_one_line_in_real_time_and_one_value_a_line_in_batch(
    tmp_path: Path, booster: xgb.Booster, data: Any
) -> None:
    x, _ = data
    expected = native(booster, x[:3]).tolist()
    save(booster, tmp_path / "xgboost-model", "ubj")
    body, _ = handler_for(tmp_path).invoke(csv_body(x[:3]), CSV, CSV)
    assert body == ",".join(map(str, expected)).encode()  # exactly the container's real-time answer
    body, _ = handler_for(tmp_path, {"SAGEMAKER_BATCH": "true"}).invoke(csv_body(x[:3]), CSV, CSV)
    assert body == ("\n".join(map(str, expected)) + "\n").encode()


def test_softprob_answers_one_row_of_probabilities_per_input(tmp_path: Path, softprob: xgb.Booster, data: Any) -> None:
    x, _ = data
    save(softprob, tmp_path / "xgboost-model", "json")
    handler = handler_for(tmp_path)
    expected = native(softprob, x[:4])
    assert expected.shape == (4, 3)
    for accept in (CSV, JSON, NPY):
        body, content_type = handler.invoke(csv_body(x[:4]), CSV, accept)
        assert_same(parse(body, content_type), expected)


def test_libsvm_missing_entries_and_fewer_columns(booster_handler: InferenceHandler, booster: xgb.Booster) -> None:
    rows = np.array([[0.5, np.nan, -1.0, np.nan], [np.nan, 2.0, np.nan, np.nan], [1.0, -0.5, 0.25, 1.5]])
    body = libsvm_body(rows) + b"\n\n# a comment line\n"
    got, _ = booster_handler.invoke(body, "text/libsvm; charset=utf-8", JSON)
    assert_same(json.loads(got), native(booster, rows))  # absent = missing, as in a DMatrix with NaN
    # The second row alone names only feature 1: the request is narrower than the model, which is fine.
    got, _ = booster_handler.invoke(b"1:2.0", LIBSVM, JSON)
    assert_same(json.loads(got), native(booster, rows[1:2]))


def test_libsvm_parser() -> None:
    matrix = parse_libsvm(b"1 qid:3 0:1.5 2:-2 # trailing comment\n\n0 1:4 1:1\n")
    assert matrix.shape == (2, 3)
    np.testing.assert_array_equal(matrix.toarray(), [[1.5, 0, -2], [0, 5, 0]])
    for bad, message in [(b"0 a:1", "line 1"), (b"0 1:x", "line 1"), (b"0 -1:2", "negative"), (b"\n \n", "no rows")]:
        with pytest.raises(ValueError, match=message):
            parse_libsvm(bad)


def test_sklearn_api_model_takes_libsvm(tmp_path: Path, classifier: xgb.XGBClassifier, data: Any) -> None:
    x, _ = data
    save(classifier, tmp_path / "model.joblib", "joblib")
    body, _ = handler_for(tmp_path).invoke(libsvm_body(x[:6]), LIBSVM, JSON)
    assert json.loads(body) == classifier.predict(x[:6]).tolist()


def test_client_errors_are_4xx(booster_handler: InferenceHandler) -> None:
    cases = [
        (b"1,2,3", CSV, 400, "Feature shape mismatch"),
        (b"1,2,x,4", CSV, 400, "numeric"),
        (b'{"features": [1, 2, 3, 4]}', JSON, 400, "rows of numbers"),
        (b"0 1:x", LIBSVM, 400, "index:value"),
        (b"1,2,3,4", "application/x-recordio-protobuf", 415, "text/libsvm"),
    ]
    for body, content_type, status, message in cases:
        with pytest.raises(HandlerError) as info:
            booster_handler.invoke(body, content_type, JSON)
        assert info.value.status == status and message in info.value.message, (body, info.value.message)


def test_user_predict_fn_overrides_only_predict(tmp_path: Path, booster: xgb.Booster, data: Any) -> None:
    x, _ = data
    save(booster, tmp_path / "xgboost-model", "ubj")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(
        textwrap.dedent("""
        import xgboost as xgb

        def predict_fn(data, model):
            # the default model_fn loaded the Booster, the default input_fn parsed the request
            return (model.predict(xgb.DMatrix(data)) > 0.5).astype(int)
    """)
    )
    handler = handler_for(tmp_path)
    assert not handler.batchable  # a user predict_fn may not be row-wise
    body, _ = handler.invoke(libsvm_body(x[:9]), LIBSVM, CSV)
    assert body == ",".join(str(int(p > 0.5)) for p in native(booster, x[:9])).encode()


def test_batching_equals_one_by_one(booster_handler: InferenceHandler, data: Any) -> None:
    x, _ = data
    bodies = [
        (csv_body(x[0:1]), CSV),
        (csv_body(x[1:4]), CSV),
        (json.dumps(x[4:6].tolist()).encode(), JSON),
        (npy_body(x[6]), NPY),
        (libsvm_body(x[7:9]), LIBSVM),
        (b"1,2,3", CSV),  # the wrong width
        (csv_body(x[9:10]), CSV),
    ]
    inputs = [booster_handler.decode(body, content_type) for body, content_type in bodies]
    batched = booster_handler.predict_many(inputs)
    for item, (body, content_type) in zip(batched, bodies, strict=True):
        if body == b"1,2,3":
            assert isinstance(item, HandlerError) and item.status == 400  # only the bad request fails
            continue
        alone = booster_handler.predict(booster_handler.decode(body, content_type))
        np.testing.assert_array_equal(item, alone)


# -------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def endpoint(
    module_deployer: Deployer, artifacts: Path, booster: xgb.Booster, classifier: xgb.XGBClassifier
) -> dict[str, str]:
    """One endpoint, two variants: a Booster behind the SageMaker image URI, an XGBClassifier by short name."""
    root = artifacts / "xgboost-runtime"
    booster_tar = tar_dir(save(booster, root / "booster" / "xgboost-model", "ubj").parent, root / "booster.tar.gz")
    clf_tar = tar_dir(save(classifier, root / "clf" / "model.joblib", "joblib").parent, root / "clf.tar.gz")
    d = module_deployer
    booster_model = d.model(new_name("xgb-booster"), file_url(booster_tar), image=SM_XGBOOST_IMAGE)
    clf_model = d.model(new_name("xgb-clf"), file_url(clf_tar), image="xgboost")
    name = new_name("xgb")
    d.config(name, [variant("booster", booster_model), variant("clf", clf_model)])
    d.endpoint(name, name)
    d.wait_in_service(name)
    return {"name": name, "booster": booster_model, "clf": clf_model}


@pytest.mark.e2e
def test_e2e_booster_every_content_type(rt: Any, sm: Any, endpoint: dict[str, str], booster: Any, data: Any) -> None:
    x, _ = data
    rows = x[30:42]
    expected = native(booster, rows)
    container = sm.describe_model(ModelName=endpoint["booster"])["PrimaryContainer"]
    assert container["Image"] == SM_XGBOOST_IMAGE
    for kind, (content_type, make) in BODIES.items():
        for accept in (CSV, JSON, JSONL, NPY):
            resp = invoke(rt, endpoint["name"], make(rows), content_type, Accept=accept, TargetVariant="booster")
            assert resp["ContentType"] == accept and resp["InvokedProductionVariant"] == "booster"
            assert_same(parse(resp["Body"], accept), expected, f"{kind} -> {accept}")
    # A real-time CSV answer is one comma-separated line, as from SageMaker's container.
    resp = invoke(rt, endpoint["name"], csv_body(rows), CSV, Accept=CSV, TargetVariant="booster")
    assert resp["Body"] == ",".join(map(str, expected.tolist())).encode()


@pytest.mark.e2e
def test_e2e_classifier_by_short_name(rt: Any, endpoint: dict[str, str], classifier: Any, data: Any) -> None:
    x, _ = data
    rows = x[50:60]
    for kind, (content_type, make) in BODIES.items():
        resp = invoke(rt, endpoint["name"], make(rows), content_type, Accept=JSON, TargetVariant="clf")
        assert json.loads(resp["Body"]) == classifier.predict(rows).tolist(), kind


@pytest.mark.e2e
def test_e2e_bad_request_is_a_model_error(rt: Any, endpoint: dict[str, str]) -> None:
    with pytest.raises(ClientError) as info:
        invoke(rt, endpoint["name"], b"1,2,3", CSV, TargetVariant="booster")
    error = info.value.response["Error"]
    assert error["Code"] == "ModelError" and "Feature shape mismatch" in error["Message"], error
    assert info.value.response.get("OriginalStatusCode") == 400, info.value.response


@pytest.mark.e2e
def test_e2e_no_model_file_fails_the_endpoint(deployer: Deployer, artifacts: Path) -> None:
    src = artifacts / "xgboost-empty" / "model"
    src.mkdir(parents=True)
    (src / "notes.txt").write_text("the training job wrote nothing")
    tar = tar_dir(src, src.parent / "model.tar.gz")
    name = deployer.deploy("xgb-empty", file_url(tar), image=SM_XGBOOST_IMAGE, wait=False)
    desc = deployer.wait_status(name, {"Failed", "InService"}, timeout=60)
    assert desc["EndpointStatus"] == "Failed", desc
    reason = desc.get("FailureReason", "")
    assert "xgboost-model" in reason and "*.json" in reason and "notes.txt" in reason, reason
