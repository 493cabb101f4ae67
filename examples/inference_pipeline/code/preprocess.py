"""Container 1 of the pipeline: the StandardScaler fitted at training time, so serving scales exactly as
training did. CSV rows or JSON ``{"instances": [[...], ...]}`` in; the scaled rows out, as CSV unless
asked for JSON (the pipeline asks it for what ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` says)."""

import io
import json
import os

import joblib
import numpy as np


def model_fn(model_dir, context=None):
    return joblib.load(os.path.join(model_dir, "scaler.joblib"))


def input_fn(body, content_type, context=None):
    text = body.decode() if isinstance(body, bytes) else body
    if content_type.startswith("application/json"):
        return np.asarray(json.loads(text)["instances"], dtype=float)
    return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)


def predict_fn(rows, scaler, context=None):
    return scaler.transform(rows)


def output_fn(rows, accept, context=None):
    if accept and accept.startswith("application/json"):
        return json.dumps({"instances": rows.tolist()}), "application/json"
    out = io.StringIO()
    np.savetxt(out, rows, delimiter=",", fmt="%.17g")
    return out.getvalue(), "text/csv"
