"""The lightgbm runtime: Booster text files and scikit-learn API models, through the handler and boto3."""

from __future__ import annotations

import io
import json
import pickle
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, file_url, invoke, new_name, tar_dir, variant
from moorage.runtimes.frameworks import ModelLoadError, load_framework
from moorage.runtimes.handler import HandlerError, InferenceHandler

# inference.py modules written by these tests must not leak into other tests.
pytestmark = pytest.mark.usefixtures("isolate_imports")

# SageMaker has no LightGBM framework image; any ECR repository named like this maps to the runtime.
LIGHTGBM_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-lightgbm:4.3-cpu"
CSV, JSON, JSONL, NPY = "text/csv", "application/json", "application/jsonlines", "application/x-npy"




@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 5))
    y = np.digitize(x[:, 0] + x[:, 1] - 0.5 * x[:, 3], [-0.6, 0.6])  # three classes
    return x, y


@pytest.fixture(scope="module")
def booster(data: tuple[np.ndarray, np.ndarray]) -> lgb.Booster:
    x, y = data
    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 7, "verbose": -1, "num_threads": 1, "seed": 0}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=10)


@pytest.fixture(scope="module")
def classifier(data: tuple[np.ndarray, np.ndarray]) -> lgb.LGBMClassifier:
    x, y = data
    model = lgb.LGBMClassifier(n_estimators=10, num_leaves=7, n_jobs=1, random_state=0, verbose=-1)
    return model.fit(x, y)


def handler_for(model_dir: Path, env: dict[str, str] | None = None) -> InferenceHandler:
    handler = InferenceHandler.from_model_dir(model_dir, load_framework("lightgbm"), env or {})
    handler.load()
    return handler


def write_booster(booster: lgb.Booster, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))
    return path


@pytest.fixture
def booster_handler(tmp_path: Path, booster: lgb.Booster) -> InferenceHandler:
    write_booster(booster, tmp_path / "model.txt")
    return handler_for(tmp_path)


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
    "jsonlines": (JSONL, lambda x: b"".join(json.dumps(row).encode() + b"\n" for row in x.tolist())),
    "npy": (NPY, npy_body),
}


def parse(body: bytes, content_type: str) -> np.ndarray:
    if content_type == CSV:
        return np.asarray([[float(c) for c in line.split(",")] for line in body.decode().splitlines() if line])
    if content_type == JSON:
        return np.asarray(json.loads(body))
    if content_type == JSONL:
        return np.asarray([json.loads(line) for line in body.decode().splitlines() if line.strip()])
    if content_type == NPY:
        return np.load(io.BytesIO(body), allow_pickle=False)
    raise AssertionError(content_type)


def assert_same(got: Any, expected: np.ndarray, what: str = "") -> None:
    """Exactly equal: every response type carries float64 losslessly."""
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(expected))
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float64), err_msg=what)


# ------------------------------------------------------------------------------------------- model files


def test_booster_text_file_keeps_class_probabilities(tmp_path: Path, booster: lgb.Booster, data: Any) -> None:
    x, _ = data
    write_booster(booster, tmp_path / "model.txt")
    handler = handler_for(tmp_path)
    assert isinstance(handler.model, lgb.Booster)
    prediction = handler.predict(x)
    assert prediction.shape == (len(x), 3)
    np.testing.assert_array_equal(prediction, booster.predict(x))


def test_any_lightgbm_txt_file_but_not_other_text(tmp_path: Path, booster: lgb.Booster, data: Any) -> None:
    x, _ = data
    (tmp_path / "requirements.txt").write_text("lightgbm\n")
    write_booster(booster, tmp_path / "lgbm-booster.txt")
    np.testing.assert_array_equal(handler_for(tmp_path).predict(x[:5]), booster.predict(x[:5]))
    write_booster(booster, tmp_path / "second.txt")
    with pytest.raises(ModelLoadError, match=r"several model files.*lgbm-booster\.txt, second\.txt"):
        handler_for(tmp_path)


@pytest.mark.parametrize("name", ["model.joblib", "model.pkl", "classifier.pickle"])
def test_sklearn_api_classifier(tmp_path: Path, classifier: lgb.LGBMClassifier, data: Any, name: str) -> None:
    x, _ = data
    if name.endswith(".joblib"):
        joblib.dump(classifier, tmp_path / name)
    else:
        (tmp_path / name).write_bytes(pickle.dumps(classifier))
    handler = handler_for(tmp_path, {"MOORAGE_CPU_THREADS": "2"})
    assert isinstance(handler.model, lgb.LGBMClassifier) and handler.model.n_jobs == 2
    np.testing.assert_array_equal(handler.predict(x), classifier.predict(x))  # labels, as its predict gives


