"""The PyTorch runtime: unit tests through InferenceHandler, then end to end through boto3."""

from __future__ import annotations

import io
import json
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from e2e_support import Deployer, file_url, invoke, pack_model
from moorage.runtimes import codecs
from moorage.runtimes.frameworks import ModelLoadError, load_framework
from moorage.runtimes.frameworks.base import cpu_threads as _cpu_threads
from moorage.runtimes.frameworks.pytorch import PyTorchFramework
from moorage.runtimes.handler import HandlerError, InferenceHandler

PYTORCH_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.1.0-cpu-py310"
CONTENT_TYPES = [codecs.CSV, codecs.JSON, codecs.JSONLINES, codecs.NPY]

# The SageMaker pattern: the model class lives in inference.py and model_fn loads a state_dict into it.
# Dropout checks that the runtime puts a model returned in training mode into eval mode.
STATE_DICT_INFERENCE = """
import os

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.hidden(x))))


def model_fn(model_dir):
    model = Net()
    with open(os.path.join(model_dir, "model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f, map_location="cpu"))
    return model
"""


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still what SageMaker loads
        return torch.jit.script(module)


def _save_script(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(_script(module), buffer)
    return buffer.getvalue()


def _torch_save(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Linear(4, 2)
        self.b = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


class _Tokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.emb = torch.nn.Embedding(10, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).mean(1)


@pytest.fixture(autouse=True)
def _forget_inference_module() -> Iterator[None]:
    # Each test writes its own inference.py: do not let one test's module be found by the next.
    yield
    sys.modules.pop("inference", None)


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    return _mlp()


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(5, 4))


def _expected(model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(rows).float()).numpy()


def _model_dir(tmp_path: Path, files: dict[str, bytes], inference_py: str | None = None) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    for name, content in files.items():
        (model_dir / name).write_bytes(content)
    if inference_py is not None:
        (model_dir / "code").mkdir(exist_ok=True)
        (model_dir / "code" / "inference.py").write_text(textwrap.dedent(inference_py))
    return model_dir


def _handler(model_dir: Path, env: dict[str, str] | None = None) -> InferenceHandler:
    handler = InferenceHandler.from_model_dir(model_dir, load_framework("pytorch"), env or {})
    handler.load()
    return handler


def _body(rows: np.ndarray, content_type: str) -> bytes:
    if content_type == codecs.CSV:
        return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()
    if content_type == codecs.JSON:
        return json.dumps(rows.tolist()).encode()
    if content_type == codecs.JSONLINES:
        return b"".join(json.dumps(row).encode() + b"\n" for row in rows.tolist())
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def _read(body: bytes, content_type: str) -> np.ndarray:
    if content_type == codecs.CSV:
        return np.loadtxt(io.StringIO(body.decode()), delimiter=",", ndmin=2)
    if content_type == codecs.JSON:
        return np.asarray(json.loads(body))
    if content_type == codecs.JSONLINES:
        return np.asarray([json.loads(line) for line in body.splitlines()])
    return np.load(io.BytesIO(body))


# ------------------------------------------------------------------------------------------ model loading


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "classifier.pt"])
def test_torchscript_default_model_fn(tmp_path: Path, mlp: torch.nn.Module, rows: np.ndarray, name: str) -> None:
    handler = _handler(_model_dir(tmp_path, {name: _save_script(mlp)}))
    assert handler.batchable
    prediction = handler.predict(rows)
    assert prediction.dtype == np.float32
    np.testing.assert_array_equal(prediction, _expected(mlp, rows))


def test_model_pt_preferred_over_other_files(tmp_path: Path, mlp: torch.nn.Module) -> None:
    model_dir = _model_dir(tmp_path, {"model.pt": _save_script(mlp), "extra.pth": b"x", "notes.pt": b"y"})
    assert PyTorchFramework().find_model_file(model_dir).name == "model.pt"


