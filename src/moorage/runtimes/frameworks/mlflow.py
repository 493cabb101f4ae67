"""MLflow: any pyfunc model (an ``MLmodel`` directory), served as MLflow's own scoring server serves it.

Requests are read as ``mlflow models serve`` (and the image ``mlflow sagemaker build-and-push-container``
makes) reads them: JSON with ``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (plus
optional ``params``), and CSV with a header row; answers are ``{"predictions": ...}``. Parsing goes through
MLflow's own functions with the model's signature, so column types are cast exactly as MLflow casts them.

Beyond MLflow, so that SageMaker-style clients work unchanged: a bare JSON list (as ``instances``), CSV
without a header, JSON Lines and NPY bodies, and CSV/JSON Lines/NPY answers. Rows without column names
are matched to the signature's columns by position.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from moorage.runtimes import codecs
from moorage.runtimes.codecs import PayloadError
from moorage.runtimes.frameworks.base import Framework, ModelLoadError, format_traceback

MLMODEL = "MLmodel"
# MLflow's scoring server takes exactly one of these keys (mlflow.pyfunc.scoring_server.SUPPORTED_FORMATS).
_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class RequestError(Exception):
    """A request the model refused, with MLflow's HTTP status for it (usually 400 for a schema mismatch)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(slots=True)
class WithParams:
    """Decoded data plus the request's ``params`` (inference parameters such as a temperature)."""

    data: Any
    params: dict[str, Any]


