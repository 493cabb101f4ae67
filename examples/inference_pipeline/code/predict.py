"""Container 2: the classifier, on rows already scaled. CSV or JSON ``{"instances": ...}`` in; the class
id of each row out (CSV lines, or JSON ``{"predictions": [...]}``)."""

import io
import json
import os

import joblib
import numpy as np


def model_fn(model_dir, context=None):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(body, content_type, context=None):
    text = body.decode() if isinstance(body, bytes) else body
    if content_type.startswith("application/json"):
        return np.asarray(json.loads(text)["instances"], dtype=float)
    return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)


def predict_fn(rows, model, context=None):
    return model.predict(rows)


def output_fn(classes, accept, context=None):
    if accept and accept.startswith("application/json"):
        return json.dumps({"predictions": [int(c) for c in classes]}), "application/json"
    return "".join(f"{int(c)}\n" for c in classes), "text/csv"
