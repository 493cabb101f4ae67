"""Server (a): the floor. A raw ASGI app, no framework, one process, uvicorn + uvloop + httptools.

``POST /invocations`` with ``{"instances": [record]}`` parses the JSON, calls the model's
``predict`` directly and answers ``{"predictions": [...]}``; ``GET /ping`` answers 200. Anything a
real server does beyond this (routing, auth, validation, process hops) shows up as the difference
to this one.

    python bench/baseline_app.py --runtime sklearn --model path/model.joblib --port 8080
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson


def load_predict(runtime: str, path: str) -> Callable[[Any], list]:
    """Return ``predict(instances) -> list`` for the artifact at ``path``."""
    if runtime == "sklearn":
        import joblib

        model = joblib.load(path)

        def predict(instances):
            return model.predict(np.asarray(instances)).tolist()

        return predict
    if runtime == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def predict(instances):
            return session.run(None, {input_name: np.asarray(instances, dtype=np.float32)})[0].tolist()

        return predict
    raise SystemExit(f"unknown runtime {runtime!r}")


def make_app(predict: Callable[[Any], list]):
    json_headers = [(b"content-type", b"application/json")]

    async def reply(send, status: int, body: bytes, headers=json_headers) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/ping" and method == "GET":
            await reply(send, 200, b"{}")
            return
        if path != "/invocations" or method != "POST":
            await reply(send, 404, b'{"error":"not found"}')
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            instances = orjson.loads(b"".join(chunks))["instances"]
            body = orjson.dumps({"predictions": predict(instances)})
        except Exception as exc:
            await reply(send, 400, orjson.dumps({"error": repr(exc)}))
            return
        await reply(send, 200, body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="sklearn", choices=["sklearn", "onnx"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    import uvicorn

    app = make_app(load_predict(args.runtime, args.model))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
