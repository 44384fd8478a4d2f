"""The listener's routes: the allow-listed (method, path) pairs go to the pool, the rest get JSON errors.

Exact path matches (the query string is ignored by `path` matching): one route per allowed method, then a
405 for the path's other methods, then a catch-all 404. The error routes never reach epp (ext_proc disabled
on them) nor a pod, so a pod's admin endpoints (`/sim/restart`, vLLM's `/sleep`, `/collective_rpc`, ...)
are unreachable through Envoy.
"""

from __future__ import annotations

from typing import Any

from epp.envoy_gateway import replies
from epp.routes import AllowedRoutes

_EXTPROC_FILTER = "envoy.filters.http.ext_proc"
_T = "type.googleapis.com/envoy."


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _no_extproc() -> dict[str, Any]:
    per_route = {"@type": _T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute", "disabled": True}
    return {_EXTPROC_FILTER: per_route}


def render_routes(
    allowed: AllowedRoutes, pool_route: dict[str, Any], body_limit: int, served_by: dict[str, Any]
) -> list[dict[str, Any]]:
    """`pool_route` is the RouteAction for allowed requests; `served_by` the response header they get."""
    routes: list[dict[str, Any]] = []
    for path in allowed.paths():
        methods = sorted(allowed.methods(path))
        for method in methods:
            routes.append(
                {
                    "name": f"{method} {path}",
                    "match": {
                        "path": path,
                        "headers": [{"name": ":method", "string_match": {"exact": method}}],
                    },
                    "route": pool_route,
                    "request_body_buffer_limit": body_limit,
                    "response_headers_to_add": [served_by],
                }
            )
        routes.append(
            {
                "name": f"405 {path}",
                "match": {"path": path},
                "direct_response": replies.method_not_allowed(methods),
                "response_headers_to_add": [_header("allow", ", ".join(methods))],
                "typed_per_filter_config": _no_extproc(),
            }
        )
    routes.append(
        {
            "name": "404",
            "match": {"prefix": "/"},
            "direct_response": replies.not_found(),
            "typed_per_filter_config": _no_extproc(),
        }
    )
    return routes
