"""The status API's pages: its OpenAPI document, the dashboard and the charting library the dashboard loads."""

from __future__ import annotations

import importlib.resources

from aiohttp import web

from surgegate.api.openapi import openapi_document


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def dashboard(request: web.Request) -> web.Response:
    page = importlib.resources.files("surgegate.api").joinpath("dashboard.html").read_bytes()
    return web.Response(body=page, content_type="text/html")


async def plotly_js(request: web.Request) -> web.FileResponse:
    # the charting library comes from the plotly wheel (pip), not from a copy in this repository
    path = importlib.resources.files("plotly").joinpath("package_data", "plotly.min.js")
    return web.FileResponse(str(path), headers={"Content-Type": "application/javascript",
                                                "Cache-Control": "max-age=86400"})
