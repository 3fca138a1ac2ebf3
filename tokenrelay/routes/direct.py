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

`DirectLane`, the app as the server sees it, takes the same routes further: a
request for one whose path has no parameters (`POST /v1/messages` and the other
streaming starts) goes through the app's own middleware (built a second time, over
the endpoint) to its endpoint, past the rest of FastAPI's stack (the application's
entry, its server-error, telemetry and body-limit layers, the exception middleware,
the router's scan, the route's two exit stacks): 10 frames less suspended under each
open stream, and a send wrapper less for each message (docs/benchmarks.md). An error
is rendered by the app's own handler for it, as the exception middleware would; an
error no handler takes goes up the chain, where the request id's middleware answers
it with a 500, as for any other route. Any other request goes to the app whole.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, Union, get_args, get_origin

from annotated_types import MaxLen
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay.middleware.request_id import request_id
from tokenrelay.routes.deps import authenticate, gateway, principal
from tokenrelay.routes.sse import SERVER_RECEIVE, SERVER_SEND

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


def plan(dependant: Dependant) -> Plan | None:
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

    async def fill(request: Request, given: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The endpoint's arguments; `given`: the headers' already read (`read_headers`)."""
        kwargs = given if given is not None else read_headers(request)
        if kwargs is None:
            return None
        path_params = request.path_params
        for name in paths:
            kwargs[name] = path_params[name]
        if request_name is not None:
            kwargs[request_name] = request
        for name, reader in depends:  # in declaration order, as FastAPI solves them
            kwargs[name] = await reader(request)
        return kwargs

    def read_headers(request: Request) -> dict[str, Any] | None:
        # Headers first: a request FastAPI must take is handed over before any work.
        kwargs: dict[str, Any] = {}
        for name, header in headers:
            value = header(request)
            if value is _MISSING:
                return None
            kwargs[name] = value
        return kwargs

    return Plan(fill, read_headers)


class Plan(NamedTuple):
    fill: Callable[[Request, dict[str, Any] | None], Awaitable[dict[str, Any] | None]]
    # The header arguments, or None when FastAPI must validate them (and take the request).
    read_headers: Callable[[Request], dict[str, Any] | None]


class DirectRoute(APIRoute):
    # How to fill the endpoint's arguments, or None where FastAPI must solve them.
    plan: Plan | None = None

    def get_route_handler(self) -> Handler:
        solved = super().get_route_handler()
        planned = self.plan = plan(self.dependant)
        if planned is None:
            return solved
        fill, endpoint = planned.fill, self.endpoint

        async def handler(request: Request) -> Response:
            kwargs = await fill(request, None)
            if kwargs is None:
                return await solved(request)
            response: Response = await endpoint(**kwargs)
            return response

        return handler


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]
# Where a lane request's header arguments wait for its endpoint, in its scope.
HEADERS_READ = "tokenrelay.lane_headers"


class DirectLane:
    """The app, with its direct routes without path parameters served from here: each
    request for one goes through `app`'s own middleware to the route's endpoint; any
    other request (and one whose parameters FastAPI must validate) goes to `app`.

    Each scope gets the server's own `send` and `receive` (`SERVER_SEND`,
    `SERVER_RECEIVE`), for the SSE bodies and their disconnect watch."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], DirectRoute] | None = None
        self._chain: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        scope[SERVER_RECEIVE] = receive
        if scope["type"] == "http" and not scope.get("root_path"):
            routes = self._routes
            if routes is None:  # the app's routes and middleware are all there by now
                routes = self._routes = lanes(self.app.router.routes)
                self._chain = _over(self.app.user_middleware, self._serve)
            route = routes.get((scope["method"], scope["path"]))
            if route is not None:
                assert route.plan is not None and self._chain is not None
                scope["app"] = self.app  # as the app's entry would have it
                headers = route.plan.read_headers(Request(scope))
                if headers is not None:
                    scope["route"] = route  # as the router would have it
                    scope["endpoint"] = route.endpoint
                    scope["path_params"] = {}
                    scope[HEADERS_READ] = headers
                    await self._chain(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: DirectRoute = scope["route"]
        assert route.plan is not None
        request = Request(scope, receive, send)
        try:
            kwargs = await route.plan.fill(request, scope.pop(HEADERS_READ))
            assert kwargs is not None  # the headers were read, and were fine
            response: Response = await route.endpoint(**kwargs)
        except Exception as exc:
            handler = handler_for(self.app.exception_handlers, exc)
            if handler is None:
                raise  # up the chain, as it would go without the lane
            response = await handler(request, exc)
        await response(scope, receive, send)


def _over(middleware: list[Middleware], app: ASGIApp) -> ASGIApp:
    """`app` inside `middleware` (outermost first), as Starlette builds its stack."""
    for cls, args, kwargs in reversed(middleware):
        app = cls(app, *args, **kwargs)
    return app


def lanes(routes: list[BaseRoute]) -> dict[tuple[str, str], DirectRoute]:
    """(method, path) of each direct route the router would pick for that exact path,
    with its parameters all read by `plan`: no route before it takes the path."""
    found: dict[tuple[str, str], DirectRoute] = {}
    for at, route in enumerate(routes):
        if not isinstance(route, DirectRoute) or route.plan is None or route.param_convertors:
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


def handler_for(handlers: dict[Any, Any], exc: Exception) -> ExceptionHandler | None:
    """The handler the exception middleware would call: the nearest class's. The one
    for `Exception` (a 500) is answered above this one (`RequestId`)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler: ExceptionHandler | None = handlers.get(cls)
        if handler is not None:
            return handler
    return None