def test_model_pickle_wins_a_tie_and_several_others_are_named(tmp_path: Path, classifier: lgb.LGBMClassifier) -> None:
    joblib.dump(classifier, tmp_path / "other.joblib")
    joblib.dump(classifier, tmp_path / "model.pkl")
    (tmp_path / "notes.txt").write_text("not a booster")  # a .txt that is not a LightGBM model is no candidate
    assert isinstance(handler_for(tmp_path).model, lgb.LGBMClassifier)
    (tmp_path / "model.pkl").rename(tmp_path / "third.pkl")
    with pytest.raises(ModelLoadError, match=r"several model files \(other\.joblib, third\.pkl\).*serve model\.joblib"):
        handler_for(tmp_path)


def test_no_model_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(ModelLoadError, match=r"no model file.*model\.txt.*\*\.joblib.*notes\.txt"):
        handler_for(tmp_path)


def test_broken_model_file(tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_text("tree\nthis is not a model\n")
    with pytest.raises(ModelLoadError, match=r"Could not load model\.txt"):
        handler_for(tmp_path)


def test_threads_from_env(tmp_path: Path, booster: lgb.Booster) -> None:
    write_booster(booster, tmp_path / "model.txt")
    assert handler_for(tmp_path, {"MOORAGE_CPU_THREADS": "3"}).framework.threads == 3  # type: ignore[attr-defined]
    assert handler_for(tmp_path, {"MOORAGE_CPU_THREADS": "nonsense"}).framework.threads >= 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------- requests


@pytest.mark.parametrize("kind", list(BODIES))
def test_request_content_types(booster_handler: InferenceHandler, booster: lgb.Booster, data: Any, kind: str) -> None:
    x, _ = data
    content_type, make = BODIES[kind]
    body, out_type = booster_handler.invoke(make(x[:20]), content_type, JSON)
    assert out_type == JSON
    assert_same(json.loads(body), booster.predict(x[:20]), kind)


def test_single_row_requests(booster_handler: InferenceHandler, booster: lgb.Booster, data: Any) -> None:
    x, _ = data
    for body, content_type in [
        (csv_body(x[0]), CSV),
        (json.dumps(x[0].tolist()).encode(), JSON),
        (npy_body(x[0]), NPY),
    ]:
        got, _ = booster_handler.invoke(body, content_type, JSON)
        assert_same(json.loads(got), booster.predict(x[:1]), content_type)


@pytest.mark.parametrize("accept", [CSV, JSON, JSONL, NPY])
def test_response_content_types(
    booster_handler: InferenceHandler, booster: lgb.Booster, data: Any, accept: str
) -> None:
    x, _ = data
    body, content_type = booster_handler.invoke(csv_body(x[:6]), CSV, accept)
    assert content_type == accept
    assert_same(parse(body, content_type), booster.predict(x[:6]), accept)
    if accept == CSV:
        assert len(body.decode().splitlines()) == 6  # one row of class probabilities per input row


def test_client_errors_are_4xx(booster_handler: InferenceHandler) -> None:
    cases = [
        (b"1,2,3", CSV, 400, "number of features"),
        (b"1,2,x,4,5", CSV, 400, "numeric"),
        (b'{"features": [1, 2, 3, 4, 5]}', JSON, 400, "rows of numbers"),
        (b"0 1:2", "text/libsvm", 415, "text/libsvm"),
    ]
    for body, content_type, status, message in cases:
        with pytest.raises(HandlerError) as info:
            booster_handler.invoke(body, content_type, JSON)
        assert info.value.status == status and message in info.value.message, (body, info.value.message)


def test_sklearn_api_wrong_width_is_4xx(tmp_path: Path, classifier: lgb.LGBMClassifier) -> None:
    joblib.dump(classifier, tmp_path / "model.joblib")
    with pytest.raises(HandlerError) as info:
        handler_for(tmp_path).invoke(b"1,2,3", CSV, JSON)
    assert info.value.status == 400 and "features" in info.value.message


def test_user_input_fn_overrides_only_input(tmp_path: Path, booster: lgb.Booster, data: Any) -> None:
    x, _ = data
    write_booster(booster, tmp_path / "model.txt")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(
        textwrap.dedent("""
        import json

        import numpy as np

        def input_fn(request_body, content_type):
            # CSV and JSON arrive as str, as the SageMaker inference toolkit hands them over
            assert content_type == "application/json" and isinstance(request_body, str)
            return np.asarray([record["features"] for record in json.loads(request_body)["records"]])
    """)
    )
    handler = handler_for(tmp_path)
    assert handler.batchable  # the default predict_fn is still row-wise
    body = json.dumps({"records": [{"features": row} for row in x[:4].tolist()]}).encode()
    out, content_type = handler.invoke(body, JSON, CSV)
    assert content_type == CSV
    assert_same(parse(out, CSV), booster.predict(x[:4]))


def test_batching_equals_one_by_one(booster_handler: InferenceHandler, data: Any) -> None:
    x, _ = data
    bodies = [
        (csv_body(x[0:1]), CSV),
        (csv_body(x[1:5]), CSV),
        (json.dumps(x[5:7].tolist()).encode(), JSON),
        (npy_body(x[7]), NPY),
        (b"1,2,3", CSV),  # the wrong width
        (json.dumps({"instances": x[8:11].tolist()}).encode(), JSON),
    ]
    inputs = [booster_handler.decode(body, content_type) for body, content_type in bodies]
    batched = booster_handler.predict_many(inputs)
    for item, (body, content_type) in zip(batched, bodies, strict=True):
        if body == b"1,2,3":
            assert isinstance(item, HandlerError) and item.status == 400  # only the bad request fails
            continue
        np.testing.assert_array_equal(item, booster_handler.predict(booster_handler.decode(body, content_type)))


# -------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def endpoint(
    module_deployer: Deployer, artifacts: Path, booster: lgb.Booster, classifier: lgb.LGBMClassifier
) -> dict[str, str]:
    """One endpoint, two variants: a Booster behind an image URI, an LGBMClassifier by short name."""
    root = artifacts / "lightgbm-runtime"
    booster_tar = tar_dir(write_booster(booster, root / "booster" / "model.txt").parent, root / "booster.tar.gz")
    (root / "clf").mkdir(parents=True)
    joblib.dump(classifier, root / "clf" / "model.joblib")
    clf_tar = tar_dir(root / "clf", root / "clf.tar.gz")
    d = module_deployer
    booster_model = d.model(new_name("lgb-booster"), file_url(booster_tar), image=LIGHTGBM_IMAGE)
    clf_model = d.model(new_name("lgb-clf"), file_url(clf_tar), image="lightgbm")
    name = new_name("lgb")
    d.config(name, [variant("booster", booster_model), variant("clf", clf_model)])
    d.endpoint(name, name)
    d.wait_in_service(name)
    return {"name": name, "booster": booster_model, "clf": clf_model}


