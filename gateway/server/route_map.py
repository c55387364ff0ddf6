"""The routes an app serves, as its 404 names them to a caller who asked for another."""

from __future__ import annotations

import re

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from gateway.errors import GatewayError

API_PREFIX = "/v1"
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def unknown_route(app: Starlette, method: str, path: str) -> GatewayError:
    """The 404 for ``method path``: the model API's routes (each also served without
    ``/v1``), then the app's other areas."""
    api, areas = route_map(app)
    return GatewayError(
        f"no route {method} {path}; the API routes are {', '.join(api)} (each also without "
        f"the /v1 prefix); other routes are under {', '.join(areas)}",
        status=404,
        type="invalid_request_error",
        code="unknown_route",
    )


def route_map(app: Starlette) -> tuple[list[str], list[str]]:
    """``METHOD /v1/path`` of each API route, and the first path segment of the others."""
    served: dict[str, set[str]] = {}
    for path in getattr(app, "hot_routes", {}):
        served.setdefault(path, set()).add("POST")
    for route in app.router.routes:
        path, methods = _path_and_methods(route)
        if path is not None:
            served.setdefault(path, set()).update(methods)
    api = [
        f"{'/'.join(sorted(methods))} {path}"
        for path, methods in sorted(served.items())
        if path.startswith(API_PREFIX + "/")
    ]
    bare = {path.removeprefix(API_PREFIX) for path in served if path.startswith(API_PREFIX + "/")}
    areas = sorted(
        {
            "/" + path.strip("/").split("/")[0]
            for path in served
            if not path.startswith(API_PREFIX + "/") and path not in bare and path != "/"
        }
    )
    return api, areas


def _path_and_methods(route: BaseRoute) -> tuple[str | None, set[str]]:
    if isinstance(route, Route):  # ``{model_id:path}`` is named ``{model_id}``
        return _CONVERTOR.sub(r"{\1}", route.path), set(route.methods or ()) - {"HEAD"}
    if isinstance(route, Mount):
        return route.path, set()
    return None, set()
