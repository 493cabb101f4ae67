"""The models every server serves, trained here with fixed seeds.

Each builder trains one scikit-learn model, pickles it once with joblib (that one file is what
every server loads), packs the SageMaker-style ``model.tar.gz`` moorage deploys, and returns a
:class:`BenchModel`: the artifacts, the single record a request carries, and the prediction a
local ``predict`` gives for it (every server's answer is checked against that before load).

The ``onnx`` model is a LogisticRegression on the ``tabular`` task, converted with skl2onnx (float32
input, plain tensor outputs): an onnxruntime call costs a few microseconds instead of a fraction of a
millisecond, so what its numbers show is almost entirely each server's own overhead. Its expected
answer is what onnxruntime gives locally (float32 input), not scikit-learn's.

The ``image1mb`` and ``image5mb`` models measure large payloads (SageMaker takes up to 6 MB): each request
is one raw uint8 image (1 MiB and 5,000,000 bytes, ``application/octet-stream``), and the model is
cheap per byte, so the serving path dominates: ``code/inference.py``'s ``input_fn`` reduces the
bytes to one feature (the fraction of pixels >= 128, one numpy pass, ~0.05 ms per MiB) and a
one-feature LogisticRegression (model.joblib) labels the image bright or dark. The baseline app runs
that same ``input_fn`` (``--input-fn``) and ``predict``, so both do the same work per request.

Adding a model is one more builder in ``BUILDERS``: set ``runtime`` and ``artifact``; moorage gets
``Image=runtime``, and a server without that runtime reports ``n/a`` (``Server.supports``).
"""

from __future__ import annotations

import functools
import io
import random
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

SEED = 20240607


@dataclass
class BenchModel:
    name: str
    description: str
    # which loader/runtime serves the artifact: "sklearn" (joblib) or "onnx" (onnxruntime)
    runtime: str
    artifact: Path
    # moorage's model.tar.gz (artifact at the root, plus any code/)
    tarball: Path
    # the single record one request carries: a review string, or a list of floats
    record: Any
    # what a local predict([record]) returns, as a JSON-able list
    expected: list
    # moorage container Environment (e.g. SAGEMAKER_PROGRAM for the text model's input_fn)
    environment: dict[str, str] = field(default_factory=dict)
    # local predict cost for one record, microseconds (median of repeated calls)
    predict_us: float = 0.0
    # large-payload models: the raw request body every server gets as is (``record`` then only
    # describes it), its Content-Type, and the inference.py whose input_fn turns it into a row
    body: bytes | None = None
    content_type: str = "application/octet-stream"
    input_fn: Path | None = None

    @property
    def is_text(self) -> bool:
        return isinstance(self.record, str)

    @property
    def is_binary(self) -> bool:
        return self.body is not None

    @property
    def body_mb(self) -> float:
        """Request body size in MB (10^6 bytes) for binary models, else 0."""
        return len(self.body) / 1e6 if self.body is not None else 0.0

    def csv_body(self) -> bytes:
        """The record as a one-line ``text/csv`` body (moorage's SageMaker-style request)."""
        if self.is_text:
            return self.record.encode()
        return ",".join(repr(float(v)) for v in self.record).encode()


# -- data ---------------------------------------------------------------------------------------

_POS = [
    "great",
    "excellent",
    "superb",
    "love",
    "wonderful",
    "perfect",
    "amazing",
    "delightful",
    "fantastic",
    "reliable",
    "sturdy",
    "comfy",
]
_NEG = [
    "awful",
    "terrible",
    "broken",
    "hate",
    "poor",
    "useless",
    "disappointing",
    "flimsy",
    "refund",
    "worst",
    "cheap",
    "noisy",
]
_NEUTRAL = [
    "the",
    "a",
    "this",
    "it",
    "product",
    "item",
    "quality",
    "price",
    "delivery",
    "box",
    "size",
    "color",
    "battery",
    "screen",
    "was",
    "is",
    "and",
    "but",
    "with",
    "for",
    "my",
    "after",
    "day",
    "week",
    "works",
    "arrived",
    "looks",
    "feels",
]

