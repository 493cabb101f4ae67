"""Train the example's model and pack it as SageMaker does: ``build/model.tar.gz`` with
``model.joblib`` at its root, plus held-out rows (``build/holdout.csv``, no header) and what the
model answers for them here (``build/expected.json``), for deploy.py to compare with the endpoint's.

Runs with moorage's own environment (it has scikit-learn): ``.venv/bin/python examples/sagemaker_sdk/train.py``.
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
from pathlib import Path

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def train(build: Path) -> dict:
    data = load_breast_cancer()
    labels = data.target_names[data.target]  # "malignant" / "benign"
    X_train, X_test, y_train, y_test = train_test_split(data.data, labels, test_size=20, random_state=0,
                                                        stratify=labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    build.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        joblib.dump(model, Path(tmp) / "model.joblib")
        with tarfile.open(build / "model.tar.gz", "w:gz") as tar:
            tar.add(Path(tmp) / "model.joblib", arcname="model.joblib")
    (build / "holdout.csv").write_text("\n".join(",".join(repr(float(v)) for v in row) for row in X_test) + "\n")
    probabilities = model.predict_proba(X_test)
    expected = [{"label": str(model.classes_[p.argmax()]), "probability": round(float(p.max()), 6)}
                for p in probabilities]
    (build / "expected.json").write_text(json.dumps({"predictions": expected, "truth": list(map(str, y_test))}))
    accuracy = sum(e["label"] == t for e, t in zip(expected, y_test, strict=True)) / len(y_test)
    return {"model": str(build / "model.tar.gz"), "rows": len(X_test), "accuracy": accuracy}


if __name__ == "__main__":
    out = train(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "build")
    print(f"wrote {out['model']} and {out['rows']} held-out rows (accuracy here: {out['accuracy']:.2f})")
