"""The MLflow runtime: unit tests through InferenceHandler, then end to end through boto3."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pd = pytest.importorskip("pandas")  # mlflow.pyfunc needs pandas; mlflow-skinny does not depend on it
pytest.importorskip("mlflow")

import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from e2e_support import Deployer, file_url, invoke, tar_dir  # noqa: E402
from moorage.runtimes import codecs  # noqa: E402
from moorage.runtimes.frameworks import ModelLoadError, load_framework  # noqa: E402
from moorage.runtimes.handler import HandlerError, InferenceHandler  # noqa: E402

COLUMNS = ["a", "b", "c", "d"]

# A custom pyfunc saved as "models from code": the instance imports this file, so nothing is pickled
# by reference to a test module that the instance process could not import. The type hint only silences
# MLflow's advice to add one (a warning pytest cannot filter: MLflow resets the filters around it).
SCORER_CODE = """
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class Scorer(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        scale = (params or {}).get("scale", 1.0)
        total = (model_input["x"] + 2 * model_input["y"]) * scale
        return pd.DataFrame({"total": total, "label": ["high" if t > 0 else "low" for t in total]})


mlflow.models.set_model(Scorer())
"""


def _scorer_expected(frame: Any, scale: float = 1.0) -> list[dict[str, Any]]:
    total = (frame["x"] + 2 * frame["y"]) * scale
    return [{"total": t, "label": "high" if t > 0 else "low"} for t in total]


@pytest.fixture(scope="module")
def data() -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(rng.normal(size=(120, 4)), columns=COLUMNS)
    labels = np.digitize(frame.a + frame.b - frame.c, [-0.7, 0.7])  # three classes
    return frame, labels


@pytest.fixture(scope="module")
def sk_model(data: tuple[Any, np.ndarray]) -> LogisticRegression:
    frame, labels = data
    return LogisticRegression(max_iter=500).fit(frame, labels)


def _quiet_save(save: Any, path: Path, **kwargs: Any) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pip-requirement and pickling advice, irrelevant here
        # pip_requirements given: inferring them imports the model in a subprocess (seconds per save).
        save(path=str(path), **kwargs)
    return path


@pytest.fixture(scope="module")
def sk_dir(tmp_path_factory: pytest.TempPathFactory, sk_model: LogisticRegression, data: tuple[Any, Any]) -> Path:
    frame, _ = data
    signature = infer_signature(frame, sk_model.predict(frame))
    path = tmp_path_factory.mktemp("mlflow-sk") / "model"
    return _quiet_save(mlflow.sklearn.save_model, path, sk_model=sk_model, signature=signature,
                       pip_requirements=["scikit-learn"])


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlflow-pyfunc")
    code = root / "scorer.py"
    code.write_text(textwrap.dedent(SCORER_CODE))
    example = pd.DataFrame({"x": [1.0, -2.0], "y": [0.5, 0.25]})
    signature = infer_signature(example, pd.DataFrame({"total": [2.0], "label": ["high"]}), params={"scale": 1.0})
    return _quiet_save(mlflow.pyfunc.save_model, root / "model", python_model=str(code), signature=signature,
                       pip_requirements=["pandas"])


def _handler(model_dir: Path, env: dict[str, str] | None = None) -> InferenceHandler:
    handler = InferenceHandler.from_model_dir(model_dir, load_framework("mlflow"), env or {})
    handler.load()
    return handler


@pytest.fixture(scope="module")
def sk_handler(sk_dir: Path) -> InferenceHandler:
    return _handler(sk_dir)


@pytest.fixture(scope="module")
def frame(data: tuple[Any, np.ndarray]) -> Any:
    return data[0].iloc[:6]


def _predictions(body: bytes) -> list[Any]:
    document = json.loads(body)
    assert set(document) == {"predictions"}, document
    return document["predictions"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------- scikit-learn flavour


def _json_forms(frame: Any) -> dict[str, Any]:
    rows = frame.to_numpy().tolist()
    return {
        "dataframe_split": {"dataframe_split": frame.to_dict(orient="split", index=False)},
        "dataframe_records": {"dataframe_records": frame.to_dict(orient="records")},
        "instances_records": {"instances": frame.to_dict(orient="records")},
        "inputs_columns": {"inputs": frame.to_dict(orient="list")},
        "inputs_rows": {"inputs": rows},  # unnamed rows: matched to the signature's columns by position
        "bare_list": rows,  # as a SageMaker client sends it (MLflow's own server refuses this one)
    }


@pytest.mark.parametrize("form", list(_json_forms(pd.DataFrame(columns=COLUMNS))))
def test_sklearn_json_forms(sk_handler: InferenceHandler, sk_model: Any, frame: Any, form: str) -> None:
    body = json.dumps(_json_forms(frame)[form]).encode()
    out, content_type = sk_handler.invoke(body, codecs.JSON, codecs.JSON)
    assert content_type == codecs.JSON
    assert _predictions(out) == sk_model.predict(frame).tolist()


@pytest.mark.parametrize("form", ["header", "reordered_header", "no_header", "jsonlines_records", "jsonlines_rows",
                                  "npy"])
def test_sklearn_other_inputs(sk_handler: InferenceHandler, sk_model: Any, frame: Any, form: str) -> None:
    content_type, body = {
        "header": (codecs.CSV, frame.to_csv(index=False)),
        "reordered_header": (codecs.CSV, frame[COLUMNS[::-1]].to_csv(index=False)),
        "no_header": (codecs.CSV, frame.to_csv(index=False, header=False)),
        "jsonlines_records": (codecs.JSONLINES, frame.to_json(orient="records", lines=True)),
        "jsonlines_rows": (codecs.JSONLINES, "\n".join(json.dumps(r) for r in frame.to_numpy().tolist())),
        "npy": (codecs.NPY, _npy(frame.to_numpy())),
    }[form]
    raw = body.encode() if isinstance(body, str) else body
    out, _ = sk_handler.invoke(raw, content_type, codecs.JSON)
    assert _predictions(out) == sk_model.predict(frame).tolist()


@pytest.mark.parametrize("accept", [codecs.CSV, codecs.JSONLINES, codecs.NPY])
def test_sklearn_outputs(sk_handler: InferenceHandler, sk_model: Any, frame: Any, accept: str) -> None:
    out, content_type = sk_handler.invoke(frame.to_csv(index=False).encode(), codecs.CSV, accept)
    assert content_type == accept
    expected = sk_model.predict(frame)
    if accept == codecs.NPY:
        np.testing.assert_array_equal(np.load(io.BytesIO(out)), expected)
    else:  # one prediction a line
        assert [json.loads(line) for line in out.decode().splitlines()] == expected.tolist()


def test_mlmodel_in_a_subdirectory(tmp_path: Path, sk_dir: Path, sk_model: Any, frame: Any) -> None:
    shutil.copytree(sk_dir, tmp_path / "my-model")
    (tmp_path / "code").mkdir()  # other folders beside it do not matter
    out, _ = _handler(tmp_path).invoke(frame.to_csv(index=False).encode(), codecs.CSV, None)
    assert _predictions(out) == sk_model.predict(frame).tolist()


def test_missing_or_several_mlmodels(tmp_path: Path, sk_dir: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"No MLmodel file in .*model\.pkl"):
        _handler(tmp_path)
    shutil.copytree(sk_dir, tmp_path / "one")
    shutil.copytree(sk_dir, tmp_path / "two")
    with pytest.raises(ModelLoadError, match=r"several MLflow models in .*: one, two"):
        _handler(tmp_path)


@pytest.mark.parametrize(("content_type", "body", "message"), [
    (codecs.JSON, b'{"data": [[1, 2, 3, 4]]}', "exactly one of the input fields dataframe_split"),
    (codecs.JSON, b'{"dataframe_records": [{"a": 1, "b": 2}]}', r"missing inputs \['c', 'd'\]"),
    (codecs.JSON, b'{"inputs": [[1, 2]]}', "rows have 2 values but the model signature has 4 inputs"),
    (codecs.CSV, b"1,2\n3,4\n", "CSV rows have 2 columns but the model signature has 4 inputs"),
    (codecs.CSV, b"a,b,c,d\n1,2,x,4\n", "CSV body does not parse"),
    ("text/plain", b"1,2,3,4", "not supported"),
])  # fmt: skip
def test_bad_requests(sk_handler: InferenceHandler, content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(HandlerError, match=message) as info:
        sk_handler.invoke(body, content_type, codecs.JSON)
    assert info.value.status in (400, 415)


def test_batching_dataframes_falls_back_to_one_call_each(
    sk_handler: InferenceHandler, sk_model: Any, frame: Any
) -> None:
    assert sk_handler.batchable
    bodies = [(codecs.CSV, frame.iloc[:2].to_csv(index=False)), (codecs.JSON, json.dumps(frame.iloc[2:5].to_numpy()
              .tolist())), (codecs.CSV, frame.iloc[5:].to_csv(index=False, header=False))]
    inputs = [sk_handler.decode(body.encode(), content_type) for content_type, body in bodies]
    assert all(isinstance(data, pd.DataFrame) for data in inputs)  # pandas: not stacked, predicted one by one
    results = sk_handler.predict_many(inputs)
    expected = sk_model.predict(frame)
    for got, part in zip(results, (expected[:2], expected[2:5], expected[5:]), strict=True):
        np.testing.assert_array_equal(got, part)


def test_tensor_signature_inputs_are_stacked(tmp_path: Path, data: tuple[Any, np.ndarray]) -> None:
    frame, labels = data
    array = frame.to_numpy()
    model = LogisticRegression(max_iter=500).fit(array, labels)
    path = _quiet_save(mlflow.sklearn.save_model, tmp_path / "model", sk_model=model,
                       signature=infer_signature(array, labels), pip_requirements=["scikit-learn"])
    handler = _handler(path)
    parts = [array[:1], array[1:4], array[4:6]]
    inputs = [
        handler.decode(",".join(repr(float(v)) for v in parts[0][0]).encode(), codecs.CSV),
        handler.decode(json.dumps({"inputs": parts[1].tolist()}).encode(), codecs.JSON),
        handler.decode(_npy(parts[2]), codecs.NPY),
    ]
    assert all(isinstance(data, np.ndarray) for data in inputs)
    calls: list[int] = []
    predict = handler.framework.predict

    def counting(model: Any, data: Any) -> Any:
        calls.append(len(data))
        return predict(model, data)

    handler.framework.predict = counting  # type: ignore[method-assign]
    results = handler.predict_many(inputs)
    assert calls == [6], "the three requests should share one predict"
    for got, part in zip(results, parts, strict=True):
        np.testing.assert_array_equal(got, model.predict(part))


# ---------------------------------------------------------------------------------------- custom pyfunc


def test_python_model_dataframe_output_and_params(scorer_dir: Path) -> None:
    handler = _handler(scorer_dir)
    frame = pd.DataFrame({"x": [1.0, -3.0, 0.5], "y": [0.25, 1.0, -1.0]})
    split = frame.to_dict(orient="split", index=False)
    out, _ = handler.invoke(json.dumps({"dataframe_split": split}).encode(), codecs.JSON, codecs.JSON)
    assert _predictions(out) == _scorer_expected(frame)  # a DataFrame answer is records, as MLflow writes it
    body = json.dumps({"dataframe_split": split, "params": {"scale": -2.0}}).encode()
    out, _ = handler.invoke(body, codecs.JSON, codecs.JSON)
    assert _predictions(out) == _scorer_expected(frame, -2.0)
    out, _ = handler.invoke(frame.to_csv(index=False).encode(), codecs.CSV, codecs.CSV)
    assert out.decode().splitlines() == [f"{r['total']},{r['label']}" for r in _scorer_expected(frame)]
    out, _ = handler.invoke(frame.to_csv(index=False).encode(), codecs.CSV, codecs.JSONLINES)
    assert [json.loads(line) for line in out.splitlines()] == _scorer_expected(frame)


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_e2e_mlflow(
    deployer: Deployer, rt: Any, artifacts: Path, sk_dir: Path, scorer_dir: Path, sk_model: Any, frame: Any
) -> None:
    sk_name = deployer.deploy("mlflow-sk", file_url(tar_dir(sk_dir, artifacts / "mlflow-sk.tar.gz")),
                              image="mlflow", wait=False)
    scorer_name = deployer.deploy("mlflow-py", file_url(tar_dir(scorer_dir, artifacts / "mlflow-py.tar.gz")),
                                  image="mlflow", wait=False)
    deployer.wait_in_service(sk_name)
    expected = sk_model.predict(frame).tolist()
    resp = invoke(rt, sk_name, frame.to_csv(index=False).encode(), codecs.CSV, Accept=codecs.JSON)
    assert resp["ContentType"] == codecs.JSON
    assert _predictions(resp["Body"]) == expected
    split = {"dataframe_split": frame.to_dict(orient="split", index=False)}
    resp = invoke(rt, sk_name, json.dumps(split).encode(), codecs.JSON, Accept=codecs.CSV)
    assert resp["ContentType"] == codecs.CSV
    assert [int(line) for line in resp["Body"].decode().splitlines()] == expected

    deployer.wait_in_service(scorer_name)
    small = pd.DataFrame({"x": [2.0, -1.0], "y": [0.5, 0.0]})
    body = {"dataframe_records": small.to_dict(orient="records"), "params": {"scale": 3.0}}
    resp = invoke(rt, scorer_name, json.dumps(body).encode(), codecs.JSON)
    assert _predictions(resp["Body"]) == _scorer_expected(small, 3.0)
