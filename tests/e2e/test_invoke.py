"""InvokeEndpoint (boto3 `sagemaker-runtime`): content types, Accept, variants, handlers, artifacts."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    SM_SKLEARN_IMAGE,
    Deployer,
    assert_predictions,
    csv_body,
    decode_predictions,
    err_code,
    err_field,
    err_status,
    file_url,
    invoke,
    json_body,
    jsonlines_body,
    model_dir,
    new_name,
    npy_body,
    pack_code,
    pack_model,
    predict,
    variant,
)

pytestmark = pytest.mark.e2e

TEXT_INFERENCE = """
import json


def input_fn(request_body, content_type):
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    if content_type == "application/json":
        return json.loads(request_body)["texts"]
    if content_type == "text/plain":
        return [line for line in request_body.splitlines() if line.strip()]
    raise ValueError("unsupported content type: " + content_type)


def predict_fn(data, model):
    return {"labels": model.predict(data).tolist(), "proba": model.predict_proba(data).tolist()}


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""

HANDLER_INFERENCE = """
import os

import joblib


def model_fn(model_dir):
    model = joblib.load(os.path.join(model_dir, "model.joblib"))
    with open(os.path.join(model_dir, "offset.txt")) as f:
        offset = float(f.read())
    return {"model": model, "offset": offset}


def predict_fn(data, model):
    return model["model"].predict(data) + model["offset"]
"""

TRANSFORM_INFERENCE = """
import json
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def transform_fn(model, request_body, content_type, accept):
    if isinstance(request_body, (bytes, bytearray)):
        request_body = request_body.decode("utf-8")
    data = np.asarray(json.loads(request_body), dtype=float)
    return json.dumps({"proba": model.predict_proba(data).tolist()}), "application/json"
"""

DIGEST_INFERENCE = """
import hashlib
import json


def transform_fn(model, request_body, content_type, accept):
    return json.dumps({"sha256": hashlib.sha256(request_body).hexdigest(), "length": len(request_body),
                       "type": type(request_body).__name__}), "application/json"
"""

OFFSET = 1000.5


class Fleet:
    """Endpoints created together (in parallel); each is waited for on first use, so one broken
    endpoint fails only the tests that use it."""

    def __init__(self, deployer: Deployer) -> None:
        self.deployer = deployer
        self.names: dict[str, str] = {}
        self._ready: set[str] = set()

    def create(self, key: str, variants: list[dict[str, Any]]) -> None:
        name = new_name(f"inv-{key}")
        self.deployer.config(name, variants)
        self.deployer.endpoint(name, name)
        self.names[key] = name

    def __getitem__(self, key: str) -> str:
        name = self.names[key]
        if key not in self._ready:
            self.deployer.wait_in_service(name)
            self._ready.add(key)
        return name


