"""Which HTTP routes of a pool may reach its pods: the inference API it serves, nothing else.

A model server exposes much more than inference (vLLM: `/tokenize`, `/load`, `/reset_prefix_cache`,
`/sleep`, `/collective_rpc`, ...; the simulator: `/sim/*`). Both data planes let only an allow-list through
(`epp gateway` answers everything else with a JSON 404 itself; `epp envoy config` renders routes for the
allowed paths only and a JSON 404 for the rest). The default is the OpenAI routes epp can route; an operator
adds more with `--allowed-routes "POST /v1/embeddings,..."`.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # exact path, no query string

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route("POST", CHAT_PATH),
    Route("POST", COMPLETIONS_PATH),
    Route("GET", MODELS_PATH),
)


class RouteSpecError(ValueError):
    """A malformed `--allowed-routes` value; the message names the entry and the reason."""


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    """The routes that may reach a pod, by exact path."""

    routes: tuple[Route, ...] = DEFAULT_ROUTES

    def methods(self, path: str) -> frozenset[str]:
        """The methods allowed on `path` (empty when the path is not allowed at all)."""
        return frozenset(r.method for r in self.routes if r.path == path)

    def paths(self) -> list[str]:
        return sorted({r.path for r in self.routes})

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.routes)


def parse_routes(text: str) -> AllowedRoutes:
    """`"POST /v1/chat/completions,GET /v1/models"` -> AllowedRoutes; RouteSpecError naming the bad entry."""
    routes: list[Route] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split()
        if len(parts) != 2:
            raise RouteSpecError(f"route {entry!r}: expected 'METHOD /path'")
        method, path = parts[0].upper(), parts[1]
        if method not in _METHODS:
            raise RouteSpecError(f"route {entry!r}: unknown method {parts[0]!r}")
        if not path.startswith("/") or "?" in path or "#" in path or any(c.isspace() for c in path):
            raise RouteSpecError(f"route {entry!r}: the path must start with '/' and hold no query")
        routes.append(Route(method, path))
    if not routes:
        raise RouteSpecError("no route given: at least one 'METHOD /path' is needed")
    return AllowedRoutes(tuple(dict.fromkeys(routes)))
