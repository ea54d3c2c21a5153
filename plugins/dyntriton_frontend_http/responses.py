"""HTTP answers the way Triton's REST frontend writes them: compact JSON, ``{"error": ...}`` bodies, status codes.

Protobuf messages (model metadata, config, statistics) become JSON with every 64-bit
integer as a JSON number, as Triton prints them (``json_format`` alone would print
int64 as strings, e.g. ``"shape": ["-1"]``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from dynamo_triton.errors import DyntritonError, OverloadedError

__all__ = ["HTTP_STATUS", "dumps", "error_response", "http_status", "json_response", "message_to_json"]

#: gRPC status name -> HTTP status. Triton answers 400 for INVALID_ARG, UNKNOWN, ALREADY_EXISTS and
#: CANCELLED; a client that went away is logged as 499 (nginx's "client closed request").
HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "ALREADY_EXISTS": 400,
    "UNKNOWN": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "ABORTED": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def dumps(body: Any) -> bytes:
    """Compact JSON bytes (no spaces, UTF-8 kept as is), like Triton's writer."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON answer."""
    return web.Response(status=status, body=dumps(body), content_type="application/json")


def http_status(error: DyntritonError) -> int:
    """The HTTP status of an error's gRPC status name (500 for names without a better match)."""
    return HTTP_STATUS.get(error.status, 500)


def error_response(error: DyntritonError | str, status: int | None = None) -> web.Response:
    """Triton's error body ``{"error": "<message>"}``; the hint, when there is one, follows the message.

    A request shed by admission control is 503 with ``Retry-After`` (whole seconds, at least 1).
    """
    if isinstance(error, OverloadedError):
        response = json_response({"error": str(error)}, status or 503)
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        return response
    if isinstance(error, DyntritonError):
        message = str(error)
        status = status or http_status(error)
    else:
        message = error
    return json_response({"error": message}, status or 500)


def _numbers(value: Any, descriptor: Descriptor) -> Any:
    """Turn the int64 strings json_format printed for ``descriptor`` back into numbers, recursively."""
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for entry in item.values():
                        _numbers(entry, value_field.message_type)
                elif value_field.type in _INT64_TYPES:
                    value[name] = {key: int(number) for key, number in item.items()}
            elif isinstance(item, list):
                for entry in item:
                    _numbers(entry, field.message_type)
            else:
                _numbers(item, field.message_type)
        elif field.type in _INT64_TYPES:
            value[name] = [int(number) for number in item] if isinstance(item, list) else int(item)
    return value


def message_to_json(message: Message, *, defaults: bool = False) -> dict[str, Any]:
    """``message`` as Triton's REST frontend prints it: proto field names, 64-bit integers as numbers.

    :param defaults: print fields left at their default value too (Triton does for configs and statistics).
    """
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults
    )
    return _numbers(value, message.DESCRIPTOR)
