"""The review app's HTTP side (Starlette): the static page, a JSON API, the access token.

    GET  /                       the page (static files under jobs/review/static/)
    GET  /api/meta               scans, dates, counts, the default reviewer name
    GET  /api/queue?offset=&limit=&scan_id=&scan_date=&prefix=&undecided=1
    GET  /api/thumbnail/{id}     one heat-map thumbnail (JPEG)
    POST /api/decisions          {"reviewer": "...", "items": [{"id": 3, "decision": "generated"}]}

Every route needs the token (as Jupyter does): ``/?token=...`` once, which sets an
HttpOnly, SameSite=Strict cookie and redirects to ``/`` (the token leaves the address
bar), or ``Authorization: Bearer ...``; anything else is 401 before any data is read.
Decisions are accepted only by POST with a JSON body (a cross-site form cannot send
one, and the cookie is never sent cross-site). The Host header must be one the app
serves (DNS rebinding). Every response carries a strict Content-Security-Policy: the
page runs only its own script file, loads nothing from elsewhere, and builds its DOM with
``textContent``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import date
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from jobs.review.queue import MAX_PAGE, QueueFilter
from jobs.review.session import BadRequest, ReviewSession

STATIC = Path(__file__).parent / "static"
PAGE_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
MAX_BODY = 256 * 1024
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store", "Cross-Origin-Resource-Policy": "same-origin"}


def build_app(session: ReviewSession, *, token: str | None, hosts: list[str]) -> Starlette:
    """The ASGI app. ``token`` None: no token asked (``--no-token``). ``hosts``: the Host
    names it answers to."""
    cookie = "genscan_review_" + hashlib.sha256((token or "").encode()).hexdigest()[:12]

    async def guard(request: Request, call_next):
        query_token = request.query_params.get("token")
        if token is not None and request.url.path == "/" and query_token is not None:
            if not secrets.compare_digest(query_token.encode(), token.encode()):
                return _secured(PlainTextResponse("wrong token", status_code=401))
            answer = RedirectResponse("/", status_code=303)
            answer.set_cookie(cookie, token, httponly=True, samesite="strict", path="/")
            return _secured(answer)
        if token is not None and not _has_token(request, cookie, token):
            return _secured(PlainTextResponse("token required: open the URL that python -m jobs.review printed",
                                              status_code=401))
        return _secured(await call_next(request))

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in PAGE_FILES:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name])

    def meta(request: Request) -> Response:
        return JSONResponse({"scans": session.queue.scans(), "reviewer": session.reviewer, "page_size": 50,
                             "counts": session.counts()})

    def queue(request: Request) -> Response:
        q = request.query_params
        try:
            f = QueueFilter(scan_id=q.get("scan_id") or None,
                            scan_date=date.fromisoformat(q["scan_date"]) if q.get("scan_date") else None,
                            prefix=q.get("prefix") or None, undecided=q.get("undecided") == "1")
            offset, limit = int(q.get("offset", 0)), int(q.get("limit", 50))
            if offset < 0 or not 1 <= limit <= MAX_PAGE:
                raise ValueError(f"offset must be 0 or more and limit 1-{MAX_PAGE}")
        except ValueError as e:
            return PlainTextResponse(f"bad query: {e}", status_code=400)
        return JSONResponse(session.page(f, offset, limit))

    def thumbnail(request: Request) -> Response:
        i = request.path_params["id"]
        data = session.queue.thumbnail(i) if 0 <= i < len(session.queue.rows) else None
        if not data:
            return PlainTextResponse("no thumbnail", status_code=404)
        return Response(data, media_type="image/jpeg")

    async def decide(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return PlainTextResponse("decisions are JSON (Content-Type: application/json)", status_code=415)
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("request too large", status_code=413)
        try:
            return JSONResponse(session.decide(json.loads(body)))
        except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as e:
            return PlainTextResponse(f"bad request: {e}", status_code=400)

    routes = [
        Route("/", page), Route("/static/{name}", static), Route("/api/meta", meta), Route("/api/queue", queue),
        Route("/api/thumbnail/{id:int}", thumbnail), Route("/api/decisions", decide, methods=["POST"]),
    ]
    # the first is outermost: a foreign Host is refused before the token is looked at
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
                                                Middleware(BaseHTTPMiddleware, dispatch=guard)])


def _has_token(request: Request, cookie: str, token: str) -> bool:
    given = request.cookies.get(cookie, "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return secrets.compare_digest(given.encode(), token.encode())


def _secured(response: Response) -> Response:
    response.headers.update(HEADERS)
    return response
