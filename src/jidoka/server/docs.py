"""The server's front door for people: ``GET /``, and ``/docs`` with the files it loads.

``/docs`` is Swagger UI over ``/openapi.json``. Its files come from the installed
``swagger-ui-py`` package (in the ``server`` extra) and are served by this server under
``/docs/assets/``, so the page works on a machine with no internet access and loads nothing from
another host; its Content-Security-Policy tells the browser the same. Only a fixed list of files is
offered (a name is looked up, never joined to a path), read once in a thread and kept in memory
with their gzip form (about 2 MB in all). Each URL carries a hash of the file's content, so the
files are cached for a year and a new version is a new URL. Without the package (``jidoka-core``
installed without the extra), ``/docs`` is a plain page listing the routes of the OpenAPI
document, which needs no script at all.

``GET /`` answers curl and scripts with a small JSON index (what this is, where the docs and the
document are) and sends a browser -- a client that ranks ``text/html`` above JSON -- to ``/docs``
with a 307. Neither needs a token, like ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._version import __version__
from .openapi import openapi_document
from .responses import RouteNotFound, json_response

__all__ = ["ApiDocs", "prefers_html", "swagger_ui_dir"]

logger = logging.getLogger("jidoka.server")

#: The import name of the ``swagger-ui-py`` distribution; its files are in ``static/``.
SWAGGER_PACKAGE: Final = "swagger_ui"
ASSETS_PATH: Final = "/docs/assets/"
_JS: Final = "text/javascript; charset=utf-8"
#: The files of the package that the page uses, and their content types: nothing else is served.
_PACKAGE_FILES: Final = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": _JS,
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
#: The page's own script (a file rather than inline, so that the policy can forbid inline code).
#: ``validatorUrl: null``: Swagger UI would otherwise ask a public validator about the document.
_STARTER_NAME: Final = "jidoka-docs.js"
_STARTER: Final = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#ui",
  deepLinking: true,
  validatorUrl: null,
});
"""
_LONG_CACHE: Final = "public, max-age=31536000, immutable"
_COMMON_POLICY: Final = "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
#: Swagger UI sets style attributes and draws data: images; it fetches only this server.
_SWAGGER_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    f"img-src 'self' data:; font-src 'self' data:; connect-src 'self'; {_COMMON_POLICY}"
)
_PLAIN_POLICY: Final = f"default-src 'none'; style-src 'unsafe-inline'; {_COMMON_POLICY}"
#: An ``Accept`` header has a few media ranges; more than this are not looked at.
_MAX_RANGES: Final = 32
_JSON_RANGES: Final = {"application/json": 3, "application/*": 2, "*/*": 1}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gzipped: bytes | None  # None where gzip would not make it smaller (images)
    etag: str  # quoted, as the header carries it
    media_type: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> _Asset:
        digest = hashlib.sha256(body).hexdigest()[:20]
        gzipped: bytes | None = None
        if not media_type.startswith("image/"):
            gzipped = gzip.compress(body, compresslevel=6, mtime=0)
            if len(gzipped) >= len(body):
                gzipped = None
        return cls(body, gzipped, f'"{digest}"', media_type)

    def url(self, name: str) -> str:
        return f"{ASSETS_PATH}{name}?v={self.etag.strip(chr(34))}"


@dataclass(frozen=True, slots=True)
class _Site:
    page: bytes
    policy: str
    assets: dict[str, _Asset] = field(default_factory=dict)


def swagger_ui_dir() -> Path | None:
    """Where the installed ``swagger-ui-py`` keeps Swagger UI's files, or ``None``.

    Found with :func:`importlib.util.find_spec`, which does not run the package: its own module
    imports its web-framework glue, which this server does not use. Blocking (it looks at files).
    """
    try:
        spec = importlib.util.find_spec(SWAGGER_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        static = Path(location) / "static"
        if all((static / name).is_file() for name in _PACKAGE_FILES):
            return static
    return None


def prefers_html(accept: str) -> bool:
    """Whether an ``Accept`` header ranks ``text/html`` above JSON.

    Browsers ask for HTML first and ``*/*`` at a lower quality; curl and most HTTP libraries send
    ``*/*`` alone, and scripts ask for ``application/json``. JSON's quality is that of the most
    specific range that covers it; a tie goes to JSON.
    """
    html_q = json_q = 0.0
    json_rank = 0
    for item in accept.split(",", _MAX_RANGES)[:_MAX_RANGES]:
        kind, *params = (part.strip() for part in item.split(";"))
        kind = kind.lower()
        q = _quality(params)
        if kind == "text/html":
            html_q = max(html_q, q)
        rank = _JSON_RANGES.get(kind, 0)
        if rank > json_rank:
            json_q, json_rank = q, rank
    return html_q > json_q


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip()[:8])
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0  # NaN fails both comparisons
    return 1.0


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(",", _MAX_RANGES)[:_MAX_RANGES]:
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() in ("gzip", "x-gzip"):
            return _quality(params) > 0
    return False


