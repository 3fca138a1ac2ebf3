"""Streaming routes that read their own parameters, past FastAPI's per-request solver.

FastAPI solves a route's declared parameters on every request: it walks the
dependency graph, builds and validates each header, query and path value through
pydantic, and collects errors. On the streaming routes that is a tenth of what a
request costs the gateway. A `DirectRoute` keeps the declaration (the OpenAPI schema,
and FastAPI's own handling of any request it does not take) and, per request, reads
what the endpoint asks for itself: the gateway, the caller, the request id, plain
string headers and path values. A request whose parameters need validation it does
not do (a header over its `max_length`) goes to FastAPI's handler, so that its error
is FastAPI's, word for word. A route declaring anything else (a query parameter, a
body model, another dependency) is served by FastAPI alone.

`DirectLane`, the innermost middleware, takes the same routes further: a request
for one whose path has no parameters (`POST /v1/messages` and the other streaming
starts) goes to its endpoint from there, past the rest of the stack (the exception
middleware, the router's scan, the route's two exit stacks): some 7 % of what a
streaming request costs the loop, and 8 KiB of each open stream's memory
(docs/benchmarks.md). An error is rendered by the app's own handler for it, as the
exception middleware would; an error no handler takes goes up the stack, where the
request id's middleware answers it with a 500, as for any other route.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Union, get_args, get_origin

from annotated_types import MaxLen
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay.middleware.request_id import request_id
from tokenrelay.routes.deps import authenticate, gateway, principal

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# What fills a parameter from the request; None: FastAPI must take this request.
Reader = Callable[[Request], Awaitable[Any]]
_MISSING = object()


async def _principal(request: Request) -> Any:
    # `principal` itself takes the gateway as a second dependency.
    return await authenticate(request.app.state.gateway, request)


# The dependencies the streaming routes use, by the function FastAPI would call, and
# what is called instead: the same function where it takes the request alone.
KNOWN: dict[Callable[..., Any], Reader] = {
    gateway: gateway,
    principal: _principal,
    request_id: request_id,
}


def _is_optional_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    origin = get_origin(annotation)
    return origin in (Union, types.UnionType) and set(get_args(annotation)) == {str, type(None)}


def _max_length(field: Any) -> int | None:
    for item in field.field_info.metadata:
        if isinstance(item, MaxLen):
            return int(item.max_length)
    return None


def _header_reader(field: Any) -> Callable[[Request], object] | None:
    info = field.field_info
    if not _is_optional_str(info.annotation) or info.is_required():
        return None
    name = field.name.replace("_", "-")
    if field.alias != name:
        return None  # spelt some other way: FastAPI knows how
    default = info.default
    limit = _max_length(field)

    def read(request: Request) -> object:
        value = request.headers.get(name)
        if value is None:
            return default
        if limit is not None and len(value) > limit:
            return _MISSING  # FastAPI's 422
        return value

    return read


def plan(dependant: Dependant) -> Callable[[Request], Awaitable[dict[str, Any] | None]] | None:
    """How to fill the endpoint's arguments from a request, or None when this route's
    parameters are not all of the kinds read here."""
    if dependant.query_params or dependant.cookie_params or dependant.body_params:
        return None
    if dependant.websocket_param_name or dependant.response_param_name:
        return None
    if dependant.background_tasks_param_name or dependant.security_scopes_param_name:
        return None
    depends: list[tuple[str, Reader]] = []
    for sub in dependant.dependencies:
        reader = KNOWN.get(sub.call) if sub.call is not None else None
        if reader is None or sub.name is None:
            return None
        depends.append((sub.name, reader))
    headers: list[tuple[str, Callable[[Request], object]]] = []
    for field in dependant.header_params:
        header = _header_reader(field)
        if header is None:
            return None
        headers.append((field.name, header))
    paths: list[str] = []
    for field in dependant.path_params:
        if field.field_info.annotation is not str:
            return None
        paths.append(field.name)
    request_name = dependant.request_param_name

    async def fill(request: Request) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {}
        # Headers first: a request FastAPI must take is handed over before any work.
        for name, header in headers:
            value = header(request)
            if value is _MISSING:
                return None
            kwargs[name] = value
        path_params = request.path_params
        for name in paths:
            kwargs[name] = path_params[name]
        if request_name is not None:
            kwargs[request_name] = request
        for name, reader in depends:  # in declaration order, as FastAPI solves them
            kwargs[name] = await reader(request)
        return kwargs

    return fill


class DirectRoute(APIRoute):
    # How to fill the endpoint's arguments, or None where FastAPI must solve them.
    fill: Callable[[Request], Awaitable[dict[str, Any] | None]] | None = None

    def get_route_handler(self) -> Handler:
        solved = super().get_route_handler()
        fill = self.fill = plan(self.dependant)
        if fill is None:
            return solved
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            kwargs = await fill(request)
            if kwargs is None:
                return await solved(request)
            response: Response = await endpoint(**kwargs)
            return response

        return handler


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class DirectLane:
    """A request for a direct route without path parameters, from the innermost
    middleware straight to the route's endpoint; any other request goes on down the
    stack, and so does one whose parameters FastAPI must validate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], DirectRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            routes = self._routes
            if routes is None:  # the app's routes are all there by its first request
                routes = self._routes = lanes(scope["app"].router.routes)
            route = routes.get((scope["method"], scope["path"]))
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(self, route: DirectRoute, scope: Scope, receive: Receive, send: Send) -> None:
        assert route.fill is not None
        scope["route"] = route  # as the router would have it
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            kwargs = await route.fill(request)
            if kwargs is None:
                await self.app(scope, receive, send)  # nothing read yet but headers
                return
            response: Response = await route.endpoint(**kwargs)
        except Exception as exc:
            handler = handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise  # up the stack, as it would go without the lane
            response = await handler(request, exc)
        await response(scope, receive, send)


def lanes(routes: list[BaseRoute]) -> dict[tuple[str, str], DirectRoute]:
    """(method, path) of each direct route the router would pick for that exact path,
    with its parameters all read by `plan`: no route before it takes the path."""
    found: dict[tuple[str, str], DirectRoute] = {}
    for at, route in enumerate(routes):
        if not isinstance(route, DirectRoute) or route.fill is None or route.param_convertors:
            continue
        for method in route.methods or ():
            if not any(_takes(before, method, route.path) for before in routes[:at]):
                found.setdefault((method, route.path), route)
    return found


def _takes(route: BaseRoute, method: str, path: str) -> bool:
    """Whether the router would pick `route` for the request, or might (a kind of
    route not known here)."""
    if isinstance(route, Route):
        return bool(route.path_regex.match(path)) and (
            route.methods is None or method in route.methods
        )
    if isinstance(route, Mount):
        return bool(route.path_regex.match(path))
    return True


def handler_for(handlers: dict[Any, ExceptionHandler], exc: Exception) -> ExceptionHandler | None:
    """The handler the exception middleware would call: the nearest class's. The one
    for `Exception` (a 500) is answered above this one (`RequestId`)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None