@pytest.fixture(scope="module")
def fleet(module_deployer: Deployer, artifacts: Path, classifier: Any, regressor: Any, text_model: Any) -> Fleet:
    d, root = module_deployer, artifacts / "invoke"
    clf, reg = classifier[0], regressor[0]
    f = Fleet(d)

    clf_tar = pack_model(root / "clf", clf)
    reg_tar = pack_model(root / "reg", reg)
    m_clf = d.model(new_name("inv-clf"), file_url(clf_tar))  # file:// URL
    m_reg = d.model(new_name("inv-reg"), str(reg_tar), image=SM_SKLEARN_IMAGE)  # plain path, SM image
    f.create("clf", [variant("AllTraffic", m_clf)])
    f.create("reg", [variant("AllTraffic", m_reg)])
    f.create("targeted", [variant("clf", m_clf, weight=1.0), variant("reg", m_reg, weight=1.0)])

    text_tar = pack_model(root / "text", text_model, inference_py=TEXT_INFERENCE)
    m_text = d.model(
        new_name("inv-text"),
        file_url(text_tar),
        image=SM_SKLEARN_IMAGE,
        env={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"},
    )
    f.create("text", [variant("AllTraffic", m_text)])

    handler_tar = pack_model(
        root / "handler", reg, inference_py=HANDLER_INFERENCE, extra_files={"offset.txt": str(OFFSET)}
    )
    m_handler = d.model(new_name("inv-handler"), file_url(handler_tar), env={"SAGEMAKER_PROGRAM": "inference.py"})
    f.create("handler", [variant("AllTraffic", m_handler)])

    srcdir_model = pack_model(root / "srcdir-model", clf)  # no code/ in the archive
    code_tar = pack_code(root / "srcdir-code", TRANSFORM_INFERENCE)
    m_srcdir = d.model(
        new_name("inv-srcdir"),
        file_url(srcdir_model),
        image=SM_SKLEARN_IMAGE,
        env={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": file_url(code_tar)},
    )
    f.create("srcdir", [variant("AllTraffic", m_srcdir)])

    pkl_dir = model_dir(root / "pkl-dir", reg, filename="model.pkl")
    m_pkl = d.model(new_name("inv-pkl"), str(pkl_dir))  # a directory
    f.create("pkl", [variant("AllTraffic", m_pkl)])

    digest_tar = pack_model(root / "digest", clf, inference_py=DIGEST_INFERENCE)
    m_digest = d.model(new_name("inv-digest"), file_url(digest_tar), env={"SAGEMAKER_PROGRAM": "inference.py"})
    f.create("digest", [variant("AllTraffic", m_digest)])

    skops_tar = pack_model(root / "skops", clf, filename="model.skops")
    m_skops = d.model(new_name("inv-skops"), file_url(skops_tar))
    f.create("skops", [variant("AllTraffic", m_skops)])
    return f


# --------------------------------------------------------------------------------------------------
# default content handling
# --------------------------------------------------------------------------------------------------
def test_csv_single_row(rt: Any, fleet: Fleet, classifier: Any) -> None:
    model, X = classifier
    body = ",".join(repr(float(v)) for v in X[3]).encode()  # one line, no trailing newline
    resp = invoke(rt, fleet["clf"], body, "text/csv")
    assert resp["ContentType"].startswith("application/json")  # the default Accept
    assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(X[3:4]))


def test_csv_many_rows(rt: Any, fleet: Fleet, classifier: Any) -> None:
    model, X = classifier
    resp = invoke(rt, fleet["clf"], csv_body(X[:50]) + b"\n", "text/csv", Accept="application/json")
    assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(X[:50]))


BODIES = {
    "text/csv": csv_body,
    "application/json": json_body,
    "application/json+instances": lambda X: json_body(X, instances=True),
    "application/jsonlines": jsonlines_body,
    "application/x-npy": npy_body,
}


@pytest.mark.parametrize("kind", list(BODIES))
def test_request_content_types(rt: Any, fleet: Fleet, regressor: Any, kind: str) -> None:
    model, X = regressor
    rows = X[10:30]
    content_type = kind.split("+")[0]
    resp = invoke(rt, fleet["reg"], BODIES[kind](rows), content_type, Accept="application/json")
    assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(rows))


@pytest.mark.parametrize("accept", ["application/json", "text/csv", "application/jsonlines", "application/x-npy"])
def test_accept_is_honoured(rt: Any, fleet: Fleet, regressor: Any, accept: str) -> None:
    model, X = regressor
    rows = X[:15]
    resp = invoke(rt, fleet["reg"], csv_body(rows), "text/csv", Accept=accept)
    assert resp["ContentType"].split(";")[0].strip() == accept
    assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(rows))


def test_unsupported_content_type_is_model_error_415(rt: Any, fleet: Fleet, classifier: Any) -> None:
    _, X = classifier
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, fleet["clf"], csv_body(X[:2]), "application/x-moorage-unknown")
    exc = exc_info.value
    assert err_code(exc) == "ModelError", exc.response
    assert err_status(exc) == 424
    assert int(err_field(exc, "OriginalStatusCode")) == 415, exc.response


def test_large_batch(rt: Any, fleet: Fleet, regressor: Any) -> None:
    model = regressor[0]
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(5000, 4))
    resp = invoke(rt, fleet["reg"], csv_body(rows), "text/csv", Accept="application/json")
    assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(rows))


@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024, 1024 * 1024 + 7, 6 * 1024 * 1024],
                         ids=["under-64k", "64k", "1m", "6mb"])
