"""Server (d)'s ONNX model: a custom MLServer ``MLModel`` running an onnxruntime session.

MLServer 1.7 ships no ONNX runtime, so the bench copies this file next to the model's
``model-settings.json`` (``"implementation": "mlserver_onnx_runtime.OnnxModel"``; MLServer imports
it from the model's folder, in its inference worker too). It does what ``mlserver_sklearn`` does
around ``predict``: decode the first input tensor with ``NumpyCodec``, cast it to float32, run the
session on one thread, and answer the graph's first output (the label) as one tensor.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings, wellknown_filenames=["model.onnx"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(uri, opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [self._session.get_outputs()[0].name]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        label = self._session.run(self._outputs, {self._input: data})[0]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name=self._outputs[0], payload=label)],
        )
