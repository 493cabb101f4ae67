"""Unit tests for the SageMaker handler contract and the scikit-learn framework defaults."""

from __future__ import annotations

import copy
import pickle
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest
import skops.io
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from moorage.runtimes.frameworks import ModelLoadError, load_framework
from moorage.runtimes.frameworks.sklearn import SklearnFramework
from moorage.runtimes.handler import HandlerError, InferenceHandler

# inference.py modules written by these tests must not leak into other tests.
pytestmark = pytest.mark.usefixtures("isolate_imports")

SKLEARN = load_framework("sklearn")
LABELS = ["setosa", "versicolor", "virginica"]




@pytest.fixture(scope="module")
def numeric_model() -> LogisticRegression:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 4))
    y = np.digitize(x[:, 0] + x[:, 1], [-0.5, 0.5])  # three classes
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture(scope="module")
def text_model() -> Any:
    texts = np.array(["good movie", "great film, loved it", "awful plot", "bad, boring film"] * 10)
    labels = np.array([1, 1, 0, 0] * 10)
    # np.ravel lets the same pipeline take JSON's 1-D strings and CSV's one-column 2-D rows.
    pipeline = make_pipeline(FunctionTransformer(np.ravel), TfidfVectorizer(), LogisticRegression())
    return pipeline.fit(texts, labels)


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(5, 4))


def _model_dir(tmp_path: Path, model: Any, name: str = "model.joblib") -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    path = model_dir / name
    if name.endswith(".skops"):
        skops.io.dump(model, path)
    elif name.endswith((".pkl", ".pickle")):
        path.write_bytes(pickle.dumps(model))
    else:
        joblib.dump(model, path)
    return model_dir


def _write(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def _handler(model_dir: Path, env: dict[str, str] | None = None) -> InferenceHandler:
    handler = InferenceHandler.from_model_dir(model_dir, SKLEARN, env or {})
    handler.load()
    return handler


def _csv(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


# ---------------------------------------------------------------------------------------- model loading


@pytest.mark.parametrize("name", ["model.joblib", "model.pkl", "model.pickle", "model.skops", "clf.joblib"])
def test_default_model_fn_formats(tmp_path: Path, numeric_model: Any, rows: np.ndarray, name: str) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model, name))
    np.testing.assert_array_equal(handler.predict(rows), numeric_model.predict(rows))


