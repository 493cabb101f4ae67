"""Request serializers: Python data in, an InvokeEndpoint body out.

The names, ``CONTENT_TYPE`` attributes and behaviour follow the SageMaker Python SDK v2
(``sagemaker.serializers``), so code written for it, and custom serializers subclassing
``BaseSerializer``/``SimpleBaseSerializer``, work unchanged with ``moorage.sdk.Predictor``.
"""

from __future__ import annotations

import abc
import csv
import io
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "BaseSerializer",
    "CSVSerializer",
    "IdentitySerializer",
    "JSONLinesSerializer",
    "JSONSerializer",
    "NumpySerializer",
    "SimpleBaseSerializer",
]


def _is_dataframe(data: Any) -> bool:
    # Checked by type name so that pandas, an optional dependency, is never imported here.
    return type(data).__name__ == "DataFrame" and hasattr(data, "to_csv")


class BaseSerializer(abc.ABC):
    """Turns data into a request body of the media type ``CONTENT_TYPE``."""

    @abc.abstractmethod
    def serialize(self, data: Any) -> Any:
        """The request body for ``data`` (bytes, str or a file-like object)."""

    @property
    @abc.abstractmethod
    def CONTENT_TYPE(self) -> str:  # the SageMaker SDK's name
        """The MIME type sent as the request's Content-Type."""


class SimpleBaseSerializer(BaseSerializer):
    """A serializer whose content type is set at construction (and may be changed later)."""

    def __init__(self, content_type: str = "application/json") -> None:
        if not isinstance(content_type, str):
            raise ValueError("content_type must be a string naming the MIME type of the request data, "
                             f"e.g. 'application/json' or 'text/csv'; got {content_type!r}")
        self.content_type = content_type

    @property
    def CONTENT_TYPE(self) -> str:
        return self.content_type


class CSVSerializer(SimpleBaseSerializer):
    """Lists, NumPy arrays, DataFrames or files as CSV text: one row per record."""

    def __init__(self, content_type: str = "text/csv") -> None:
        super().__init__(content_type)

    def serialize(self, data: Any) -> Any:
        if hasattr(data, "read"):
            return data.read()
        if _is_dataframe(data):
            return data.to_csv(header=False, index=False)
        # A 2-D array or a list of rows is several records; anything else is one row.
        mutable_sequence = self._is_sequence_like(data) and hasattr(data, "__setitem__")
        if mutable_sequence and len(data) > 0 and self._is_sequence_like(data[0]):
            return "\n".join(self._serialize_row(row) for row in data)
        return self._serialize_row(data)

    def _serialize_row(self, data: Any) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, np.ndarray):
            data = data.flatten()
        if hasattr(data, "__len__"):
            if len(data) == 0:
                raise ValueError("Cannot serialize empty array")
            buffer = io.StringIO()
            csv.writer(buffer, delimiter=",").writerow(data)
            return buffer.getvalue().rstrip("\r\n")
        raise ValueError(f"Unable to handle input format: {type(data)}")

    @staticmethod
    def _is_sequence_like(data: Any) -> bool:
        return hasattr(data, "__iter__") and hasattr(data, "__getitem__")


class NumpySerializer(SimpleBaseSerializer):
    """Arrays and lists in NumPy's .npy format; files and buffers are sent as they are."""

    def __init__(self, dtype: Any = None, content_type: str = "application/x-npy") -> None:
        super().__init__(content_type)
        self.dtype = dtype

    def serialize(self, data: Any) -> Any:
        if isinstance(data, np.ndarray):
            if data.size == 0:
                raise ValueError("Cannot serialize empty array.")
            return self._serialize_array(data)
        if isinstance(data, list):
            if len(data) == 0:
                raise ValueError("Cannot serialize empty array.")
            return self._serialize_array(np.array(data, self.dtype))
        if hasattr(data, "read"):  # assumed to hold .npy data already
            return data.read()
        return self._serialize_array(np.array(data))

    @staticmethod
    def _serialize_array(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()


class JSONSerializer(SimpleBaseSerializer):
    """Any JSON-serialisable value, NumPy arrays (also as dict values) included, as JSON text."""

    def serialize(self, data: Any) -> Any:
        if isinstance(data, dict):
            return json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in data.items()})
        if hasattr(data, "read"):
            return data.read()
        if isinstance(data, np.ndarray):
            return json.dumps(data.tolist())
        return json.dumps(data)


class IdentitySerializer(SimpleBaseSerializer):
    """The data as it is (bytes from a file, say), with the content type you name."""

    def __init__(self, content_type: str = "application/octet-stream") -> None:
        super().__init__(content_type)

    def serialize(self, data: Any) -> Any:
        return data


class JSONLinesSerializer(SimpleBaseSerializer):
    """An iterable of JSON-serialisable values as JSON Lines: one value per line."""

    def __init__(self, content_type: str = "application/jsonlines") -> None:
        super().__init__(content_type)

    def serialize(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        if hasattr(data, "read"):
            return data.read()
        if isinstance(data, Iterable):
            return "\n".join(json.dumps(_plain(element)) for element in data)
        raise ValueError(f"Object of type {type(data)} is not JSON Lines serializable.")


def _plain(value: Any) -> Any:
    # Iterating a 2-D array yields 1-D arrays, which json cannot write; lists it can.
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value
