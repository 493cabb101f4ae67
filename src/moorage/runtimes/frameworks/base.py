"""What every built-in runtime shares: the framework defaults behind the handler contract."""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moorage.runtimes import codecs


class ModelLoadError(Exception):
    """The model (or the user's inference module) could not be loaded; the instance never becomes ready."""

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


class Framework:
    """The defaults behind SageMaker's ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``."""

    name: str = "generic"
    # What a request without Content-Type, or without Accept (or */*), means for this framework's
    # SageMaker container; SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT still overrides the latter.
    default_content_type: str = codecs.JSON
    default_accept: str = codecs.JSON

    # The model file the default model_fn looks for: the first of ``model_files`` that exists, else
    # the only file with one of ``model_suffixes``, else (none has one) the only file with one of
    # ``fallback_suffixes``. Where several files match, those named model.* (or after a ``model_files``
    # entry, as xgboost-model.json) win the tie. ``missing_hint`` ends the error when none is found.
    model_files: tuple[str, ...] = ()
    model_suffixes: tuple[str, ...] = ()
    fallback_suffixes: tuple[str, ...] = ()
    missing_hint: str = ""

    def find_model_file(self, model_dir: Path) -> Path:
        model_dir = Path(model_dir)
        for name in self.model_files:
            if (model_dir / name).is_file():
                return model_dir / name
        # Dotfiles are left out: tar archives made on macOS carry a ._model.pkl beside model.pkl.
        listed = model_dir.iterdir() if model_dir.is_dir() else ()
        files = sorted(p for p in listed if p.is_file() and not p.name.startswith("."))
        stems = {"model", *(Path(name).stem for name in self.model_files)}
        for suffixes in (self.model_suffixes, self.fallback_suffixes):
            candidates = [p for p in files if p.suffix in suffixes and self.is_model_file(p)]
            if len(candidates) > 1:
                # e.g. a feature list saved as features.json beside model.json
                candidates = [p for p in candidates if p.stem in stems] or candidates
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                suffix = candidates[0].suffix
                names = [n for n in self.model_files if Path(n).suffix in ("", suffix)] + [f"model{suffix}"]
                raise ModelLoadError(
                    f"Found several model files ({', '.join(p.name for p in candidates)}) in {model_dir}; "
                    f"name the one to serve {' or '.join(dict.fromkeys(names))}"
                )
        looked_for = ", ".join(self.model_files)
        for suffixes in (self.model_suffixes, self.fallback_suffixes):
            if suffixes:
                looked_for += (", or " if looked_for else "") + "exactly one " + "/".join(f"*{s}" for s in suffixes)
        raise ModelLoadError(
            f"Found no model file in {model_dir} (looked for {looked_for}); "
            f"files seen: {[p.name for p in files] or 'none'}{self.missing_hint}"
        )

    def is_model_file(self, path: Path) -> bool:
        """Whether a file with a model suffix holds a model, for formats whose suffix other files share (.txt)."""
        return True

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        """The default ``model_fn``: find and load the model artifact under ``model_dir``."""
        raise ModelLoadError(f"The {self.name} runtime has no default model loader; define model_fn in inference.py")

    def predict(self, model: Any, data: Any) -> Any:
        """The default ``predict_fn``: estimators in every supported framework are row-wise."""
        return model.predict(data)

    def decode(self, body: bytes | str, content_type: str) -> Any:
        """The default ``input_fn``."""
        return codecs.decode(body, content_type)  # type: ignore[arg-type]

    def user_predict_input(self, data: Any, content_type: str) -> Any:
        """What a user ``predict_fn`` receives from the default ``input_fn``.

        SageMaker's framework containers hand it the framework's own type (a tensor for PyTorch),
        and user code relies on that (``data.to(device)``); numpy suits every other framework.
        """
        return data

    def encode(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        """The default ``output_fn``; ``accept`` is already negotiated to a supported type."""
        return codecs.encode(prediction, accept)




def format_traceback() -> str:
    return traceback.format_exc()


THREADS_ENV = "MOORAGE_CPU_THREADS"


def cpu_threads(env: Mapping[str, str]) -> int:
    """Threads the model may use: the instance type's share (set by the platform), else every usable core."""
    try:
        threads = int(env.get(THREADS_ENV, "").strip() or 0)
    except ValueError:
        threads = 0
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))  # a container's cpuset, where cpu_count() sees the whole host
    except AttributeError:
        return os.cpu_count() or 1
