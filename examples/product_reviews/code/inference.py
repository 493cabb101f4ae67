"""SageMaker handler for the product-review sentiment model (``code/inference.py`` in model.tar.gz).

The archive holds ``model.joblib`` (a scikit-learn pipeline: TF-IDF + classifier) at its root and
this file with ``labels.json`` (class id -> label) under ``code/``. The pipeline predicts class ids
(0, 1, 2); ``output_fn`` turns them into labels.

There is deliberately no ``predict_fn``: the default one calls ``model.predict(data)``, which lets
the server stack several requests' arrays into one call (adaptive batching).

Content types:
  in:  text/csv (one review per line; the whole line is the text, commas included),
       application/json (a string, a list of strings, or {"reviews": [...]}),
       application/jsonlines (one string or {"text": ...} per line)
  out: application/json ({"predictions": [{"label": "negative", "class_id": 0}, ...]}),
       text/csv (one label per line)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MODEL_FILE = "model.joblib"
LABELS_FILE = "labels.json"
INPUT_TYPES = ("text/csv", "application/json", "application/jsonlines")
OUTPUT_TYPES = ("application/json", "text/csv")
_JSONLINES_ALIASES = ("application/jsonlines", "application/x-jsonlines", "application/jsonl")

_labels: dict[int, str] | None = None


class UnsupportedMediaType(ValueError):
    """An unsupported Content-Type (415) or Accept (406).

    ``status_code`` follows the inference toolkit's GenericInferenceToolkitError, so servers that honour it
    answer with that status instead of a generic 500.
    """

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def _load_labels(path: Path) -> dict[int, str]:
    with path.open(encoding="utf-8") as fh:
        return {int(k): str(v) for k, v in json.load(fh).items()}


def _get_labels() -> dict[int, str]:
    """The id -> label map; read from next to this file if ``model_fn`` has not loaded it yet."""
    global _labels
    if _labels is None:
        _labels = _load_labels(Path(__file__).resolve().with_name(LABELS_FILE))
    return _labels


def model_fn(model_dir: str):
    """Load the pipeline from ``model_dir/model.joblib`` and the labels from ``model_dir/code``."""
    import joblib

    global _labels
    model_dir_path = Path(model_dir)
    labels_path = model_dir_path / "code" / LABELS_FILE
    if not labels_path.exists():
        labels_path = Path(__file__).resolve().with_name(LABELS_FILE)
    _labels = _load_labels(labels_path)
    return joblib.load(model_dir_path / MODEL_FILE)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _csv_line(line: str) -> str:
    """A whole CSV line is one review; undo the quoting the csv module adds around commas/quotes."""
    line = line.strip()
    if len(line) >= 2 and line[0] == '"' and line[-1] == '"':
        line = line[1:-1].replace('""', '"')
    return line


def _as_text(item: object) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("text", "review", "review_body"):
            if isinstance(item.get(key), str):
                return item[key]
    raise ValueError(f"expected a review string or an object with a 'text' field, got {item!r:.80}")


def input_fn(body: bytes | str, content_type: str):
    """Decode a request body into a 1-D numpy array of review texts."""
    text = body.decode("utf-8-sig") if isinstance(body, (bytes, bytearray, memoryview)) else str(body)
    media = _media_type(content_type)
    if media == "text/csv":
        texts = [_csv_line(line) for line in text.splitlines() if line.strip()]
    elif media == "application/json":
        payload = json.loads(text)
        if isinstance(payload, dict):
            payload = next((payload[k] for k in ("reviews", "instances", "inputs") if k in payload), payload)
        items = payload if isinstance(payload, list) else [payload]
        texts = [_as_text(item) for item in items]
    elif media in _JSONLINES_ALIASES:
        texts = [_as_text(json.loads(line)) for line in text.splitlines() if line.strip()]
    else:
        supported = ", ".join(INPUT_TYPES)
        raise UnsupportedMediaType(f"unsupported content type {content_type!r}; supported: {supported}", 415)
    if not texts:
        raise ValueError("the request holds no reviews")
    return np.asarray(texts, dtype=str)


def _choose_accept(accept: str | None) -> str:
    """The first supported type in an Accept header; ``*/*`` or nothing means JSON."""
    for part in (accept or "application/json").split(","):
        media = _media_type(part)
        if media in OUTPUT_TYPES:
            return media
        if media in ("*/*", "application/*", ""):
            return "application/json"
        if media == "text/*":
            return "text/csv"
    raise UnsupportedMediaType(f"unsupported accept type {accept!r}; supported: {', '.join(OUTPUT_TYPES)}", 406)


def output_fn(prediction, accept: str):
    """Map class ids to labels; returns ``(body, content_type)`` like the SageMaker sklearn container."""
    labels = _get_labels()
    media = _choose_accept(accept)
    ids = [int(i) for i in np.asarray(prediction).ravel()]
    names = [labels.get(i, str(i)) for i in ids]
    if media == "text/csv":
        return "".join(name + "\n" for name in names), media
    body = {"predictions": [{"label": name, "class_id": i} for name, i in zip(names, ids, strict=True)]}
    return json.dumps(body, separators=(",", ":")), media


if __name__ == "__main__":  # a quick local check: python inference.py MODEL_DIR "some review"
    import sys

    model = model_fn(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
    data = input_fn("\n".join(sys.argv[2:]).encode() or b"Great value, works perfectly.", "text/csv")
    print(output_fn(model.predict(data), "application/json")[0])
