"""What a request to the discovery app must be to be answered (see `fmb.app.server` for the whole list):
for a loopback host unless a token guards the app, carrying that token when one does, with a body
under `MAX_BODY_BYTES`; and what every answer carries (`SECURITY_HEADERS`). Plain ASGI middleware."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection

TOKEN_HEADER, TOKEN_COOKIE, TOKEN_QUERY = "x-fmb-token", "fmb_token", "token"
LOOPBACK_NAMES = {"localhost"}
#: The largest request body read: a label with the longest note and every tag is under 8 KiB.
MAX_BODY_BYTES = 64 * 1024
#: Sent with every response: no page may frame the app, and a page of the app loads and runs only
#: the app's own files (a note or a catalog value can never become script).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, as uvicorn binds it) is this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(request: HTTPConnection, token: str | None) -> tuple[int, str] | None:
    """Why a request is refused (status, message), or None."""
    if token is None:
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        if not is_loopback(host):
            return 400, f"this app answers requests for localhost only, not for {host!r}"
        return None
    given = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)
             or request.query_params.get(TOKEN_QUERY) or "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return 401, "this app needs its token: open it once with ?token=... or send the X-Fmb-Token header"
    return None


class Guard:
    """ASGI middleware: refuse what `refusal` refuses; remember a token given in the query string in a
    cookie; send `SECURITY_HEADERS` with every answer, refusals included. Plain ASGI, not Starlette's
    `BaseHTTPMiddleware`, which passes every response through a task and a stream (a cost on each of
    the object page's six images)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        connection = HTTPConnection(scope)
        refused = refusal(connection, self.token)
        if refused:
            response = error_response(*refused)
            response.headers.update(SECURITY_HEADERS)
            return await response(scope, receive, send)
        cookie = None
        if self.token is not None and connection.query_params.get(TOKEN_QUERY):
            jar = Response()
            jar.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            cookie = jar.headers["set-cookie"]

        async def send_guarded(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(SECURITY_HEADERS)
                if cookie:
                    headers.append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_guarded)


class BodyLimit:
    """ASGI middleware: a request whose body is over `limit` bytes is a 413 before more than `limit`
    bytes of it are read: by its Content-Length when it gives one (the server reads no more), else
    (a chunked body) read here up to the limit and handed on whole."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self.refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self.refuse(scope, receive, send)
        replayed = False

        async def whole():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, whole, send)

    async def refuse(self, scope, receive, send) -> None:
        response = error_response(413, f"the request body is over {self.limit} bytes")
        response.headers.update(SECURITY_HEADERS)
        await response(scope, receive, send)
