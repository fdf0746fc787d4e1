"""The ASGI application: every route module's operations, the OpenAPI document
generated from them, /docs, and JSON answers for unknown paths and methods."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import erp, metrics_view, openapi, reports, routes_provisioning, routes_transactions
from .api import Operation, error_response, json_response
from .context import AdminContext
from .errors import ApiError

MODULES = (routes_provisioning, routes_transactions, reports, erp, metrics_view)


def operations() -> list[Operation]:
    return [op for m in MODULES for op in m.api.operations]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(ApiError(exc.status_code, code, str(exc.detail)))


def build_app(ctx: AdminContext) -> Starlette:
    ops = operations()
    document = openapi.build(ops)

    async def openapi_json(request: Request) -> Response:
        return json_response(document)

    async def docs(request: Request) -> Response:
        return openapi.docs_page()

    routes: list[Any] = [Route("/openapi.json", openapi_json), Route("/docs", docs)]
    for m in MODULES:
        routes += m.api.routes(ctx)
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.ctx = ctx
    app.state.registry = metrics_view.build_registry(ctx)
    app.state.openapi = document
    return app
