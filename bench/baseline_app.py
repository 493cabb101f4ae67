"""Server (a): the floor. A raw ASGI app, no framework, one process, uvicorn + uvloop + httptools.

``POST /invocations`` with ``{"instances": [record]}`` parses the JSON, calls the model's
``predict`` directly and answers ``{"predictions": [...]}``; ``GET /ping`` answers 200. Anything a
real server does beyond this (routing, auth, validation, process hops) shows up as the difference
to this one.

With ``--input-fn path/inference.py`` (the large-payload models) the body is not JSON: it goes as is
to that file's ``input_fn(body, content_type)`` (the very function moorage's instance runs) and its
result to ``predict``.

    python bench/baseline_app.py --runtime sklearn --model path/model.joblib --port 8080
"""

from __future__ import annotations

import argparse
import os
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
        # the first output only (skl2onnx classifiers: the label), as the other servers answer
        outputs = [session.get_outputs()[0].name]
        # InferenceSession.run minus its Python-side feed checks (~1 us of a ~5 us call): the C++
        # session's run, as moorage's onnx runtime calls it; the feed is right by construction here
        inner = getattr(session, "_sess", None)
        run = inner.run if inner is not None else session.run
        float32 = np.float32

        def predict(instances):
            # orjson's list of floats straight to float32: ~1.5 us for a row of 20, the cheapest parse
            # measured (np.fromstring on the CSV body takes ~4.5 us)
            return run(outputs, {input_name: np.asarray(instances, dtype=float32)}, None)[0].tolist()

        return predict
    raise SystemExit(f"unknown runtime {runtime!r}")


def load_input_fn(path: str) -> Callable[[bytes, str], Any]:
    """``input_fn`` from a SageMaker-style inference.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.input_fn


def make_app(predict: Callable[[Any], list], input_fn: Callable[[bytes, str], Any] | None = None):
    def start(status: int, body: bytes) -> dict:
        # with a content-length uvicorn writes the body as is, not chunked (one less write per reply)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        return {"type": "http.response.start", "status": status, "headers": headers}

    async def reply(send, status: int, body: bytes) -> None:
        await send(start(status, body))
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
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            while message.get("more_body", False):
                message = await receive()
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)
        try:
            if input_fn is not None:
                content_type = next((v.decode() for k, v in scope["headers"] if k == b"content-type"), "")
                out = orjson.dumps({"predictions": predict(input_fn(body, content_type))})
            else:
                out = orjson.dumps({"predictions": predict(orjson.loads(body)["instances"])})
        except Exception as exc:
            await reply(send, 400, orjson.dumps({"error": repr(exc)}))
            return
        await reply(send, 200, out)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="sklearn", choices=["sklearn", "onnx"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input-fn", default=None, help="inference.py whose input_fn decodes the raw body")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes accepting on the port (forked after the model is loaded)")
    args = parser.parse_args()

    import socket

    import uvicorn

    input_fn = load_input_fn(args.input_fn) if args.input_fn else None
    app = make_app(load_predict(args.runtime, args.model), input_fn)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            break  # a child serves the same socket; the parent forks the rest and serves too
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
        # as moorage's instance server runs: no proxy-header middleware on every request, no
        # Server/Date headers to add to every response
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
