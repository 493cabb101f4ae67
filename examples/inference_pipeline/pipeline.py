"""Train the three parts of the pipeline and pack each as a SageMaker model.tar.gz.

The seed's example of a serial inference pipeline: the StandardScaler fitted on the training data,
the classifier trained on the scaled data, and a postprocessor mapping class ids to labels (the
breast-cancer data set: 1 -> "benign", 0 -> "malignant"). ``build(out_dir)`` writes
``preprocess.tar.gz``, ``predict.tar.gz`` and ``postprocess.tar.gz`` and returns their paths with the
fitted parts, so a test or the deploy script can compute the same answers by hand.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

CODE = Path(__file__).resolve().parent / "code"
LABELS = {"0": "malignant", "1": "benign"}


@dataclass
class Pipeline:
    archives: dict[str, Path]  # preprocess, predict, postprocess
    scaler: StandardScaler
    model: LogisticRegression
    held_out: np.ndarray

    def expected(self, rows: np.ndarray) -> list[str]:
        """The three steps by hand."""
        return [LABELS[str(int(c))] for c in self.model.predict(self.scaler.transform(rows))]


def _pack(path: Path, script: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**files, "code/inference.py": (CODE / script).read_bytes()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _dump(value: object) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()


def build(out_dir: Path) -> Pipeline:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_breast_cancer()
    train_x, test_x, train_y, _ = train_test_split(data.data, data.target, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(train_x), train_y)
    archives = {
        "preprocess": _pack(out_dir / "preprocess.tar.gz", "preprocess.py", {"scaler.joblib": _dump(scaler)}),
        "predict": _pack(out_dir / "predict.tar.gz", "predict.py", {"model.joblib": _dump(model)}),
        "postprocess": _pack(out_dir / "postprocess.tar.gz", "postprocess.py",
                             {"labels.json": json.dumps(LABELS).encode()}),
    }
    return Pipeline(archives, scaler, model, test_x)