def test_large_bodies_arrive_whole(server: Any, fleet: Fleet, size: int) -> None:
    """Bodies from 64 KiB up are received into one buffer by the HTTP edge (http_limits.py) and framed to
    the instance: every byte arrives, in order, as the bytes a handler expects, up to InvokeEndpoint's
    6 MB; several at once do not mix."""
    import hashlib

    rt = server.rt(read_timeout=60)
    name = fleet["digest"]
    bodies = [np.random.default_rng(size + i).integers(0, 256, size, dtype=np.uint8).tobytes() for i in range(3)]

    def one(body: bytes) -> dict[str, Any]:
        resp = rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="application/octet-stream")
        return json.loads(resp["Body"].read())

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(one, bodies))
    for body, answer in zip(bodies, answers, strict=True):
        assert answer == {"sha256": hashlib.sha256(body).hexdigest(), "length": size, "type": "bytes"}


def test_concurrent_requests(server: Any, fleet: Fleet, classifier: Any) -> None:
    model, X = classifier
    rt = server.rt(read_timeout=30)
    name = fleet["clf"]

    def one(i: int) -> None:
        rows = X[i % 250 : i % 250 + 5]
        assert_predictions(predict(rt, name, rows), model.predict(rows))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))


# --------------------------------------------------------------------------------------------------
# variants and runtime headers
# --------------------------------------------------------------------------------------------------
def test_invoked_production_variant(rt: Any, fleet: Fleet, classifier: Any) -> None:
    _, X = classifier
    resp = invoke(rt, fleet["clf"], csv_body(X[:1]))
    assert resp["InvokedProductionVariant"] == "AllTraffic"


@pytest.mark.parametrize("target", ["clf", "reg"])
def test_target_variant(rt: Any, fleet: Fleet, classifier: Any, regressor: Any, target: str) -> None:
    model = classifier[0] if target == "clf" else regressor[0]
    X = regressor[1]
    for i in range(15):
        rows = X[i : i + 2]
        resp = invoke(rt, fleet["targeted"], csv_body(rows), TargetVariant=target, Accept="application/json")
        assert resp["InvokedProductionVariant"] == target
        assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(rows))


def test_without_target_both_variants_serve(rt: Any, fleet: Fleet, regressor: Any) -> None:
    X = regressor[1]
    seen = {invoke(rt, fleet["targeted"], csv_body(X[:1]))["InvokedProductionVariant"] for _ in range(60)}
    assert seen == {"clf", "reg"}  # equal weights: P(one variant only in 60) = 2**-59


def test_unknown_target_variant(rt: Any, fleet: Fleet, regressor: Any) -> None:
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, fleet["targeted"], csv_body(regressor[1][:1]), TargetVariant="NoSuchVariant")
    assert err_code(exc_info.value) == "ValidationError", exc_info.value.response
    assert err_status(exc_info.value) == 400


def test_custom_attributes_and_inference_id(rt: Any, fleet: Fleet, classifier: Any) -> None:
    model, X = classifier
    resp = invoke(
        rt, fleet["clf"], csv_body(X[:3]),
        CustomAttributes="trace-id=abc-123;c000b4f9",
        InferenceId="moorage-e2e-inference-0001",
        Accept="application/json",
    )  # fmt: skip
    assert_predictions(decode_predictions(resp["Body"], resp["ContentType"]), model.predict(X[:3]))
    # the default model sets no custom attributes: nothing (or an empty value) comes back
    assert not resp.get("CustomAttributes"), resp.get("CustomAttributes")


# --------------------------------------------------------------------------------------------------
# inference.py handlers and artifact layouts
# --------------------------------------------------------------------------------------------------
def test_text_pipeline_with_input_predict_output_fn(rt: Any, fleet: Fleet, text_model: Any) -> None:
    texts = ["love it, great quality", "broke quickly, awful", "fast delivery and works"]
    resp = invoke(rt, fleet["text"], json.dumps({"texts": texts}).encode(), "application/json",
                  Accept="application/json")  # fmt: skip
    assert resp["ContentType"].startswith("application/json")
    doc = json.loads(resp["Body"])
    assert doc["labels"] == text_model.predict(texts).tolist()
    np.testing.assert_allclose(np.asarray(doc["proba"]), text_model.predict_proba(texts), rtol=1e-9, atol=0)

    resp = invoke(rt, fleet["text"], "\n".join(texts).encode(), "text/plain", Accept="application/json")
    assert json.loads(resp["Body"])["labels"] == text_model.predict(texts).tolist()


def test_handler_model_fn_and_predict_fn(rt: Any, fleet: Fleet, regressor: Any) -> None:
    model, X = regressor
    assert_predictions(predict(rt, fleet["handler"], X[:25]), model.predict(X[:25]) + OFFSET)


