"""Request validation and response shaping driven by botocore's service models.

The API is data: botocore ships the shapes of every SageMaker, SageMaker Runtime and Application
Auto Scaling operation, so instead of hand-written checks per handler, one walker validates any
request against its input shape (reporting violations in AWS's own ``ValidationException``
wording) and one walker shapes any handler result to its output shape (dropping what the shape
does not define, so internal fields never leak, and converting values to their JSON-protocol
form).

botocore's ``Shape`` objects are convenient but slow to walk (members are resolved through the
shape resolver on first access per object), so each shape is compiled once into a ``_Node`` with
plain tables, and output shaping is compiled further into closures that only touch the members
a result actually has.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import botocore.model
from botocore.loaders import Loader

__all__ = ["ErrorShape", "RequestValidationError", "ServiceShapes", "compile_java_pattern"]

_Converter = Callable[[Any], Any]

# Longest rendering of a rejected value in a message: AWS echoes values, but a multi-megabyte
# body or environment map has no business in an error response.
_MAX_VALUE_TEXT = 256


class RequestValidationError(Exception):
    """A request that does not fit its input shape; becomes an AWS ``ValidationException``.

    ``message`` is AWS's text ("2 validation errors detected: ...; ..."), ``errors`` the
    individual violations.
    """

    def __init__(self, errors: list[str]) -> None:
        count = len(errors)
        noun = "error" if count == 1 else "errors"
        self.errors = errors
        self.message = f"{count} validation {noun} detected: " + "; ".join(errors)
        super().__init__(self.message)


# -- Java regular expressions ---------------------------------------------------------------------

# POSIX classes as Java defines them (US-ASCII only unless UNICODE_CHARACTER_CLASS is set).
_JAVA_CLASSES = {
    "ASCII": r"\x00-\x7F",
    "Print": r"\x20-\x7E",
    "Graph": r"\x21-\x7E",
    "Alnum": "a-zA-Z0-9",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Lower": "a-z",
    "Upper": "A-Z",
    "Punct": r"!-/:-@\[-`{-~",
    "Space": r" \t\n\x0B\f\r",
    "XDigit": "0-9a-fA-F",
}
# Java strings are UTF-16, so "any supplementary character" is spelled as a surrogate-pair range.
_SURROGATE_RANGE = re.compile(r"\\uD800\\uDC00-\\uDBFF\\uDFFF", re.IGNORECASE)
_PATTERN_CACHE: dict[str, re.Pattern[str] | None] = {}


def compile_java_pattern(pattern: str) -> re.Pattern[str] | None:
    """Compile a service-model (Java) regex for full-string matching, or None if Python can't.

    The few Java constructs with a mechanical Python spelling are translated (POSIX ``\\p{...}``
    classes, ``\\z``, surrogate-pair ranges); Unicode-category classes such as ``\\p{L}`` are
    not, and such patterns are skipped. ``re.ASCII`` because Java's ``\\w\\d\\s`` are ASCII-only.
    """
    if pattern in _PATTERN_CACHE:
        return _PATTERN_CACHE[pattern]
    try:
        compiled: re.Pattern[str] | None = re.compile(_translate_java(pattern), re.ASCII)
    except re.error:
        compiled = None
    _PATTERN_CACHE[pattern] = compiled
    return compiled


def _translate_java(pattern: str) -> str:
    pattern = _SURROGATE_RANGE.sub(r"\\U00010000-\\U0010FFFF", pattern)
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == "p" and pattern.startswith("{", i + 2):
                end = pattern.find("}", i + 3)
                ranges = _JAVA_CLASSES.get(pattern[i + 3 : end]) if end > 0 else None
                if ranges is not None:
                    out.append(ranges if in_class else f"[{ranges}]")
                    i = end + 1
                    continue
            out.append("\\Z" if nxt == "z" else pattern[i : i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class ErrorShape:
    """One modelled error: its shape name (``__type`` in JSON), the code a query-protocol client
    sees (the model's ``error.code``), the HTTP status, and whose fault it is."""

    name: str
    code: str
    status: int
    sender_fault: bool


# -- compiled shapes -----------------------------------------------------------------------------


class _Member:
    __slots__ = ("key", "node", "path")

    def __init__(self, key: str, path: str, node: _Node) -> None:
        self.key = key  # the name on the wire
        self.path = path  # lowerCamelCase, as AWS names members in validation messages
        self.node = node


class _Node:
    """One botocore shape, flattened into what the walkers need."""

    __slots__ = (
        "by_name",
        "document",
        "enum",
        "enum_text",
        "key",
        "max",
        "member",
        "members",
        "min",
        "name",
        "out",
        "pattern",
        "required",
        "sensitive",
        "type",
        "union",
        "value",
    )

    def __init__(self, shape: botocore.model.Shape) -> None:
        meta = shape.metadata
        self.name: str = shape.name
        self.type: str = shape.type_name
        self.min: int | float | None = meta.get("min")
        self.max: int | float | None = meta.get("max")
        enum = meta.get("enum")
        self.enum: frozenset[str] | None = frozenset(enum) if enum else None
        self.enum_text = "[" + ", ".join(enum) + "]" if enum else ""
        self.pattern: str | None = meta.get("pattern")
        self.sensitive: bool = bool(meta.get("sensitive"))
        self.union: bool = bool(meta.get("union"))
        self.document: bool = bool(meta.get("document"))
        # Filled in by ServiceShapes._node once the referenced nodes exist (shapes can recurse).
        self.members: dict[str, _Member] = {}  # by wire key, for validating requests
        self.by_name: dict[str, _Member] = {}  # by member name, for shaping handler results
        self.required: tuple[_Member, ...] = ()
        self.member: _Node | None = None
        self.key: _Node | None = None
        self.value: _Node | None = None
        # Output converter; False until compiled, None when values pass through unchanged.
        self.out: _Converter | bool | None = False


def _wire_key(member_name: str, shape: botocore.model.Shape) -> str:
    # Body members travel under their serialized name (as botocore's JSON serializer writes
    # them); members bound to a header, URI label or query string are handed over by the
    # dispatcher under their member name.
    serialization = shape.serialization
    if serialization.get("location"):
        return member_name
    return serialization.get("name", member_name)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


# -- values in messages --------------------------------------------------------------------------


def _java_text(value: Any) -> str:
    # AWS renders values with Java's toString: true/false, [a, b], {k=v}.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_java_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    return str(value)


def _violation(node: _Node, value: Any, path: str, constraint: str) -> str:
    if node.sensitive:
        # AWS leaves sensitive values out of the message entirely.
        return f"Value at '{path}' failed to satisfy constraint: {constraint}"
    text = _java_text(value)
    if len(text) > _MAX_VALUE_TEXT:
        text = text[:_MAX_VALUE_TEXT] + "..."
    return f"Value '{text}' at '{path}' failed to satisfy constraint: {constraint}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_TYPE_NAMES = {
    "string": "string",
    "integer": "integer",
    "long": "long",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "timestamp": "timestamp (epoch seconds or ISO 8601)",
    "blob": "blob (base64-encoded string)",
    "list": "list",
    "map": "map",
    "structure": "structure",
}