def test_joblib_dump_named_pkl(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(numeric_model, model_dir / "model.pkl")
    np.testing.assert_array_equal(_handler(model_dir).predict(rows), numeric_model.predict(rows))


def test_model_file_preference(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model, "model.skops")
    _model_dir(tmp_path, numeric_model, "model.pkl")
    assert SklearnFramework().find_model_file(model_dir).name == "model.pkl"


def test_no_model_file(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match=r"no model file.*README\.txt"):
        SKLEARN.load_model(tmp_path, {})


def test_several_model_files(tmp_path: Path, numeric_model: Any) -> None:
    _model_dir(tmp_path, numeric_model, "a.joblib")
    model_dir = _model_dir(tmp_path, numeric_model, "b.pkl")
    with pytest.raises(ModelLoadError, match=r"several model files.*a\.joblib.*b\.pkl"):
        SKLEARN.load_model(model_dir, {})


def test_corrupt_model_file(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"Could not load model\.joblib"):
        SKLEARN.load_model(tmp_path, {})


def test_skops_untrusted_type_needs_env(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    pipeline = make_pipeline(FunctionTransformer(copy.copy), numeric_model)
    model_dir = _model_dir(tmp_path, pipeline, "model.skops")
    with pytest.raises(ModelLoadError, match=r"copy\.copy.*MOORAGE_SKOPS_TRUSTED_TYPES"):
        SKLEARN.load_model(model_dir, {})
    model = SKLEARN.load_model(model_dir, {"MOORAGE_SKOPS_TRUSTED_TYPES": "copy.copy, other.Thing"})
    np.testing.assert_array_equal(model.predict(rows), numeric_model.predict(rows))


# ------------------------------------------------------------------------------------- default chain


def test_defaults_csv_to_json(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    assert handler.batchable
    body, content_type = handler.invoke(_csv(rows), "text/csv", None)
    assert content_type == "application/json"
    assert orjson.loads(body) == numeric_model.predict(rows).tolist()


def test_defaults_single_row_and_accept(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    body, content_type = handler.invoke(_csv(rows[:1]), "text/csv", "text/csv;q=0.9, image/png;q=0.1")
    assert (body, content_type) == (f"{numeric_model.predict(rows[:1])[0]}\n".encode(), "text/csv")


def test_default_accept_from_env(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    env = {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/jsonlines"}
    handler = _handler(_model_dir(tmp_path, numeric_model), env)
    body, content_type = handler.invoke(orjson.dumps(rows.tolist()), "application/json", "*/*")
    assert content_type == "application/jsonlines"
    assert body.decode().splitlines() == [str(v) for v in numeric_model.predict(rows)]


def test_missing_content_type_means_json(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    body, _ = handler.invoke(orjson.dumps({"instances": rows.tolist()}), None, None)
    assert orjson.loads(body) == numeric_model.predict(rows).tolist()


def test_text_pipeline_csv_and_json(tmp_path: Path, text_model: Any) -> None:
    handler = _handler(_model_dir(tmp_path, text_model, "model.skops"))
    texts = ["great film, loved it", "boring, awful"]
    expected = text_model.predict(np.array(texts)).tolist()
    body, _ = handler.invoke(b'"great film, loved it"\n"boring, awful"\n', "text/csv", "application/json")
    assert orjson.loads(body) == expected
    body, _ = handler.invoke(orjson.dumps(texts), "application/json", "application/json")
    assert orjson.loads(body) == expected


@pytest.mark.parametrize(
    ("content_type", "accept", "status", "message"),
    [
        ("image/png", None, 415, "Content type 'image/png' is not supported"),
        ("text/csv", "image/png", 406, "Accept 'image/png' is not supported"),
    ],
)
def test_content_type_errors(
    tmp_path: Path, numeric_model: Any, content_type: str, accept: str | None, status: int, message: str
) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    with pytest.raises(HandlerError, match=message) as info:
        handler.invoke(b"1,2,3,4", content_type, accept)
    assert info.value.status == status


def test_bad_payload_is_400(tmp_path: Path, numeric_model: Any) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    with pytest.raises(HandlerError, match="line 2 has 3 columns") as info:
        handler.invoke(b"1,2,3,4\n1,2,3\n", "text/csv", None)
    assert info.value.status == 400


def test_model_failure_is_500(tmp_path: Path, numeric_model: Any) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    with pytest.raises(HandlerError, match=r"^ValueError: .*features") as info:
        handler.invoke(b"1,2,3", "text/csv", None)  # 3 features for a 4-feature model
    assert info.value.status == 500
    assert "Traceback" in (info.value.traceback or "")


# ----------------------------------------------------------------------------------------- user code


def test_output_fn_only_maps_labels(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        f"""
        import json
        LABELS = {LABELS!r}

        def output_fn(prediction, accept):
            return json.dumps([LABELS[int(i)] for i in prediction])
        """,
    )
    handler = _handler(model_dir)
    assert handler.batchable  # the default predict_fn is still row-wise
    body, content_type = handler.invoke(_csv(rows), "text/csv", None)
    assert content_type == "application/json"
    assert orjson.loads(body) == [LABELS[i] for i in numeric_model.predict(rows)]


def test_model_fn_and_predict_fn_from_submit_directory(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    model_dir = _model_dir(tmp_path, numeric_model, "weights.bin.joblib")
    source_dir = tmp_path / "src"
    _write(source_dir, "helpers.py", "def proba(model, data):\n    return model.predict_proba(data)\n")
    _write(
        source_dir,
        "serve.py",
        """
        import os
        import joblib
        from helpers import proba  # a sibling module: the code dir must be on sys.path

        def model_fn(model_dir, context):
            assert isinstance(model_dir, str) and context is None
            return joblib.load(os.path.join(model_dir, "weights.bin.joblib"))

        def predict_fn(data, model):
            return proba(model, data)
        """,
    )
    env = {"SAGEMAKER_PROGRAM": "serve.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(source_dir)}
    handler = _handler(model_dir, env)
    assert not handler.batchable  # a user predict_fn may not be row-wise
    body, _ = handler.invoke(orjson.dumps(rows.tolist()), "application/json", "application/json")
    np.testing.assert_allclose(orjson.loads(body), numeric_model.predict_proba(rows))


def test_input_fn_gets_str_for_text_types_and_bytes_otherwise(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        """
        def input_fn(body, content_type, context=None):
            return [[type(body).__name__, content_type]]

        def predict_fn(data, model):
            return data
        """,
    )
    handler = _handler(model_dir)
    seen = {
        content_type: orjson.loads(handler.invoke(b"{}", content_type, "application/json")[0])[0]
        for content_type in ("text/csv", "application/json; charset=utf-8", "application/x-npy")
    }
    assert seen == {
        "text/csv": ["str", "text/csv"],
        "application/json; charset=utf-8": ["str", "application/json; charset=utf-8"],
        "application/x-npy": ["bytes", "application/x-npy"],
    }


def test_user_output_fn_tuple_and_raw_accept(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        """
        def output_fn(prediction, accept):
            if accept == "text/plain":
                return " ".join(map(str, prediction)).encode(), "text/plain; charset=utf-8"
            return prediction  # not serialised: the handler does it as the accept (or JSON)
        """,
    )
    handler = _handler(model_dir)
    expected = numeric_model.predict(rows)
    body, content_type = handler.invoke(_csv(rows), "text/csv", "text/plain")
    assert (body, content_type) == (" ".join(map(str, expected)).encode(), "text/plain; charset=utf-8")
    body, content_type = handler.invoke(_csv(rows), "text/csv", "text/csv")
    assert (body, content_type) == ("".join(f"{v}\n" for v in expected).encode(), "text/csv")


def test_transform_fn(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        """
        import json
        import numpy as np

        def transform_fn(model, body, content_type, accept):
            data = np.array(json.loads(body))
            return json.dumps({"classes": model.predict(data).tolist()}), "application/vnd+json"
        """,
    )
    handler = _handler(model_dir, {"MOORAGE_BATCHING": "on"})
    assert not handler.batchable  # transform_fn has no shared predict step
    body, content_type = handler.invoke(orjson.dumps(rows.tolist()), "application/json", None)
    assert content_type == "application/vnd+json"
    assert orjson.loads(body) == {"classes": numeric_model.predict(rows).tolist()}


def test_transform_fn_with_predict_fn_is_refused(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        "def transform_fn(m, b, c, a):\n    return b\n\ndef predict_fn(d, m):\n    return d\n",
    )
    with pytest.raises(ModelLoadError, match="transform_fn cannot be combined"):
        _handler(model_dir)


def test_predict_fn_raises_is_500(tmp_path: Path, numeric_model: Any, rows: np.ndarray) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        "def predict_fn(data, model):\n    raise RuntimeError('the GPU caught fire')\n",
    )
    handler = _handler(model_dir)
    with pytest.raises(HandlerError) as info:
        handler.invoke(_csv(rows), "text/csv", None)
    assert info.value.status == 500
    assert str(info.value) == "RuntimeError: the GPU caught fire"
    assert "predict_fn" in (info.value.traceback or "")


def test_user_error_status_code_is_kept(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        """
        class GenericInferenceToolkitError(Exception):
            def __init__(self, status_code, message):
                super().__init__(message)
                self.status_code = status_code
                self.message = message

        def input_fn(body, content_type):
            raise GenericInferenceToolkitError(422, "need a 'text' field")
        """,
    )
    with pytest.raises(HandlerError, match="need a 'text' field") as info:
        _handler(model_dir).invoke(b"{}", "application/json", None)
    assert info.value.status == 422


def test_module_that_fails_to_import(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(model_dir / "code", "inference.py", "import package_that_is_not_installed\n")
    with pytest.raises(ModelLoadError, match=r"ModuleNotFoundError.*package_that_is_not_installed") as info:
        _handler(model_dir)
    assert "inference.py" in str(info.value)
    assert "Traceback" in (info.value.traceback or "")


def test_model_fn_that_fails(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(model_dir / "code", "inference.py", "def model_fn(model_dir):\n    raise OSError('no weights')\n")
    with pytest.raises(ModelLoadError, match="model_fn failed: OSError: no weights"):
        _handler(model_dir)


def test_missing_program(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    with pytest.raises(ModelLoadError, match=r"SAGEMAKER_PROGRAM is 'serve\.py' but .*code/serve\.py"):
        InferenceHandler.from_model_dir(model_dir, SKLEARN, {"SAGEMAKER_PROGRAM": "serve.py"})


@pytest.mark.parametrize(
    "submit_dir", ["/opt/ml/model/code", "s3://bucket/prefix/sourcedir.tar.gz", "", "file:///tmp/x.tar.gz"]
)
def test_submit_directory_maps_to_model_code(
    tmp_path: Path, numeric_model: Any, rows: np.ndarray, submit_dir: str
) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(model_dir / "code", "entry.py", "def output_fn(prediction, accept):\n    return b'from entry'\n")
    env = {"SAGEMAKER_PROGRAM": "entry.py", "SAGEMAKER_SUBMIT_DIRECTORY": submit_dir}
    handler = _handler(model_dir, env)
    assert handler.program == model_dir / "code" / "entry.py"
    assert handler.invoke(_csv(rows), "text/csv", None) == (b"from entry", "application/json")


def test_batching_env_overrides(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    assert not _handler(model_dir, {"MOORAGE_BATCHING": "off"}).batchable
    _write(model_dir / "code", "inference.py", "def predict_fn(data, model):\n    return model.predict(data)\n")
    assert _handler(model_dir, {"MOORAGE_BATCHING": "true"}).batchable


# ------------------------------------------------------------------------------------------- batching


class _CountingModel:
    """Delegates to a real model and counts predict calls, to prove requests were stacked."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0

    def predict(self, data: Any) -> Any:
        self.calls += 1
        return self.model.predict(data)


def _one_by_one(handler: InferenceHandler, inputs: list[Any]) -> list[Any]:
    out = []
    for data in inputs:
        try:
            out.append(handler.predict(data))
        except HandlerError as exc:
            out.append(exc)
    return out


def test_predict_many_stacks_into_one_call(tmp_path: Path, numeric_model: Any) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    counting = handler.model = _CountingModel(numeric_model)
    inputs = [handler.decode(_csv(row[None, :]), "text/csv") for row in np.random.default_rng(3).normal(size=(32, 4))]
    results = handler.predict_many(inputs)
    assert counting.calls == 1
    for data, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, numeric_model.predict(data))


def test_predict_many_matches_one_by_one_and_isolates_bad_input(tmp_path: Path, numeric_model: Any) -> None:
    handler = _handler(_model_dir(tmp_path, numeric_model))
    rng = np.random.default_rng(4)
    bad = rng.normal(size=(1, 4))
    bad[0, 2] = np.nan  # LogisticRegression refuses NaN: this one request must fail alone
    inputs: list[Any] = [
        rng.normal(size=(1, 4)),
        rng.normal(size=(3, 4)),
        bad,
        rng.normal(size=(2, 4)).astype(np.float32),
        rng.normal(size=(2, 5)),  # wrong width: a group of its own, fails alone
        {"not": "an array"},  # not stackable: predicted alone, fails alone
        rng.normal(size=(4, 4)).tolist(),  # a list: predicted alone, succeeds
        rng.integers(0, 3, size=(2, 4)),
    ]
    counting = handler.model = _CountingModel(numeric_model)
    results = handler.predict_many(inputs)
    # One stacked call for the five (n, 4) numeric arrays, which fails on the NaN, then each input alone.
    assert counting.calls == 1 + len(inputs)
    expected = _one_by_one(handler, inputs)
    for data, result, want in zip(inputs, results, expected, strict=True):
        if isinstance(want, HandlerError):
            assert isinstance(result, HandlerError)
            assert (result.status, str(result)) == (want.status, str(want))
        else:
            np.testing.assert_array_equal(result, want)
            np.testing.assert_array_equal(result, numeric_model.predict(np.asarray(data)))
    assert [isinstance(r, HandlerError) for r in results] == [False, False, True, False, True, True, False, False]


def test_predict_many_text_and_numbers_stay_apart(tmp_path: Path, text_model: Any) -> None:
    handler = _handler(_model_dir(tmp_path, text_model, "model.pkl"))
    inputs = [
        handler.decode(b'"great film, loved it"\nawful\n', "text/csv"),
        handler.decode(b"bad, boring film", "text/csv"),
        handler.decode(b'["good movie", "awful plot"]', "application/json"),
        handler.decode(b'["loved it"]', "application/json"),
    ]
    results = handler.predict_many(inputs)
    for data, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, text_model.predict(data))


def test_predict_many_unsplittable_result_falls_back(tmp_path: Path, numeric_model: Any) -> None:
    model_dir = _model_dir(tmp_path, numeric_model)
    _write(
        model_dir / "code",
        "inference.py",
        "def predict_fn(data, model):\n    return {'count': int(len(data))}\n",
    )
    handler = _handler(model_dir, {"MOORAGE_BATCHING": "on"})
    inputs = [np.zeros((1, 4)), np.zeros((2, 4)), np.zeros((3, 4))]
    assert handler.predict_many(inputs) == [{"count": 1}, {"count": 2}, {"count": 3}]
