"""PyTorch: TorchScript (and torch.export) models, as the SageMaker PyTorch inference container serves them.

The container's default ``model_fn`` loads only TorchScript: a plain ``torch.save`` checkpoint (a state_dict
or a pickled ``nn.Module``) cannot be rebuilt without the user's model class, so it needs the user's
``model_fn``. We do the same, and say so in the error rather than failing deep inside ``torch.jit.load``.

Requests are decoded to numpy (not tensors, as the container does) so that the instance server can stack
requests that arrive together into one forward pass; ``predict`` turns them into tensors.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
import zipfile
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moorage.runtimes import codecs
from moorage.runtimes.codecs import PayloadError
from moorage.runtimes.frameworks.base import Framework, ModelLoadError, cpu_threads, format_traceback

_threads_lock = threading.Lock()
_threads_configured = False
# The container hands a user predict_fn a FloatTensor for these, and torch.from_numpy's dtype otherwise.
_FLOAT_TENSOR_TYPES = frozenset({codecs.CSV, codecs.JSON, codecs.JSONLINES})


class OutputNotRepresentable(Exception):
    """A prediction the negotiated Accept type cannot hold; answered 406 so the client can ask for JSON."""

    status_code = 406

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PyTorchFramework(Framework):
    """TorchScript (``torch.jit.save``) or ``torch.export`` (``.pt2``) models; anything else via ``model_fn``."""

    name = "pytorch"
    model_files = ("model.pt", "model.pth", "model.pt2")
    model_suffixes = (".pt", ".pth", ".pt2")
    missing_hint = ". To load anything else, define model_fn in code/inference.py"

    def __init__(self) -> None:
        # The instance server makes one framework per process before anything loads, so the thread
        # settings also cover a user model_fn, and set_num_interop_threads runs before any parallel work.
        configure_threads(os.environ)
        self._prepared: set[int] = set()

    # ------------------------------------------------------------------------------------------- loading

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        path = self.find_model_file(Path(model_dir))
        try:
            if path.suffix == ".pt2":
                return _load_exported(path)
            return _load_torchscript(path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load {path.name}: {type(exc).__name__}: {exc}", traceback=format_traceback()
            ) from exc

    # ------------------------------------------------------------------------------------------ requests

    def predict(self, model: Any, data: Any) -> Any:
        """The model's forward pass without autograd; tensors in, numpy out, so batches split by rows."""
        self._prepare(model)
        float_dtype = _float_dtype(model)
        with torch.inference_mode():
            if isinstance(data, dict):
                # e.g. {"input_ids": [[...]], "attention_mask": [[...]]}: keyword inputs of a transformer.
                output = model(**{key: _to_tensor(value, float_dtype) for key, value in data.items()})
            else:
                output = model(_to_tensor(data, float_dtype))
        return to_numpy(output)

    def encode(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        # A user predict_fn may return tensors: the container's output_fn serialises those too.
        prediction = to_numpy(prediction)
        if isinstance(prediction, dict | tuple):
            media_type = codecs.normalize(accept)
            if media_type == codecs.JSONLINES:
                # One line per input row, as batch transform joins them: {"name": row} or [row, row].
                prediction = _rows_of_outputs(prediction)
            elif media_type in (codecs.CSV, codecs.NPY):
                raise OutputNotRepresentable(
                    f"the model has several outputs ({_describe(prediction)}), which cannot be written as "
                    f"{accept}; ask for application/json or application/jsonlines"
                )
        return codecs.encode(prediction, accept)

    def user_predict_input(self, data: Any, content_type: str) -> Any:
        """What a user ``predict_fn`` gets from the default ``input_fn``: a tensor, as in the container.

        The container's default input_fn returns ``torch.FloatTensor`` for CSV and JSON bodies and
        ``torch.from_numpy`` (dtype kept) for NPY, and user predict_fns call ``.to(device)`` on it.
        """
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
            return data
        if codecs.normalize(content_type) in _FLOAT_TENSOR_TYPES:
            return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        return _to_tensor(data, None)

    def _prepare(self, model: Any) -> None:
        # The container calls model.eval() on every request; once per model object is enough, and also
        # covers a model a user model_fn returned in training mode (dropout, batch-norm statistics).
        key = id(model)
        if key in self._prepared:
            return
        if isinstance(model, torch.nn.Module) and model.training:
            try:
                model.eval()
            except NotImplementedError:
                pass  # torch.export modules refuse eval(): they are already traced for inference
        self._prepared.add(key)


def configure_threads(env: Mapping[str, str]) -> None:
    """Intra-op threads from MOORAGE_CPU_THREADS (the instance type's vCPUs), inter-op 1; once per process.

    Without this every instance would start one thread per machine core and instances would fight over
    cores. Inter-op parallelism only helps graphs with independent branches, and its pool would compete
    with the intra-op threads for the instance's share.
    """
    global _threads_configured
    with _threads_lock:
        if _threads_configured:
            return
        _threads_configured = True
        threads = cpu_threads(env)
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # some inter-op work already ran in this process (tests); the pool size is fixed by now



# ---------------------------------------------------------------------------------------------- loading


def _load_torchscript(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream, but it is what SageMaker's container loads.
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise ModelLoadError(_not_torchscript_message(path), traceback=format_traceback()) from exc
    return model.eval()


def _load_exported(path: Path) -> Any:
    return torch.export.load(str(path)).module()


def _not_torchscript_message(path: Path) -> str:
    what = _describe_checkpoint(path)
    return (
        f"{path.name} is not a TorchScript model{what}. The default model_fn loads only TorchScript "
        "(torch.jit.script(model).save(...)) or torch.export (.pt2) models, as the SageMaker PyTorch container "
        "does; to serve a state_dict or a pickled nn.Module, define model_fn(model_dir) in code/inference.py "
        "that builds your model class and loads the file into it"
    )


def _describe_checkpoint(path: Path) -> str:
    """Which kind of torch.save file this is, to make the error specific; never runs the file's code."""
    if not zipfile.is_zipfile(path):
        return " (it is not a zip archive as torch.jit.save writes)"
    try:
        # weights_only refuses to build arbitrary classes, so probing an untrusted file is safe.
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return ": it holds a pickled object, such as a whole nn.Module saved with torch.save(model)"
    except Exception:
        return ""
    if isinstance(content, Mapping):
        if content and all(isinstance(v, torch.Tensor) for v in content.values()):
            return ": it holds a state_dict saved with torch.save(model.state_dict())"
        return ": it holds a checkpoint dictionary saved with torch.save (for example a state_dict)"
    return f": it holds a {type(content).__name__} saved with torch.save"


# --------------------------------------------------------------------------------------------- tensors


def _float_dtype(model: Any) -> torch.dtype:
    """The dtype float inputs become: the model's own (float32 usually; half or double when converted)."""
    if isinstance(model, torch.nn.Module):
        for tensor in chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float32


def _to_tensor(data: Any, float_dtype: torch.dtype | None) -> Any:
    """numpy (or JSON lists) as a tensor: floats in the model's dtype, integers (token ids) and bools kept."""
    if isinstance(data, torch.Tensor):
        return data if float_dtype is None or not data.is_floating_point() else data.to(float_dtype)
    if isinstance(data, list | int | float | bool):
        data = np.asarray(data)
    if not isinstance(data, np.ndarray):
        raise PayloadError(
            f"The default PyTorch predict_fn takes arrays of numbers, not {type(data).__name__}; "
            "define input_fn (or predict_fn) in inference.py for other inputs"
        )
    kind = data.dtype.kind
    target: torch.dtype | None = None
    if kind == "f":
        target = float_dtype
        if target is not None:
            # bfloat16 has no numpy dtype: convert through float32.
            data = data.astype(_NUMPY_FLOATS.get(target, np.float32), copy=False)
    elif kind == "u" and data.dtype.itemsize > 1:
        data = data.astype(np.int64)  # torch has only limited support for uint16/32/64
    elif kind not in "biu":
        raise PayloadError(
            f"The default PyTorch predict_fn takes numbers, but the input holds {data.dtype} values "
            f"(for example {_first(data)!r}); define input_fn in inference.py to turn them into tensors"
        )
    data = np.ascontiguousarray(data)
    if not data.flags.writeable:
        data = data.copy()  # torch warns on read-only arrays, and would alias memory it must not write
    tensor = torch.from_numpy(data)
    return tensor if target is None or tensor.dtype == target else tensor.to(target)


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def to_numpy(output: Any) -> Any:
    """Tensors (also inside tuples, lists, dicts and named tuples) as numpy arrays; anything else unchanged."""
    if isinstance(output, torch.Tensor):
        tensor = output.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.numpy()
    if isinstance(output, tuple) and hasattr(output, "_asdict"):
        return {key: to_numpy(value) for key, value in output._asdict().items()}  # keep the field names
    if isinstance(output, tuple):
        return tuple(to_numpy(value) for value in output)
    if isinstance(output, list):
        return [to_numpy(value) for value in output]
    if isinstance(output, Mapping):  # includes transformers' ModelOutput, an OrderedDict
        return {key: to_numpy(value) for key, value in output.items()}
    return output


def _rows_of_outputs(prediction: dict[Any, Any] | tuple[Any, ...]) -> list[Any]:
    values = list(prediction.values()) if isinstance(prediction, dict) else list(prediction)
    lengths = {len(v) if isinstance(v, np.ndarray) and v.ndim else None for v in values}
    if len(lengths) != 1 or None in lengths:
        raise OutputNotRepresentable(
            f"the model's outputs ({_describe(prediction)}) do not share a first (batch) dimension, so they "
            "cannot be written one row a line as application/jsonlines; ask for application/json"
        )
    rows = range(lengths.pop())  # type: ignore[arg-type]
    if isinstance(prediction, dict):
        return [{key: value[i] for key, value in prediction.items()} for i in rows]
    return [[value[i] for value in values] for i in rows]


def _describe(prediction: dict[Any, Any] | tuple[Any, ...]) -> str:
    if isinstance(prediction, dict):
        return "keys " + ", ".join(map(str, prediction))
    return f"a tuple of {len(prediction)}"


def _first(data: np.ndarray) -> Any:
    return data.flat[0] if data.size else None
