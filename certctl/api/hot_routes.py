"""The busiest API routes, dispatched without FastAPI's route scan and dependency solver.

Measured in-process on this project's ~190 routes, FastAPI 0.165 spends about 0.7 ms of CPU choosing a
route (it tries included routers and their routes in order, with per-candidate scope bookkeeping) and
about 0.3 ms solving the dependencies of an endpoint such as an agent's work poll: more than the
database round trip. Agents poll every 30 s and heartbeat every minute, so a fleet of thousands makes
these routes, and the certificate list and create calls, most of the API's traffic.

`HotRoutes` sits innermost among the ASGI layers (after authentication, rate limiting, audit and input
checks, which all still apply). It selects the route exactly as FastAPI would (the first route, in
registration order, whose path pattern matches and which allows the method; see `RouteIndex`), and when
that route's endpoint has a registered hot handler, calls the handler with a plain `Request`. Every
other request goes on to FastAPI unchanged. Handlers are written next to their routes (see
`routers/agents.py`), call the same service functions, and answer the same JSON; errors go through the
app's own exception handlers, so status codes and error bodies are those of the routed path.
`tests/test_hot_routes.py` checks both paths answer alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pydantic
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

HotHandler = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=pydantic.BaseModel)

_MAX_CACHED_KEYS = 4096  # distinct (length, leading segments) keys remembered; attackers cannot grow it further


@dataclass(frozen=True)
class _Candidate:
    order: int
    route: APIRoute
    handler: HotHandler | None


class RouteIndex:
    """FastAPI's route choice, with the candidates narrowed by the path's shape first.

    A route whose template has a literal in each of its first three segments can only match paths with
    the same segment count and those three literals; the others (parameters early, or `{x:path}`
    templates of any length) are candidates for every path. Candidates keep registration order, and
    the first whose regex matches and whose methods allow the request wins, as in FastAPI (a route
    that matches the path but not the method does not stop the search).
    """

    def __init__(self, routes: Sequence[APIRoute], handlers: dict[Callable[..., Any], HotHandler]) -> None:
        self._by_key: dict[tuple[int, tuple[str, ...]], list[_Candidate]] = {}
        self._everywhere: list[_Candidate] = []
        for order, route in enumerate(routes):
            candidate = _Candidate(order, route, handlers.get(route.endpoint))
            segments = route.path.split("/")
            leading = tuple(segments[1:4])
            if ":path}" in route.path or any("{" in s for s in leading):
                self._everywhere.append(candidate)
            else:
                self._by_key.setdefault((len(segments), leading), []).append(candidate)
        self._merged: dict[tuple[int, tuple[str, ...]], list[_Candidate]] = {}

    def _candidates(self, path: str) -> list[_Candidate]:
        segments = path.split("/")
        key = (len(segments), tuple(segments[1:4]))
        merged = self._merged.get(key)
        if merged is None:
            merged = sorted(self._by_key.get(key, []) + self._everywhere, key=lambda c: c.order)
            if len(self._merged) < _MAX_CACHED_KEYS:
                self._merged[key] = merged
        return merged

    def select(self, method: str, path: str) -> tuple[APIRoute, HotHandler | None, dict[str, Any]] | None:
        for candidate in self._candidates(path):
            route = candidate.route
            found = route.path_regex.match(path)
            if found is None or (route.methods and method not in route.methods):
                continue
            params = {name: route.param_convertors[name].convert(value) for name, value in found.groupdict().items()}
            return route, candidate.handler, params
        return None


class HotRoutes:
    """ASGI layer: hot handlers for the routes that have one, FastAPI for everything else."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[APIRoute], handlers: dict[Callable[..., Any], HotHandler]):
        self.app = app
        self.index = RouteIndex(routes, handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        selected = self.index.select(scope["method"], scope["path"])
        if selected is None or selected[1] is None:
            await self.app(scope, receive, send)
            return
        route, handler, params = selected
        assert handler is not None
        scope["path_params"] = params
        scope["route"] = route  # as FastAPI sets it: route-aware layers (metrics) see the template
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:
            on_error = _exception_handler(scope, exc)
            if on_error is None:
                raise
            response = await on_error(request, exc)
        await response(scope, receive, send)


def _exception_handler(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The app's handler for this exception type, looked up by class hierarchy as Starlette does."""
    handlers: dict[Any, Any] = getattr(scope.get("app"), "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls is not Exception and cls in handlers:
            handler: Callable[[Request, Exception], Awaitable[Response]] = handlers[cls]
            return handler
    return None


def api_routes(routers: Iterable[Any]) -> list[APIRoute]:
    """The routers' API routes in the order the app includes them."""
    return [route for router in routers for route in router.routes if isinstance(route, APIRoute)]


async def optional_json_body(request: Request, model: type[M]) -> M | None:
    """The request body as `model`, or None when there is none (a body parameter defaulting to None)."""
    return await json_body(request, model) if await request.body() else None


async def json_body(request: Request, model: type[M]) -> M:
    """The request body as `model`, refused as FastAPI refuses it (a RequestValidationError at `body`)."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not (content_type == "application/json" or (content_type.startswith("application/")
                                                     and content_type.endswith("+json"))):
        raise RequestValidationError([{
            "type": "model_attributes_type", "loc": ("body",),
            "msg": "Input should be a valid dictionary or object to extract fields from", "input": None,
        }])
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError([{
            "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {},
            "ctx": {"error": exc.msg},
        }]) from None
    try:
        return model.model_validate(decoded, from_attributes=True)  # as FastAPI validates bodies
    except pydantic.ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


def model_response(model: pydantic.BaseModel, status_code: int = 200) -> Response:
    """A response model as FastAPI would encode it (by alias, every field)."""
    return Response(model.model_dump_json(by_alias=True), status_code=status_code, media_type="application/json")