TEXT_RECORD = "Arrived fast, the battery is great and the screen looks amazing for the price"


def synthetic_reviews(n: int, seed: int = SEED) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.random() < 0.5
        words = rng.choices(_NEUTRAL, k=rng.randint(6, 16))
        polar, other = (_POS, _NEG) if label else (_NEG, _POS)
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(polar))
        if rng.random() < 0.3:  # some noise: a word of the other polarity
            words.insert(rng.randrange(len(words) + 1), rng.choice(other))
        texts.append(" ".join(words).capitalize())
        labels.append(int(label))
    return texts, labels


# -- helpers ------------------------------------------------------------------------------------


def _predict_cost_us(predict: Callable[[], Any], n: int = 300) -> float:
    for _ in range(20):
        predict()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        predict()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2] * 1e6


def _tarball(path: Path, files: dict[str, bytes | Path]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for arcname, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


# moorage's default sklearn decoder turns a non-numeric CSV body into a (1, 1) array of str;
# the pipeline's TfidfVectorizer wants a 1-D sequence of documents: one per line.
TEXT_INFERENCE_PY = """\
import numpy as np


def input_fn(body, content_type):
    if isinstance(body, (bytes, bytearray)):
        body = body.decode()
    return np.array(body.splitlines())
"""


# the large-payload models: the raw image bytes to one feature row, in one cheap numpy pass (the
# baseline app imports this same file with --input-fn)
IMAGE_INFERENCE_PY = """\
import numpy as np


def input_fn(body, content_type):
    pixels = np.frombuffer(body, dtype=np.uint8)
    return np.array([[np.count_nonzero(pixels >= 128) / max(pixels.size, 1)]])
"""


def _to_jsonable(values) -> list:
    return np.asarray(values).tolist()


# -- builders -----------------------------------------------------------------------------------


def build_text(workdir: Path) -> BenchModel:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = synthetic_reviews(4000)
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(max_iter=1000, random_state=0),
    )
    model.fit(texts, labels)
    out = workdir / "text"
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "model.joblib"
    joblib.dump(model, artifact)
    tarball = _tarball(
        out / "model.tar.gz",
        {"model.joblib": artifact, "code/inference.py": TEXT_INFERENCE_PY.encode()},
    )
    expected = _to_jsonable(model.predict(np.array([TEXT_RECORD])))
    return BenchModel(
        name="text",
        description="TF-IDF (1-2 grams) + LogisticRegression review classifier, one review per request",
        runtime="sklearn",
        artifact=artifact,
        tarball=tarball,
        record=TEXT_RECORD,
        expected=expected,
        environment={"SAGEMAKER_PROGRAM": "inference.py"},
        predict_us=_predict_cost_us(lambda: model.predict(np.array([TEXT_RECORD]))),
    )


