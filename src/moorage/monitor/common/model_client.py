"""Calling a model from a monitoring job: its own instance, over SageMaker's container contract.

Clarify explains a model through a shadow endpoint of it, so that explaining never loads the
endpoint callers use; moorage does the same: the scheduler starts an instance of the endpoint's
model for the execution and hands the job its address (a Unix socket, or a loopback port for a
server of the user's own). This is the job's side: rows in, one value per row out; the command line's and the SDK's
baselines use the same client through an endpoint.

Hand-written over ``http.client`` because the standard library has no Unix-socket connection and
the job needs nothing else (no pooling, no retries: a failing call fails the execution with the
model's own message). Rows go as CSV in batches; an answer in CSV or JSON lines gives one line a
row, anything else is asked for row by row.
"""

from __future__ import annotations

import http.client
import io
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from moorage.monitor.common.attributes import extract

BATCH_ROWS = 1000
TIMEOUT_S = 120.0


class ModelCallError(RuntimeError):
    """The model could not answer: its status and message, or why its answer cannot be read."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class ModelClient:
    """``predict(rows)``: one number a row (the attribute of the model's answer: a score or a label).

    ``post(body) -> (answer, content type)`` carries one CSV batch: to an instance started for the job
    (``for_instance``), or to an endpoint through the runtime API (``for_endpoint``: baselines made by
    the command line and the SDK)."""

    def __init__(self, post: Callable[[bytes], tuple[str, str]], attribute: str | None = None):
        self.post = post
        self.attribute = attribute
        self.calls = 0

    @classmethod
    def for_instance(cls, address: dict[str, Any], attribute: str | None = None,
                     timeout: float = TIMEOUT_S) -> ModelClient:
        return cls(lambda body: _post_instance(address, body, timeout), attribute)

    @classmethod
    def for_endpoint(cls, runtime: Any, endpoint: str, attribute: str | None = None) -> ModelClient:
        """Through a boto3 ``sagemaker-runtime`` client's InvokeEndpoint."""
        def post(body: bytes) -> tuple[str, str]:
            reply = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Accept="text/csv",
                                            Body=body)
            return reply["Body"].read().decode("utf-8", "replace"), reply.get("ContentType") or "text/csv"

        return cls(post, attribute)

    def _post(self, body: bytes) -> tuple[str, str]:
        self.calls += 1
        return self.post(body)

    def _value(self, text: str, content_type: str) -> float:
        try:
            return float(extract({"observedContentType": content_type, "data": text}, self.attribute))
        except (TypeError, ValueError) as exc:
            raise ModelCallError(f"the model's answer {text[:200]!r} has no number at {self.attribute!r}: {exc}") \
                from exc

    def predict(self, rows: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        matrix = np.asarray(rows, dtype=float)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        out: list[float] = []
        for start in range(0, len(matrix), BATCH_ROWS):
            batch = matrix[start:start + BATCH_ROWS]
            buffer = io.StringIO()
            np.savetxt(buffer, batch, delimiter=",", fmt="%.17g")
            text, content_type = self._post(buffer.getvalue().encode())
            lines = [line for line in text.splitlines() if line.strip()]
            if len(lines) == len(batch):
                out.extend(self._value(line, content_type) for line in lines)
                continue
            for row in batch:  # an answer that is not a line a row: one row at a time
                text, content_type = self._post((",".join(f"{v:.17g}" for v in row) + "\n").encode())
                out.append(self._value(text.strip(), content_type))
        return np.asarray(out, dtype=float)


def _post_instance(address: dict[str, Any], body: bytes, timeout: float) -> tuple[str, str]:
    """One CSV batch to an instance over the container contract (a Unix socket, or a loopback port)."""
    connection: http.client.HTTPConnection = (
        _UnixConnection(address["socket"], timeout) if address.get("socket")
        else http.client.HTTPConnection("127.0.0.1", int(address["port"]), timeout=timeout))
    try:
        connection.request("POST", "/invocations", body=body,
                           headers={"Content-Type": "text/csv", "Accept": "text/csv"})
        response = connection.getresponse()
        data = response.read().decode("utf-8", "replace")
        if response.status >= 300:
            raise ModelCallError(f"the model answered {response.status}: {data[:500]}")
        return data, response.getheader("Content-Type") or "text/csv"
    except OSError as exc:
        raise ModelCallError(f"the model could not be reached: {exc}") from exc
    finally:
        connection.close()
