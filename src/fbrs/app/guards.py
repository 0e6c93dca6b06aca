"""What the server refuses before any route runs: foreign Host headers, cross-site writes, oversized bodies.

Both guards are plain ASGI middleware, so they see every request (the routes, /static, /docs) and a
body is counted while it streams in, chunked or not, instead of after it has been spooled to disk.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


def host_name(netloc: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'LocalHost' -> 'localhost'."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


class HostGuard:
    """Refuse requests whose Host is not an allowed name (DNS rebinding: a page of attacker.example whose
    name resolves to 127.0.0.1 sends Host: attacker.example) with 400, and state-changing requests
    (POST, PUT, DELETE, ...) that a browser sends from another origin (CSRF) with 403.

    allowed_hosts: host names without port; "*" allows any Host. allowed_origins: extra origins
    ("https://annotate.example.org") whose pages may change state; the page the app serves itself (same
    origin as the request's Host) always may. Requests without an Origin header (curl, httpx, annotation
    platforms' back ends) are not browsers' cross-site requests and pass.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
                 allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = {host_name(host) for host in allowed_hosts}
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host") or ""
        if "*" not in self.allowed_hosts and host_name(host) not in self.allowed_hosts:
            allowed = ", ".join(sorted(self.allowed_hosts))
            await send_json(send, 400, f"Host {host[:100]!r} is not allowed (allowed: {allowed}); a server "
                            "reached under another name is started with --allowed-host NAME")
            return
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            origin = _header(scope, b"origin")
            if origin is not None and not self._origin_allowed(origin, host):
                await send_json(send, 403, f"cross-origin request from {origin[:100]!r} refused: only the app's "
                                "own page (or an origin given with --allowed-origin) may change state")
                return
            if origin is None and _header(scope, b"sec-fetch-site") == "cross-site":
                await send_json(send, 403, "cross-site request refused")
                return
        await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host.strip().lower()


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for a request body over its limit, counted while it arrives (Content-Length or chunked).

    limit_for(scope) -> bytes allowed for this request. Past the limit the app's further reads fail,
    whatever it answers then is dropped, and the client gets the 413 (with Connection: close, so the
    rest of its body is never read).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await send_json(send, 413, f"request body is {int(length)} bytes; the limit for "
                            f"{scope['method']} {scope['path'][:100]} is {limit}")
            return
        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's answer to a body cut short; the 413 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await send_json(send, 413, f"request body exceeds {limit} bytes, the limit for "
                            f"{scope['method']} {scope['path'][:100]}")
