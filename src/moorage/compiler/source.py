"""The model to compile: a ``model.tar.gz`` as endpoints take it, a folder, or one model file, at any location
moorage reads (a path, ``file://``, ``s3://``), loaded exactly as an endpoint's instance would load it.

Which framework a model is, and which file in the archive is the model, is the runtimes' knowledge
(``runtimes/frameworks``: each framework's ``model_files`` / ``model_suffixes`` / ``fallback_suffixes`` and
``find_model_file``); loading is the instance's own path (``InferenceHandler.load``: the framework's default
``model_fn``, or the archive's ``code/inference.py`` ``model_fn`` when it has one, as for a PyTorch
``state_dict`` that needs its class). Nothing here second-guesses either; a framework that is named
(``InputConfig.Framework``, ``--framework``) is used as named.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.runtimes.frameworks import FRAMEWORK_CLASSES, ModelLoadError, load_framework
from moorage.store.locations import StorageError, check_location, filesystem


class CompileError(Exception):
    """The model cannot be compiled; the message says why (a user's mistake or an unsupported model)."""


# SageMaker's InputConfig.Framework values -> moorage's runtimes. LIGHTGBM is moorage's extension:
# SageMaker's enum has no LightGBM (Neo never compiled it), the API accepts it beside AWS's values.
SAGEMAKER_FRAMEWORKS = {"SKLEARN": "sklearn", "XGBOOST": "xgboost", "LIGHTGBM": "lightgbm",
                        "PYTORCH": "pytorch", "ONNX": "onnx"}
UNSUPPORTED_SAGEMAKER = ("TENSORFLOW", "KERAS", "MXNET", "TFLITE", "DARKNET")
COMPILABLE = ("sklearn", "xgboost", "lightgbm", "pytorch", "onnx")
# The order frameworks are asked whether the folder holds their model: the unambiguous formats first;
# pickles (claimed by scikit-learn's suffixes) are told apart by the loaded object's type afterwards.
_DETECTION_ORDER = ("onnx", "pytorch", "sklearn", "xgboost", "lightgbm")


@dataclass
class Source:
    location: str
    sha256: str
    size: int
    model_dir: Path
    framework: str  # the runtime that loaded it
    model_file: Path
    model: Any


def framework_name(value: str | None) -> str | None:
    """moorage's runtime name for a SageMaker Framework value or a runtime name; None for 'detect it'."""
    if not value:
        return None
    upper = value.strip().upper()
    if upper in SAGEMAKER_FRAMEWORKS:
        return SAGEMAKER_FRAMEWORKS[upper]
    lowered = value.strip().lower()
    aliases = {"scikit-learn": "sklearn", "torch": "pytorch", "onnxruntime": "onnx"}
    lowered = aliases.get(lowered, lowered)
    if lowered in COMPILABLE:
        return lowered
    if upper in UNSUPPORTED_SAGEMAKER:
        raise CompileError(f"Framework {value}: moorage compiles {', '.join(SAGEMAKER_FRAMEWORKS)} models to ONNX; "
                           f"{upper} models are not supported.")
    raise CompileError(f"Framework {value!r} is not one moorage compiles: {', '.join(SAGEMAKER_FRAMEWORKS)}.")


def fetch(location: str, work_dir: Path) -> tuple[Path, str, int]:
    """(a local copy of ``location``, its sha256, its size). A local file is read in place."""
    try:
        check_location(location, "the model")
        fs, path = filesystem(location)
    except StorageError as exc:
        raise CompileError(str(exc)) from exc
    digest = hashlib.sha256()
    local = Path(location.removeprefix("file://")) if "://" not in location or location.startswith("file://") else None
    try:
        if local is not None:
            if local.is_dir():
                return local, _dir_digest(local), sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
            with local.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return local, digest.hexdigest(), local.stat().st_size
        name = path.rstrip("/").rsplit("/", 1)[-1] or "model"
        target = work_dir / "download" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(path, "rb") as remote, target.open("wb") as out:
            for block in iter(lambda: remote.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        return target, digest.hexdigest(), target.stat().st_size
    except FileNotFoundError as exc:
        raise CompileError(f"Could not find the model at {location}.") from exc
    except (OSError, StorageError) as exc:
        raise CompileError(f"Could not read the model at {location}: {exc}") from exc


def _dir_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _unpack(local: Path, work_dir: Path) -> Path:
    """The folder the model is in: the folder itself, the archive extracted, or a folder with the one file."""
    if local.is_dir():
        return local
    model_dir = work_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    if local.name.endswith((".tar.gz", ".tgz", ".tar")) or tarfile.is_tarfile(local):
        try:
            with tarfile.open(local, "r:*") as archive:
                # A model archive is untrusted input, as for endpoints (store/artifacts.py): the "data"
                # filter refuses links out of the tree and device files.
                archive.extractall(model_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CompileError(f"Could not extract {local.name}: {exc}") from exc
        return model_dir
    shutil.copyfile(local, model_dir / local.name)
    return model_dir


def _claims(framework: Any, model_dir: Path, suffixes: tuple[str, ...]) -> bool:
    files = [p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    return any((p.name in framework.model_files or p.suffix in suffixes) and framework.is_model_file(p)
               for p in files)


def detect_framework(model_dir: Path) -> str:
    """The runtime whose model files the folder holds, asked in ``_DETECTION_ORDER`` (main suffixes, then
    the fallbacks)."""
    frameworks = {}
    for name in _DETECTION_ORDER:
        try:
            frameworks[name] = load_framework(name)
        except ImportError:
            continue  # its extra is not installed: it cannot have made this model's file loadable either
    for attribute in ("model_suffixes", "fallback_suffixes"):
        for name, framework in frameworks.items():
            if _claims(framework, model_dir, getattr(framework, attribute)):
                return name
    seen = sorted(p.name for p in model_dir.iterdir() if not p.name.startswith("."))
    raise CompileError(f"Found no model file of a framework moorage compiles ({', '.join(COMPILABLE)}) in the "
                       f"model; files seen: {seen or 'none'}. Name the framework if the file has another suffix.")


def open_source(location: str | Path, work_dir: Path, framework: str | None = None) -> Source:
    """Fetch, unpack, detect (unless ``framework`` is given) and load the model at ``location``."""
    local, sha256, size = fetch(str(location), work_dir)
    model_dir = _unpack(local, work_dir)
    name = framework_name(framework) or detect_framework(model_dir)
    if name not in FRAMEWORK_CLASSES:
        raise CompileError(f"no runtime {name!r}")
    try:
        runtime = load_framework(name)
    except ImportError as exc:
        raise CompileError(f"The {name} framework's packages are not installed: {exc}. Install "
                           f"'moorage[{name}]'.") from exc
    # The instance's own loading path (imported here: it pulls in the handler machinery only when used).
    from moorage.runtimes.handler import InferenceHandler

    try:
        model_file = runtime.find_model_file(model_dir)
        handler = InferenceHandler.from_model_dir(model_dir, runtime, {})
        handler.load()
    except ModelLoadError as exc:
        raise CompileError(f"Could not load the {name} model: {exc}") from exc
    model = handler.model
    if name == "onnx":
        model = model_file.read_bytes()  # the graph itself is what gets optimised
    return Source(location=str(location), sha256=sha256, size=size, model_dir=model_dir, framework=name,
                  model_file=model_file, model=model)
