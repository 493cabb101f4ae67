"""The instance's batcher: fast models run inline on the loop, slow ones in the worker thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from moorage.runtimes.frameworks import load_framework
from moorage.runtimes.handler import InferenceHandler
from moorage.runtimes.server import Batcher, InstanceApp

SLOW_PREDICT = """
import threading

release = threading.Event()

def predict_fn(data, model):
    release.wait(30)  # the test lets it finish only after /ping answered while it was running
    return model.predict(data)
"""


def _handler(tmp_path: Path, inference_py: str | None = None) -> tuple[InferenceHandler, LogisticRegression]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 4))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    joblib.dump(model, tmp_path / "model.joblib")
    env: dict[str, str] = {}
    if inference_py:
        (tmp_path / "code").mkdir()
        (tmp_path / "code" / "inference.py").write_text(inference_py)
        env["SAGEMAKER_PROGRAM"] = "inference.py"
    handler = InferenceHandler.from_model_dir(tmp_path, load_framework("sklearn"), env)
    handler.load()
    return handler, model


async def _invoke_many(batcher: Batcher, rows: np.ndarray) -> list[tuple[int, bytes, str]]:
    futures = [batcher.submit(",".join(map(str, row)).encode(), "text/csv", "text/csv") for row in rows]
    return list(await asyncio.wait_for(asyncio.gather(*futures), 30))


def test_fast_model_moves_inline_and_answers_correctly(tmp_path: Path) -> None:
    handler, model = _handler(tmp_path)
    batcher = Batcher(handler, max_batch_size=64, max_delay_s=0, inline_s=0.05)
    rows = np.random.default_rng(1).normal(size=(40, 4))

    async def scenario() -> list[tuple[int, bytes, str]]:
        results = []
        for chunk in np.array_split(rows, 8):
            results += await _invoke_many(batcher, chunk)
        return results

    results = asyncio.run(scenario())
    assert batcher.inline, "a model far under the threshold should run inline"
    expected = model.predict(rows)
    assert [int(body.decode().strip()) for _, body, _ in results] == expected.tolist()


def test_slow_model_stays_in_the_thread_and_ping_answers_meanwhile(tmp_path: Path) -> None:
    handler, model = _handler(tmp_path, SLOW_PREDICT)
    batcher = Batcher(handler, max_batch_size=64, max_delay_s=0, inline_s=0.002)
    app = InstanceApp(batcher, {})
    rows = np.random.default_rng(2).normal(size=(6, 4))

    async def ping() -> int:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b""}

        async def send(message: dict) -> None:
            sent.append(message)

        await app({"type": "http", "path": "/ping", "method": "GET", "headers": []}, receive, send)
        return sent[0]["status"]

    async def scenario() -> tuple[list[tuple[int, bytes, str]], list[int], bool]:
        work = asyncio.ensure_future(_invoke_many(batcher, rows))
        await asyncio.sleep(0.05)
        pings = [await ping() for _ in range(3)]
        still_predicting = not work.done()
        handler.user_module.release.set()  # type: ignore[union-attr]
        return await work, pings, still_predicting

    results, pings, still_predicting = asyncio.run(scenario())
    assert still_predicting and pings == [200, 200, 200], "the loop must answer /ping while the model runs"
    assert not batcher.inline
    assert [int(body.decode().strip()) for _, body, _ in results] == model.predict(rows).tolist()