@pytest.mark.e2e
def test_e2e_booster_every_content_type(rt: Any, endpoint: dict[str, str], booster: lgb.Booster, data: Any) -> None:
    x, _ = data
    rows = x[40:52]
    expected = booster.predict(rows)
    for kind, (content_type, make) in BODIES.items():
        for accept in (CSV, JSON, JSONL, NPY):
            resp = invoke(rt, endpoint["name"], make(rows), content_type, Accept=accept, TargetVariant="booster")
            assert resp["ContentType"] == accept and resp["InvokedProductionVariant"] == "booster"
            assert_same(parse(resp["Body"], accept), expected, f"{kind} -> {accept}")


@pytest.mark.e2e
def test_e2e_classifier_by_short_name(rt: Any, endpoint: dict[str, str], classifier: Any, data: Any) -> None:
    x, _ = data
    rows = x[60:70]
    for kind, (content_type, make) in BODIES.items():
        resp = invoke(rt, endpoint["name"], make(rows), content_type, Accept=JSON, TargetVariant="clf")
        assert json.loads(resp["Body"]) == classifier.predict(rows).tolist(), kind


@pytest.mark.e2e
def test_e2e_wrong_width_is_a_model_error(rt: Any, endpoint: dict[str, str]) -> None:
    with pytest.raises(ClientError) as info:
        invoke(rt, endpoint["name"], b"1,2,3", CSV, TargetVariant="booster")
    error = info.value.response["Error"]
    assert error["Code"] == "ModelError" and "number of features" in error["Message"], error
    assert info.value.response.get("OriginalStatusCode") == 400, info.value.response
