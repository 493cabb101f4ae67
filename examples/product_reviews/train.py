"""Train two sentiment models on the review corpus and package each as a SageMaker model.tar.gz.

Variant A (the champion): TF-IDF over words and word pairs + logistic regression.
Variant B (the challenger): TF-IDF + complement naive Bayes.

Both predict class ids (0 negative, 1 neutral, 2 positive). Each archive follows the SageMaker
framework-container layout::

    model.tar.gz
      model.joblib          # the fitted scikit-learn pipeline
      code/inference.py     # model_fn / input_fn / output_fn (no predict_fn: the default batches)
      code/labels.json      # {"0": "negative", "1": "neutral", "2": "positive"}

Usage::

    .venv/bin/python examples/product_reviews/train.py OUT_DIR
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import joblib
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import ComplementNB
from sklearn.pipeline import Pipeline

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reviews import LABELS, generate_reviews  # noqa: E402

HANDLER = HERE / "code" / "inference.py"
TEST_SIZE = 0.2
SPLIT_SEED = 7
VARIANT_DESCRIPTIONS = {
    "A": "TF-IDF (1-2 grams) + LogisticRegression",
    "B": "TF-IDF (1-2 grams) + ComplementNB",
}


def make_pipeline(variant: str) -> Pipeline:
    """A fresh, unfitted pipeline for variant ``A`` or ``B``."""
    if variant == "A":
        return Pipeline(
            [
                ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
                ("clf", LogisticRegression(C=4.0, max_iter=2000)),
            ]
        )
    if variant == "B":
        return Pipeline(
            [
                ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
                ("clf", ComplementNB(alpha=0.5)),
            ]
        )
    raise ValueError(f"unknown variant {variant!r}; expected 'A' or 'B'")


def split_corpus() -> tuple[list[dict], list[dict]]:
    """The deterministic (train, held-out test) split of the corpus, stratified by sentiment."""
    reviews = generate_reviews()
    train, test = train_test_split(
        reviews, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=[r["sentiment"] for r in reviews]
    )
    return train, test


def label_ids(rows: list[dict]) -> list[int]:
    return [LABELS.index(r["sentiment"]) for r in rows]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def package(model: Pipeline, tar_path: Path) -> Path:
    """Write ``model`` with the handler and label map as a SageMaker-style model.tar.gz."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "model.joblib"
        joblib.dump(model, model_file)
        labels = json.dumps({str(i): label for i, label in enumerate(LABELS)}, indent=2).encode()
        with tarfile.open(tar_path, "w:gz") as tar:
            _add_bytes(tar, "model.joblib", model_file.read_bytes())
            _add_bytes(tar, "code/inference.py", HANDLER.read_bytes())
            _add_bytes(tar, "code/labels.json", labels)
    return tar_path


@dataclass
class TrainResult:
    artifacts: dict[str, Path]  # variant -> model.tar.gz
    accuracy: dict[str, float]  # variant -> held-out accuracy
    test: list[dict] = field(repr=False)  # the held-out reviews


def train_variants(out_dir: Path) -> TrainResult:
    """Fit both variants, score them on the held-out split and package them under ``out_dir``."""
    out_dir = Path(out_dir)
    train, test = split_corpus()
    x_train, y_train = [r["text"] for r in train], label_ids(train)
    x_test, y_test = [r["text"] for r in test], label_ids(test)
    artifacts: dict[str, Path] = {}
    accuracy: dict[str, float] = {}
    for variant in VARIANT_DESCRIPTIONS:
        model = make_pipeline(variant).fit(x_train, y_train)
        accuracy[variant] = float(model.score(x_test, y_test))
        artifacts[variant] = package(model, out_dir / f"variant-{variant.lower()}" / "model.tar.gz")
    metrics = {"held_out_accuracy": accuracy, "test_size": len(test), "train_size": len(train)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(artifacts, accuracy, test)


def build_artifacts(out_dir: Path) -> dict[str, Path]:
    """Train and package both variants; ``{"A": tar, "B": tar}``.

    The held-out accuracies are written to ``out_dir/metrics.json``; use :func:`train_variants`
    to get them (and the held-out reviews) as Python objects.
    """
    return train_variants(out_dir).artifacts


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the product-review sentiment variants.")
    parser.add_argument("out_dir", type=Path, help="where to write variant-a/ and variant-b/ model.tar.gz")
    args = parser.parse_args()
    result = train_variants(args.out_dir)
    for variant, path in result.artifacts.items():
        print(
            f"variant {variant} ({VARIANT_DESCRIPTIONS[variant]}): held-out accuracy "
            f"{result.accuracy[variant]:.1%} -> {path}"
        )


if __name__ == "__main__":
    main()
