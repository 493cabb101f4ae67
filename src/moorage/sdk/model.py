"""``Model``: model artifacts (and inference code) that can be deployed to an endpoint.

As in the SageMaker Python SDK, giving ``entry_point``/``source_dir`` repacks the artifacts into one
``model.tar.gz`` with the model files at its root and the code under ``code/``, and points
``SAGEMAKER_PROGRAM``/``SAGEMAKER_SUBMIT_DIRECTORY`` at it; the archive is uploaded to the server's
artifact store, so the server may be on another machine.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moorage.sdk.deserializers import BaseDeserializer
from moorage.sdk.predictor import Predictor
from moorage.sdk.serializers import BaseSerializer
from moorage.sdk.session import Session
from moorage.sdk.utils import name_from_base

if TYPE_CHECKING:
    from moorage.sdk.transformer import Transformer

__all__ = ["Model"]

SUBMIT_DIRECTORY = "/opt/ml/model/code"
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")


def _is_url(value: str) -> bool:
    return "://" in value


def _is_tarball(path: Path) -> bool:
    if path.name.endswith(_TARBALL_SUFFIXES):
        return True
    with open(path, "rb") as fh:
        head = fh.read(262)
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"


def _base_name(image_uri: str) -> str:
    """``sklearn`` -> ``sklearn``; ``.../sagemaker-scikit-learn:1.2-1-cpu-py3`` -> ``sagemaker-scikit-learn``."""
    repo = image_uri.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return _NAME_CHARS.sub("-", repo).strip("-")[:30] or "model"


def _normalize_tags(tags: list[dict[str, str]] | dict[str, str] | None) -> list[dict[str, str]] | None:
    if tags is None:
        return None
    if isinstance(tags, dict):
        return [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
    return list(tags)


class Model:
    """Model artifacts, an image (runtime) and optional inference code, in the role of ``sagemaker.Model``.

    ``model_data``: a local file, folder or tarball (uploaded to the server), or a URL the server can
    read (``file://`` on its machine, ``s3://``), used as it is unless code must be packed with it.
    ``image_uri``: a moorage runtime name (``sklearn``, ...) or a SageMaker framework image URI.
    ``entry_point``: the inference script (a path, or relative to ``source_dir`` when that is given);
    ``source_dir``: a folder (or local tarball) of code to ship with it; ``dependencies``: more files or
    folders, packed under ``code/lib/``.
    """

    def __init__(self, model_data: str | Path | None = None, image_uri: str = "sklearn",
                 entry_point: str | Path | None = None, source_dir: str | Path | None = None,
                 env: dict[str, str] | None = None, role: str | None = None, name: str | None = None,
                 dependencies: list[str | Path] | None = None, sagemaker_session: Session | None = None,
                 predictor_cls: Callable[..., Predictor] = Predictor) -> None:
        self.model_data = model_data
        self.image_uri = image_uri
        self.entry_point = entry_point
        self.source_dir = source_dir
        self.env = dict(env or {})
        self.role = role
        self.name = name
        self.dependencies = list(dependencies or [])
        self.sagemaker_session = sagemaker_session
        self.predictor_cls = predictor_cls
        self.endpoint_name: str | None = None
        self.predictor: Predictor | None = None
        # The URL the server reads the artifacts from, once prepared (uploaded or repacked).
        self.model_data_url: str | None = None
        self._created = False

    @property
    def session(self) -> Session:
        if self.sagemaker_session is None:
            self.sagemaker_session = Session()
        return self.sagemaker_session

    # -- packaging -----------------------------------------------------------------------------------
    def prepare_container_def(self) -> dict[str, Any]:
        """The CreateModel ``PrimaryContainer``: uploads (and repacks) the artifacts on first call."""
        if self.name is None:
            self.name = name_from_base(_base_name(self.image_uri))
        env = dict(self.env)
        if self.entry_point is not None or self.source_dir is not None or self.dependencies:
            # The script-mode variables win over env, as in the SageMaker SDK's framework models.
            if self.entry_point is not None:
                env["SAGEMAKER_PROGRAM"] = self._program_name()
            env["SAGEMAKER_SUBMIT_DIRECTORY"] = SUBMIT_DIRECTORY
        if self.model_data_url is None:
            self.model_data_url = self._prepare_model_data()
        container: dict[str, Any] = {"Image": self.image_uri}
        if self.model_data_url:
            container["ModelDataUrl"] = self.model_data_url
        if env:
            container["Environment"] = env
        return container

    def _needs_repack(self) -> bool:
        return self.entry_point is not None or self.source_dir is not None or bool(self.dependencies)

    def _program_name(self) -> str:
        entry = Path(self.entry_point)  # type: ignore[arg-type]
        if self.source_dir is None or not Path(self.source_dir).is_dir():
            return entry.name
        source = Path(self.source_dir)
        if entry.is_absolute():
            try:
                return entry.relative_to(source).as_posix()
            except ValueError:
                raise ValueError(f"entry_point {entry} is not inside source_dir {source}") from None
        return entry.as_posix()

    def _prepare_model_data(self) -> str | None:
        data = None if self.model_data is None else str(self.model_data)
        if not self._needs_repack():
            if data is None or _is_url(data):
                return data
            path = Path(data).expanduser()
            if path.is_file() and _is_tarball(path):
                return self._upload(path)
        with tempfile.TemporaryDirectory(prefix="moorage-model-") as tmp:
            staging = Path(tmp) / "model"
            staging.mkdir()
            if data is not None:
                self._stage_model_data(data, staging)
            if self._needs_repack():
                self._stage_code(staging / "code")
            archive = Path(tmp) / "model.tar.gz"
            _write_tarball(staging, archive)
            return self._upload(archive)

    def _upload(self, archive: Path) -> str:
        key = f"models/{self.name}/{uuid.uuid4().hex[:8]}/model.tar.gz"
        return self.session.upload_file(archive, key)

    @staticmethod
    def _stage_model_data(data: str, staging: Path) -> None:
        if _is_url(data) and not data.startswith("file://"):
            _extract_remote(data, staging)
            return
        path = Path(data[len("file://"):] if data.startswith("file://") else data).expanduser()
        if path.is_dir():
            shutil.copytree(path, staging, dirs_exist_ok=True)
        elif path.is_file() and _is_tarball(path):
            with tarfile.open(path, "r:*") as archive:
                archive.extractall(staging, filter="data")
        elif path.is_file():
            shutil.copy2(path, staging / path.name)
        else:
            raise FileNotFoundError(f"model_data {data} does not exist")

    def _stage_code(self, code: Path) -> None:
        code.mkdir(parents=True, exist_ok=True)
        if self.source_dir is not None:
            source = Path(self.source_dir).expanduser()
            if source.is_dir():
                shutil.copytree(source, code, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
            elif source.is_file() and _is_tarball(source):
                with tarfile.open(source, "r:*") as archive:
                    archive.extractall(code, filter="data")
            else:
                raise FileNotFoundError(f"source_dir {source} is neither a folder nor a tarball")
            if self.entry_point is not None and not (code / self._program_name()).is_file():
                raise FileNotFoundError(f"entry_point {self.entry_point} not found in source_dir {source}")
        elif self.entry_point is not None:
            entry = Path(self.entry_point).expanduser()
            if not entry.is_file():
                raise FileNotFoundError(f"entry_point {entry} does not exist")
            shutil.copy2(entry, code / entry.name)
        for dependency in self.dependencies:
            dep = Path(dependency).expanduser()
            lib = code / "lib"
            lib.mkdir(exist_ok=True)
            if dep.is_dir():
                shutil.copytree(dep, lib / dep.name, dirs_exist_ok=True)
            elif dep.is_file():
                shutil.copy2(dep, lib / dep.name)
            else:
                raise FileNotFoundError(f"dependency {dep} does not exist")

    # -- resources -----------------------------------------------------------------------------------
    def create(self, tags: list[dict[str, str]] | dict[str, str] | None = None) -> str:
        """CreateModel (once); returns the model's name. An existing model of that name is reused."""
        from botocore.exceptions import ClientError

        container = self.prepare_container_def()
        if self._created:
            return str(self.name)
        request: dict[str, Any] = {"ModelName": self.name, "PrimaryContainer": container}
        if self.role:
            request["ExecutionRoleArn"] = self.role
        if (tag_list := _normalize_tags(tags)) is not None:
            request["Tags"] = tag_list
        try:
            self.session.sagemaker_client.create_model(**request)
        except ClientError as exc:
            # The SageMaker SDK carries on with a model that already exists under the name.
            if "already exist" not in str(exc.response.get("Error", {}).get("Message", "")):
                raise
        self._created = True
        return str(self.name)

    def deploy(self, initial_instance_count: int = 1, instance_type: str = "ml.m5.large",
               endpoint_name: str | None = None, serializer: BaseSerializer | None = None,
               deserializer: BaseDeserializer | None = None, wait: bool = True,
               tags: list[dict[str, str]] | dict[str, str] | None = None, variant_name: str = "AllTraffic",
               timeout: float = 600.0) -> Predictor:
        """Create the model, an endpoint config and an endpoint; wait for InService; return a Predictor.

        A Failed endpoint raises UnexpectedStatusException carrying its FailureReason (the resources
        are left in place for inspection, as SageMaker leaves them).
        """
        tag_list = _normalize_tags(tags)
        model_name = self.create(tags=tag_list)
        endpoint_name = endpoint_name or model_name
        sm = self.session.sagemaker_client
        config: dict[str, Any] = {
            "EndpointConfigName": endpoint_name,
            "ProductionVariants": [{
                "VariantName": variant_name, "ModelName": model_name,
                "InitialInstanceCount": int(initial_instance_count), "InstanceType": instance_type,
                "InitialVariantWeight": 1.0,
            }],
        }
        endpoint: dict[str, Any] = {"EndpointName": endpoint_name, "EndpointConfigName": endpoint_name}
        if tag_list is not None:
            config["Tags"] = endpoint["Tags"] = tag_list
        sm.create_endpoint_config(**config)
        sm.create_endpoint(**endpoint)
        self.endpoint_name = endpoint_name
        predictor = self.predictor_cls(endpoint_name, sagemaker_session=self.session, serializer=serializer,
                                       deserializer=deserializer)
        self.predictor = predictor
        if wait:
            self.session.wait_for_endpoint(endpoint_name, timeout=timeout)
        return predictor

    def transformer(self, instance_count: int = 1, instance_type: str = "ml.m5.large", **kwargs: Any) -> Transformer:
        """Create the model (once) and return a Transformer for batch transform jobs with it.

        ``kwargs`` are Transformer's: ``output_path``, ``strategy``, ``assemble_with``, ``accept``,
        ``max_payload``, ``max_concurrent_transforms``, ``env``, ``tags``, ``backend``, ``ray_address``...
        """
        from moorage.sdk.transformer import Transformer

        model_name = self.create()
        return Transformer(model_name, instance_count=instance_count, instance_type=instance_type,
                           sagemaker_session=self.session, **kwargs)

    def delete_model(self) -> None:
        if self.name is None:
            raise ValueError("the model has not been created")
        self.session.delete_model(self.name)
        self._created = False

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, image_uri={self.image_uri!r}, model_data={self.model_data!r})"


def _write_tarball(source: Path, archive: Path) -> None:
    """model.tar.gz with ``source``'s contents at its root, as SageMaker expects."""
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)


def _extract_remote(url: str, staging: Path) -> None:
    from moorage.store.locations import StorageError, open_url

    try:
        with open_url(url) as raw, tarfile.open(fileobj=raw, mode="r:*") as archive:
            archive.extractall(staging, filter="data")
    except (OSError, tarfile.TarError, StorageError, ValueError) as exc:
        raise ValueError(f"cannot repack model_data {url}: {exc}") from exc
