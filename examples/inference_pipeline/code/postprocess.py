"""Container 3: class ids to the labels people read (``1 -> "positive"``), from the labels.json saved with
the model. CSV lines or JSON ``{"predictions": [...]}`` in; labels out (one a line, or a JSON list)."""

import json
import os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "labels.json")) as handle:
        return json.load(handle)


def transform_fn(labels, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if content_type.startswith("application/json"):
        classes = json.loads(text)["predictions"]
    else:
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    named = [labels[str(int(float(c)))] for c in classes]
    if accept and accept.startswith("application/json"):
        return json.dumps({"labels": named}), "application/json"
    return "".join(f"{name}\n" for name in named), "text/csv"
