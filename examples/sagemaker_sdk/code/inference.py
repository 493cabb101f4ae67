"""The entry point SageMaker's scikit-learn container (and moorage's) loads: ``model_fn`` and
``predict_fn``; CSV in and JSON out are the container's defaults."""

import os

import joblib


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    """Each row's class label and the probability of that label."""
    probabilities = model.predict_proba(data)
    best = probabilities.argmax(axis=1)
    return [{"label": str(model.classes_[i]), "probability": round(float(p[i]), 6)}
            for i, p in zip(best, probabilities, strict=True)]