def _matches(if_none_match: str, etag: str) -> bool:
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",", _MAX_RANGES)}
    return etag in tags or "*" in tags


def _swagger_site(directory: Path) -> _Site:
    assets = {name: _Asset.of((directory / name).read_bytes(), kind)
              for name, kind in _PACKAGE_FILES.items()}  # fmt: skip
    assets[_STARTER_NAME] = _Asset.of(_STARTER, _JS)

    def url(name: str) -> str:
        return html.escape(assets[name].url(name))

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Jidoka API {html.escape(__version__)}</title>
<link rel="icon" type="image/png" sizes="32x32" href="{url("favicon-32x32.png")}">
<link rel="icon" type="image/png" sizes="16x16" href="{url("favicon-16x16.png")}">
<link rel="stylesheet" href="{url("swagger-ui.css")}">
</head><body>
<noscript>This page needs JavaScript; the API is described by <a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="ui"></div>
<script src="{url("swagger-ui-bundle.js")}"></script>
<script src="{url(_STARTER_NAME)}"></script>
</body></html>
"""  # noqa: E501
    return _Site(page.encode(), _SWAGGER_POLICY, assets)


def _plain_site() -> _Site:
    """The routes of the OpenAPI document as a table: what a person needs, with no script."""
    rows = []
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            rows.append(
                f"<tr><td>{html.escape(method.upper())}</td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(str(operation.get('summary', '')))}</td></tr>"
            )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Jidoka API {html.escape(__version__)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:.2em 1em .2em 0}}</style>
</head><body>
<h1>Jidoka API {html.escape(__version__)}</h1>
<p>The full description is <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1). For an
interactive page here, install the server's extra: <code>pip install 'jidoka-core[server]'</code>.
Every <code>/v1</code> route needs <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<table><thead><tr><th>Method</th><th>Path</th><th>What it does</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
    return _Site(page.encode(), _PLAIN_POLICY)


class ApiDocs:
    """The endpoints of ``/``, ``/docs`` and ``/docs/assets/{name}``.

    The page and its files are made on the first request, in a thread (they are read from disk
    and compressed), once: ``locate`` says where Swagger UI's files are (``None``: not
    installed, serve the plain page).
    """

    def __init__(self, locate: Callable[[], Path | None] = swagger_ui_dir) -> None:
        self._locate = locate
        self._site: _Site | None = None
        self._lock = asyncio.Lock()

    def _build(self) -> _Site:
        directory = self._locate()
        if directory is not None:
            try:
                return _swagger_site(directory)
            except OSError as exc:
                logger.warning(
                    "cannot read Swagger UI's files in %s (%s): /docs is the plain page",
                    directory,
                    exc,
                )
        return _plain_site()

    async def site(self) -> _Site:
        if self._site is None:
            async with self._lock:
                if self._site is None:
                    self._site = await asyncio.to_thread(self._build)
        return self._site

    async def index(self, request: Request) -> Response:
        vary = {"Vary": "Accept"}
        if prefers_html(request.headers.get("accept", "")):
            return RedirectResponse("/docs", 307, headers=vary)
        index = {
            "name": "jidoka",
            "version": __version__,
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/healthz",
        }
        return json_response(index, headers=vary)

    async def page(self, request: Request) -> Response:
        site = await self.site()
        headers = {
            "Cache-Control": "no-cache",  # the asset URLs in it change with a new version
            "Content-Security-Policy": site.policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return Response(site.page, headers=headers, media_type="text/html; charset=utf-8")

    async def asset(self, request: Request) -> Response:
        site = await self.site()
        name: str = request.path_params["name"]
        asset = site.assets.get(name)
        if asset is None:
            raise RouteNotFound(f"no docs asset {name[:100]!r}", status=404)
        headers = {
            "Cache-Control": _LONG_CACHE,
            "ETag": asset.etag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if _matches(request.headers.get("if-none-match", ""), asset.etag):
            return Response(status_code=304, headers=headers)
        body = asset.body
        if asset.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", "")):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, headers=headers, media_type=asset.media_type)
