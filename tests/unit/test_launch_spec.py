"""A LaunchSpec travels as plain values and finds its model on a node that does not share the server's disk."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from moorage.serving.launch_spec import LaunchSpec
from moorage.store.artifacts import ArtifactStore


def _archive(tmp_path: Path) -> Path:
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"model.joblib": b"weights", "code/requirements.txt": b"numpy\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_round_trip_through_plain_values(tmp_path: Path) -> None:
    spec = LaunchSpec(runtime="byo", model_dir=tmp_path, environment={"A": "1"}, instance_type="ml.c5.xlarge",
                      command=("./serve", "--fast"), requirements=tmp_path / "requirements.txt",
                      envs_dir=tmp_path / "envs", startup_timeout=12.5, model_data_url="s3://bucket/model.tar.gz")
    assert LaunchSpec.from_dict(spec.to_dict()) == spec


def test_a_node_with_the_model_on_its_disk_uses_it_as_it_is(tmp_path: Path) -> None:
    spec = LaunchSpec(runtime="sklearn", model_dir=tmp_path, model_data_url="file:///elsewhere/model.tar.gz")
    assert spec.on_this_node(ArtifactStore(tmp_path / "cache")) is spec


def test_another_node_unpacks_the_artifact_and_moves_the_paths_under_it(tmp_path: Path) -> None:
    gone = tmp_path / "server-only" / "models" / "abc"
    spec = LaunchSpec(runtime="sklearn", model_dir=gone, model_data_url=_archive(tmp_path).as_uri(),
                      environment={"SM_MODEL_DIR": str(gone), "SAGEMAKER_SUBMIT_DIRECTORY": str(gone / "code"),
                               "OTHER": str(gone) + "-not-a-child"},
                      requirements=gone / "code" / "requirements.txt")
    here = spec.on_this_node(ArtifactStore(tmp_path / "node-cache"))
    assert here.model_dir.is_dir() and here.model_dir != gone
    assert (here.model_dir / "model.joblib").read_bytes() == b"weights"
    assert here.environment["SM_MODEL_DIR"] == str(here.model_dir)
    assert here.environment["SAGEMAKER_SUBMIT_DIRECTORY"] == str(here.model_dir / "code")
    assert here.environment["OTHER"] == str(gone) + "-not-a-child"
    assert here.requirements is not None and here.requirements.read_text() == "numpy\n"
