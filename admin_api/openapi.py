"""The OpenAPI 3.1 document, generated from the operation registry (api.py)
and the msgspec types, so it cannot drift from what is served; and /docs, a
small self-contained HTML page that renders it (no CDN is reachable from
where this runs, so no Swagger UI assets).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from starlette.responses import HTMLResponse

from .api import Operation
from .errors import ErrorBody

ERROR_STATUSES = {
    "400": "Malformed body",
    "401": "No token or an unknown one",
    "403": "The token's role or merchant does not allow this",
    "404": "Unknown id",
    "409": "Conflict with the current state",
    "413": "Body too large",
    "422": "Invalid field (named in `field`)",
    "503": "A dependency (HSM, ledger) is unavailable",
}
REF = "#/components/schemas/{name}"
_KEY = r"^[0-9A-Za-z._-]{1,32}$"
#: What each path parameter looks like (the handlers answer 404 or 422 otherwise).
PATH_PARAMS: dict[str, dict[str, Any]] = {
    "mid": {"type": "string", "pattern": r"^[0-9]{15}$"},
    "tid": {"type": "string", "pattern": r"^[0-9A-Za-z]{8}$"},
    "pan": {"type": "string", "pattern": r"^[0-9]{13,19}$"},
    "txn_id": {"type": "string", "pattern": r"^[0-9A-Za-z]{8}\.[0-9]{6}\.[0-9]{6}\.[01]$"},
    "name": {"type": "string", "pattern": r"^[0-9A-Za-z._-]{1,64}$"},
}


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Query parameters are absent rather than null."""
    options = schema.get("anyOf")
    if options:
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            return merged | rest[0]
    return schema


def build(operations: list[Operation], title: str = "switchd admin API") -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for op in operations:
        for t in (op.query, op.body, op.response):
            if t is not None:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    of = dict(zip(map(id, types), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
        }
        params: list[dict[str, Any]] = []
        for seg in op.path.split("/"):
            if seg.startswith("{"):
                name = seg[1:-1]
                schema = PATH_PARAMS.get(name, {"type": "string", "pattern": _KEY})
                params.append({"name": name, "in": "path", "required": True, "schema": schema})
        if op.query is not None:
            name = of[id(op.query)]["$ref"].rsplit("/", 1)[1]
            q = components[name]
            required = set(q.get("required", ()))
            for pname, pschema in q.get("properties", {}).items():
                params.append(
                    {
                        "name": pname,
                        "in": "query",
                        "required": pname in required,
                        "schema": _strip_null(copy.deepcopy(pschema)),
                    }
                )
        if op.csv:
            params.append(
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
                }
            )
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": of[id(op.body)]}},
            }
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK" if op.status == 200 else "Created"}
        if op.response is not None:
            content = {"application/json": {"schema": of[id(op.response)]}}
            if op.csv:
                content["text/csv"] = {"schema": {"type": "string"}}
            ok["content"] = content
        elif op.media_type != "application/json":
            ok["content"] = {op.media_type: {"schema": {"type": "string"}}}
        if op.response is None and op.media_type == "application/json":
            responses["204"] = {"description": "Done"}
        else:
            responses[str(op.status)] = ok
        if op.path == "/readyz":
            body = {"application/json": {"schema": of[id(op.response)]}}
            responses["503"] = {"description": "Not ready", "content": body}
        err = {"application/json": {"schema": {"$ref": REF.format(name="ErrorBody")}}}
        for code, text in ERROR_STATUSES.items():
            if code in responses:
                continue
            if not op.roles and code in ("401", "403"):
                continue
            responses[code] = {"description": text, "content": err}
        item["responses"] = responses
        if op.roles:
            item["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1.0.0",
            "description": "Provisioning, transactions, reports, merchant ERP and "
            "observability of the switchd payment switch. Money is in "
            "minor units; times in microseconds since the epoch.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>switchd admin API</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}
code{background:#f3f3f3;padding:0 .2rem}.m{display:inline-block;width:4.5rem;font-weight:bold}
.get{color:#1a7f37}.post{color:#0969da}.patch,.put{color:#9a6700}.delete{color:#cf222e}
details{margin:.2rem 0}pre{background:#f6f8fa;padding:.5rem;overflow:auto}
</style></head><body>
<h1>switchd admin API</h1>
<p>Generated from <a href="/openapi.json">/openapi.json</a>. Send
<code>Authorization: Bearer &lt;token&gt;</code>.</p>
<div id="ops">Loading...</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('ops');
  root.textContent = '';
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method, path, op]);
    }
  }
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement('h2'); h.textContent = tag; root.appendChild(h);
    for (const [method, path, op] of ops) {
      const d = document.createElement('details');
      const s = document.createElement('summary');
      const m = document.createElement('span');
      m.className = 'm ' + method; m.textContent = method.toUpperCase();
      const c = document.createElement('code'); c.textContent = path;
      s.append(m, c, ' ' + op.summary); d.appendChild(s);
      const pre = document.createElement('pre');
      pre.textContent = JSON.stringify({parameters: op.parameters, requestBody: op.requestBody,
                                        responses: Object.keys(op.responses)}, null, 2);
      d.appendChild(pre); root.appendChild(d);
    }
  }
});
</script></body></html>
"""


def docs_page() -> HTMLResponse:
    return HTMLResponse(DOCS_HTML)
