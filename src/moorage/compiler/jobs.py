"""The compilation and edge-packaging jobs' work, run in a child process of the server.

``control/compilation_jobs.py`` starts these through ``monitor.common.jobs.run_in_subprocess``: each takes
the job's spec (a plain dict) and returns its result (``Status`` ``Completed`` or ``Failed`` with a
``FailureReason``), so onnx, skl2onnx and the frameworks are imported in the child and never in the server.

- ``run_compilation``: ``compile_model`` on the job's input, signed with the server's key; the package lands
  at the job's ``ModelArtifacts.S3ModelArtifacts``. A validation drop beyond the tolerance fails the job
  with the measured drop as its reason.
- ``run_packaging``: the compilation job's package, verified with the server's key, signed again with the
  packaging job's ``ModelName``/``ModelVersion`` in its manifest, written to the packaging job's output.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from moorage.compiler.compile import compile_model
from moorage.compiler.source import CompileError
from moorage.compiler.validate import ValidationFailed
from moorage.edge import package as edge_package
from moorage.store.locations import StorageError, filesystem, is_local, open_url

COMPLETED, FAILED = "Completed", "Failed"


def artifact_digest(path: Path) -> str:
    """SageMaker's ModelDigests.ArtifactDigest: a BLAKE2 hash of the compiled artifact."""
    return edge_package.file_digest(path, "blake2b")


def upload(local: Path, url: str) -> None:
    """Put the file ``local`` at ``url`` whole: renamed into place for a path, staged by the object store for
    ``s3://`` (its writes are atomic), streamed otherwise."""
    fs, path = filesystem(url)
    if is_local(fs):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(local, temp)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return
    with local.open("rb") as source, fs.open(path, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _failed(reason: str) -> dict[str, Any]:
    return {"Status": FAILED, "FailureReason": reason[:1024]}


def run_compilation(spec: dict[str, Any]) -> dict[str, Any]:
    work = Path(spec["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    local = work / "package.tar.gz"
    options = spec.get("options") or {}
    try:
        key = edge_package.load_or_create_private_key(spec["signing_key"])
        result = compile_model(
            spec["source"], local, quantize=options.get("quantize"), validate=options.get("validation_data"),
            label_column=options.get("label_column"), tolerance=float(options.get("tolerance", 0.01)),
            signing_key=key, name=options.get("name") or spec.get("default_name"),
            version=options.get("version"),
            framework=spec.get("framework"), input_shape=options.get("input_shape"), task=options.get("task"),
            target_device=spec.get("target_device"), target_platform=spec.get("target_platform"),
            data_input_config=spec.get("data_input_config"), framework_version=spec.get("framework_version"),
            work_dir=work)
        upload(local, spec["output"])
    except ValidationFailed as exc:
        return _failed(f"ClientError: {exc}")
    except (CompileError, edge_package.PackageError) as exc:
        return _failed(f"ClientError: {exc}")
    except (OSError, StorageError) as exc:
        return _failed(f"Could not write the compiled model to {spec['output']}: {exc}")
    manifest = result.manifest
    return {"Status": COMPLETED, "ArtifactDigest": artifact_digest(local), "PackageBytes": result.package_bytes,
            "ModelName": manifest["name"], "ModelVersion": manifest["version"], "Sizes": manifest["sizes"],
            "Validation": manifest.get("validation"), "Optimization": manifest["optimization"],
            "Notes": result.notes}


def run_packaging(spec: dict[str, Any]) -> dict[str, Any]:
    work = Path(spec["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    try:
        key = edge_package.load_or_create_private_key(spec["signing_key"])
        with open_url(spec["source"], "rb") as source:
            data = source.read(edge_package.MAX_ARCHIVE_BYTES + 1)
        package = edge_package.verify(data, [key])
        manifest = {k: v for k, v in package.manifest.items()
                    if k not in ("files", "format_version", "signing_key_id")}
        manifest.update(name=spec["model_name"], version=spec["model_version"],
                        packaging={"job": spec["job_name"], "compilation_job": spec["compilation_job"],
                                   "compiled_as": package.model_handle})
        edge_package.check_name_version(spec["model_name"], spec["model_version"])
        local = edge_package.write_package(work / "package.tar.gz", manifest, package.files, key)
        signed = edge_package.verify(local, [key])
        upload(local, spec["output"])
    except FileNotFoundError:
        return _failed(f"The compilation job's model artifact {spec['source']} is gone.")
    except edge_package.PackageError as exc:
        return _failed(f"ClientError: the compiled model cannot be packaged: {exc}")
    except (OSError, StorageError) as exc:
        return _failed(f"Could not write the package to {spec['output']}: {exc}")
    return {"Status": COMPLETED, "ModelSignature": base64.b64encode(signed.signature).decode(),
            "SigningKeyId": signed.key_id, "Sha256": hashlib.sha256(local.read_bytes()).hexdigest(),
            "PackageBytes": local.stat().st_size}