def test_submit_directory_tarball_with_transform_fn(rt: Any, fleet: Fleet, classifier: Any) -> None:
    model, X = classifier
    resp = invoke(rt, fleet["srcdir"], json_body(X[:12]), "application/json", Accept="application/json")
    doc = json.loads(resp["Body"])
    np.testing.assert_allclose(np.asarray(doc["proba"]), model.predict_proba(X[:12]), rtol=1e-9, atol=0)


def test_pickle_model_from_directory(rt: Any, fleet: Fleet, regressor: Any) -> None:
    model, X = regressor
    assert_predictions(predict(rt, fleet["pkl"], X[:9]), model.predict(X[:9]))


def test_skops_model(rt: Any, fleet: Fleet, classifier: Any) -> None:
    model, X = classifier
    assert_predictions(predict(rt, fleet["skops"], X[:9]), model.predict(X[:9]))


def _signed_invoke(server: Any, name: str, body: bytes, extra: dict[str, str], version: str = "1.1") -> bytes:
    """One InvokeEndpoint request as raw bytes, signed as boto3 signs it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://127.0.0.1:{server.port}/endpoints/{name}/invocations"
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "text/csv", **extra})
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), "sagemaker", "us-east-1").add_auth(request)
    lines = [f"POST /endpoints/{name}/invocations HTTP/{version}", f"Host: 127.0.0.1:{server.port}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in request.headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: Any) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole body"
        body += chunk
    return head, body


class _Replies:
    """Responses read off one connection in order, keeping what one recv brought of the next."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.data = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"closed with {self.data[:200]!r} unanswered"
        self.data += chunk

    def next(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            self.data = rest
            return head, self._chunked()
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            self._more()
            rest = self.data.partition(b"\r\n\r\n")[2]
        self.data = rest[length:]
        return head, rest[:length]

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.data:
                self._more()
            size_line, _, rest = self.data.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                self._more()
                rest = self.data.partition(b"\r\n")[2]
            body += rest[:size]
            self.data = rest[size + 2:]
            if size == 0:
                return body


def test_large_bodies_in_pieces_and_pipelined_keep_the_connection_in_step(server: Any, fleet: Fleet,
                                                                          classifier: Any) -> None:
    """What the header block's read left of a large body is read straight into its buffer (http_limits'
    _DirectReceiver), and the connection's parsing picks up exactly where that body ends: a body sent in
    pieces, then a large and a small request pipelined behind it in one write, are each answered whole
    and in order on the same connection."""
    import hashlib
    import socket

    model, X = classifier
    octets = {"Content-Type": "application/octet-stream"}
    big = np.random.default_rng(1).integers(0, 256, 1024 * 1024 + 3, dtype=np.uint8).tobytes()
    middle = np.random.default_rng(2).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    small = csv_body(X[:2])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        replies = _Replies(sock)
        first = _signed_invoke(server, fleet["digest"], big, octets)
        cut = first.index(b"\r\n\r\n") + 4 + 1000  # the header block and the body's first bytes together
        for start, end in ((0, cut), (cut, cut + 300_000), (cut + 300_000, len(first))):
            sock.sendall(first[start:end])
            time.sleep(0.05)  # separate reads, whatever the loop's timing
        sock.sendall(_signed_invoke(server, fleet["digest"], middle, octets)
                     + _signed_invoke(server, fleet["clf"], small, {}))
        for body in (big, middle):
            head, answer = replies.next()
            assert head.startswith(b"HTTP/1.1 200"), head
            assert json.loads(answer) == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body),
                                          "type": "bytes"}
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[:2]))


def test_invocation_responses_on_the_wire(server: Any, fleet: Fleet, classifier: Any) -> None:
    """A successful InvokeEndpoint is answered in one write with its Content-Length (not chunked), keeps a
    kept-alive connection open for the next request, and closes it when the client asked (Connection:
    close, or HTTP/1.0)."""
    import socket

    model, X = classifier
    name = fleet["clf"]
    body = csv_body(X[:3])
    expected = model.predict(X[:3])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for _ in range(2):  # the same connection, twice
            sock.sendall(_signed_invoke(server, name, body, {}))
            head, answer = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
            lowered = head.lower()
            assert b"transfer-encoding" not in lowered and b"connection: close" not in lowered
            assert b"x-amzn-invoked-production-variant: alltraffic" in lowered
            assert_predictions(decode_predictions(answer, "application/json"), expected)
    for extra, version in (({"Connection": "close"}, "1.1"), ({}, "1.0")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_signed_invoke(server, name, body, extra, version))
            head, answer = _read_response(sock)
            assert head.split(b" ", 2)[1] == b"200" and b"connection: close" in head.lower(), head
            assert_predictions(decode_predictions(answer, "application/json"), expected)
            assert sock.recv(1) == b"", "the connection stayed open"