@functools.cache
def _tabular_data():
    """The 20-feature data set (train rows first) and the held-out row a request carries."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=5000, n_features=20, n_informative=12, n_redundant=4, random_state=SEED % 2**31
    )
    # a held-out row, rounded so its CSV/JSON text round-trips to the same float64
    record = [round(float(v), 6) for v in x[4321]]
    return x[:4000], y[:4000], record


def build_tabular(workdir: Path) -> BenchModel:
    from sklearn.ensemble import GradientBoostingClassifier

    x, y, record = _tabular_data()
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    model.fit(x, y)
    out = workdir / "tabular"
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "model.joblib"
    joblib.dump(model, artifact)
    tarball = _tarball(out / "model.tar.gz", {"model.joblib": artifact})
    row = np.array([record])
    expected = _to_jsonable(model.predict(row))
    return BenchModel(
        name="tabular",
        description="GradientBoostingClassifier (100 trees, depth 3), 20 float features, one row per request",
        runtime="sklearn",
        artifact=artifact,
        tarball=tarball,
        record=record,
        expected=expected,
        predict_us=_predict_cost_us(lambda: model.predict(row)),
    )


def onnx_session(path: Path | str):
    """An onnxruntime session on one thread, as the baseline app opens it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_onnx(workdir: Path) -> BenchModel:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y, record = _tabular_data()
    model = LogisticRegression(max_iter=1000, random_state=0)
    model.fit(x, y)
    # zipmap off: outputs are plain tensors, label (int64 [N]) first, then probabilities (float [N, 2])
    onx = to_onnx(model, np.array([record], dtype=np.float32), options={id(model): {"zipmap": False}})
    out = workdir / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "model.onnx"
    artifact.write_bytes(onx.SerializeToString())
    tarball = _tarball(out / "model.tar.gz", {"model.onnx": artifact})
    session = onnx_session(artifact)
    feed = {session.get_inputs()[0].name: np.array([record], dtype=np.float32)}
    label = [session.get_outputs()[0].name]
    expected = _to_jsonable(session.run(label, feed)[0])
    return BenchModel(
        name="onnx",
        description="LogisticRegression on the tabular task as ONNX (skl2onnx, one LinearClassifier node), one row",
        runtime="onnx",
        artifact=artifact,
        tarball=tarball,
        record=record,
        expected=expected,
        predict_us=_predict_cost_us(lambda: session.run(label, feed), n=2000),
    )


@functools.cache
def _image_classifier():
    """A one-feature LogisticRegression: the bright-pixel fraction -> dark (0) / bright (1)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(SEED)
    x = rng.uniform(0.0, 1.0, size=(2000, 1))
    y = (x[:, 0] + rng.normal(0.0, 0.05, size=2000) > 0.5).astype(int)
    return LogisticRegression(random_state=0).fit(x, y)


def _build_image(workdir: Path, name: str, shape: tuple[int, ...], label: str) -> BenchModel:
    import importlib.util

    model = _image_classifier()
    out = workdir / name
    (out / "code").mkdir(parents=True, exist_ok=True)
    artifact = out / "model.joblib"
    joblib.dump(model, artifact)
    program = out / "code" / "inference.py"
    program.write_text(IMAGE_INFERENCE_PY)
    tarball = _tarball(out / "model.tar.gz", {"model.joblib": artifact, "code/inference.py": program})
    # a bright-ish noisy image (pixels uniform in 40..255: ~59 % of them >= 128), fixed seed
    body = np.random.default_rng(SEED).integers(40, 256, size=shape, dtype=np.uint8).tobytes()
    spec = importlib.util.spec_from_file_location(f"bench_{name}_inference", program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the same input_fn moorage and the baseline run

    def predict():
        return model.predict(module.input_fn(body, "application/octet-stream"))

    return BenchModel(
        name=name,
        description=f"{label} raw uint8 image {'x'.join(map(str, shape))} ({len(body):,} bytes, "
        "application/octet-stream) -> bright-pixel fraction (numpy) -> 1-feature LogisticRegression",
        runtime="sklearn",
        artifact=artifact,
        tarball=tarball,
        record={"shape": list(shape), "dtype": "uint8", "bytes": len(body)},
        expected=_to_jsonable(predict()),
        environment={"SAGEMAKER_PROGRAM": "inference.py"},
        predict_us=_predict_cost_us(predict, n=100),
        body=body,
        input_fn=program,
    )


def build_image1mb(workdir: Path) -> BenchModel:
    return _build_image(workdir, "image1mb", (1024, 1024), "1 MiB")


def build_image5mb(workdir: Path) -> BenchModel:
    # 5,000,000 bytes: under moorage's (and SageMaker's) 6 MiB InvokeEndpoint limit
    return _build_image(workdir, "image5mb", (2000, 2500), "5 MB")


BUILDERS: dict[str, Callable[[Path], BenchModel]] = {
    "text": build_text,
    "tabular": build_tabular,
    "onnx": build_onnx,
    "image1mb": build_image1mb,
    "image5mb": build_image5mb,
}


def build(names: list[str], workdir: Path) -> list[BenchModel]:
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {', '.join(BUILDERS)}")
    return [BUILDERS[n](workdir) for n in names]
