"""Response deserializers: an InvokeEndpoint body (a stream) and its content type in, Python data out.

Names, ``ACCEPT`` attributes and behaviour follow the SageMaker Python SDK v2
(``sagemaker.deserializers``). Each ``deserialize(stream, content_type)`` reads and closes the
stream (botocore's ``StreamingBody``, or anything with ``read``/``close``). Content types are compared
without parameters, so ``application/json; charset=utf-8`` is JSON.
"""

from __future__ import annotations

import abc
import codecs
import csv
import io
import json
from typing import Any

import numpy as np

__all__ = [
    "BaseDeserializer",
    "BytesDeserializer",
    "CSVDeserializer",
    "JSONDeserializer",
    "JSONLinesDeserializer",
    "NumpyDeserializer",
    "PandasDeserializer",
    "SimpleBaseDeserializer",
    "StreamDeserializer",
    "StringDeserializer",
]


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class BaseDeserializer(abc.ABC):
    """Turns a response body into Python data; ``ACCEPT`` is what it asks the endpoint for."""

    @abc.abstractmethod
    def deserialize(self, stream: Any, content_type: str) -> Any:
        """The data in ``stream``, whose media type is ``content_type``."""

    @property
    @abc.abstractmethod
    def ACCEPT(self) -> tuple[str, ...]:  # the SageMaker SDK's name
        """The media types it can read, in order of preference."""


class SimpleBaseDeserializer(BaseDeserializer):
    """A deserializer whose accepted type(s) are set at construction."""

    def __init__(self, accept: str | tuple[str, ...] = "*/*") -> None:
        self.accept = accept

    @property
    def ACCEPT(self) -> tuple[str, ...]:
        return (self.accept,) if isinstance(self.accept, str) else tuple(self.accept)


class StringDeserializer(SimpleBaseDeserializer):
    """The body decoded as text."""

    def __init__(self, encoding: str = "UTF-8", accept: str | tuple[str, ...] = "application/json") -> None:
        super().__init__(accept)
        self.encoding = encoding

    def deserialize(self, stream: Any, content_type: str) -> str:
        try:
            return stream.read().decode(self.encoding)
        finally:
            stream.close()


class BytesDeserializer(SimpleBaseDeserializer):
    """The body's bytes, as they came."""

    def deserialize(self, stream: Any, content_type: str) -> bytes:
        try:
            return stream.read()
        finally:
            stream.close()


class CSVDeserializer(SimpleBaseDeserializer):
    """CSV text as a list of rows, each a list of strings."""

    def __init__(self, encoding: str = "utf-8", accept: str | tuple[str, ...] = "text/csv") -> None:
        super().__init__(accept)
        self.encoding = encoding

    def deserialize(self, stream: Any, content_type: str) -> list[list[str]]:
        try:
            return list(csv.reader(stream.read().decode(self.encoding).splitlines()))
        finally:
            stream.close()


class StreamDeserializer(SimpleBaseDeserializer):
    """The stream itself and its content type; closing it is the caller's job."""

    def deserialize(self, stream: Any, content_type: str) -> tuple[Any, str]:
        return stream, content_type


class NumpyDeserializer(SimpleBaseDeserializer):
    """A NumPy array from .npy, CSV or JSON.

    ``allow_pickle`` defaults to False, as in current SageMaker SDK releases: loading a pickled
    object array runs code chosen by whoever produced the response.
    """

    def __init__(self, dtype: Any = None, accept: str | tuple[str, ...] = "application/x-npy",
                 allow_pickle: bool = False) -> None:
        super().__init__(accept)
        self.dtype = dtype
        self.allow_pickle = allow_pickle

    def deserialize(self, stream: Any, content_type: str) -> np.ndarray:
        media_type = _media_type(content_type)
        try:
            if media_type == "text/csv":
                return np.genfromtxt(codecs.getreader("utf-8")(stream), delimiter=",", dtype=self.dtype)
            if media_type == "application/json":
                return np.array(json.load(codecs.getreader("utf-8")(stream)), dtype=self.dtype)
            if media_type == "application/x-npy":
                try:
                    return np.load(io.BytesIO(stream.read()), allow_pickle=self.allow_pickle)
                except ValueError as exc:
                    if self.allow_pickle:
                        raise
                    raise ValueError("Please set the param allow_pickle=True to deserialize pickle objects in "
                                     f"NumpyDeserializer ({exc})") from exc
        finally:
            stream.close()
        raise ValueError(f"{type(self).__name__} cannot read content type {content_type}.")


class JSONDeserializer(SimpleBaseDeserializer):
    """JSON as Python objects."""

    def __init__(self, accept: str | tuple[str, ...] = "application/json") -> None:
        super().__init__(accept)

    def deserialize(self, stream: Any, content_type: str) -> Any:
        try:
            return json.load(codecs.getreader("utf-8")(stream))
        finally:
            stream.close()


class PandasDeserializer(SimpleBaseDeserializer):
    """CSV or JSON (``columns`` orient) as a pandas DataFrame. Needs pandas, which moorage does not install."""

    def __init__(self, accept: str | tuple[str, ...] = ("text/csv", "application/json")) -> None:
        super().__init__(accept)

    def deserialize(self, stream: Any, content_type: str) -> Any:
        try:
            import pandas
        except ImportError as exc:
            stream.close()
            raise ImportError("PandasDeserializer needs pandas, which is not installed: "
                              "`pip install pandas`, or use CSVDeserializer/JSONDeserializer.") from exc
        media_type = _media_type(content_type)
        try:
            # pandas wants a seekable buffer for some inputs; a response body is small enough to hold.
            if media_type == "text/csv":
                return pandas.read_csv(io.BytesIO(stream.read()))
            if media_type == "application/json":
                return pandas.read_json(io.BytesIO(stream.read()))
        finally:
            stream.close()
        raise ValueError(f"{type(self).__name__} cannot read content type {content_type}.")


class JSONLinesDeserializer(SimpleBaseDeserializer):
    """JSON Lines as a list of Python objects, one per line."""

    def __init__(self, accept: str | tuple[str, ...] = "application/jsonlines") -> None:
        super().__init__(accept)

    def deserialize(self, stream: Any, content_type: str) -> list[Any]:
        try:
            # Blank lines (a trailing newline, an empty body) are not records.
            return [json.loads(line) for line in stream.read().decode("utf-8").splitlines() if line.strip()]
        finally:
            stream.close()