def test_pipelined_and_100_continue_invocations(server: Any, fleet: Fleet, classifier: Any) -> None:
    """A second request pipelined behind the first on one connection is answered after it, in order (both
    in one write each); Expect: 100-continue gets its interim response before the body is sent."""
    import socket

    model, X = classifier
    name = fleet["clf"]
    first, second = csv_body(X[:2]), csv_body(X[5:9])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_signed_invoke(server, name, first, {}) + _signed_invoke(server, name, second, {}))
        replies = _Replies(sock)  # both may come in one read
        for rows in (X[:2], X[5:9]):
            head, answer = replies.next()
            assert head.startswith(b"HTTP/1.1 200"), head
            assert_predictions(decode_predictions(answer, "application/json"), model.predict(rows))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        request = _signed_invoke(server, name, first, {"Expect": "100-continue"})
        head_block, _, body = request.partition(b"\r\n\r\n")
        sock.sendall(head_block + b"\r\n\r\n")
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(1)
            assert chunk, "closed before the interim response"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[:2]))


def test_invocation_lane_beside_uvicorns_way_on_one_connection(server: Any, fleet: Fleet, classifier: Any) -> None:
    """InvokeEndpoint is read by the HTTP edge itself (http_limits' invocation lane); other requests, and
    invocations the lane leaves (a chunked body), go uvicorn's way. On one connection: a GET pipelined
    with two invocations is answered first; the second invocation's 100 Continue comes only after the
    first's answer (answers in order); a chunked invocation is answered on the same connection; and a
    client that goes before its answer leaves the server serving."""
    import socket

    model, X = classifier
    name = fleet["clf"]
    first, second, third = csv_body(X[:2]), csv_body(X[5:9]), csv_body(X[10:13])
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        replies = _Replies(sock)
        waiting = _signed_invoke(server, name, second, {"Expect": "100-continue"})
        waiting_head, _, waiting_body = waiting.partition(b"\r\n\r\n")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + _signed_invoke(server, name, first, {})
                     + waiting_head + b"\r\n\r\n")
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200") and json.loads(answer) == {"status": "ok"}, head
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[:2]))
        while b"\r\n\r\n" not in replies.data:
            replies._more()
        assert replies.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), replies.data[:100]
        replies.data = replies.data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        sock.sendall(waiting_body)
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[5:9]))
        # chunked: no Content-Length, so uvicorn's way, to the same door
        signed = _signed_invoke(server, name, third, {})
        head_block = b"\r\n".join(line for line in signed.partition(b"\r\n\r\n")[0].split(b"\r\n")
                                  if not line.lower().startswith(b"content-length:"))
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (third[:7], third[7:])) + b"0\r\n\r\n"
        sock.sendall(head_block + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[10:13]))
        # a GET pipelined behind an invocation: uvicorn's queue, started when the lane's answer is written
        sock.sendall(_signed_invoke(server, name, third, {}) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[10:13]))
        head, answer = replies.next()
        assert head.startswith(b"HTTP/1.1 200") and json.loads(answer) == {"status": "ok"}, head
    # a small body in many pieces (separate reads): joined whole, byte for byte
    import hashlib

    octets = {"Content-Type": "application/octet-stream"}
    pieces = np.random.default_rng(3).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    request = _signed_invoke(server, fleet["digest"], pieces, octets)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        start = request.index(b"\r\n\r\n") + 4
        sock.sendall(request[:start])
        for at in range(start, len(request), 1500):
            time.sleep(0.02)
            sock.sendall(request[at:at + 1500])
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(answer) == {"sha256": hashlib.sha256(pieces).hexdigest(), "length": len(pieces),
                                      "type": "bytes"}
    for _ in range(3):  # gone before the answer
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_signed_invoke(server, name, first, {}))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_signed_invoke(server, name, first, {}))
        head, answer = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert_predictions(decode_predictions(answer, "application/json"), model.predict(X[:2]))