@pytest.mark.parametrize(("files", "message"), [
    ({"README.md": b"hi"}, r"no model file.*README\.md.*model_fn"),
    ({"a.pt": b"x", "b.pth": b"y"}, r"several model files.*a\.pt.*b\.pth"),
])  # fmt: skip
def test_model_file_errors(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        _handler(_model_dir(tmp_path, files))


@pytest.mark.parametrize(("saved", "what"), [
    ("state_dict", r"state_dict saved with torch\.save\(model\.state_dict\(\)\)"),
    ("module", r"pickled object, such as a whole nn\.Module"),
    ("garbage", r"not a zip archive"),
])  # fmt: skip
def test_plain_checkpoint_needs_model_fn(tmp_path: Path, mlp: torch.nn.Module, saved: str, what: str) -> None:
    content = {
        "state_dict": lambda: _torch_save(mlp.state_dict()),
        "module": lambda: _torch_save(mlp),
        "garbage": lambda: b"not a model",
    }[saved]()
    with pytest.raises(ModelLoadError) as info:
        _handler(_model_dir(tmp_path, {"model.pth": content}))
    message = str(info.value)
    assert message.startswith("model.pth is not a TorchScript model"), message
    assert "define model_fn(model_dir) in code/inference.py" in message
    assert re.search(what, message), message


def test_state_dict_with_user_model_fn(tmp_path: Path, rows: np.ndarray) -> None:
    namespace: dict[str, Any] = {}
    exec(STATE_DICT_INFERENCE, namespace)  # the same class the instance will import from inference.py
    torch.manual_seed(4)
    reference = namespace["Net"]().eval()
    model_dir = _model_dir(tmp_path, {"model.pth": _torch_save(reference.state_dict())}, STATE_DICT_INFERENCE)
    handler = _handler(model_dir)
    body, _ = handler.invoke(_body(rows, codecs.CSV), codecs.CSV, codecs.JSON)
    np.testing.assert_array_equal(np.float32(json.loads(body)), _expected(reference, rows))
    assert not handler.model.training  # model_fn returned it in training mode: dropout must be off


def test_torch_export_program(tmp_path: Path, mlp: torch.nn.Module, rows: np.ndarray) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(mlp, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    handler = _handler(tmp_path)
    np.testing.assert_allclose(handler.predict(rows), _expected(mlp, rows), rtol=1e-6)


# ---------------------------------------------------------------------------------------------- requests


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory, mlp: torch.nn.Module) -> Path:
    return _model_dir(tmp_path_factory.mktemp("mlp"), {"model.pt": _save_script(mlp)})


@pytest.mark.parametrize("accept", CONTENT_TYPES)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_every_content_type(
    mlp_dir: Path, mlp: torch.nn.Module, rows: np.ndarray, content_type: str, accept: str
) -> None:
    body, out_type = _handler(mlp_dir).invoke(_body(rows, content_type), content_type, accept)
    assert out_type == accept
    # float32 written as JSON/CSV text reads back to the same float32 values: compare exactly.
    np.testing.assert_array_equal(np.float32(_read(body, accept)), _expected(mlp, rows))


def test_float32_npy_and_single_row(mlp_dir: Path, mlp: torch.nn.Module, rows: np.ndarray) -> None:
    handler = _handler(mlp_dir)
    body, _ = handler.invoke(_body(rows.astype(np.float32), codecs.NPY), codecs.NPY, codecs.NPY)
    np.testing.assert_array_equal(_read(body, codecs.NPY), _expected(mlp, rows))
    body, _ = handler.invoke(b"0.5,-1,2,0", codecs.CSV, codecs.JSON)
    np.testing.assert_array_equal(np.float32(json.loads(body)), _expected(mlp, np.array([[0.5, -1, 2, 0]])))


def test_batching_equals_one_by_one(mlp_dir: Path, mlp: torch.nn.Module) -> None:
    handler = _handler(mlp_dir)
    rng = np.random.default_rng(5)
    parts = [rng.normal(size=(n, 4)) for n in (1, 3, 2, 1)]
    inputs = [
        handler.decode(_body(parts[0], codecs.CSV), codecs.CSV),
        handler.decode(_body(parts[1], codecs.JSON), codecs.JSON),
        handler.decode(_body(parts[2].astype(np.float32), codecs.NPY), codecs.NPY),
        handler.decode(_body(parts[3], codecs.JSONLINES), codecs.JSONLINES),
    ]
    calls: list[int] = []
    predict = handler.framework.predict

    def counting(model: Any, data: Any) -> Any:
        calls.append(len(data))
        return predict(model, data)

    handler.framework.predict = counting  # type: ignore[method-assign]
    batched = handler.predict_many(inputs)
    assert calls == [7], "the four requests should share one forward pass"
    # A different batch size may pick a different matmul kernel: equal to float32 rounding, not bit for bit.
    for part, got in zip(parts, batched, strict=True):
        np.testing.assert_allclose(got, _expected(mlp, part), rtol=1e-6, atol=1e-7)
        alone = handler.predict(handler.decode(_body(part, codecs.NPY), codecs.NPY))
        np.testing.assert_allclose(got, alone, rtol=1e-6, atol=1e-7)


def test_token_ids_keep_integer_dtype(tmp_path: Path) -> None:
    model = _Tokens().eval()
    handler = _handler(_model_dir(tmp_path, {"model.pt": _save_script(model)}))
    ids = [[1, 2, 3], [4, 5, 9]]
    body, _ = handler.invoke(json.dumps(ids).encode(), codecs.JSON, codecs.JSON)
    with torch.no_grad():
        expected = model(torch.tensor(ids)).numpy()
    np.testing.assert_array_equal(np.float32(json.loads(body)), expected)
    # keyword inputs, as transformer models take them
    body, _ = handler.invoke(json.dumps({"ids": ids}).encode(), codecs.JSON, codecs.JSON)
    np.testing.assert_array_equal(np.float32(json.loads(body)), expected)


def test_several_outputs(tmp_path: Path, rows: np.ndarray) -> None:
    model = _TwoHeads().eval()
    handler = _handler(_model_dir(tmp_path, {"model.pt": _save_script(model)}))
    with torch.no_grad():
        a, b = (t.numpy() for t in model(torch.from_numpy(rows).float()))
    body, _ = handler.invoke(_body(rows, codecs.CSV), codecs.CSV, codecs.JSON)
    got_a, got_b = json.loads(body)
    np.testing.assert_array_equal(np.float32(got_a), a)
    np.testing.assert_array_equal(np.float32(got_b), b)
    body, _ = handler.invoke(_body(rows, codecs.CSV), codecs.CSV, codecs.JSONLINES)
    lines = [json.loads(line) for line in body.splitlines()]
    assert len(lines) == len(rows)
    np.testing.assert_array_equal(np.float32([line[1] for line in lines]), b)
    with pytest.raises(HandlerError, match=r"several outputs.*application/json") as info:
        handler.invoke(_body(rows, codecs.CSV), codecs.CSV, codecs.CSV)
    assert info.value.status == 406
    # A tuple prediction cannot be split by rows: batching falls back to one call per request, still right.
    results = handler.predict_many([rows[:2], rows[2:]])
    np.testing.assert_allclose(results[1][1], b[2:], rtol=1e-6, atol=1e-7)


def test_text_input_is_a_client_error(mlp_dir: Path) -> None:
    with pytest.raises(HandlerError, match=r"takes numbers.*input_fn") as info:
        _handler(mlp_dir).invoke(b"a,b,c,d", codecs.CSV, codecs.JSON)
    assert info.value.status == 400


def test_user_predict_input_is_a_tensor_like_the_container() -> None:
    framework = PyTorchFramework()
    as_csv = framework.user_predict_input(np.array([[1.0, 2.0]]), codecs.CSV)
    assert isinstance(as_csv, torch.Tensor) and as_csv.dtype == torch.float32
    as_npy = framework.user_predict_input(np.array([[1, 2]]), codecs.NPY)
    assert as_npy.dtype == torch.int64
    assert framework.user_predict_input({"k": 1}, codecs.JSON) == {"k": 1}


def test_cpu_threads_from_env() -> None:
    assert _cpu_threads({"MOORAGE_CPU_THREADS": "3"}) == 3
    assert _cpu_threads({}) >= 1
    assert _cpu_threads({"MOORAGE_CPU_THREADS": "lots"}) == _cpu_threads({})


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_e2e_pytorch_image(
    deployer: Deployer, rt: Any, artifacts: Path, mlp: torch.nn.Module, rows: np.ndarray
) -> None:
    scripted = pack_model(artifacts / "pytorch-script", None, extra_files={"model.pt": _save_script(mlp)})
    torch.manual_seed(6)
    namespace: dict[str, Any] = {}
    exec(STATE_DICT_INFERENCE, namespace)
    net = namespace["Net"]().eval()
    state_dict = pack_model(
        artifacts / "pytorch-state-dict", None, inference_py=STATE_DICT_INFERENCE,
        extra_files={"model.pth": _torch_save(net.state_dict())},
    )  # fmt: skip
    endpoints = [
        (deployer.deploy("pt", file_url(scripted), image=PYTORCH_IMAGE, wait=False), mlp),
        (deployer.deploy("pt-sd", file_url(state_dict), image="pytorch", wait=False), net),
    ]
    for name, model in endpoints:
        deployer.wait_in_service(name)
        expected = _expected(model, rows)
        resp = invoke(rt, name, _body(rows, codecs.CSV), codecs.CSV, Accept=codecs.JSON)
        assert resp["ContentType"] == codecs.JSON
        np.testing.assert_array_equal(np.float32(json.loads(resp["Body"])), expected)
        resp = invoke(rt, name, _body(rows, codecs.JSON), codecs.JSON, Accept=codecs.CSV)
        assert resp["ContentType"] == codecs.CSV
        np.testing.assert_array_equal(np.float32(_read(resp["Body"], codecs.CSV)), expected)
