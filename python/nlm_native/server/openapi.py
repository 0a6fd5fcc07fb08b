"""The ``/openapi.json`` document: FastAPI's routes, the request body models, the error shape and the
auth schemes. Bodies are read by hand (for the size limit and OpenAI's error shape), so their schemas
are added here rather than inferred from the endpoints' signatures."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from .schemas import ErrorResponse, body_schemas

_WHY = {400: "an invalid or unsupported field, or a body that is not a JSON object",
        401: "no or wrong credentials", 404: "an unknown model or route", 413: "the body is too large",
        429: "the caller's rate limit", 503: "the queue is full or the server is shutting down",
        504: "the request's timeout passed"}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these errors."""
    return {c: {"model": ErrorResponse, "description": _WHY[c]} for c in codes}


ERRORS = errors(400, 401, 404, 413, 429, 503, 504)


def document(app: FastAPI, open_paths: set[str]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``, built once."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    models = body_schemas()
    _, defs = models_json_schema([(m, "validation") for m in models.values()],
                                 ref_template="#/components/schemas/{model}")
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
                                     "basic": {"type": "http", "scheme": "basic"}}
    doc["security"] = [{"bearer": []}, {"basic": []}]
    for path, model in models.items():
        doc["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
    for path in open_paths:
        for op in doc["paths"].get(path, {}).values():
            op["security"] = []
    app.openapi_schema = doc
    return doc