class MlflowFramework(Framework):
    """pyfunc models: the model directory (or its only subdirectory) holds an ``MLmodel`` file."""

    name = "mlflow"

    def __init__(self) -> None:
        # Decoding needs the signature, and decode() is not given the model: the default model_fn keeps it.
        self.input_schema: Any = None
        self.metadata: Any = None

    # ------------------------------------------------------------------------------------------- loading

    def load_model(self, model_dir: Path, env: Mapping[str, str] | None = None) -> Any:
        path = find_mlmodel_dir(Path(model_dir))
        try:
            import mlflow.pyfunc

            model = mlflow.pyfunc.load_model(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load the MLflow model in {path}: {type(exc).__name__}: {exc}",
                traceback=format_traceback(),
            ) from exc
        self.metadata = model.metadata
        self.input_schema = model.metadata.get_input_schema()
        return model

    # ------------------------------------------------------------------------------------------ requests

    def decode(self, body: bytes | str, content_type: str) -> Any:
        media_type = codecs.normalize(content_type)
        if media_type == codecs.JSON:
            return self._decode_json(body)
        if media_type == codecs.CSV:
            return self._decode_csv(body)
        if media_type == codecs.JSONLINES:
            return self._decode_jsonlines(body)
        if media_type == codecs.NPY:
            return self._rows(codecs.decode(body, media_type))  # type: ignore[arg-type]
        raise codecs.UnsupportedContentType(content_type)

    def predict(self, model: Any, data: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            if isinstance(data, WithParams):
                return model.predict(data.data, params=data.params)
            return model.predict(data)
        except MlflowException as exc:
            # Schema enforcement failures are the client's (400), as MLflow's own server answers them.
            raise RequestError(exc.get_http_status_code(), exc.message) from exc

    def encode(self, prediction: Any, accept: str) -> tuple[bytes, str]:
        media_type = codecs.normalize(accept)
        if media_type == codecs.JSON:
            return _encode_json(prediction), codecs.JSON
        if isinstance(prediction, pd.DataFrame):
            if media_type == codecs.CSV:
                return prediction.to_csv(header=False, index=False).encode("utf-8"), codecs.CSV
            if media_type == codecs.JSONLINES:
                prediction = prediction.to_dict(orient="records")  # one object a line, named by column
            else:
                prediction = prediction.to_numpy()
        elif isinstance(prediction, pd.Series):
            prediction = prediction.to_numpy()
        elif isinstance(prediction, dict) and media_type in (codecs.CSV, codecs.NPY):
            raise RequestError(406, f"a dict prediction cannot be written as {accept}; ask for application/json")
        return codecs.encode(prediction, accept)

    # ---------------------------------------------------------------------------------------- decoding

    def _decode_json(self, body: bytes | str) -> Any:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"JSON body does not parse: {exc}") from None
        if isinstance(document, list):
            document = {"inputs": document}  # what SageMaker clients send; MLflow itself refuses it
        if not isinstance(document, dict):
            raise PayloadError(_format_message(f"Received a {type(document).__name__}"))
        params = document.pop("params", None)
        keys = [key for key in _FORMATS if key in document]
        if len(keys) != 1:
            raise PayloadError(_format_message(f"Received dictionary with input fields: {list(document)}"))
        if self._signature_from_type_hint():
            # Such models take the "inputs" value as is; MLflow parses nothing for them.
            if keys[0] != "inputs":
                raise PayloadError("This model's signature comes from type hints: send its input under 'inputs'")
            data = document["inputs"]
        else:
            data = self._parse({keys[0]: document[keys[0]]})
        if isinstance(data, np.ndarray):
            data = self._rows(data)
        return WithParams(data, params) if params else data

    def _decode_csv(self, body: bytes | str) -> Any:
        text = body if isinstance(body, str) else _utf8(body, "CSV")
        if not text.strip():
            raise PayloadError("CSV body is empty")
        schema = self.input_schema
        if schema is not None and schema.is_tensor_spec():
            return self._rows(codecs.decode(text, codecs.CSV))  # type: ignore[arg-type]
        names = _column_names(schema)
        try:
            first = next(row for row in csv.reader(io.StringIO(text)) if row)
        except csv.Error as exc:
            raise PayloadError(f"CSV body does not parse: {exc}") from None
        header = _is_header(first, names)
        if not header and names is not None and len(first) != len(names):
            raise PayloadError(
                f"CSV rows have {len(first)} columns but the model signature has {len(names)} inputs "
                f"({', '.join(map(str, names))}); send a header row to name the columns"
            )
        dtypes = _pandas_types(schema)
        try:
            if header:
                return pd.read_csv(io.StringIO(text), dtype=dtypes)
            return pd.read_csv(io.StringIO(text), header=None, names=names, dtype=dtypes if names else None)
        except (ValueError, TypeError, pd.errors.ParserError) as exc:
            # pandas' messages name the column and the value that did not convert.
            raise PayloadError(f"CSV body does not parse as the model's input columns: {exc}") from None

    def _decode_jsonlines(self, body: bytes | str) -> Any:
        decoded = codecs.decode(body, codecs.JSONLINES)  # type: ignore[arg-type]
        if isinstance(decoded, list) and decoded and all(isinstance(row, dict) for row in decoded):
            return self._parse({"dataframe_records": decoded})
        if isinstance(decoded, np.ndarray):
            return self._rows(decoded)
        raise PayloadError("JSON Lines lines must all be objects (records) or all be lists (rows)")

    def _parse(self, document: dict[str, Any]) -> Any:
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        try:
            return infer_and_parse_data(document, self.input_schema)
        except MlflowException as exc:
            raise PayloadError(exc.message) from None

    def _rows(self, array: np.ndarray) -> Any:
        """Unnamed rows as the model takes them: named columns by position, or an array cast for a tensor."""
        schema = self.input_schema
        if schema is None:
            return array
        if schema.is_tensor_spec():
            # An array stays an array, so the instance server can stack requests into one predict.
            return _cast_to_tensor_spec(array, schema)
        names = _column_names(schema)
        if names is None or array.ndim != 2:
            return array
        if array.shape[1] != len(names):
            raise PayloadError(
                f"rows have {array.shape[1]} values but the model signature has {len(names)} inputs "
                f"({', '.join(map(str, names))}); send records or a dataframe_split with column names"
            )
        # Cast as MLflow casts named JSON input (dataframe_split), by the signature's column types.
        return self._parse({"dataframe_split": {"columns": names, "data": array.tolist()}})

    def _signature_from_type_hint(self) -> bool:
        check = getattr(self.metadata, "_is_signature_from_type_hint", None)
        return bool(check()) if callable(check) else False


