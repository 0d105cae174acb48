"""The published OpenAPI document (/openapi.json) and the page that renders it (/docs).

Swagger UI's files come from the `swagger-ui-py` package and are served from here: /docs needs
no outside network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from api.http import JsonResponse
from api.openapi import DOCUMENT


def _swagger_ui_static() -> Path:
    # Located, not imported: the package's Python side (jinja2, yaml) is not needed.
    spec = importlib.util.find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "swagger-ui-py is missing"
    return Path(next(iter(spec.submodule_search_locations))) / "static"


STATIC = _swagger_ui_static()
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>eventpipe API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
  <div id="docs"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    // validatorUrl null: Swagger UI would otherwise send the document to swagger.io.
    SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs", validatorUrl: null});
  </script>
</body>
</html>
"""


async def openapi_json(request: Request) -> Response:
    return JsonResponse(DOCUMENT)


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


ROUTES: list[Route | Mount] = [
    Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
    Route("/docs", docs, methods=["GET"], include_in_schema=False),
    Mount("/docs/static", StaticFiles(directory=STATIC), name="docs-static"),
]
