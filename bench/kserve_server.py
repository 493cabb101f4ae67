"""Server (c): KServe's Python model server with ``kserve.Model`` subclasses (v1 ``:predict``).

Runs inside ``bench/.envs/kserve``. The sklearn class is what KServe's own sklearn server does:
``get_predict_input`` -> ``model.predict`` -> ``get_predict_response``; the ONNX one (KServe has no
ONNX runtime of its own in Python; it defers ONNX to Triton) does the same around an onnxruntime
session on one thread, input cast to float32, first output (the label) returned. gRPC, the
per-request latency log line and uvicorn's access log are off, as for every server in the bench.

    python bench/kserve_server.py --http_port 8080 --bench-model text=/path/model.joblib \
        --bench-model onnx=/path/model.onnx
"""

from __future__ import annotations

import argparse
import logging

import joblib
import kserve
import numpy as np
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self._model = None
        self.load()

    def load(self) -> bool:
        self._model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        instances = get_predict_input(payload)
        result = self._model.predict(instances)
        return get_predict_response(payload, result, self.name)


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.path = path
        self._session = None
        self.load()

    def load(self) -> bool:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [self._session.get_outputs()[0].name]
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        instances = np.asarray(get_predict_input(payload), dtype=np.float32)
        result = self._session.run(self._outputs, {self._input: instances})[0]
        return get_predict_response(payload, result, self.name)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--bench-model", action="append", default=[], help="NAME=PATH (repeatable)")
    args, _ = parser.parse_known_args()
    models = []
    for spec in args.bench_model:
        name, _, path = spec.partition("=")
        cls = OnnxModel if path.endswith(".onnx") else SKLearnModel
        models.append(cls(name, path))
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    # kserve configures logging in ModelServer(); quiet the per-request access log afterwards
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server.start(models)


if __name__ == "__main__":
    main()