def find_mlmodel_dir(model_dir: Path) -> Path:
    """``model_dir`` when it holds MLmodel, else its only subdirectory that does (a logged model's folder)."""
    if (model_dir / MLMODEL).is_file():
        return model_dir
    if not model_dir.is_dir():
        raise ModelLoadError(f"The model directory {model_dir} does not exist")
    found = sorted(p for p in model_dir.iterdir() if p.is_dir() and (p / MLMODEL).is_file())
    if len(found) == 1:
        return found[0]
    if found:
        raise ModelLoadError(
            f"Found several MLflow models in {model_dir}: {', '.join(p.name for p in found)}; "
            "the model archive must hold one"
        )
    seen = sorted(p.name for p in model_dir.iterdir())
    raise ModelLoadError(
        f"No {MLMODEL} file in {model_dir} or its subdirectories; files seen: {seen or 'none'}. "
        "Save the model with mlflow.<flavor>.save_model (or log it) and package that directory"
    )


# ---------------------------------------------------------------------------------------------- helpers


def _format_message(received: str) -> str:
    return (
        f"The input must be a JSON dictionary with exactly one of the input fields {', '.join(_FORMATS)} "
        f"(or a JSON list of rows). {received}"
    )


def _utf8(body: bytes, what: str) -> str:
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} body is not valid UTF-8: {exc}") from None


def _column_names(schema: Any) -> list[str] | None:
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return list(schema.input_names())


def _pandas_types(schema: Any) -> dict[Any, Any] | None:
    """Column dtypes for pandas.read_csv, as MLflow's server passes them; None when the schema has none."""
    if schema is None or not schema.has_input_names():
        return None
    try:
        types = zip(schema.input_names(), schema.pandas_types(), strict=True)
    except Exception:  # tensor specs, arrays and objects have no pandas dtype: let pyfunc enforce them
        return None
    # read_csv refuses datetime dtypes (it wants parse_dates); pyfunc's schema enforcement converts them.
    return {name: dtype for name, dtype in types if np.dtype(dtype).kind != "M"}


def _is_header(cells: list[str], names: list[str] | None) -> bool:
    """Whether a CSV's first row names columns rather than holding values.

    With a signature it is a header exactly when every cell is one of the signature's column names;
    without one, when some cell is not a number (a row of numbers is data, never a header).
    """
    stripped = [cell.strip() for cell in cells]
    if names is not None:
        known = set(map(str, names))
        return all(cell in known for cell in stripped)
    return any(not _is_number(cell) for cell in stripped)


def _is_number(cell: str) -> bool:
    if not cell:
        return True  # an empty cell is a missing value
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _cast_to_tensor_spec(array: np.ndarray, schema: Any) -> np.ndarray:
    """CSV and JSON numbers arrive as float64/int64; MLflow refuses a tensor of another dtype without casting."""
    if len(schema.inputs) != 1:
        return array
    dtype = np.dtype(schema.inputs[0].type)
    if array.dtype == dtype or not np.can_cast(array.dtype, dtype, casting="same_kind"):
        return array
    return array.astype(dtype)


def _encode_json(prediction: Any) -> bytes:
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    # The same object MLflow's scoring server writes (DataFrames as records), serialised with orjson.
    return orjson.dumps({"predictions": _get_jsonable_obj(prediction, pandas_orient="records")},
                        default=_json_default, option=_JSON_OPTIONS)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        import base64

        return base64.encodebytes(value).decode("ascii")  # as MLflow's NumpyEncoder writes bytes
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
