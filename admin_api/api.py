"""A small operation registry over Starlette: one place that knows each route's
roles, query, body and response types, so the dispatcher validates and the
OpenAPI document (openapi.py) is generated from the same declarations: what is
documented is what is served.

A handler is ``async def handler(req: Req) -> object``; it returns a msgspec
Struct / list / dict (encoded as JSON), a `Table` (JSON or CSV by the
``format`` query parameter), or a ready Starlette `Response`.

Order of checks: authentication (401), role (403), query (422), merchant
scope (403), body (400 malformed / 422 invalid), then the handler. Any other
exception is logged with the route (never the body) and answered 500.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchd.db import Database

from .auth import Principal, authenticate, check_mid, forbid
from .context import AdminContext
from .errors import ApiError, from_validation

log = logging.getLogger("admin_api")

MAX_BODY = 1 << 20  # 1 MiB: the largest document a client has a reason to send

ALL = frozenset({"admin", "merchant", "sre"})
ADMIN = frozenset({"admin"})
READ = frozenset({"admin", "merchant"})  # merchant reads are scoped to its MID
OPS = frozenset({"admin", "sre"})
PUBLIC: frozenset[str] = frozenset()

_encoder = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status, media_type="application/json")


def error_response(exc: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return Response(_encoder.encode(exc.body()), exc.status, headers, media_type="application/json")


@dataclass
class Table:
    """Rows of a report: JSON ``{"columns", "rows": [{...}], **extra}`` or CSV."""

    columns: list[str]
    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    filename: str = "report.csv"

    def csv(self) -> Response:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns, extrasaction="ignore", lineterminator="\r\n")
        w.writeheader()
        w.writerows(self.rows)
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{self.filename}"'},
        )

    def json(self) -> Response:
        return json_response({"columns": self.columns, "rows": self.rows, **self.extra})


@dataclass
class Req:
    ctx: AdminContext
    principal: Principal | None
    path: dict[str, str]
    query: Any
    body: Any
    request: Request

    @property
    def db(self) -> Database:
        """Reads (GET) use the API's read connections; writes the switch's database."""
        return self.ctx.read_db if self.request.method in ("GET", "HEAD") else self.ctx.db

    @property
    def is_admin(self) -> bool:
        return self.principal is not None and self.principal.role == "admin"

    def scope_mid(self, mid: str | None) -> str | None:
        """The merchant filter to apply: a merchant token is pinned to its own."""
        p = self.principal
        if p is not None and p.role == "merchant":
            if mid is not None and mid != p.mid:
                raise forbid("a merchant token sees its own merchant only")
            return p.mid
        return mid


Handler = Callable[[Req], Awaitable[Any]]


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    roles: frozenset[str]
    query: type | None = None
    body: type | None = None
    response: Any = None  # a type for the 200/201 schema; None = no body
    status: int = 200
    csv: bool = False  # also served as text/csv with ?format=csv
    media_type: str = "application/json"
    operation_id: str = ""


class Api:
    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def op(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        tag: str,
        roles: frozenset[str],
        query: type | None = None,
        body: type | None = None,
        response: Any = None,
        status: int = 200,
        csv: bool = False,
        media_type: str = "application/json",
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method,
                    path,
                    fn,
                    summary,
                    tag,
                    roles,
                    query,
                    body,
                    response,
                    status,
                    csv,
                    media_type,
                    fn.__name__,
                )
            )
            return fn

        return register

    def routes(self, ctx: AdminContext) -> list[Route]:
        by_path: dict[str, dict[str, Operation]] = {}
        for op in self.operations:
            by_path.setdefault(op.path, {})[op.method] = op
        return [
            Route(path, _endpoint(ctx, ops), methods=list(ops)) for path, ops in by_path.items()
        ]


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it passes MAX_BODY (never buffered beyond it)."""
    too_large = ApiError(413, "too_large", f"the body is over {MAX_BODY} bytes", "body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(ctx: AdminContext, ops: dict[str, Operation]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        method = request.method if request.method != "HEAD" else "GET"
        op = ops[method]
        try:
            return await _dispatch(ctx, op, request)
        except ApiError as exc:
            return error_response(exc)
        except Exception:
            log.exception("admin API: %s %s failed", op.method, op.path)
            return error_response(ApiError(500, "internal", "internal error; see the server log"))

    return endpoint


async def _dispatch(ctx: AdminContext, op: Operation, request: Request) -> Response:
    principal: Principal | None = None
    if op.roles:
        principal = await authenticate(ctx, request.headers.get("authorization"))
        if principal.role not in op.roles:
            raise forbid(f"role {principal.role!r} may not call {op.method} {op.path}")
    params = dict(request.query_params)
    want_csv = False
    if op.csv:
        fmt = params.pop("format", "json")
        if fmt not in ("json", "csv"):
            raise ApiError(422, "invalid", "format is json or csv", "format")
        want_csv = fmt == "csv"
    query = None
    if op.query is not None:
        try:
            query = msgspec.convert(params, op.query, strict=False)
        except msgspec.ValidationError as exc:
            raise from_validation(exc, "query") from None
    elif params:
        name = next(iter(params))
        raise ApiError(422, "invalid", f"unknown query parameter `{name}`", name)
    path = dict(request.path_params)
    if principal is not None and "mid" in path:
        check_mid(principal, path["mid"])
    body = None
    if op.body is not None:
        raw = await _read_body(request)
        try:
            body = msgspec.json.decode(raw, type=op.body)
        except msgspec.ValidationError as exc:
            raise from_validation(exc, "body") from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, "malformed", f"the body is not valid JSON: {exc}", "body") from None
    result = await op.handler(Req(ctx, principal, path, query, body, request))
    if isinstance(result, Response):
        return result
    if isinstance(result, Table):
        return result.csv() if want_csv else result.json()
    if result is None:
        return Response(status_code=204 if op.status == 200 else op.status)
    return json_response(result, op.status)
