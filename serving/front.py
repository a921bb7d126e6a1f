"""`Front`: the ASGI layer in front of the app's FastAPI stack (body limit, the hot
routes answered directly, request metrics by route template)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match

from serving import telemetry
from serving.scorer import ContextError
from serving.service import UnknownItems

HANDLED = (RequestValidationError, ContextError, UnknownItems)
"""The errors the app's exception handlers answer (`serving.app`): a hot handler raising
one is re-dispatched through FastAPI, which shapes the error response."""


class Front:
    """ASGI middleware in front of FastAPI's stack: it reads the request body once, refusing
    bodies over `max_bytes` with 413, and answers the hot routes (POST /v1/score and
    /v1/recommend) by calling their handlers on the body directly. It also counts and times
    every request for /metrics, by route template (`routes`: the app's routes).

    That skips FastAPI's middleware, routing and dependency layers, about a quarter of a
    score(100)'s cost in process. Only successful answers are taken this way: a handler
    error FastAPI has a handler for (422, 404) re-dispatches the request through FastAPI,
    which runs the same handler again and shapes the error. The routes stay declared to
    FastAPI, which documents them and answers them where no `Front` sits in front.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        hot: dict[str, Callable[[bytes], Response]],
        routes: Sequence[BaseRoute] = (),
    ):
        self.app, self.max_bytes, self.hot, self.routes = app, max_bytes, hot, routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._answer(scope, receive, send_status)
        finally:
            telemetry.observe(self._route(scope), scope["method"], status, time.perf_counter() - start)

    def _route(self, scope: dict) -> str:
        """The route template of an answered request: the route FastAPI's router put in the
        scope, or the hot path; matched here only for requests the router never saw (a 413)
        or found no route for ("unmatched")."""
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", scope["path"])
        if scope["path"] in self.hot:
            return scope["path"]
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                return getattr(route, "path", scope["path"])
        return "unmatched"

    async def _answer(self, scope: dict, receive: Any, send: Any) -> None:
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(scope, send, length.decode("latin-1"))
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await self._too_large(scope, send, f"more than {self.max_bytes}")
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False
        handler = self.hot.get(scope["path"]) if scope["method"] == "POST" else None
        if handler is not None:
            with contextlib.suppress(*HANDLED):
                return await handler(body)(scope, receive, send)

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, send: Any, size: str) -> None:
        detail = f"request body is {size} bytes; the limit is {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, 413)(scope, None, send)
