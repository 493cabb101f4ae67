"""The edge compiler (moorage.compiler): each supported framework compiles to a package whose ONNX graph
answers as the original does (within the tolerances stated here), int8 quantisation shrinks weight-heavy
models and keeps their accuracy, a drop beyond the tolerance is refused with the measured drop and no
package, and ``moorage edge compile`` / ``moorage edge key`` work as a user runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from moorage.compiler import CompileError, ValidationFailed, compile_model
from moorage.compiler.compile import default_name, record_shape_from
from moorage.edge import package as P

pytest.importorskip("skl2onnx")
pytest.importorskip("onnxmltools")
ort = pytest.importorskip("onnxruntime")
# TorchScript is deprecated upstream, and it is what SageMaker's PyTorch archives hold.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# Float32 graphs against float64 originals: probabilities and values agree to these bounds.
PROBABILITY_ATOL = 1e-5
VALUE_RTOL = 1e-4


def _data(seed: int = 0, n: int = 400, features: int = 8, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n, features, n_informative=5, n_classes=classes, random_state=seed)
    return x.astype(np.float32), y


def _csv(path: Path, x: np.ndarray, y: np.ndarray | None = None, header: bool = False) -> Path:
    table = x if y is None else np.column_stack([x, y])
    head = ",".join([f"f{i}" for i in range(x.shape[1])] + ([] if y is None else ["label"])) if header else ""
    np.savetxt(path, table, delimiter=",", fmt="%.9g", header=head, comments="")
    return path


def _archive(folder: Path, *files: Path) -> Path:
    out = folder / "model.tar.gz"
    with tarfile.open(out, "w:gz") as archive:
        for file in files:
            archive.add(file, arcname=file.name)
    return out


def _run(package_path: Path, key: object, x: np.ndarray) -> tuple[P.Package, dict[str, np.ndarray]]:
    """What a device does: verify the package, load its graph, run it (and its self-test)."""
    package = P.verify(package_path, [P.public_key_pem(key)])  # type: ignore[arg-type]
    session = ort.InferenceSession(package.model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs, expected = package.self_test_sample()  # type: ignore[misc]
    rtol, atol, agreement = package.self_test_bounds()
    own = dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs}), strict=True))
    assert P.compare_outputs(expected, own, rtol=rtol, atol=atol, min_agreement=agreement).passed
    return package, dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


@pytest.fixture(scope="module")
def key() -> object:
    return P.generate_key()


def test_sklearn_pipeline_with_its_scaler_in_the_graph(tmp_path: Path, key: object) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data(classes=3)
    # features on very different scales: without the scaler in the graph the predictions would differ
    x = x * np.array([1, 10, 100, 1000, 1, 0.1, 0.01, 5], dtype=np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    result = compile_model(_archive(tmp_path, tmp_path / "model.joblib"), tmp_path / "pkg.tar.gz",
                           validate=_csv(tmp_path / "val.csv", x, y, header=True), label_column="label",
                           signing_key=key, name="churn-model", version="2")
    package, out = _run(result.path, key, x)
    assert package.manifest["framework"] == "sklearn"
    assert package.manifest["model"] == "Pipeline(StandardScaler, LogisticRegression)"
    assert [o["name"] for o in package.manifest["signature"]["outputs"]] == ["label", "probabilities"]
    assert np.array_equal(out["label"], model.predict(x))
    assert np.abs(out["probabilities"] - model.predict_proba(x)).max() < PROBABILITY_ATOL
    ops = {node.op_type for node in __import__("onnx").load_from_string(package.model_bytes).graph.node}
    assert "Scaler" in ops or "Sub" in ops  # the preprocessing is in the graph
    validation = package.manifest["validation"]
    assert validation["metric"] == "accuracy" and validation["drop"] == 0.0 and validation["agreement"] == 1.0
    assert validation["accuracy_original"] == pytest.approx(float((model.predict(x) == y).mean()))
    manifest = package.manifest
    assert manifest["source"]["sha256"] == P.file_digest(tmp_path / "model.tar.gz")
    assert manifest["sizes"]["model_bytes"] == len(package.model_bytes)
    assert manifest["tolerance"] == 0.01 and manifest["compiler"]["skl2onnx"]
    assert manifest["signing_key_id"] == P.key_id(key)  # type: ignore[arg-type]
    assert manifest["optimization"]["level"] == "extended"


def test_xgboost_booster_from_an_archive(tmp_path: Path, key: object) -> None:
    xgb = pytest.importorskip("xgboost")
    x, y = _data(seed=1)
    booster = xgb.XGBClassifier(n_estimators=30, max_depth=4).fit(x, y).get_booster()
    booster.save_model(tmp_path / "xgboost-model.json")
    (tmp_path / "xgboost-model.json").rename(tmp_path / "xgboost-model")  # SageMaker's name, no suffix
    result = compile_model(_archive(tmp_path, tmp_path / "xgboost-model"), tmp_path / "pkg.tar.gz",
                           validate=_csv(tmp_path / "val.csv", x), signing_key=key)
    package, out = _run(result.path, key, x)
    assert package.manifest["framework"] == "xgboost" and package.model_handle == "model-1"
    positive = booster.inplace_predict(x)
    assert np.abs(out["probabilities"][:, 1] - positive).max() < PROBABILITY_ATOL
    assert np.array_equal(out["label"], (positive > 0.5).astype(np.int64))
    assert package.manifest["validation"]["metric"] == "agreement"


def test_xgboost_classifier_pickled_is_told_apart_from_scikit_learn(tmp_path: Path, key: object) -> None:
    xgb = pytest.importorskip("xgboost")
    import joblib

    x, y = _data(seed=2, classes=3)
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y)
    joblib.dump(model, tmp_path / "model.pkl")
    result = compile_model(tmp_path / "model.pkl", tmp_path / "pkg.tar.gz", signing_key=key,
                           validate=_csv(tmp_path / "val.csv", x, y), label_column=-1)
    package, out = _run(result.path, key, x)
    assert package.manifest["model"].startswith("XGBoost XGBClassifier")
    assert np.abs(out["probabilities"] - model.predict_proba(x)).max() < PROBABILITY_ATOL


def test_lightgbm_regressor_text_model(tmp_path: Path, key: object) -> None:
    lgb = pytest.importorskip("lightgbm")
    x, _ = _data(seed=3)
    target = 3 * x[:, 0] - 2 * x[:, 1] + x[:, 2] ** 2
    booster = lgb.LGBMRegressor(n_estimators=40, verbose=-1).fit(x, target).booster_
    booster.save_model(str(tmp_path / "model.txt"))
    result = compile_model(tmp_path / "model.txt", tmp_path / "pkg.tar.gz", signing_key=key,
                           validate=_csv(tmp_path / "val.csv", x, target), label_column=-1, quantize="int8")
    package, out = _run(result.path, key, x)
    assert package.manifest["task"] == "regression"
    original = booster.predict(x)
    assert np.allclose(out["variable"].ravel(), original, rtol=VALUE_RTOL, atol=VALUE_RTOL * np.abs(original).mean())
    validation = package.manifest["validation"]
    assert validation["metric"] == "relative_error" and validation["relative_error"] < VALUE_RTOL
    assert validation["rmse_compiled"] == pytest.approx(validation["rmse_original"], rel=1e-4)
    # trees have no MatMul weights: int8 leaves the model as it is, and says so
    optimisation = package.manifest["optimization"]
    assert optimisation["quantization"] is None and optimisation["quantization_requested"] == "int8"
    assert "tree ensembles keep their size" in optimisation["note"]


def _torch_mlp(x: np.ndarray, y: np.ndarray, width: int = 256) -> object:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                              torch.nn.ReLU(), torch.nn.Linear(width, int(y.max()) + 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    features, labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(features), labels).backward()
        optimiser.step()
    return net.eval()


def test_torch_mlp_and_its_int8_version(tmp_path: Path, key: object) -> None:
    torch = pytest.importorskip("torch")
    x, y = _data(seed=4, n=600, classes=3)
    net = _torch_mlp(x, y)
    torch.jit.script(net).save(str(tmp_path / "model.pt"))
    sample = _csv(tmp_path / "val.csv", x, y)
    with torch.inference_mode():
        original = net(torch.from_numpy(x)).numpy()

    result = compile_model(_archive(tmp_path, tmp_path / "model.pt"), tmp_path / "float.tar.gz", signing_key=key,
                           validate=sample, label_column=-1)
    package, out = _run(result.path, key, x)
    assert package.manifest["framework"] == "pytorch" and package.manifest["task"] == "classification"
    assert np.abs(out["output"] - original).max() < 1e-4
    float_bytes = len(package.model_bytes)

    tolerance = 0.02
    result = compile_model(_archive(tmp_path, tmp_path / "model.pt"), tmp_path / "int8.tar.gz", signing_key=key,
                           validate=sample, label_column=-1, quantize="int8", tolerance=tolerance)
    package, out = _run(result.path, key, x)
    assert package.manifest["optimization"]["quantization"] == "int8"
    assert package.manifest["optimization"]["quantized_nodes"] >= 3
    assert len(package.model_bytes) < 0.4 * float_bytes  # int8 weights: about a quarter of float32
    accuracy = float((out["output"].argmax(axis=1) == y).mean())
    original_accuracy = float((original.argmax(axis=1) == y).mean())
    assert original_accuracy > 0.8
    assert original_accuracy - accuracy <= tolerance
    assert package.manifest["validation"]["accuracy_compiled"] == pytest.approx(accuracy)


def test_sklearn_mlp_int8_shrinks_and_keeps_accuracy(tmp_path: Path, key: object) -> None:
    import joblib
    from sklearn.neural_network import MLPClassifier

    x, y = _data(seed=5, n=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence: the test needs a wide model, not a converged one
        model = MLPClassifier((256, 256), max_iter=60, random_state=0).fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    sample = _csv(tmp_path / "val.csv", x, y)
    result = compile_model(tmp_path / "model.joblib", tmp_path / "pkg.tar.gz", signing_key=key, validate=sample,
                           label_column=-1, quantize="int8", tolerance=0.02)
    sizes = result.manifest["sizes"]
    assert sizes["model_bytes"] < 0.4 * sizes["exported_onnx_bytes"]
    _, out = _run(result.path, key, x)
    assert float((out["label"] == y).mean()) >= float((model.predict(x) == y).mean()) - 0.02


def test_a_drop_beyond_the_tolerance_is_refused_with_the_measured_drop(tmp_path: Path, key: object) -> None:
    torch = pytest.importorskip("torch")
    x, y = _data(seed=6)
    torch.jit.script(_torch_mlp(x, y)).save(str(tmp_path / "model.pt"))
    output = tmp_path / "pkg.tar.gz"
    with pytest.raises(ValidationFailed) as failure:
        # int8 moves every output a little: as a regression, any error is over a tolerance of 0
        compile_model(tmp_path / "model.pt", output, signing_key=key, validate=_csv(tmp_path / "v.csv", x),
                      quantize="int8", task="regression", tolerance=0.0)
    report = failure.value.report
    assert report["relative_error"] > 0 and not report["passed"]
    assert f"relative error {report['relative_error']:.6g}" in str(failure.value)
    assert not output.exists() and list(tmp_path.glob(".pkg*")) == []


def test_bad_inputs_are_clear_errors(tmp_path: Path, key: object) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    x, _ = _data(seed=7)
    joblib.dump(LinearRegression().fit(x, x[:, 0]), tmp_path / "model.joblib")
    with pytest.raises(CompileError, match="takes 8 features; the validation sample has 9"):
        compile_model(tmp_path / "model.joblib", tmp_path / "p.tar.gz", signing_key=key,
                      validate=_csv(tmp_path / "v.csv", x, x[:, 0]))
    with pytest.raises(CompileError, match="no column named 'nope'"):
        compile_model(tmp_path / "model.joblib", tmp_path / "p.tar.gz", signing_key=key,
                      validate=_csv(tmp_path / "v.csv", x, x[:, 0], header=True), label_column="nope")
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(CompileError, match="Found no model file"):
        compile_model(tmp_path / "notes.md", tmp_path / "p.tar.gz", signing_key=key)
    with pytest.raises(CompileError, match="TENSORFLOW models are not supported"):
        compile_model(tmp_path / "model.joblib", tmp_path / "p.tar.gz", signing_key=key, framework="TENSORFLOW")
    with pytest.raises(CompileError, match="model name"):
        compile_model(tmp_path / "model.joblib", tmp_path / "p.tar.gz", signing_key=key, name="a b")
    with pytest.raises(CompileError, match="Could not find the model"):
        compile_model(tmp_path / "missing.tar.gz", tmp_path / "p.tar.gz", signing_key=key)
    assert not (tmp_path / "p.tar.gz").exists()


def test_names_and_shapes() -> None:
    assert default_name("s3://bucket/models/churn.tar.gz") == "churn"
    assert default_name("/x/mlp.pkl") == "mlp-model"
    assert default_name("xgboost-model") == "xgboost-model"
    assert record_shape_from('{"input": [1, 3, 32, 32]}') == [3, 32, 32]
    assert record_shape_from("[1, 20]") == [20]
    with pytest.raises(CompileError):
        record_shape_from('{"a": [1, 2], "b": [1, 3]}')


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOORAGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "moorage", "edge", *args], capture_output=True, text=True,
                          env=env, timeout=240, check=False)


def test_the_cli_compiles_with_the_homes_key_and_prints_it(tmp_path: Path) -> None:
    import joblib
    from sklearn.neural_network import MLPClassifier

    x, y = _data(seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joblib.dump(MLPClassifier((64, 64), max_iter=50, random_state=0).fit(x, y), tmp_path / "model.joblib")
    home = tmp_path / "home"
    done = _cli("compile", str(tmp_path / "model.joblib"), "--validate", str(_csv(tmp_path / "v.csv", x, y)),
                "--label-column", "-1", "--name", "churn-model", "--version", "7", "-o", str(tmp_path / "p.tar.gz"),
                home=home)
    assert done.returncode == 0, done.stderr
    assert "churn-model version 7" in done.stdout and "a drop of 0.0000" in done.stdout
    key_file = home / "edge" / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    printed = _cli("key", home=home)
    assert printed.returncode == 0 and printed.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert P.verify(tmp_path / "p.tar.gz", [printed.stdout.encode()]).model_handle == "churn-model-7"
    # int8 moves the probabilities: compared as values, any error is over a tolerance of 0
    refused = _cli("compile", str(tmp_path / "model.joblib"), "--validate", str(tmp_path / "v.csv"),
                   "--label-column", "-1", "--quantize", "int8", "--tolerance", "0", "--task", "regression",
                   "-o", str(tmp_path / "q.tar.gz"), home=home)
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "No package was written" in refused.stderr
    assert not (tmp_path / "q.tar.gz").exists()
