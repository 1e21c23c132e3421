"""``/docs`` (Swagger UI) and ``/redoc`` with every asset served by this server.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google): on a
machine without internet they render blank. The same pages are built here with FastAPI's
helpers, pointed at the bundles that the PyPI package ``fastapi-standalone-docs`` ships
(Swagger UI, ReDoc and FastAPI's favicon, MIT / Apache-2.0), served from ``/docs/assets/``.

With a token set the pages (``DOCS_PATHS``) need it like every /v1 route (`DocsTokenGate`);
the assets are public files of those packages and carry no data.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

__all__ = ["DOCS_PATHS", "DOCS_URL", "OAUTH2_REDIRECT_URL", "REDOC_URL", "add_offline_docs"]

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
DOCS_PATHS = frozenset({DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL})

# name served -> (folder in the package's static/, file, media type)
_ASSETS: dict[str, tuple[str, str, str]] = {
    "swagger-ui-bundle.js": ("swagger", "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger", "swagger-ui.css", "text/css"),
    "redoc.standalone.js": ("redoc", "redoc.standalone.js", "text/javascript"),
    "favicon.png": ("fastapi", "favicon.png", "image/png"),
    "logo-mini.svg": ("redoc", "logo-mini.svg", "image/svg+xml"),
}
# Swagger UI's settings: FastAPI's, and no call to the online validator.
_SWAGGER_PARAMETERS = {
    "dom_id": "#swagger-ui",
    "layout": "BaseLayout",
    "deepLinking": True,
    "showExtensions": True,
    "showCommonExtensions": True,
    "validatorUrl": None,
}


def _static_root() -> Traversable:
    return resources.files("fastapi_standalone_docs").joinpath("static")


def _asset(name: str) -> tuple[bytes, str] | None:
    found = _ASSETS.get(name)
    if found is None:
        return None
    folder, file, media_type = found
    return _static_root().joinpath(folder, file).read_bytes(), media_type


def _prefix(request: Request) -> str:
    """The path the app is mounted at ('' standing alone): its URLs must carry it."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def add_offline_docs(app: FastAPI, title: str) -> None:
    """Serve the API docs from local assets. The app must be created with ``docs_url=None``
    and ``redoc_url=None`` (FastAPI's CDN pages)."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        prefix = _prefix(request)
        return get_swagger_ui_html(
            openapi_url=prefix + openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=prefix + OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{prefix}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        prefix = _prefix(request)
        return get_redoc_html(
            openapi_url=prefix + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{prefix}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(REDOC_URL + "/logo-mini.svg", include_in_schema=False)
    async def redoc_logo() -> Response:
        # ReDoc's bundle asks for its logo at its page's path + "/logo-mini.svg".
        return await docs_asset("logo-mini.svg")

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        found = _asset(name)
        if found is None:
            return Response(status_code=404)
        body, media_type = found
        headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
        return Response(body, media_type=media_type, headers=headers)