def _is_timestamp(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | datetime):
        return True
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


def _blob_length(value: Any) -> int | None:
    """Decoded length of a blob value, or None when it is not a blob."""
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, str):
        try:
            return len(binascii.a2b_base64(value, strict_mode=True))
        except (binascii.Error, ValueError):
            return None
    return None


class ServiceShapes:
    """Validation and shaping for one botocore service model.

    ``unchecked_patterns`` names shapes whose ``pattern`` is not enforced, for the places where
    moorage deliberately accepts more than AWS does (for example ``Url``, so that a
    ``ModelDataUrl`` may be ``file://``).
    """

    _loader: Loader | None = None
    _loader_lock = threading.Lock()

    def __init__(self, service_name: str, *, unchecked_patterns: Iterable[str] = (),
                 extra_enum_values: Mapping[str, Iterable[str]] | None = None) -> None:
        loader = self.shared_loader()
        description = loader.load_service_model(service_name, "service-2")
        self.service_model = botocore.model.ServiceModel(description, service_name=service_name)
        self._description = description
        self.service_name = service_name
        self._unchecked_patterns = frozenset(unchecked_patterns)
        # Values moorage accepts beyond AWS's enum, per shape name (e.g. InstanceType "local").
        self._extra_enum_values = {k: frozenset(v) for k, v in (extra_enum_values or {}).items()}
        self._nodes: dict[str, _Node] = {}
        self._inputs: dict[str, _Node | None] = {}
        self._outputs: dict[str, _Converter | None] = {}
        self._errors: dict[str, ErrorShape] | None = None

    @classmethod
    def shared_loader(cls) -> Loader:
        # One Loader for all services: it caches the parsed JSON models, which are large.
        with cls._loader_lock:
            if cls._loader is None:
                cls._loader = Loader()
            return cls._loader

    def operation(self, name: str) -> botocore.model.OperationModel | None:
        try:
            return self.service_model.operation_model(name)
        except botocore.model.OperationNotFoundError:
            return None

    def error_shape(self, code: str) -> ErrorShape | None:
        """The modelled error a moorage error code stands for: by shape name first (``ValidationException``),
        then by the model's error code (``InvalidParameterValue`` -> ``InvalidParameterValueException``)."""
        if self._errors is None:
            by_name: dict[str, ErrorShape] = {}
            by_code: dict[str, ErrorShape] = {}
            for name, spec in self._description.get("shapes", {}).items():
                if not spec.get("exception"):
                    continue
                error = spec.get("error") or {}
                shape = ErrorShape(name, error.get("code", name), int(error.get("httpStatusCode", 400)),
                                   bool(error.get("senderFault", int(error.get("httpStatusCode", 400)) < 500)))
                by_name[name] = shape
                by_code.setdefault(shape.code, shape)
            self._errors = {**by_code, **by_name}
        return self._errors.get(code)

    def _require(self, name: str) -> botocore.model.OperationModel:
        op = self.operation(name)
        if op is None:
            raise KeyError(f"{self.service_name} has no operation {name!r}")
        return op

    # -- compiling -------------------------------------------------------------------------------

    def _node(self, shape: botocore.model.Shape) -> _Node:
        node = self._nodes.get(shape.name)
        if node is not None:
            return node
        node = _Node(shape)
        self._nodes[shape.name] = node  # before recursing: shapes may refer to themselves
        if node.pattern is not None and shape.name in self._unchecked_patterns:
            node.pattern = None
        extra = self._extra_enum_values.get(shape.name)
        if extra and node.enum is not None:
            node.enum = node.enum | extra
            node.enum_text = "[" + ", ".join(sorted(node.enum)) + "]"
        if isinstance(shape, botocore.model.StructureShape):
            required = set(shape.required_members)
            members = {}
            for name, member_shape in shape.members.items():
                members[name] = _Member(_wire_key(name, member_shape), _camel(name), self._node(member_shape))
            node.by_name = members
            node.members = {m.key: m for m in members.values()}
            node.required = tuple(m for name, m in members.items() if name in required)
        elif isinstance(shape, botocore.model.ListShape):
            node.member = self._node(shape.member)
        elif isinstance(shape, botocore.model.MapShape):
            node.key = self._node(shape.key)
            node.value = self._node(shape.value)
        return node

    def _input_node(self, operation_name: str) -> _Node | None:
        if operation_name not in self._inputs:
            shape = self._require(operation_name).input_shape
            self._inputs[operation_name] = None if shape is None else self._node(shape)
        return self._inputs[operation_name]

    def uncompilable_patterns(self) -> dict[str, str]:
        """Shape name -> pattern for every pattern in the model that is skipped (not compilable)."""
        shapes = self._description.get("shapes", {})
        return {
            name: spec["pattern"]
            for name, spec in shapes.items()
            if "pattern" in spec and compile_java_pattern(spec["pattern"]) is None
        }

    # -- validation ------------------------------------------------------------------------------

    def validate_input(self, operation_name: str, params: Mapping[str, Any]) -> None:
        """Raise RequestValidationError listing every way ``params`` break the input shape."""
        node = self._input_node(operation_name)
        errors: list[str] = []
        if node is None:
            if params:
                errors.append(f"Unknown parameter in input: {', '.join(map(repr, params))}, must be empty")
        else:
            self._check(node, params, "", errors)
        if errors:
            raise RequestValidationError(errors)

    def _check(self, node: _Node, value: Any, path: str, errors: list[str]) -> None:
        kind = node.type
        if kind == "structure":
            if node.document:
                return
            if not isinstance(value, Mapping):
                errors.append(_violation(node, value, path or "input", "Member must be of type structure"))
                return
            members = node.members
            present = 0
            for key, item in value.items():
                member = members.get(key)
                if member is None:
                    errors.append(
                        f'Unknown parameter in {path or "input"}: "{key}", must be one of: {", ".join(members)}'
                    )
                elif item is not None:
                    present += 1
                    self._check(member.node, item, _join(path, member.path), errors)
            for member in node.required:
                if value.get(member.key) is None:
                    errors.append(
                        f"Value null at '{_join(path, member.path)}' failed to satisfy constraint: "
                        "Member must not be null"
                    )
            if node.union and present != 1:
                errors.append(
                    f"Value '{_java_text(value)}' at '{path or 'input'}' failed to satisfy constraint: "
                    f"Exactly one member must be set, not {present}"
                )
        elif kind == "list":
            if not isinstance(value, list | tuple):
                errors.append(_violation(node, value, path, "Member must be of type list"))
                return
            self._check_size(node, value, len(value), path, errors)
            element = node.member
            assert element is not None
            for index, item in enumerate(value, 1):
                item_path = f"{path}.{index}.member"
                if item is None:
                    errors.append(f"Value null at '{item_path}' failed to satisfy constraint: Member must not be null")
                else:
                    self._check(element, item, item_path, errors)
        elif kind == "map":
            self._check_map(node, value, path, errors)
        else:
            for constraint in self._scalar_problems(node, value):
                errors.append(_violation(node, value, path, constraint))

    def _check_map(self, node: _Node, value: Any, path: str, errors: list[str]) -> None:
        if not isinstance(value, Mapping):
            errors.append(_violation(node, value, path, "Member must be of type map"))
            return
        self._check_size(node, value, len(value), path, errors)
        key_node, value_node = node.key, node.value
        assert key_node is not None and value_node is not None
        key_problems: list[str] = []
        value_problems: list[str] = []
        for key, item in value.items():
            for problem in self._scalar_problems(key_node, key):
                if problem not in key_problems:
                    key_problems.append(problem)
            if value_node.type in ("structure", "list", "map"):
                self._check(value_node, item, f"{path}.{key}", errors)
            elif item is None:
                value_problems.append("Member must not be null")
            else:
                for problem in self._scalar_problems(value_node, item):
                    if problem not in value_problems:
                        value_problems.append(problem)
        # AWS reports map entries as one violation of the whole map per side (keys / values).
        if key_problems:
            errors.append(
                _violation(node, value, path, f"Map keys must satisfy constraint: [{', '.join(key_problems)}]")
            )
        if value_problems:
            errors.append(
                _violation(node, value, path, f"Map value must satisfy constraint: [{', '.join(value_problems)}]")
            )

    @staticmethod
    def _check_size(node: _Node, value: Any, size: int, path: str, errors: list[str]) -> None:
        if node.min is not None and size < node.min:
            errors.append(_violation(node, value, path, f"Member must have length greater than or equal to {node.min}"))
        if node.max is not None and size > node.max:
            errors.append(_violation(node, value, path, f"Member must have length less than or equal to {node.max}"))

    @staticmethod
    def _scalar_problems(node: _Node, value: Any) -> list[str]:
        kind = node.type
        problems: list[str] = []
        if kind == "string":
            if not isinstance(value, str):
                return ["Member must be of type string"]
            size = len(value)
            if node.min is not None and size < node.min:
                problems.append(f"Member must have length greater than or equal to {node.min}")
            if node.max is not None and size > node.max:
                problems.append(f"Member must have length less than or equal to {node.max}")
            if node.enum is not None and value not in node.enum:
                problems.append(f"Member must satisfy enum value set: {node.enum_text}")
            if node.pattern is not None:
                regex = compile_java_pattern(node.pattern)
                if regex is not None and regex.fullmatch(value) is None:
                    problems.append(f"Member must satisfy regular expression pattern: {node.pattern}")
        elif kind in ("integer", "long", "float", "double"):
            integral = kind in ("integer", "long")
            if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
                return [f"Member must be of type {kind}"]
            if node.min is not None and value < node.min:
                problems.append(f"Member must have value greater than or equal to {node.min}")
            if node.max is not None and value > node.max:
                problems.append(f"Member must have value less than or equal to {node.max}")
        elif kind == "boolean":
            if not isinstance(value, bool):
                return ["Member must be of type boolean"]
        elif kind == "timestamp":
            if not _is_timestamp(value):
                return [f"Member must be of type {_TYPE_NAMES['timestamp']}"]
        elif kind == "blob":
            size = _blob_length(value)
            if size is None:
                return [f"Member must be of type {_TYPE_NAMES['blob']}"]
            if node.min is not None and size < node.min:
                problems.append(f"Member must have length greater than or equal to {node.min}")
            if node.max is not None and size > node.max:
                problems.append(f"Member must have length less than or equal to {node.max}")
        return problems

    # -- output shaping --------------------------------------------------------------------------

    def shape_output(self, operation_name: str, result: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON-protocol body for ``result``: only modelled members, wire-ready values.

        ``result`` is keyed by member names. Unknown keys and None values are dropped;
        datetimes become epoch seconds, bytes become base64 text.
        """
        if operation_name in self._outputs:
            convert = self._outputs[operation_name]
        else:
            shape = self._require(operation_name).output_shape
            convert = None if shape is None else self._converter(self._node(shape))
            self._outputs[operation_name] = convert
        if convert is None:
            return {}
        shaped: dict[str, Any] = convert(result)
        return shaped

    def _converter(self, node: _Node) -> _Converter | None:
        if not isinstance(node.out, bool):
            return node.out
        kind = node.type
        if kind not in ("structure", "list", "map") or (kind == "structure" and node.document):
            node.out = _SCALAR_OUT.get(kind)
            return node.out
        # Recursive shapes reach this node again while it is being compiled: they get a
        # trampoline that calls the finished converter.
        node.out = _trampoline(node)
        if kind == "structure":
            table = {name: (member.key, self._converter(member.node)) for name, member in node.by_name.items()}

            def structure(value: Mapping[str, Any]) -> dict[str, Any]:
                out: dict[str, Any] = {}
                for name, item in value.items():
                    entry = table.get(name)
                    if entry is None or item is None:
                        continue
                    key, convert = entry
                    out[key] = item if convert is None else convert(item)
                return out

            node.out = structure
        elif kind == "list":
            assert node.member is not None
            element = self._converter(node.member)
            # A None element converter means scalars all the way down, so nothing captured the
            # trampoline and the list can pass through as it is.
            node.out = None if element is None else _list_of(element)
        else:
            assert node.value is not None
            entry_value = self._converter(node.value)
            node.out = None if entry_value is None else _map_of(entry_value)
        return node.out


def _trampoline(node: _Node) -> _Converter:
    def call(value: Any) -> Any:
        convert = node.out
        assert callable(convert)
        return convert(value)

    return call


def _list_of(element: _Converter) -> _Converter:
    return lambda value: [element(item) for item in value if item is not None]


def _map_of(entry_value: _Converter) -> _Converter:
    return lambda value: {key: entry_value(item) for key, item in value.items() if item is not None}


def _timestamp_out(value: Any) -> Any:
    if isinstance(value, datetime):
        # Naive datetimes are UTC by convention here; .timestamp() would read them as local time.
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()
    return value


def _blob_out(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    return value


_SCALAR_OUT: dict[str, _Converter] = {"timestamp": _timestamp_out, "blob": _blob_out}
