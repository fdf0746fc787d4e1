"""API errors: every 4xx names the problem, and the field when there is one.

Handlers raise `ApiError` (or one of its helpers); the dispatcher in `api.py`
turns it into ``{"error": code, "message": text, "field": path-or-null}``.
msgspec's validation messages end in `` - at `$.path` ``; `from_validation`
turns that into a field path a client can show next to the input.
"""

from __future__ import annotations

import re

import msgspec


class ErrorBody(msgspec.Struct):
    error: str
    message: str
    field: str | None = None


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.field = field

    def body(self) -> ErrorBody:
        return ErrorBody(self.error, self.message, self.field)


def not_found(what: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found", field)


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError(409, "conflict", message, field)


def invalid(message: str, field: str) -> ApiError:
    return ApiError(422, "invalid", message, field)


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")


def field_of(message: str, root: str) -> str:
    """`$.lines[0].code` -> `lines[0].code`; unknown/missing fields add their own name."""
    path = ""
    m = _AT.search(message)
    if m:
        path = m.group("path").lstrip(".")
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return path or root


def from_validation(exc: msgspec.ValidationError, root: str) -> ApiError:
    """A body/query that decoded but does not fit the schema: 422 naming the field."""
    message = str(exc)
    return ApiError(422, "invalid", _AT.sub("", message), field_of(message, root))
